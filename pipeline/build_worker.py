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
{"status", "timed_out", "seconds", "max_rss_kb", "leftovers", "exiting"} (the messages: pipeline.build_protocol).
The worker exits after a failed build, after BUILDS_PER_WORKER builds, or after BUILD_WORKER_IDLE seconds
without a request, and is started again on demand.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import stat
import sys
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from pipeline import build_protocol, config, proc, sandbox, work_tree
from pipeline.build_protocol import BuildAnswer, BuildRequest
from pipeline.errors import BuildError, short

log = logging.getLogger(__name__)

BUILDS_PER_WORKER = 50
# A writer's pushes come minutes apart: the worker (and the site it keeps loaded) waits BUILD_WORKER_IDLE
# seconds (900) for the next one; the watcher checked the value at its start (pipeline.config).
HOLDER_GRACE = 10.0  # seconds the worker gives a holder beyond the build's timeout before it kills it

_holder: Any = None  # the site holder (pipeline.site_holder.HolderClient) of the last build
# Process groups of running workers (in the watcher), so that a shutdown can stop a build in progress.
running_groups: set[int] = set()


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


def make_work_tree(request: BuildRequest) -> tuple[BuildRequest, BuildAnswer | None]:
    """The work tree of `request` made from its export (pipeline.work_tree): the request as the build will be run
    (a clean one when Nikola's state was not kept), or the answer of a build that cannot run."""
    if request.export is None:
        return request, None
    started = time.monotonic()
    reason = request.reason
    try:
        reason = work_tree.prepare(Path(request.site_dir), Path(request.env.get("TMPDIR") or request.site_dir),
                                   request.reason, request.started_ns, request.finished_ns)
        work_tree.copy_in(Path(request.export), Path(request.site_dir))
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
    from pipeline.site_holder import HolderClient

    sandbox.ABI_MAX = config.landlock_abi_max(request.env)
    request, refused = make_work_tree(request)
    if refused is not None:
        _stop_holder()
        return refused
    result = _build(request, HolderClient)
    return replace(result, reason=request.reason or "")


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
    build_protocol.kill_child()
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
    if argv == ["--listen"]:  # the builder's command of earlier manifests: its door, which waits lean
        os.execv(sys.executable, [sys.executable, "-m", "pipeline.builder_door"])
    if len(argv) == 3 and argv[0] == "--serve" and argv[1].isdigit() and argv[2].isdigit():
        return serve(int(argv[1]), int(argv[2]))
    if argv:
        print("usage: python -m pipeline.build_worker [--listen | --serve LISTENER_FD CONNECTION_FD]",
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
    """The builder's first process (PID 1 of its PID namespace), once its door (pipeline.builder_door) has let the
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


# -- the watcher's side ----------------------------------------------------------------------------
def terminate_running() -> None:
    """SIGTERM to running workers (a shutdown): each ends its build and what the build started."""
    for pgid in list(running_groups):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)


class BuildWorker:
    """The build worker, kept between builds (see this module): `python -m pipeline.build_worker` started with
    environment `env`, or, with `socket_path`, the worker of the builder (a container of its own, started by the
    agent) reached on that unix socket. Its answers come from where code of the site runs: each is read as one
    line of at most ANSWER_BYTES and checked field by field."""

    ANSWER_BYTES = 1 << 20
    CONNECT_SECONDS = 60.0  # the builder's runtime starts a fresh worker after one ends; it waits so long for it

    def __init__(self, env: Mapping[str, str] | None = None, socket_path: Path | None = None) -> None:
        self.env = dict(env) if env is not None else None
        self.socket_path = socket_path
        self.proc: proc.Popen[str] | None = None
        self.sock: Any = None
        self._in: Any = None  # requests go here
        self._out: Any = None  # answers come from here
        self.ready: dict[str, Any] = {}

    def running(self) -> bool:
        if self.socket_path is not None:
            return self.sock is not None
        return self.proc is not None and self.proc.poll() is None

    def _start(self) -> None:
        if self.socket_path is not None:
            ready = self._connect(self.socket_path)
        else:
            self.proc = proc.start([sys.executable, "-m", "pipeline.build_worker"], env=self.env)
            running_groups.add(self.proc.pid)
            self._in, self._out = self.proc.stdin, self.proc.stdout
            ready = self._read(60)
        if ready is None:
            self.stop()
            raise BuildError("the build worker did not start (see the pipeline's log)", "")
        if not self.ready:
            abi = ready.get("landlock_abi", 0)
            where = f"in the builder ({self.socket_path})" if self.socket_path is not None else "in this instance"
            if abi:
                log.info("builds run %s, confined with Landlock (ABI %s%s)", where, abi,
                         ", capped by LANDLOCK_ABI_MAX" if self.env and self.env.get("LANDLOCK_ABI_MAX") else "")
            else:
                log.warning("builds run %s; Landlock is not available (kernel or seccomp profile): builds are not "
                            "confined to their work tree", where)
            if not ready.get("subreaper"):
                log.warning("the build worker cannot be a child subreaper: daemons a build starts may outlive it")
        self.ready = ready

    def _connect(self, path: Path) -> dict[str, Any] | None:
        """Connect to the builder's worker and read its ready line; while the builder starts afresh (its worker
        ended, or ends because this connection replaces another publisher's), again, for CONNECT_SECONDS."""
        import socket

        deadline = time.monotonic() + self.CONNECT_SECONDS
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                if not stat.S_ISSOCK(os.lstat(path).st_mode):
                    raise ConnectionRefusedError(f"{path} is not a socket")
                sock.connect(str(path))
                self.sock = sock
                self._in = sock.makefile("w", encoding="utf-8")
                self._out = sock.makefile("r", encoding="utf-8", errors="replace")
                ready = self._read(max(1.0, deadline - time.monotonic()))
                if ready is not None:
                    return ready
                raise ConnectionResetError("the builder ended before it was ready")
            except OSError as exc:
                self.stop()
                sock.close()
                if time.monotonic() > deadline:
                    raise BuildError(f"the builder does not answer on {path} ({exc}); is its container running?",
                                     "") from None
                time.sleep(0.05)

    def _read(self, timeout: float) -> dict[str, Any] | None:
        assert self._out is not None
        readable, _, _ = select.select([self._out], [], [], timeout)
        line = self._out.readline(self.ANSWER_BYTES) if readable else ""
        if not line.endswith("\n"):
            return None
        try:
            data = json.loads(line)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

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
        assert self._in is not None
        try:
            self._in.write(request.to_line())
            self._in.flush()
            line = self._read(request.timeout + 30)
        except (OSError, ValueError):
            return None
        return BuildAnswer.checked(line) if line is not None else None

    def stop(self) -> None:
        """End the worker: the local process is terminated; the builder's connection is closed, which ends its
        worker and everything it started (its runtime starts a fresh one)."""
        if self.sock is not None:
            for handle in (self._in, self._out, self.sock):
                with contextlib.suppress(OSError):
                    handle.close()
            self.sock = None
        if self.proc is not None:
            proc.end(self.proc, 10)
            running_groups.discard(self.proc.pid)
            self.proc = None
        self._in = self._out = None


if __name__ == "__main__":
    sys.exit(main())
