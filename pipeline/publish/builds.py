"""Building one commit of the site with Nikola, incrementally where that is safe: what the publisher asks of the
build worker (NikolaBuilder), and the worker as the publisher reaches it (BuildWorker: the builder's worker on its
socket, or a process of the watcher). The worker's side is pipeline.build.worker; what they exchange,
pipeline.build.protocol."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import select
import signal
import stat
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline import proc, tree
from pipeline.build import protocol
from pipeline.build.protocol import BuildAnswer, BuildRequest
from pipeline.errors import BuildError, short
from pipeline.files import replace_file

log = logging.getLogger(__name__)

# Changes to these can alter every page in ways Nikola's dependency tracking does not see
# (templates, plugins, the configuration module's code): they get a clean build.
CLEAN_BUILD_PATHS = ("conf.py", "themes/", "templates/", "plugins/", "shortcodes/", "messages/")
LOG_TAIL_LINES = 30
LOG_LINE_CHARS = 500  # a line of the tail a user sees
LOG_READ_BYTES = 256 << 10  # of a build's log, what the publisher reads: its end
# Process groups of running workers (in the watcher), so that a shutdown can stop a build in progress.
running_groups: set[int] = set()



@dataclass(frozen=True)
class BuildState:
    """What the work tree's build state (output/, cache/, .doit.db) was last produced from."""

    commit: str
    ok: bool
    started_ns: int = 0  # when that build started (time.time_ns()): what changed since was written by it or after
    finished_ns: int = 0  # when it ended (and what it started was ended): nothing may change after
    after_ns: int = 0  # when the build before it ended (nothing of the site ran between): 0 when not known


def clean_build_reason(previous: BuildState | None, changes: list[tuple[str, str]] | None) -> str | None:
    """Why the next build must start from scratch, or None when an incremental build is exact."""
    if previous is None:
        return "no previous build"
    if not previous.ok:
        return "the previous build failed"
    if changes is None:
        return "the previous commit is no longer known"
    for _status, path in changes:
        if path in CLEAN_BUILD_PATHS or path.startswith(CLEAN_BUILD_PATHS):
            return f"{path} changed"
    return None


def escaping_symlinks(root: Path, skip: Iterable[str] = ()) -> list[tuple[str, str]]:
    """(path relative to root, link text) of every symlink under `root` whose target is outside it. Iterative
    (a pushed tree chooses its depth); a link whose target cannot be resolved counts as escaping."""
    real_root = os.path.realpath(root)
    found = []
    skipped = set(skip)
    todo = [str(root)]
    while todo:
        current = todo.pop()
        with os.scandir(current) as scan:
            for entry in scan:
                if current == str(root) and entry.name in skipped:
                    continue
                if entry.is_symlink():
                    try:
                        real = os.path.realpath(entry.path)
                    except (OSError, RecursionError):
                        real = "/"
                    if real != real_root and not real.startswith(real_root + os.sep):
                        found.append((os.path.relpath(entry.path, root), os.readlink(entry.path)))
                elif entry.is_dir(follow_symlinks=False):
                    todo.append(entry.path)
    return sorted(found)


def refuse_escaping_symlinks(root: Path, what: str, skip: tuple[str, ...] = ()) -> None:
    """A symlink out of the site (to /proc/self/environ, /etc/passwd, ..) fails the build, named."""
    found = escaping_symlinks(root, skip)
    if found:
        path, target = found[0]
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise BuildError(f"{what} has a symlink pointing outside the site: {path} -> {target}{more}; "
                         "remove it or make it point inside the site", "")


def log_tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` lines of `text`, each cut to LOG_LINE_CHARS; the error line (see error_line) first when
    it is not among them."""
    all_lines = text.rstrip().splitlines()
    tail = [short(line, LOG_LINE_CHARS) for line in all_lines[-lines:]]
    error = error_line(all_lines)
    if error is not None and error not in tail:
        tail = [error, "…", *tail]
    return "\n".join(tail)


# Nikola's and doit's own error lines ("[2026-…] ERROR: Nikola: …", "ERROR: Task …"), else a Python exception's.
_ERROR = re.compile(r"\bERROR\b|^[A-Za-z_][\w.]*(Error|Exception|Exit)\b(: |$)")


def error_line(lines: list[str]) -> str | None:
    """The line that names the build's error: the last of Nikola's or doit's ERROR lines, else the last line of
    a Python exception; cut to LOG_LINE_CHARS."""
    found = [line for line in lines if _ERROR.search(line)]
    errors = [line for line in found if "ERROR" in line] or found
    return short(errors[-1].strip(), LOG_LINE_CHARS) if errors else None


def read_log_tail(path: Path, limit: int = LOG_READ_BYTES) -> str:
    """The last `limit` bytes of a build's log (whatever its size: a build may print without end), read without
    following a link; the first, partial line dropped."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        size = os.fstat(fd).st_size
        start = max(0, size - limit)
        data = os.pread(fd, limit, start)
    finally:
        os.close(fd)
    text = data.decode("utf-8", "replace")
    return text.partition("\n")[2] if start else text


@dataclass(frozen=True)
class BuildLimits:
    memory_mb: int = 2048  # address space
    file_mb: int = 100  # any one file written
    processes: int = 128  # of the site's user, the server's threads included


class NikolaBuilder:
    """Builds a commit with the warm build worker (in the builder, or a process of this one), sandboxed (see
    pipeline.build.sandbox): the worker makes the work tree `site_dir` from the commit's files in `export_dir`
    (pipeline.build.work_tree); the build may write only `site_dir` and `tmp_dir`, and sees no secret."""

    def __init__(self, site_dir: Path, timeout: float, limits: BuildLimits | None = None,
                 tmp_dir: Path | None = None, state_file: Path | None = None, export_dir: Path | None = None,
                 socket_path: Path | None = None):
        self.site_dir = site_dir
        self.timeout = timeout
        self.limits = limits or BuildLimits()
        self.tmp_dir = tmp_dir or site_dir.with_name(site_dir.name + ".tmp")
        self.export_dir = export_dir or site_dir.with_name(site_dir.name + ".export")
        self._state_file = state_file or site_dir.with_name("build-state.json")
        self.log_copy: Path | None = None  # where the end of each build's log is also written (the publisher's)
        self.worker = BuildWorker(protocol.build_environment(os.environ, home=self.tmp_dir, tmpdir=self.tmp_dir),
                                  socket_path)
        self.last_warm = False  # whether the last build started in an already warm worker
        self.last_max_rss_kb = 0  # peak memory of the last build
        self.last_site = ""  # "warm": the site stayed loaded since the build before; "fresh": loaded for it
        self.last_reason: str | None = None  # why the last build was a clean one (None: incremental)
        self.last_output = "output"  # the output folder the last build's configuration named
        self.last_scheduled: list[tuple[float, str, str]] = []  # posts held back until due: (UNIX time, source, title)
        self.last_phases: dict[str, float] = {}  # where the last build's time went (BuildAnswer.phases)

    def previous_state(self) -> BuildState | None:
        try:
            data = json.loads(self._state_file.read_text())
            return BuildState(commit=str(data["commit"]), ok=bool(data["ok"]),
                              started_ns=int(data["started_ns"]), finished_ns=int(data["finished_ns"]),
                              after_ns=int(data.get("after_ns") or 0))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _record_state(self, state: BuildState) -> None:
        self._state_file.parent.mkdir(parents=True, exist_ok=True)
        replace_file(self._state_file, json.dumps(asdict(state)))

    def forget(self) -> None:
        """After a failure outside the build (its output could not be published): the next build is clean."""
        previous = self.previous_state()
        with contextlib.suppress(OSError):
            self._record_state(BuildState(previous.commit if previous else "", ok=False))

    def open_output(self, folder: str) -> int:
        """The output folder the build's configuration names (OUTPUT_FOLDER), opened without following a link:
        it must be a real directory inside the work tree. Raises BuildError naming what is wrong."""
        parts = [part for part in folder.split("/") if part not in ("", ".")]
        if not parts or folder.startswith("/") or ".." in parts:
            raise BuildError(f"OUTPUT_FOLDER = {tree.shown(folder)!r}: the output must be a folder inside the site "
                             "(e.g. 'output')", "")
        try:
            return tree.open_beneath(self.site_dir, folder)
        except tree.TreeError as exc:
            raise BuildError(f"the build output {exc}; nothing was published", "") from None

    def build(self, commit: str, *, reason: str | None, log_path: Path, changes: list[str] | None = None) -> str:
        """Build `commit` (checked out in `export_dir`) into output/; return the end of its log (read_log_tail).
        Raises BuildError.

        `reason`: why the build must be a clean one (None: incremental, if the worker finds Nikola's state fit to
        keep; `last_reason` tells what it did). `changes`: the paths changed since the last successful build
        (they let the build worker keep the site loaded, see pipeline.build.site_holder); None when not known."""
        previous = self.previous_state()
        if previous is None or not previous.ok:
            reason = reason or "the previous build failed"
        self.last_reason = reason
        base = previous.commit if previous is not None and reason is None else None
        started_ns = time.time_ns()
        # Until it succeeded: an interrupted build is not trusted.
        self._record_state(BuildState(commit, ok=False, started_ns=started_ns))
        refuse_escaping_symlinks(self.export_dir, "the site repository")
        env = protocol.build_environment(os.environ, home=self.tmp_dir, tmpdir=self.tmp_dir,
                                        extra={"SITE_COMMIT": commit, "NIKOLA_MONO": "1"})
        request = BuildRequest(str(self.site_dir), str(log_path), self.timeout, env, asdict(self.limits),
                               [*protocol.SYSTEM_READ, *protocol.python_paths()],
                               [str(self.site_dir), str(self.tmp_dir), *protocol.DEVICES],
                               commit=commit, changes=None if base is None else changes, base=base,
                               fresh=reason is not None, export=str(self.export_dir), reason=reason,
                               started_ns=previous.started_ns if previous else 0,
                               finished_ns=previous.finished_ns if previous else 0,
                               after_ns=previous.after_ns if previous else 0)
        try:
            answer, self.last_warm = self.worker.build(request)
        except BuildError:
            self._record_state(BuildState(commit, ok=False))
            raise
        self.last_max_rss_kb = answer.max_rss_kb
        self.last_site = answer.site
        self.last_phases = dict(answer.phases)
        self.last_reason = answer.reason or None
        output = read_log_tail(log_path)
        if self.log_copy is not None:
            with contextlib.suppress(OSError):
                replace_file(self.log_copy, output)
        status = answer.status
        if answer.timed_out or status != 0:
            self._record_state(BuildState(commit, ok=False))
            if answer.timed_out:
                message = f"nikola build timed out after {self.timeout:g} s"
            elif answer.note.startswith("the work tree"):
                message = answer.note
            elif status == -9:
                message = "nikola build was killed (signal 9; out of memory?)"
            elif "MemoryError" in output:
                message = f"nikola build ran out of memory (limit {self.limits.memory_mb} MB of address space)"
            elif status == -25:  # SIGXFSZ
                message = f"nikola build wrote a file larger than {self.limits.file_mb} MB"
            else:
                message = f"nikola build failed with status {status}"
            raise BuildError(message, log_tail(output))
        self.last_output = answer.output
        self.last_scheduled = [(due, source, title) for due, source, title in answer.scheduled if math.isfinite(due)]
        self._record_state(BuildState(commit, ok=True, started_ns=started_ns, finished_ns=time.time_ns(),
                                      after_ns=previous.finished_ns if previous is not None and previous.ok else 0))
        return output


# -- the build worker, as the publisher reaches it -------------------------------------------------
def terminate_running() -> None:
    """SIGTERM to running workers (a shutdown): each ends its build and what the build started."""
    for pgid in list(running_groups):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)


class BuildWorker:
    """The build worker, kept between builds (pipeline.build.worker): `python -m pipeline.build.worker` started with
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
            self.proc = proc.start([sys.executable, "-m", "pipeline.build.worker"], env=self.env)
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
