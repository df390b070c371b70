"""A warm build worker: Nikola and its libraries are imported once, each site is kept loaded by a site holder.

    python -m pipeline.build.worker      (started by pipeline.publish.builds; JSON lines on stdin/stdout)

A build request is one line: {"site_dir", "log_path", "env", "timeout", "limits", "read", "write", "commit",
"changes", "base"}. The worker opens the build log and hands the build to a *site holder*, a fork of the
worker that confines itself (its own session, exactly `env` as its environment, the limits applied,
confined to reading `read` and writing `write`) before it loads the site's conf.py, and keeps the loaded
and scanned site between builds (pipeline.build.site_holder). Each build is a fork of the holder running
`pipeline.build.runner` with stdout and stderr to the log, so nothing of one build can leak into the
next and the output is exactly that of a cold `nikola build`. The worker is a child subreaper: after
each build every process the build left behind (but the holder) is ended. The answer is one line:
{"status", "timed_out", "seconds", "max_rss_kb", "leftovers", "exiting"} (the messages: pipeline.build.protocol).
The worker exits after a failed build, after BUILDS_PER_WORKER builds, or after BUILD_WORKER_IDLE seconds
without a request, and is started again on demand.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from pipeline import config
from pipeline.build import forks, sandbox, work_tree
from pipeline.build.protocol import BuildAnswer, BuildRequest
from pipeline.errors import short

BUILDS_PER_WORKER = 50
# A writer's pushes come minutes apart: the worker (and the site it keeps loaded) waits BUILD_WORKER_IDLE
# seconds (900) for the next one; the watcher checked the value at its start (pipeline.config).
HOLDER_GRACE = 10.0  # seconds the worker gives a holder beyond the build's timeout before it kills it

_holder: Any = None  # the site holder (pipeline.build.site_holder.HolderClient) of the last build
# Per work tree: when this worker last copied the commit's files into it (work_tree.make's mark for the next build)
_copied: dict[str, int] = {}


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

    import pipeline.build.runner  # noqa: F401
    import pipeline.build.site_holder  # noqa: F401


def make_work_tree(request: BuildRequest) -> tuple[BuildRequest, BuildAnswer | None]:
    """The work tree of `request` made from its export (pipeline.build.work_tree): the request as the build will be run
    (a clean one when Nikola's state was not kept), or the answer of a build that cannot run."""
    if request.export is None:
        return request, None
    started = time.monotonic()
    reason = request.reason
    trusted = _copied.pop(request.site_dir, 0)
    try:
        reason, _copied[request.site_dir] = work_tree.make(
            Path(request.export), Path(request.site_dir), Path(request.env.get("TMPDIR") or request.site_dir),
            request.reason, request.started_ns, request.finished_ns, request.after_ns, trusted)
    except OSError as exc:
        note = short(f"the work tree could not be made: {exc}")
        _append_log(request.log_path, f"pequod: {note}", truncate=True)
        return request, BuildAnswer(1, False, round(time.monotonic() - started, 3), 0, 0, note=note,
                                    reason=reason or "")
    if reason is None:
        return request, None
    return replace(request, fresh=True, changes=None, base=None, reason=reason), None


def build(request: BuildRequest) -> BuildAnswer:
    """Make the work tree, then hand `request` to the site holder (a fresh one when the last cannot serve it)."""
    from pipeline.build.site_holder import HolderClient

    sandbox.ABI_MAX = config.landlock_abi_max(request.env)
    started = time.monotonic()
    request, refused = make_work_tree(request)
    if refused is not None:
        _stop_holder()
        return refused
    made = time.monotonic() - started
    result = _build(request, HolderClient)
    return replace(result, reason=request.reason or "", phases={"work_tree": round(made, 3), **result.phases})


def _build(request: BuildRequest, HolderClient: Any) -> BuildAnswer:  # noqa: N803 - the class, imported late
    global _holder
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


def _append_log(path: str, line: str, truncate: bool = False) -> None:
    with contextlib.suppress(OSError), open(path, "w" if truncate else "a", encoding="utf-8") as handle:
        handle.write(line + "\n")


def _stop_holder() -> None:
    global _holder
    if _holder is not None:
        _holder.stop()
        _holder = None
        sandbox.end_descendants()  # what it left (it is gone: its orphans are ours)


def _terminate(_signum: int, _frame: object) -> None:
    forks.kill_child()
    if _holder is not None and _holder.pid:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(_holder.pid, signal.SIGKILL)
    sandbox.end_descendants(1.0)
    os._exit(143)


def main(argv: list[str] | None = None) -> int:
    """JSON lines on stdin and stdout (a process of the watcher), or with `--serve`: the builder's first process,
    serving the one connection its door accepted, and ending when it ends (see serve)."""
    argv = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGTERM, _terminate)
    if len(argv) == 3 and argv[0] == "--serve" and argv[1].isdigit() and argv[2].isdigit():
        return serve(int(argv[1]), int(argv[2]))
    if argv:
        print("usage: python -m pipeline.build.worker [--serve LISTENER_FD CONNECTION_FD]",
              file=sys.stderr)
        return 2
    return loop(sys.stdin, sys.stdout, config.build_worker_idle(os.environ))


def loop(requests: Any, answers: Any, idle_seconds: float, listener: Any = None) -> int:
    """Answer the build requests read from `requests` until a build fails, BUILDS_PER_WORKER builds, `idle_seconds`
    without a request, the end of `requests`, or (between builds) another publisher connecting to `listener`: an
    instance that replaced this one's publisher (which may hang, holding its connection)."""
    subreaper = sandbox.become_subreaper()
    warm_up()
    answers.write(json.dumps({"ready": True, "pid": os.getpid(), "subreaper": subreaper,
                              "landlock_abi": sandbox.landlock_abi()}) + "\n")
    answers.flush()
    try:
        for number in range(1, BUILDS_PER_WORKER + 1):
            readable, _, _ = select.select([requests, *([listener] if listener is not None else [])], [], [],
                                           idle_seconds)
            if not readable:
                return 0  # idle: give the memory back
            if requests not in readable:
                print("build_worker: another publisher connects; ending (a fresh builder answers it)", file=sys.stderr,
                      flush=True)
                return 0
            line = requests.readline()
            if not line:
                return 0
            request = BuildRequest.from_line(line)
            idle_seconds = config.build_worker_idle(request.env)
            result = build(request)
            # A fresh worker after a failure or BUILDS_PER_WORKER builds; in the builder (its PID namespace's first
            # process) also when anything but the kept site holder still runs: its runtime starts a fresh builder.
            left = sandbox.others(keep=[_holder.pid] if _holder is not None else []) if os.getpid() == 1 else []
            if left:
                print(f"build_worker: {len(left)} process(es) of the build still run; ending the builder",
                      file=sys.stderr, flush=True)
            result = replace(result, exiting=result.status != 0 or number == BUILDS_PER_WORKER or bool(left))
            answers.write(result.to_line())
            answers.flush()
            if result.exiting:
                return 0
        return 0
    finally:
        _stop_holder()


def serve(listener_fd: int, connection_fd: int) -> int:
    """The builder's first process (PID 1 of its PID namespace), once its door (pipeline.build.door) has let the
    publisher in: build for that one connection (loop) and end; a second publisher connecting to the listener ends
    it too (it is answered by the next builder). Whatever the builds started ends with it: the builder's runtime
    starts a fresh door (the agent's restart policy), in a fresh PID namespace, so nothing of a build outlives it."""
    import socket

    listener = socket.socket(fileno=listener_fd)
    connection = socket.socket(fileno=connection_fd)
    path = listener.getsockname()
    with connection, connection.makefile("r", encoding="utf-8") as requests, \
            connection.makefile("w", encoding="utf-8") as answers:
        code = loop(requests, answers, config.build_worker_idle(os.environ), listener)
    listener.close()
    if isinstance(path, str) and path.startswith("/"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    return code


if __name__ == "__main__":
    sys.exit(main())
