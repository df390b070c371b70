"""The one description of DATA_DIR, shared by the watcher, `serve.py` and `run.sh` (which passes only
DATA_DIR):

    DATA_DIR/
      current -> releases/<id>     the live release (swapped with rename(2))
      releases/<id>/, <id>.json    kept releases and their metadata
      source/                      the work tree a build reads and writes (Nikola's state included)
      source.git/                  its repository, outside the work tree (a build cannot touch it)
      build-tmp/                   the build's HOME and TMPDIR
      build-state.json             what the work tree was last built from
      status.json                  deploy status and history
      logs/last-build.log          the last build's whole log
      wake                         touched by a valid webhook: the watcher checks the remote at once
      .watcher.lock                one watcher per DATA_DIR
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

DEFAULT = Path("/workdir")


@dataclass(frozen=True)
class Layout:
    root: Path

    @classmethod
    def from_env(cls) -> Layout:
        return cls(Path(os.environ.get("DATA_DIR") or DEFAULT))

    @property
    def current(self) -> Path:
        return self.root / "current"

    @property
    def releases(self) -> Path:
        return self.root / "releases"

    @property
    def source(self) -> Path:
        return self.root / "source"

    @property
    def git_dir(self) -> Path:
        return self.root / "source.git"

    @property
    def build_tmp(self) -> Path:
        return self.root / "build-tmp"

    @property
    def build_state(self) -> Path:
        return self.root / "build-state.json"

    @property
    def status(self) -> Path:
        return self.root / "status.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def wake_file(self) -> Path:
        return self.root / "wake"

    @property
    def watcher_lock(self) -> Path:
        return self.root / ".watcher.lock"

    def wake(self) -> None:
        wake(self.wake_file)


def replace_file(path: Path, text: str, mode: int | None = None) -> None:
    """Write `text` to `path` atomically: a temporary file beside it, renamed over it (readers see the old
    or the new content, never a part). `mode` applies before the rename (e.g. 0o600 for secrets)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def wake(wake_file: Path) -> None:
    """Ask the watcher to check the remote at once: it watches this file (see pipeline.triggers)."""
    wake_file.write_text(f"{time.time():.3f}\n")
