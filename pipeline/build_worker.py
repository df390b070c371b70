"""A warm build worker: Nikola and its libraries are imported once, each build runs in a fork.

    python -m pipeline.build_worker      (started by pipeline.nikola_build; JSON lines on stdin/stdout)

A build request is one line: {"site_dir", "log_path", "env", "timeout", "limits", "read", "write"}.
The worker forks; the child (its own session, exactly `env` as its environment, the limits applied,
confined to reading `read` and writing `write`, stdout and stderr to the log) runs
`pipeline.nikola_runner` in a fresh copy of the warm interpreter, so nothing of one build can leak
into the next and the output is exactly that of a cold `nikola build`. The worker is a child
subreaper: after each build every process the build left behind is ended. The answer is one line:
{"status", "timed_out", "seconds", "max_rss_kb", "leftovers", "exiting"}. The worker exits after a failed
build, after BUILDS_PER_WORKER builds, or after IDLE_SECONDS without a request, and is started again on
demand; its own memory is the imported libraries only.
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
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from pipeline import sandbox
from pipeline.errors import BuildError

log = logging.getLogger(__name__)

BUILDS_PER_WORKER = 50
IDLE_SECONDS = float(os.environ.get("BUILD_WORKER_IDLE", "120"))

_child = 0
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

    def to_line(self) -> str:
        return json.dumps(asdict(self)) + "\n"

    @classmethod
    def from_line(cls, line: str) -> BuildRequest:
        return cls(**json.loads(line))


@dataclass(frozen=True)
class BuildAnswer:
    """The worker's answer to a BuildRequest (one JSON line)."""
    status: int  # the build's exit status (negative: killed by that signal)
    timed_out: bool
    seconds: float
    max_rss_kb: int
    leftovers: int  # processes the build left behind, ended by the worker
    exiting: bool = False  # the worker ends after this answer

    def to_line(self) -> str:
        return json.dumps(asdict(self)) + "\n"

    @classmethod
    def from_line(cls, line: str) -> BuildAnswer:
        return cls(**json.loads(line))




def warm_up() -> None:
    """Import what every build needs (the bulk of `nikola build`'s start-up)."""
    import docutils.core  # noqa: F401
    import lxml.html  # noqa: F401
    import mako.template  # noqa: F401
    import nikola.__main__  # noqa: F401
    import nikola.nikola  # noqa: F401
    import nikola.plugin_categories  # noqa: F401
    import pygments.formatters  # noqa: F401
    import pygments.lexers  # noqa: F401

    import pipeline.nikola_runner  # noqa: F401


def _run_child(request: BuildRequest) -> int:
    """In the forked child: become the build, confined (see pipeline.sandbox)."""
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # stdin is the worker's request pipe
    os.close(devnull)
    fd = os.open(request.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.environ.clear()
    os.environ.update(request.env)
    limits = request.limits
    sandbox.set_limits(memory_mb=limits["memory_mb"], file_mb=limits["file_mb"], processes=limits["processes"])
    why_not = sandbox.confine(request.read, request.write)
    print(f"pequod: build confined to {', '.join(request.write)} (Landlock)" if why_not is None
          else f"pequod: WARNING: {why_not}; the build runs without file confinement", flush=True)
    from pipeline import nikola_runner

    return nikola_runner.main([request.site_dir])


def build(request: BuildRequest) -> BuildAnswer:
    global _child
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            code = _run_child(request)
        except BaseException:  # noqa: BLE001 - everything goes to the build log
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _child = pid
    deadline = started + request.timeout
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
    # Whatever the build left running (also daemons that left its session): this worker is their subreaper.
    leftovers = sandbox.end_descendants()
    code = os.waitstatus_to_exitcode(status)
    return BuildAnswer(code, timed_out, round(time.monotonic() - started, 3), usage.ru_maxrss, leftovers)


def _kill_child() -> None:
    if _child:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(_child, signal.SIGKILL)


def _terminate(_signum: int, _frame: object) -> None:
    _kill_child()
    sandbox.end_descendants(1.0)
    os._exit(143)


def main() -> int:
    signal.signal(signal.SIGTERM, _terminate)
    subreaper = sandbox.become_subreaper()
    warm_up()
    print(json.dumps({"ready": True, "pid": os.getpid(), "subreaper": subreaper,
                      "landlock_abi": sandbox.landlock_abi()}), flush=True)
    for number in range(1, BUILDS_PER_WORKER + 1):
        readable, _, _ = select.select([sys.stdin], [], [], IDLE_SECONDS)
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
