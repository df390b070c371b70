"""A warm build worker: Nikola and its libraries are imported once, each build runs in a fork.

    python -m pipeline.build_worker      (started by pipeline.nikola_build; JSON lines on stdin/stdout)

A build request is one line: {"site_dir", "log_path", "env", "timeout", "memory_limit_mb"}. The
worker forks; the child (its own session, the memory limit applied, stdout and stderr to the log)
runs `pipeline.nikola_runner` in a fresh copy of the warm interpreter, so nothing of one build can
leak into the next and the output is exactly that of a cold `nikola build`. The answer is one
line: {"status", "timed_out", "seconds", "max_rss_kb", "exiting"}. The worker exits after a failed
build, after MAX_BUILDS builds, or after IDLE_SECONDS without a request, and is started again on
demand; its own memory is the imported libraries only.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import sys
import time
import traceback

MAX_BUILDS = 50
IDLE_SECONDS = float(os.environ.get("BUILD_WORKER_IDLE", "120"))

_child = 0


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


def _run_child(request: dict) -> int:
    """In the forked child: become the build."""
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # stdin is the worker's request pipe
    os.close(devnull)
    if request.get("memory_limit_mb"):
        import resource

        limit = int(request["memory_limit_mb"]) * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    fd = os.open(request["log_path"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.environ.update(request.get("env") or {})
    from pipeline import nikola_runner

    return nikola_runner.main([request["site_dir"]])


def build(request: dict) -> dict:
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
    deadline = started + float(request["timeout"])
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
    code = os.waitstatus_to_exitcode(status)
    return {"status": code, "timed_out": timed_out, "seconds": round(time.monotonic() - started, 3),
            "max_rss_kb": usage.ru_maxrss}


def _kill_child() -> None:
    if _child:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(_child, signal.SIGKILL)


def _terminate(_signum: int, _frame: object) -> None:
    _kill_child()
    os._exit(143)


def main() -> int:
    signal.signal(signal.SIGTERM, _terminate)
    warm_up()
    print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
    for number in range(1, MAX_BUILDS + 1):
        readable, _, _ = select.select([sys.stdin], [], [], IDLE_SECONDS)
        if not readable:
            return 0  # idle: give the memory back
        line = sys.stdin.readline()
        if not line:
            return 0
        result = build(json.loads(line))
        # A fresh worker after a failure or MAX_BUILDS builds.
        result["exiting"] = result["status"] != 0 or number == MAX_BUILDS
        print(json.dumps(result), flush=True)
        if result["exiting"]:
            return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
