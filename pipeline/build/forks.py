"""Forks in the builder: the fork helper, and the confined run of one build (in the site holder).

Used by the worker (pipeline.build.worker) and by the site holder (pipeline.build.site_holder, a fork of the
worker), so the holder needs nothing of the worker's module; the messages they exchange are
pipeline.build.protocol's."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable

from pipeline.build import sandbox
from pipeline.build.protocol import BuildAnswer

_child = 0  # the build being run by run_confined_build (in the site holder)


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
