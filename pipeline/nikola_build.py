"""Building one commit of the site with Nikola, incrementally where that is safe."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline import sandbox, tree
from pipeline.build_protocol import BuildRequest
from pipeline.build_worker import BuildWorker
from pipeline.errors import BuildError, short
from pipeline.files import replace_file

log = logging.getLogger(__name__)

# Changes to these can alter every page in ways Nikola's dependency tracking does not see
# (templates, plugins, the configuration module's code): they get a clean build.
CLEAN_BUILD_PATHS = ("conf.py", "themes/", "templates/", "plugins/", "shortcodes/", "messages/")
LOG_TAIL_LINES = 30
LOG_LINE_CHARS = 500  # a line of the tail a user sees
LOG_READ_BYTES = 256 << 10  # of a build's log, what the publisher reads: its end



@dataclass(frozen=True)
class BuildState:
    """What the work tree's build state (output/, cache/, .doit.db) was last produced from."""

    commit: str
    ok: bool
    started_ns: int = 0  # when that build started (time.time_ns()): what changed since was written by it or after
    finished_ns: int = 0  # when it ended (and what it started was ended): nothing may change after


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


def refuse_escaping_symlinks(root: Path, what: str, skip: tuple[str, ...] = ()) -> None:
    """A symlink out of the site (to /proc/self/environ, /etc/passwd, ..) fails the build, named."""
    found = sandbox.escaping_symlinks(root, skip)
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
    pipeline.sandbox): the worker makes the work tree `site_dir` from the commit's files in `export_dir`
    (pipeline.work_tree); the build may write only `site_dir` and `tmp_dir`, and sees no secret."""

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
        self.worker = BuildWorker(sandbox.build_environment(os.environ, home=self.tmp_dir, tmpdir=self.tmp_dir),
                                  socket_path)
        self.last_warm = False  # whether the last build started in an already warm worker
        self.last_max_rss_kb = 0  # peak memory of the last build
        self.last_site = ""  # "warm": the site stayed loaded since the build before; "fresh": loaded for it
        self.last_reason: str | None = None  # why the last build was a clean one (None: incremental)
        self.last_output = "output"  # the output folder the last build's configuration named
        self.last_scheduled: list[tuple[float, str, str]] = []  # posts held back until due: (UNIX time, source, title)

    def previous_state(self) -> BuildState | None:
        try:
            data = json.loads(self._state_file.read_text())
            return BuildState(commit=str(data["commit"]), ok=bool(data["ok"]),
                              started_ns=int(data.get("started_ns", 0)), finished_ns=int(data.get("finished_ns", 0)))
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
        (they let the build worker keep the site loaded, see pipeline.site_holder); None when not known."""
        previous = self.previous_state()
        if previous is None or not previous.ok:
            reason = reason or "the previous build failed"
        self.last_reason = reason
        base = previous.commit if previous is not None and reason is None else None
        started_ns = time.time_ns()
        # Until it succeeded: an interrupted build is not trusted.
        self._record_state(BuildState(commit, ok=False, started_ns=started_ns))
        refuse_escaping_symlinks(self.export_dir, "the site repository")
        env = sandbox.build_environment(os.environ, home=self.tmp_dir, tmpdir=self.tmp_dir,
                                        extra={"SITE_COMMIT": commit, "NIKOLA_MONO": "1"})
        request = BuildRequest(str(self.site_dir), str(log_path), self.timeout, env, asdict(self.limits),
                               [*sandbox.SYSTEM_READ, *sandbox.python_paths()],
                               [str(self.site_dir), str(self.tmp_dir), *sandbox.DEVICES],
                               commit=commit, changes=None if base is None else changes, base=base,
                               fresh=reason is not None, export=str(self.export_dir), reason=reason,
                               started_ns=previous.started_ns if previous else 0,
                               finished_ns=previous.finished_ns if previous else 0)
        try:
            answer, self.last_warm = self.worker.build(request)
        except BuildError:
            self._record_state(BuildState(commit, ok=False))
            raise
        self.last_max_rss_kb = answer.max_rss_kb
        self.last_site = answer.site
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
        self._record_state(BuildState(commit, ok=True, started_ns=started_ns, finished_ns=time.time_ns()))
        return output
