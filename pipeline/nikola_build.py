"""Building one commit of the site with Nikola, incrementally where that is safe."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline import sandbox, tree
from pipeline.build_protocol import BuildRequest
from pipeline.build_worker import BuildWorker
from pipeline.errors import BuildError
from pipeline.files import replace_file

log = logging.getLogger(__name__)

# Changes to these can alter every page in ways Nikola's dependency tracking does not see
# (templates, plugins, the configuration module's code): they get a clean build.
CLEAN_BUILD_PATHS = ("conf.py", "themes/", "templates/", "plugins/", "shortcodes/", "messages/")
LOG_TAIL_LINES = 30
MIN_FREE_BYTES = 64 << 20  # less free on the build's volume before a build: Nikola's state goes (a clean build)
# Nikola's incremental state in the work tree (kept between builds and by `git clean`; removed for a clean build).
NIKOLA_STATE = ("output", "cache", ".doit.db*")


@dataclass(frozen=True)
class BuildState:
    """What the work tree's build state (output/, cache/, .doit.db) was last produced from."""

    commit: str
    ok: bool


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
    return "\n".join(text.rstrip().splitlines()[-lines:])


@dataclass(frozen=True)
class BuildLimits:
    memory_mb: int = 2048  # address space
    file_mb: int = 100  # any one file written
    processes: int = 128  # of the site's user, the server's threads included


class NikolaBuilder:
    """Builds the work tree `site_dir` with the warm build worker, sandboxed (see pipeline.sandbox):
    it may write only `site_dir` and `tmp_dir`, and sees no secret."""

    def __init__(self, site_dir: Path, timeout: float, limits: BuildLimits | None = None,
                 tmp_dir: Path | None = None, state_file: Path | None = None):
        self.site_dir = site_dir
        self.timeout = timeout
        self.limits = limits or BuildLimits()
        self.tmp_dir = tmp_dir or site_dir.with_name(site_dir.name + ".tmp")
        self._state_file = state_file or site_dir.with_name("build-state.json")
        self.worker = BuildWorker(sandbox.build_environment(os.environ, home=self.tmp_dir, tmpdir=self.tmp_dir))
        self.last_warm = False  # whether the last build started in an already warm worker
        self.last_max_rss_kb = 0  # peak memory of the last build
        self.last_site = ""  # "warm": the site stayed loaded since the build before; "fresh": loaded for it
        self.last_output = "output"  # the output folder the last build's configuration named
        self.last_scheduled: list[tuple[float, str, str]] = []  # posts held back until due: (UNIX time, source, title)

    @property
    def output_dir(self) -> Path:
        return self.site_dir / "output"

    def previous_state(self) -> BuildState | None:
        try:
            data = json.loads(self._state_file.read_text())
            return BuildState(commit=str(data["commit"]), ok=bool(data["ok"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _record_state(self, state: BuildState) -> None:
        replace_file(self._state_file, json.dumps({"commit": state.commit, "ok": state.ok}))

    def forget(self) -> None:
        """After a failure outside the build (its output could not be published): the next build is clean."""
        previous = self.previous_state()
        with contextlib.suppress(OSError):
            self._record_state(BuildState(previous.commit if previous else "", ok=False))

    def reset(self) -> None:
        """Forget Nikola's incremental state so the next build is a clean one."""
        if not self.site_dir.is_dir():
            return
        for pattern in NIKOLA_STATE:
            for path in self.site_dir.glob(pattern):
                tree.remove_tree(path)

    def prepare(self) -> None:
        """Before a checkout: the build's HOME and TMPDIR start empty, and after a build that failed (it may
        have filled the build volume) Nikola's state goes too, so the checkout and the next build have room."""
        tree.empty_dir(self.tmp_dir)
        previous = self.previous_state()
        if previous is None or not previous.ok or self._short_of_space():
            self.reset()

    def _short_of_space(self) -> bool:
        """Whether the build's volume is nearly full (a build filled it, and its state could not be recorded)."""
        try:
            usage = shutil.disk_usage(self.site_dir.parent)
        except OSError:
            return False
        return usage.free < min(MIN_FREE_BYTES, usage.total // 10)

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

    def build(self, commit: str, *, clean: bool, log_path: Path, changes: list[str] | None = None) -> str:
        """Build the checked-out `commit` into output/; return the build log. Raises BuildError.

        `changes`: the paths changed since the last successful build (they let the build worker keep the site
        loaded, see pipeline.site_holder); None when not known."""
        previous = self.previous_state()
        base = previous.commit if previous is not None and previous.ok and not clean else None
        self._record_state(BuildState(commit, ok=False))  # until it succeeded: an interrupted build is not trusted
        refuse_escaping_symlinks(self.site_dir, "the site repository", skip=("output", "cache"))
        if clean:
            self.reset()
        tree.empty_dir(self.tmp_dir)
        env = sandbox.build_environment(os.environ, home=self.tmp_dir, tmpdir=self.tmp_dir,
                                        extra={"SITE_COMMIT": commit, "NIKOLA_MONO": "1"})
        request = BuildRequest(str(self.site_dir), str(log_path), self.timeout, env, asdict(self.limits),
                               [*sandbox.SYSTEM_READ, *sandbox.python_paths()],
                               [str(self.site_dir), str(self.tmp_dir), *sandbox.DEVICES],
                               commit=commit, changes=None if base is None else changes, base=base, fresh=clean)
        try:
            answer, self.last_warm = self.worker.build(request)
        except BuildError:
            self._record_state(BuildState(commit, ok=False))
            raise
        self.last_max_rss_kb = answer.max_rss_kb
        self.last_site = answer.site
        output = log_path.read_text(errors="replace") if log_path.exists() else ""
        status = answer.status
        if answer.timed_out or status != 0:
            self._record_state(BuildState(commit, ok=False))
            if answer.timed_out:
                message = f"nikola build timed out after {self.timeout:g} s"
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
        self._record_state(BuildState(commit, ok=True))
        return output
