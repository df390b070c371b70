"""The build worker's protocol: the messages between the watcher, the worker and the site holders
(one JSON line each), the fork helper, and the confined run of one build.

Used by `build_worker.py` (the worker's loop and the watcher's client) and by `site_holder.py` (the
holder, a fork of the worker), so the holder needs nothing of the worker's module."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from pipeline import sandbox

_child = 0  # the build being run by run_confined_build (in the site holder)


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
    # The worker makes the work tree (pipeline.work_tree) from `export` (the commit's files) when given: `reason`
    # why the build is clean (None: keep Nikola's state if it can be trusted), and when the last build of this
    # work tree started and ended (time.time_ns()).
    export: str | None = None
    reason: str | None = None
    started_ns: int = 0
    finished_ns: int = 0

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
        return replace(answer, scheduled=kept)


def fork_call(function: Callable[[], int], new_session: bool = False) -> int:
    """Fork; the child runs `function` (default SIGTERM, its own session if asked) and exits with its
    status, a traceback going to its stderr. Returns the child's pid."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            if new_session:
                os.setsid()
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            code = function()
        except BaseException:  # noqa: BLE001 - everything goes to the build log
            traceback.print_exc()
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)
    return pid


def run_confined_build(build: Callable[[], int], timeout: float) -> BuildAnswer:
    """Fork; the child (its own session) runs `build` and exits with its status. In the calling process
    (already confined: the site holder): wait at most `timeout` seconds. What the build left running is
    ended by the worker (which, unconfined, can see it in /proc; the orphans are the worker's)."""
    global _child
    started = time.monotonic()
    pid = _child = fork_call(build, new_session=True)
    deadline = started + timeout
    timed_out = False
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            timed_out = True
            kill_child()
            _, status, usage = os.wait4(pid, 0)
            break
        time.sleep(0.02)
    _child = 0
    sandbox.reap_children()
    code = os.waitstatus_to_exitcode(status)
    return BuildAnswer(code, timed_out, round(time.monotonic() - started, 3), usage.ru_maxrss, 0)


def kill_child() -> None:
    """SIGKILL to the running build's session (the holder's side: it forked the build)."""
    if _child:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(_child, signal.SIGKILL)
