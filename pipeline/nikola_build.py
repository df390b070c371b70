"""Building one commit of the site with Nikola, incrementally where that is safe."""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import BuildError
from pipeline.proc import BuildWorker

log = logging.getLogger(__name__)

# Changes to these can alter every page in ways Nikola's dependency tracking does not see
# (templates, plugins, the configuration module's code): they get a clean build.
CLEAN_BUILD_PATHS = ("conf.py", "themes/", "templates/", "plugins/", "shortcodes/", "messages/")
LOG_TAIL_LINES = 30


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


def log_tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


class NikolaBuilder:
    def __init__(self, site_dir: Path, timeout: float, memory_limit_mb: int | None = None):
        self.site_dir = site_dir
        self.timeout = timeout
        self.memory_limit_mb = memory_limit_mb
        self.worker = BuildWorker()
        self.last_warm = False  # whether the last build started in an already warm worker
        self.last_max_rss_kb = 0  # peak memory of the last build

    @property
    def output_dir(self) -> Path:
        return self.site_dir / "output"

    @property
    def _state_file(self) -> Path:
        # Inside .git so that `git clean` and checkouts never touch it.
        return self.site_dir / ".git" / "pequod-build-state.json"

    def previous_state(self) -> BuildState | None:
        try:
            data = json.loads(self._state_file.read_text())
            return BuildState(commit=str(data["commit"]), ok=bool(data["ok"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _record_state(self, state: BuildState) -> None:
        tmp = self._state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"commit": state.commit, "ok": state.ok}))
        os.replace(tmp, self._state_file)

    def reset(self) -> None:
        """Forget Nikola's incremental state so the next build is a clean one."""
        for name in ("output", "cache"):
            shutil.rmtree(self.site_dir / name, ignore_errors=True)
        for path in self.site_dir.glob(".doit.db*"):
            path.unlink()

    def build(self, commit: str, *, clean: bool, log_path: Path) -> str:
        """Build the checked-out `commit` into output/; return the build log. Raises BuildError."""
        if clean:
            self.reset()
        request = {"site_dir": str(self.site_dir), "log_path": str(log_path), "timeout": self.timeout,
                   "env": {"SITE_COMMIT": commit, "NIKOLA_MONO": "1"}, "memory_limit_mb": self.memory_limit_mb}
        try:
            answer, self.last_warm = self.worker.build(request)
        except BuildError:
            self._record_state(BuildState(commit, ok=False))
            raise
        self.last_max_rss_kb = int(answer.get("max_rss_kb") or 0)
        output = log_path.read_text(errors="replace") if log_path.exists() else ""
        status = answer["status"]
        if answer["timed_out"] or status != 0:
            self._record_state(BuildState(commit, ok=False))
            if answer["timed_out"]:
                message = f"nikola build timed out after {self.timeout:g} s"
            elif status == -9:
                message = "nikola build was killed (signal 9; out of memory?)"
            elif "MemoryError" in output:
                message = "nikola build ran out of memory"
            else:
                message = f"nikola build failed with status {status}"
            raise BuildError(message, log_tail(output))
        self._record_state(BuildState(commit, ok=True))
        return output
