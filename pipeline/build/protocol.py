"""The build's protocol: the messages between the publisher, the worker and the site holders (one JSON line
each), and what the publisher puts into a request: the build's environment and the paths it may read and write.

The one module of pipeline.build the publisher imports (tests/test_imports.py): it imports nothing else of the
build, so nothing that confines or runs a build is loaded where the publisher runs. The worker
(pipeline.build.worker) and the site holder (pipeline.build.site_holder) fork and run builds with
pipeline.build.forks."""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

# The only variables a build sees from the pipeline's environment (never WEBHOOK_SECRET, SITE_REPO…).
PASSED_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "BUILD_WORKER_IDLE",
              "LANDLOCK_ABI_MAX")
# Read (and execute) only: where Python, Nikola and the system's data live.
SYSTEM_READ = ("/usr", "/lib", "/lib64", "/bin", "/sbin", "/etc", "/opt")
DEVICES = ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random")


def build_environment(base: Mapping[str, str], *, home: Path, tmpdir: Path,
                      extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The build's whole environment: a short allowlist from `base`, its own HOME and TMPDIR, `extra`."""
    env = {key: base[key] for key in PASSED_ENV if key in base}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.update(HOME=str(home), TMPDIR=str(tmpdir), **(extra or {}))
    return env


def python_paths() -> list[str]:
    """This interpreter's installation (a venv may live outside SYSTEM_READ)."""
    return sorted({sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable))})


@dataclass(frozen=True)
class BuildRequest:
    """One build, as the watcher asks it of the worker (one JSON line)."""
    site_dir: str
    log_path: str
    timeout: float
    env: dict[str, str]  # the build's whole environment
    limits: dict[str, int]  # memory_mb, file_mb, processes
    read: list[str]  # what it may read (Landlock)
    write: list[str]  # what it may read and write
    commit: str | None = None  # the commit being built
    changes: list[str] | None = None  # paths changed since `base`; None: unknown (a fresh site is loaded)
    base: str | None = None  # the commit of the last successful build
    fresh: bool = field(default=False)  # load the site afresh (a clean build)
    # The worker makes the work tree (pipeline.build.work_tree) from `export` (the commit's files) when given: `reason`
    # why the build is clean (None: keep Nikola's state if it can be trusted), and when the last build of this
    # work tree started and ended (time.time_ns()).
    export: str | None = None
    reason: str | None = None
    started_ns: int = 0
    finished_ns: int = 0
    after_ns: int = 0  # when the build before the last ended (pipeline.build.work_tree.prepare); 0: not known

    def to_line(self) -> str:
        return json.dumps(asdict(self)) + "\n"

    @classmethod
    def from_line(cls, line: str) -> BuildRequest:
        return cls(**json.loads(line))

    def holder_key(self) -> str:
        """What a site holder is made for: the same site, confinement and environment (but the commit)."""
        env = {key: value for key, value in self.env.items() if key != "SITE_COMMIT"}
        return json.dumps([self.site_dir, self.read, self.write, self.limits, env], sort_keys=True)


@dataclass(frozen=True)
class BuildAnswer:
    """The worker's answer to a BuildRequest (one JSON line)."""
    status: int  # the build's exit status (negative: killed by that signal)
    timed_out: bool
    seconds: float
    max_rss_kb: int
    leftovers: int  # processes the build left behind, ended by the worker
    exiting: bool = False  # the worker ends after this answer
    site: str = ""  # "warm": the site holder kept the site loaded; "fresh": it was loaded for this build
    note: str = ""  # why the site was loaded afresh
    output: str = "output"  # the output folder the site's configuration names (OUTPUT_FOLDER)
    scheduled: list = field(default_factory=list)  # [due UNIX time, source path, title] of posts held back
    reason: str = ""  # why the build was a clean one ("": incremental)
    phases: dict = field(default_factory=dict)  # where the time went, seconds by phase (docs/internals.md)

    def to_line(self) -> str:
        return json.dumps(asdict(self)) + "\n"

    @classmethod
    def from_line(cls, line: str) -> BuildAnswer:
        return cls(**json.loads(line))

    @classmethod
    def checked(cls, data: Any) -> BuildAnswer | None:
        """An answer from a process that ran site code: None unless every field has its type."""
        if not isinstance(data, dict) or not set(data) <= {f.name for f in fields(cls)}:
            return None
        try:
            answer = cls(**data)
        except TypeError:
            return None
        types = {"status": int, "timed_out": bool, "seconds": (int, float), "max_rss_kb": int, "leftovers": int,
                 "exiting": bool, "site": str, "note": str, "output": str, "reason": str}
        if any(not isinstance(getattr(answer, name), kind) for name, kind in types.items()):
            return None
        scheduled = answer.scheduled if isinstance(answer.scheduled, list) else []
        kept = [[float(item[0]), item[1][:1000], item[2][:200]] for item in scheduled[:100]
                if isinstance(item, list) and len(item) == 3 and isinstance(item[0], int | float)
                and isinstance(item[1], str) and isinstance(item[2], str)]
        phases = answer.phases if isinstance(answer.phases, dict) else {}
        timed = {name[:20]: round(float(value), 3) for name, value in list(phases.items())[:20]
                 if isinstance(name, str) and isinstance(value, int | float) and math.isfinite(value)}
        return replace(answer, scheduled=kept, phases=timed)
