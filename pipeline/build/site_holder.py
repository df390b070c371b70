"""A warm Nikola site kept between builds, so a build costs what changed, not the size of the site.

The build worker (pipeline.build.worker) forks one *site holder* per site. The holder confines itself
exactly as a build is confined (environment, limits, Landlock: see pipeline.build.sandbox) before it runs any
of the site's code, loads conf.py and Nikola's plugins once, and scans the posts. Each build is a fork
of the holder: it starts with the site loaded and scanned, runs `nikola build` (pipeline.build.runner)
and exits, so nothing a build does reaches the holder or the next build. What the holder keeps, and when
it may reuse it (or answers "stale" and ends), is pipeline.build.warm_site's.

This module is both ends of the holder: the process (serve()) and the worker's client (HolderClient).
Protocol: a SOCK_SEQPACKET pair; the worker sends a BuildRequest line with the build log's file
descriptor attached, the holder answers with a BuildAnswer line, or {"stale": reason}.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import fcntl
import gc
import json
import os
import signal
import socket
import sys
import time
import traceback
from typing import Any

from pipeline.build import sandbox
from pipeline.build.forks import fork_call, run_confined_build
from pipeline.build.protocol import BuildAnswer, BuildRequest
from pipeline.build.warm_site import ListPages, Skips, WarmSite, site_fingerprint

_PR_SET_PDEATHSIG = 1
MAX_MESSAGE = 1 << 20


# -- the holder process -----------------------------------------------------------------------------
def _redirect_output(fd: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)


def _send(sock: socket.socket, message: dict) -> None:
    sock.sendall(json.dumps(message).encode())


@dataclasses.dataclass(frozen=True)
class _Confinement:
    """How the holder confined itself (once, before any site code), as each build's log tells it."""

    devnull: int  # the holder's output between builds
    why_not: str | None  # why there is no file confinement, or None
    why_not_seccomp: str | None  # why there is no syscall filter, or None
    kind: str | None  # "Landlock", with or without signal scoping

    def announce(self, request: Any) -> None:
        print(f"pequod: build confined to {', '.join(request.write)} ({self.kind})" if self.why_not is None
              else f"pequod: WARNING: {self.why_not}; the build runs without file confinement", flush=True)
        if self.why_not_seccomp is not None:
            print(f"pequod: WARNING: {self.why_not_seccomp}; the build can change file modes and times", flush=True)


def _confine(first: Any) -> _Confinement:
    """Its own session, gone with the worker, no stdin, exactly the build's environment and limits, Landlock
    and seccomp: all of it before any of the site's code runs. `first` is the first BuildRequest."""
    os.setsid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # gone with the worker
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.environ.clear()
    os.environ.update(first.env)
    limits = first.limits
    sandbox.set_limits(memory_mb=limits["memory_mb"], file_mb=limits["file_mb"], processes=limits["processes"])
    why_not = sandbox.confine(first.read, first.write)
    why_not_seccomp = sandbox.restrict_syscalls()
    kind = ("Landlock" + (" with signal scoping" if sandbox.scoped_signals() else "")
            if why_not is None else None)
    return _Confinement(devnull, why_not, why_not_seccomp, kind)


def serve(sock: socket.socket, first: Any) -> int:
    """The holder: confine, then answer build requests until told to stop, a build fails, or the site is
    stale. `first` is the first BuildRequest (it sets the confinement, the same for every build)."""
    confinement = _confine(first)
    _HOLDER_FDS.append(sock.fileno())
    sock.send(b"ready")
    site: WarmSite | None = None
    builds = 0
    while True:
        data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, 1)
        sandbox.reap_children()  # what the worker ended after the last build
        if not data:
            return 0
        request = BuildRequest.from_line(data.decode())
        started = time.monotonic()
        _redirect_output(fds[0])
        os.close(fds[0])
        os.environ.clear()
        os.environ.update(request.env)
        ready = _ready_site(site, request, confinement, started)
        if not isinstance(ready, WarmSite):
            _send(sock, ready)
            return 0
        site = ready
        builds += 1
        _load_templates(site.doit_nikola.nikola)
        # A full collection walks every object of a large site (~0.1 s at 2,000 posts): once in FULL_COLLECTION
        # builds; in between, what a scan left behind is mostly freed as it goes (reference counts).
        gc.collect(2 if builds % FULL_COLLECTION == 1 else 1)
        gc.freeze()  # the builds' garbage collector leaves the holder's objects (and their pages) alone
        scanned = time.monotonic() - started
        answer, report = _run(site, request, started, skip=True)
        again = 0.0
        if answer.status == AGAIN:
            print("pequod: the site-wide context changed: building again without leaving tasks out", flush=True)
            again = answer.seconds
            answer, report = _run(site, request, started, skip=False)
        gc.unfreeze()
        phases = {("scan" if site.commit else "load"): scanned, **report.get("phases", {}), "build": answer.seconds}
        if again:
            phases["again"] = again
        answer = dataclasses.replace(answer, seconds=round(time.monotonic() - started, 3), phases=phases)
        if answer.status == 0:
            site.commit, site.fingerprint = request.commit, report.get("fingerprint")
            site.list_keys = report["lists"]
            site.list_reads = {name: read for name, read in report["reads"].items() if isinstance(read, bool)}
            _keep_template_deps(site.doit_nikola.nikola, report["templates"])
            answer = dataclasses.replace(answer, output=str(site.doit_nikola.nikola.config.get("OUTPUT_FOLDER")))
        _redirect_output(confinement.devnull)
        _send(sock, dataclasses.asdict(answer))
        if answer.status != 0:
            return 0


def _ready_site(site: WarmSite | None, request: Any, confinement: _Confinement,
                started: float) -> WarmSite | dict:
    """The site loaded (or kept) and scanned for `request`; else the holder's last message: {"stale": why}, or
    the build's failure (conf.py raising, a post Nikola cannot read…)."""
    try:
        if site is not None:
            reason = site.stale_reason(request.changes, request.base)
            if reason is not None:
                _redirect_output(confinement.devnull)
                return {"stale": reason}
        confinement.announce(request)
        if site is None:
            opened = WarmSite.open(request.site_dir)
            if isinstance(opened, int):
                return dataclasses.asdict(BuildAnswer(opened, False, 0.0, 0, 0))
            site = opened
            print("pequod: Nikola site loaded (a fresh site holder)", flush=True)
            site.scan(None)
        else:
            site.scan(request.changes)
            print(f"pequod: warm Nikola site: {site.posts.reused} of {site.posts.scanned} posts reused, "
                  f"{len(request.changes or [])} changed path(s), scanned in "
                  f"{time.monotonic() - started:.2f} s", flush=True)
    except BaseException:  # noqa: BLE001 - a post Nikola cannot read, conf.py raising…: the build's error
        traceback.print_exc()
        return dataclasses.asdict(BuildAnswer(1, False, round(time.monotonic() - started, 3), 0, 0))
    return site


_HOLDER_FDS: list[int] = []  # the holder's socket to the worker
AGAIN = 75  # a build that left tasks out finds the site-wide context changed: it is run again in full
FULL_COLLECTION = 10  # builds


def _run(site: WarmSite, request: Any, started: float, skip: bool) -> tuple[Any, dict]:
    """One build in a fork of the holder; its answer and what it reported (the fingerprint; the list pages' keys
    and reads, the templates' dependencies and the phases: each {} when not reported as one)."""
    read_end, write_end = os.pipe()
    with contextlib.suppress(OSError):
        fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, REPORT_BYTES)
    try:
        answer = run_confined_build(lambda: _build(site, skip, write_end, read_end),
                                    request.timeout - (time.monotonic() - started))
        # Written before the build exited; not waited for (a process it left may still hold the pipe).
        os.set_blocking(read_end, False)
        try:
            report = json.loads(os.read(read_end, REPORT_BYTES).decode() or "null")
        except (BlockingIOError, ValueError):
            report = None
        if not isinstance(report, dict):
            report = {}
        if isinstance(report.get("scheduled"), list):
            answer = dataclasses.replace(answer, scheduled=report["scheduled"])
        for part in ("lists", "reads", "templates", "phases"):
            if not isinstance(report.get(part), dict):
                report[part] = {}
    finally:
        os.close(read_end)
        os.close(write_end)
    return answer, report


def _build(site: WarmSite, skip: bool, report_fd: int, read_end: int) -> int:
    """In the fork: `nikola build`, leaving out the tasks of unchanged posts where that is exact."""
    from pipeline.build import runner

    for fd in (read_end, *_HOLDER_FDS):  # what the build (and what it starts) has no business with
        os.close(fd)
    nikola = site.doit_nikola.nikola
    skips = Skips(nikola, site.unchanged if skip else [], site.known if skip else set())
    if skips.candidates:
        skips.install()
    lists = ListPages(skips, site.list_keys if skip else {}, site.twins if skip else {}, site.list_reads)
    if site.plugins_of_its_own or not lists.install():
        lists.keys = {}
    code = runner.run_build(site.doit_nikola, keep=skips.targets)
    if code != 0:
        return code
    fingerprint = site_fingerprint(nikola)
    if skips.skipped or lists.left_out or lists.feeds_left_out:
        print(f"pequod: {len(skips.skipped)} unchanged post(s) left out, {lists.left_out} unchanged list page(s) "
              f"left out, {lists.feeds_left_out} unchanged feed(s) left out ({len(skips.targets)} outputs kept)",
              flush=True)
        if fingerprint != site.fingerprint:
            return AGAIN
    phases = {**runner.PHASES, "posts_left_out": len(skips.skipped), "lists_left_out": lists.left_out,
              "feeds_left_out": lists.feeds_left_out}
    report = {"fingerprint": fingerprint, "scheduled": runner.scheduled(), "lists": lists.keys,
              "reads": lists.reads, "phases": phases, "templates": _template_deps(nikola)}
    capacity = fcntl.fcntl(report_fd, fcntl.F_GETPIPE_SZ)
    data = json.dumps(report).encode()
    if len(data) > capacity:  # the next build generates every list page
        data = json.dumps({**report, "lists": {}, "reads": {}, "templates": {}}).encode()
    os.write(report_fd, data[:capacity])  # within the pipe's buffer: never blocks
    return 0


def _template_deps(nikola: Any) -> dict:
    """What the template system found each template to depend on (Mako's `template_deps` cache): a build works
    it out again for every page template (parsing each template and what it includes) unless the holder keeps
    it. Templates do not change between the builds of one holder (a theme or template change is a clean build
    in a fresh holder)."""
    cache = getattr(nikola.template_system, "cache", None)
    return dict(cache) if isinstance(cache, dict) else {}


def _keep_template_deps(nikola: Any, reported: dict) -> None:
    """Keep in the holder what the build reported of _template_deps (names and paths only: nothing to run)."""
    cache = getattr(nikola.template_system, "cache", None)
    if isinstance(cache, dict):
        cache.update({name: deps for name, deps in list(reported.items())[:1000]
                      if isinstance(name, str) and isinstance(deps, list)
                      and all(isinstance(dep, str) for dep in deps)})


def _load_templates(nikola: Any) -> None:
    """Load into the holder the Mako templates the last build reported (_keep_template_deps): each build's fork
    would compile them again (Mako keeps what it compiled in the process, and its module files in cache/ go
    with the build that wrote them, see pipeline.build.work_tree). Done as part of a build (before its fork),
    as the module files are written into the work tree; a template that fails to load is left to the build."""
    system = nikola.template_system
    lookup, cache = getattr(system, "lookup", None), getattr(system, "cache", None)
    if not isinstance(cache, dict) or type(lookup).__module__ != "mako.lookup":
        return
    collection = lookup._collection
    for name, deps in list(cache.items())[:1000]:
        for uri in (name, *(lookup.filename_to_uri(dep).lstrip("/") for dep in deps)):
            if uri not in collection:
                with contextlib.suppress(Exception):
                    lookup.get_template(uri)


REPORT_BYTES = 1 << 20  # the report's pipe is made this large where Linux allows it (1 MiB unprivileged)


def process_traits(pid: int) -> tuple[int, str, bool] | None:
    """(threads, caught-signal mask, has POSIX timers) of a process, from /proc; None when it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as handle:
            fields = dict(line.split(":", 1) for line in handle if ":" in line)
        with open(f"/proc/{pid}/timers", encoding="ascii", errors="replace") as handle:
            timers = bool(handle.read().strip())
    except OSError:
        return None
    return int(fields.get("Threads", "0").strip() or 0), fields.get("SigCgt", "").strip(), timers


class HolderClient:
    """The worker's side: a holder process for one kind of request (site, confinement, environment)."""

    def __init__(self, key: str, request: Any) -> None:
        self.key = key
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

        def run_holder() -> int:
            parent.close()
            return serve(child, request)

        self.pid = fork_call(run_holder)
        child.close()
        self.sock = parent
        self.sock.settimeout(30)
        # The holder says it is ready before it runs any site code: what it looks like then is the baseline.
        with contextlib.suppress(OSError):
            self.sock.recv(16)
        self.baseline = process_traits(self.pid)

    def left_running(self) -> str | None:
        """What site code left in the holder that could act between builds (read from /proc, not asked of
        the holder, which runs site code), or None."""
        now = process_traits(self.pid)
        if now is None or self.baseline is None:
            return "the site holder could not be inspected"
        threads, caught, timers = now
        if threads > 1:
            return f"the site's code left {threads - 1} thread(s) running in the site holder"
        if caught != self.baseline[1]:
            return "the site's code installed a signal handler in the site holder"
        if timers:
            return "the site's code left a timer in the site holder"
        return None

    def pause(self) -> None:
        """Stop the holder (SIGSTOP) until the next build: nothing of the site runs meanwhile."""
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGCONT)

    def ask(self, request: Any, log_fd: int, timeout: float) -> tuple[dict | None, int | None]:
        """Send a build; (answer, None), or (None, wait status) when the holder ended without one, or
        (None, None) on timeout (the holder is then killed)."""
        try:
            socket.send_fds(self.sock, [request.to_line().encode()], [log_fd])
        except OSError:
            return None, self._reap()
        self.sock.settimeout(max(timeout, 1.0))
        try:
            data = self.sock.recv(MAX_MESSAGE)
        except TimeoutError:
            self.kill()
            return None, None
        except OSError:
            data = b""
        if not data:
            return None, self._reap()
        try:
            answer = json.loads(data)
        except ValueError:
            answer = None
        return (answer if isinstance(answer, dict) else {"invalid": repr(data[:80])}), None

    def _reap(self) -> int:
        _pid, status = os.waitpid(self.pid, 0)
        self.pid = 0
        self.sock.close()
        return status

    def alive(self) -> bool:
        return self.pid != 0

    def kill(self) -> None:
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self._reap()

    def stop(self) -> None:
        """Ask the holder to end (it has no build running between requests)."""
        if self.pid:
            self.resume()
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_WR)
            self.sock.settimeout(5)
            with contextlib.suppress(OSError):
                self.sock.recv(16)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self._reap()
