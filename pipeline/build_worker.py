"""A warm build worker: Nikola and its libraries are imported once, each site is kept loaded by a site holder.

    python -m pipeline.build_worker      (started by pipeline.nikola_build; JSON lines on stdin/stdout)

A build request is one line: {"site_dir", "log_path", "env", "timeout", "limits", "read", "write", "commit",
"changes", "base"}. The worker opens the build log and hands the build to a *site holder*, a fork of the
worker that confines itself (its own session, exactly `env` as its environment, the limits applied,
confined to reading `read` and writing `write`) before it loads the site's conf.py, and keeps the loaded
and scanned site between builds (pipeline.site_holder). Each build is a fork of the holder running
`pipeline.nikola_runner` with stdout and stderr to the log, so nothing of one build can leak into the
next and the output is exactly that of a cold `nikola build`. The worker is a child subreaper: after
each build every process the build left behind (but the holder) is ended. The answer is one line:
{"status", "timed_out", "seconds", "max_rss_kb", "leftovers", "exiting"}. The worker exits after a failed
build, after BUILDS_PER_WORKER builds, or after BUILD_WORKER_IDLE seconds without a request, and is started again on
demand.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from pipeline import config, sandbox
from pipeline.errors import BuildError

log = logging.getLogger(__name__)

BUILDS_PER_WORKER = 50
# A writer's pushes come minutes apart: the worker (and the site it keeps loaded) waits BUILD_WORKER_IDLE
# seconds (900) for the next one; the watcher checked the value at its start (pipeline.config).
HOLDER_GRACE = 10.0  # seconds the worker gives a holder beyond the build's timeout before it kills it

_child = 0
_holder: Any = None  # the site holder (pipeline.site_holder.HolderClient) of the last build
# Process groups of running workers (in the watcher), so that a shutdown can stop a build in progress.
running_groups: set[int] = set()


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
                 "exiting": bool, "site": str, "note": str, "output": str}
        if any(not isinstance(getattr(answer, name), kind) for name, kind in types.items()):
            return None
        scheduled = answer.scheduled if isinstance(answer.scheduled, list) else []
        kept = [[float(item[0]), item[1][:1000], item[2][:200]] for item in scheduled[:100]
                if isinstance(item, list) and len(item) == 3 and isinstance(item[0], int | float)
                and isinstance(item[1], str) and isinstance(item[2], str)]
        return replace(answer, scheduled=kept)


def warm_up() -> None:
    """Import what every build needs (the bulk of `nikola build`'s start-up)."""
    import docutils.core  # noqa: F401
    import lxml.html  # noqa: F401
    import mako.template  # noqa: F401
    import nikola.__main__  # noqa: F401
    import nikola.nikola  # noqa: F401
    import nikola.plugin_categories  # noqa: F401
    import nikola.plugins.misc.scan_posts  # noqa: F401
    import pygments.formatters  # noqa: F401
    import pygments.lexers  # noqa: F401

    import pipeline.nikola_runner  # noqa: F401
    import pipeline.site_holder  # noqa: F401


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
            _kill_child()
            _, status, usage = os.wait4(pid, 0)
            break
        time.sleep(0.02)
    _child = 0
    sandbox.reap_children()
    code = os.waitstatus_to_exitcode(status)
    return BuildAnswer(code, timed_out, round(time.monotonic() - started, 3), usage.ru_maxrss, 0)


def build(request: BuildRequest) -> BuildAnswer:
    """Hand `request` to the site holder (a fresh one when the last cannot serve it)."""
    global _holder
    from pipeline.site_holder import HolderClient

    started = time.monotonic()
    key = request.holder_key()
    if _holder is not None and (request.fresh or _holder.key != key or not _holder.alive()):
        _stop_holder()
    if _holder is not None:
        _holder.resume()
    fd = os.open(request.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    note = ""
    try:
        while True:
            fresh = _holder is None
            if fresh:
                _holder = HolderClient(key, request)
            remaining = request.timeout + HOLDER_GRACE - (time.monotonic() - started)
            answer, status = _holder.ask(request, fd, remaining)
            if answer is not None and "stale" in answer and not fresh:
                note = f"loaded afresh: {str(answer['stale'])[:300]}"
                os.write(fd, f"pequod: Nikola site {note}\n".encode())
                _stop_holder()
                continue
            break
    finally:
        os.close(fd)
    seconds = round(time.monotonic() - started, 3)
    site = "fresh" if fresh else "warm"
    checked = None if answer is None or "stale" in answer else BuildAnswer.checked(answer)
    if checked is None:  # the holder ended without an answer, was killed on time-out, or answered nonsense
        if _holder is not None and _holder.alive():
            _holder.kill()
        _holder = None
        leftovers = sandbox.end_descendants()
        code = -9 if status is None else os.waitstatus_to_exitcode(status)
        if answer is not None and "stale" not in answer:
            _append_log(request.log_path, "pequod: the site holder's answer is not one; the build counts as failed")
        return BuildAnswer(code or 1, status is None and answer is None, seconds, 0, leftovers, site=site, note=note)
    # Whatever the build left running (also daemons that left its session): the worker is their subreaper.
    leftovers = sandbox.end_descendants(keep=[_holder.pid])
    result = replace(checked, seconds=seconds, site=site, note=note, leftovers=leftovers)
    if result.status != 0:
        _stop_holder()  # it ends itself after a failed build
        return result
    why = _holder.left_running()
    if why is not None:
        # Site code left something in the long-lived process (a thread, a signal handler, a timer): it could
        # act between builds, so the next build gets a fresh holder.
        _append_log(request.log_path, f"pequod: {why}; the next build loads the site afresh")
        _stop_holder()
    else:
        _holder.pause()  # nothing of the site runs while the release is staged and the next commit checked out
    return result


def _append_log(path: str, line: str) -> None:
    with contextlib.suppress(OSError), open(path, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")


def _stop_holder() -> None:
    global _holder
    if _holder is not None:
        _holder.stop()
        _holder = None
        sandbox.end_descendants()  # what it left (it is gone: its orphans are ours)


def _kill_child() -> None:
    if _child:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(_child, signal.SIGKILL)


def _terminate(_signum: int, _frame: object) -> None:
    _kill_child()
    if _holder is not None and _holder.pid:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(_holder.pid, signal.SIGKILL)
    sandbox.end_descendants(1.0)
    os._exit(143)


def main() -> int:
    signal.signal(signal.SIGTERM, _terminate)
    subreaper = sandbox.become_subreaper()
    idle_seconds = config.build_worker_idle(os.environ)
    warm_up()
    print(json.dumps({"ready": True, "pid": os.getpid(), "subreaper": subreaper,
                      "landlock_abi": sandbox.landlock_abi()}), flush=True)
    try:
        for number in range(1, BUILDS_PER_WORKER + 1):
            readable, _, _ = select.select([sys.stdin], [], [], idle_seconds)
            if not readable:
                return 0  # idle: give the memory back
            line = sys.stdin.readline()
            if not line:
                return 0
            result = build(BuildRequest.from_line(line))
            # A fresh worker after a failure or BUILDS_PER_WORKER builds.
            result = replace(result, exiting=result.status != 0 or number == BUILDS_PER_WORKER)
            sys.stdout.write(result.to_line())
            sys.stdout.flush()
            if result.exiting:
                return 0
        return 0
    finally:
        _stop_holder()



# -- the watcher's side ----------------------------------------------------------------------------
def terminate_running() -> None:
    """SIGTERM to running workers (a shutdown): each ends its build and what the build started."""
    for pgid in list(running_groups):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)


class BuildWorker:
    """`python -m pipeline.build_worker`, kept between builds (see that module), with environment `env`."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.env = dict(env) if env is not None else None
        self.proc: subprocess.Popen[str] | None = None
        self.ready: dict[str, Any] = {}

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.build_worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, start_new_session=True, env=self.env,
        )
        running_groups.add(self.proc.pid)
        ready = self._read(60)
        if ready is None:
            self.stop()
            raise BuildError("the build worker did not start (see the pipeline's log)", "")
        if not self.ready:
            abi = ready.get("landlock_abi", 0)
            if abi:
                log.info("builds are confined with Landlock (ABI %d)", abi)
            else:
                log.warning("Landlock is not available (kernel or seccomp profile): builds are not confined to "
                            "their work tree and could read other processes' files")
            if not ready.get("subreaper"):
                log.warning("the build worker cannot be a child subreaper: daemons a build starts may outlive it")
        self.ready = ready

    def _read(self, timeout: float) -> dict[str, Any] | None:
        assert self.proc is not None and self.proc.stdout is not None
        readable, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if readable else ""
        return json.loads(line) if line else None

    def build(self, request: BuildRequest) -> tuple[BuildAnswer, bool]:
        """Run one build; returns the worker's answer and whether the worker was already warm.

        A warm worker that went away meanwhile (it ends itself when idle) is replaced once."""
        warm = self.running()
        if not warm:
            self._start()
        answer = self._ask(request)
        if answer is None and warm:
            log.info("the build worker had gone; starting a fresh one")
            self.stop()
            self._start()
            warm = False
            answer = self._ask(request)
        if answer is None:
            self.stop()
            raise BuildError("the build worker stopped answering (see the pipeline's log)", "")
        if answer.exiting:
            self.stop()
        return answer, warm

    def _ask(self, request: BuildRequest) -> BuildAnswer | None:
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write(request.to_line())
            self.proc.stdin.flush()
            line = self._read(request.timeout + 30)
            return BuildAnswer(**line) if line is not None else None
        except (OSError, ValueError, TypeError):
            return None

    def stop(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
            running_groups.discard(self.proc.pid)
            self.proc = None


if __name__ == "__main__":
    sys.exit(main())
