"""Deploy status and history, persisted as JSON with atomic writes.

The watcher and the `rollback` command both update it, so every read-modify-write holds an
exclusive lock. `serve.py` reads it without the lock (writes are atomic renames).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.files import replace_file

HISTORY_LENGTH = 20


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def utc_iso(when: float) -> str:
    """A UNIX time as UTC, to the second (also for times far off: a post dated in the year 9999)."""
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
    except (OverflowError, OSError, ValueError):
        return "far in the future"


def empty_status() -> dict[str, Any]:
    return {
        "remote": None,
        "branch": None,
        "last_check": None,
        "last_error": None,
        "consecutive_failures": 0,
        "last_attempted_commit": None,
        "builds": [],
        "scheduled": [],  # posts the live release holds back until their date: {due, at, source, title}
    }


def read_status(path: Path) -> dict[str, Any]:
    status = empty_status()
    with contextlib.suppress(OSError, ValueError):
        status.update(json.loads(path.read_text()))
    return status


def write_atomic(path: Path, data: dict[str, Any]) -> None:
    replace_file(path, json.dumps(data, indent=2) + "\n")


class StatusStore:
    def __init__(self, path: Path):
        self.path = path
        self._lock_path = path.with_name(f".{path.name}.lock")

    @contextlib.contextmanager
    def edit(self) -> Iterator[dict[str, Any]]:
        """Read the status under an exclusive lock, let the caller change it, write it back."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            status = read_status(self.path)
            yield status
            status["builds"] = status["builds"][:HISTORY_LENGTH]
            write_atomic(self.path, status)

    def read(self) -> dict[str, Any]:
        return read_status(self.path)
