"""Deploy status and history (status.json): one typed record, persisted as JSON with atomic writes.

`Status` is the file's only shape in code. Its fields are written only by its methods, one writer per
fact (`record_failure` is the only place failures are counted), so the watcher, the deployer, the
previews and `rollback` cannot disagree on what a field means. The file keeps its keys and value types
(the agent's tests, `GET /_site/status`, the deploy page and the metrics read it): the fields that
something must first happen to fill (`building`, `counters`, `previews`…) are left out while None, and
keys this version does not know are kept as they were read.

The watcher and the `rollback` command both update it, so every read-modify-write holds an exclusive
lock (`StatusStore.edit`). `serve.py` reads it without the lock (writes are atomic renames). A file that
cannot be read or parsed reads as an empty status, and a field of the wrong type as its default.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.files import replace_file
from pipeline.metrics import BUILD_BUCKETS

HISTORY_LENGTH = 20  # builds kept in the history
ROLLBACKS_KEPT = 10


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def utc_iso(when: float) -> str:
    """A UNIX time as UTC, to the second (also for times far off: a post dated in the year 9999)."""
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
    except (OverflowError, OSError, ValueError):
        return "far in the future"


Record = dict[str, Any]  # a build's or a preview's record: free-form JSON, shown as it is


@dataclass
class Status:
    """status.json. The first eight fields are always in the file; the others only once they are set."""

    remote: str | None = None  # the remote as the last check saw it (redacted)
    branch: str | None = None
    last_check: str | None = None
    last_error: Record | None = None  # {at, message}: the last failure, until a build succeeds
    consecutive_failures: int = 0  # builds and remote checks that failed in a row
    last_attempted_commit: str | None = None
    builds: list[Record] = field(default_factory=list)  # the newest first, HISTORY_LENGTH at most
    scheduled: list[Record] = field(default_factory=list)  # posts the live release holds back: {due, at, source, title}
    building: Record | None = None  # {commit, started_at, attempts} while a build runs (Watcher.recover_interrupted)
    notifications: Record | None = None  # {delivered, failed, last_error}
    counters: Record | None = None  # the metrics' build and remote-check counters (pipeline.metrics reads them)
    previews: dict[str, Record] | None = None  # label → the preview's record (pipeline.publish.previews)
    preview_branches: dict[str, Record] | None = None  # branch → {commit, pushed} (pipeline.preview_hosts.choose)
    rollbacks: list[Record] | None = None  # the newest first: {at, to}
    other: dict[str, Any] = field(default_factory=dict)  # keys of another version, written back as read

    # ---- the file ----

    @classmethod
    def from_json(cls, data: object) -> Status:
        """The record of a parsed file: what is not a JSON object is an empty status; a field of the wrong type
        takes its default; unknown keys go to `other`."""
        if not isinstance(data, dict):
            return cls()
        known = {item.name: item for item in dataclasses.fields(cls) if item.name != "other"}
        values: dict[str, Any] = {}
        for name, value in data.items():
            if name not in known:
                continue
            wanted = _TYPES[name]
            if isinstance(value, wanted) and not (wanted is int and isinstance(value, bool)):
                values[name] = value
        status = cls(**values, other={key: value for key, value in data.items() if key not in known})
        status.builds = [build for build in status.builds if isinstance(build, dict)]
        return status

    def to_json(self) -> dict[str, Any]:
        """The file's object, in its usual key order; also what `GET /_site/status` starts from."""
        data = {item.name: getattr(self, item.name) for item in dataclasses.fields(self) if item.name != "other"}
        for name in _LEFT_OUT_WHILE_NONE:
            if data[name] is None:
                del data[name]
        return {**data, **{key: value for key, value in self.other.items() if key not in data}}

    @classmethod
    def load(cls, path: Path) -> Status:
        try:
            return cls.from_json(json.loads(path.read_text()))
        except (OSError, ValueError):  # missing, unreadable or damaged: as if there were none yet
            return cls()

    def save(self, path: Path) -> None:
        write_atomic(path, self.to_json())

    # ---- the writers: each field is written here only ----

    def checked(self, remote: str, branch: str) -> None:
        """The watcher looked at the remote's head."""
        self.remote, self.branch, self.last_check = remote, branch, utc_now()

    def record_failure(self, message: str | None, *, remote: bool = False, at: str | None = None) -> None:
        """Something failed (a build, a remote check when `remote`): one more failure in a row."""
        if remote:
            counters = self._counters()
            counters["remote_check_failures"] = int(counters.get("remote_check_failures", 0)) + 1
        self._outcome({"at": at or utc_now(), "message": message})

    def _outcome(self, error: Record | None) -> None:
        """The only writer of last_error and consecutive_failures: None is a success, which ends the row."""
        self.last_error = error
        self.consecutive_failures = 0 if error is None else self.consecutive_failures + 1

    def start_build(self, commit: str) -> None:
        """A build of `commit` begins; the marker counts the attempts at it that the instance did not survive."""
        earlier = self.building or {}
        attempts = int(earlier.get("attempts", 0)) + 1 if earlier.get("commit") == commit else 1
        self.building = {"commit": commit, "started_at": utc_now(), "attempts": attempts}

    def forget_build(self) -> None:
        self.building = None

    def finish_build(self, record: Record, error: str | None, scheduled: list[Record] | None, now: float) -> bool:
        """Record a build's end (`record` has its result, finished_at and build_seconds). `scheduled`: what a
        successful build holds back. Returns whether it is a success after a failure (a recovery)."""
        success = record["result"] == "success"
        recovered = success and bool(self.builds) and self.builds[0].get("result") == "failed"
        self.building = None
        self._count_build(record["result"], record["build_seconds"], now)
        self.builds = [record, *self.builds][:HISTORY_LENGTH]
        self.last_attempted_commit = record["commit"]
        if success:
            self._outcome(None)
            self.scheduled = scheduled or []
        else:
            self.record_failure(error, at=record["finished_at"])
            # A post that came due and could not be built waits for the next push (no rebuild loop).
            self.scheduled = [item for item in self.scheduled
                              if isinstance(item, dict) and float(item.get("due", 0)) > now]
        return recovered

    def _counters(self) -> Record:
        if self.counters is None:
            self.counters = {}
        return self.counters

    def _count_build(self, result: str, seconds: float, now: float) -> None:
        """A finished build in the counters pipeline.metrics exposes."""
        counters = self._counters()
        builds = counters.setdefault("builds", {})
        builds[result] = int(builds.get(result, 0)) + 1
        histogram = counters.setdefault("build_seconds", {"buckets": {}, "sum": 0.0, "count": 0})
        for bound in BUILD_BUCKETS:  # cumulative, as Prometheus histograms are
            key = f"{bound:g}"
            histogram["buckets"][key] = int(histogram["buckets"].get(key, 0)) + (seconds <= bound)
        histogram["sum"] = float(histogram["sum"]) + seconds
        histogram["count"] = int(histogram["count"]) + 1
        if result == "success":
            counters["last_success_at"] = now

    def notified(self, ok: bool, message: str) -> None:
        """A deploy notification's final outcome."""
        notes = {"delivered": 0, "failed": 0, "last_error": None, **(self.notifications or {})}
        if ok:
            notes["delivered"] = int(notes["delivered"]) + 1
        else:
            notes["failed"] = int(notes["failed"]) + 1
            notes["last_error"] = {"at": utc_now(), "message": message}
        self.notifications = notes

    def rolled_back(self, to: Record) -> None:
        self.rollbacks = [{"at": utc_now(), "to": to}, *(self.rollbacks or [])][:ROLLBACKS_KEPT]

    def set_previews(self, branches: dict[str, Record] | None, gone: Iterable[str] = ()) -> None:
        """The branches the previews follow; the previews of the `gone` labels are dropped. None: no previews
        at all (PREVIEWS_HOST unset), nothing of them is kept."""
        self.preview_branches = branches
        if branches is None:
            self.previews = None
        elif self.previews is not None:
            dropped = set(gone)
            self.previews = {label: item for label, item in self.previews.items() if label not in dropped}

    def set_preview(self, label: str, record: Record) -> None:
        self.previews = {**(self.previews or {}), label: dict(record)}


_TYPES: dict[str, type] = {
    "remote": str, "branch": str, "last_check": str, "last_error": dict, "consecutive_failures": int,
    "last_attempted_commit": str, "builds": list, "scheduled": list, "building": dict, "notifications": dict,
    "counters": dict, "previews": dict, "preview_branches": dict, "rollbacks": list,
}
_LEFT_OUT_WHILE_NONE = ("building", "notifications", "counters", "previews", "preview_branches", "rollbacks")


def write_atomic(path: Path, data: dict[str, Any]) -> None:
    replace_file(path, json.dumps(data, indent=2) + "\n")


class StatusStore:
    def __init__(self, path: Path):
        self.path = path
        self._lock_path = path.with_name(f".{path.name}.lock")

    @contextlib.contextmanager
    def edit(self) -> Iterator[Status]:
        """Read the status under an exclusive lock, let the caller change it (its methods), write it back."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            status = Status.load(self.path)
            yield status
            status.save(self.path)

    def read(self) -> Status:
        return Status.load(self.path)
