"""Everything the pipeline asks of git: the remote head, fetching, checking out a commit."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import git

from pipeline.config import redact_url
from pipeline.errors import GitError

log = logging.getLogger(__name__)

# Nikola's incremental build state lives in the work tree; `git clean` must keep it.
BUILD_STATE = ("/output", "/cache", "/.doit.db*")
_GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_SSH_COMMAND": "ssh -o BatchMode=yes"}


def _message(exc: git.GitCommandError) -> str:
    """git's own explanation: its fatal/error lines (with what follows them), else the last line."""
    stderr = (exc.stderr or "").strip().removeprefix("stderr:").strip(" '\n")
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for index, line in enumerate(lines):
        if line.startswith(("fatal:", "error:")):
            return " ".join(lines[index:index + 3])
    return lines[-1] if lines else f"git exited with status {exc.status}"


def local_path(url: str) -> str | None:
    """The repository's path when the remote is on this machine (file:// or a plain path)."""
    return url.removeprefix("file://") if url.startswith(("file://", "/")) else None


class GitSource:
    """A remote branch and the local clone the pipeline builds from."""

    def __init__(self, url: str, branch: str, clone_dir: Path, timeout: float):
        self.url = url
        self.branch = branch
        self.clone_dir = clone_dir
        self.timeout = timeout

    @functools.cached_property
    def _env(self) -> dict[str, str]:
        """git's environment, computed once: the config file it may name is written here."""
        env = dict(_GIT_ENV)
        path = local_path(self.url)
        if path:
            # A local remote mounted into the container belongs to another user, and git refuses
            # such repositories unless its global config names them safe (the environment and -c
            # do not count). This global config names just that path and includes the user's own.
            config = self.clone_dir.parent / ".gitconfig-pequod"
            config.parent.mkdir(parents=True, exist_ok=True)
            text = f"[include]\n\tpath = ~/.gitconfig\n[safe]\n\tdirectory = {path}\n"
            config.write_text(text)
            env["GIT_CONFIG_GLOBAL"] = str(config)
        return env

    @property
    def _ref(self) -> str:
        return f"refs/heads/{self.branch}"

    def remote_head(self) -> str | None:
        """The commit the remote branch points at, or None when the branch does not exist.

        This is the cheap check: one `git ls-remote`, no objects transferred.
        """
        cmd = git.Git()
        cmd.update_environment(**self._env)
        try:
            out = cmd.ls_remote(self.url, self._ref, kill_after_timeout=self.timeout)
        except git.GitCommandError as exc:
            raise GitError(f"cannot reach {redact_url(self.url)}: {_message(exc)}") from None
        for line in out.splitlines():
            sha, _, ref = line.partition("\t")
            if ref == self._ref:
                return sha
        return None

    def _repo(self) -> git.Repo:
        if (self.clone_dir / ".git").is_dir():
            repo = git.Repo(self.clone_dir)
        else:
            self.clone_dir.mkdir(parents=True, exist_ok=True)
            repo = git.Repo.init(self.clone_dir)
        repo.git.update_environment(**self._env)
        with repo.config_writer() as config:
            # The remote URL may change between runs (a new SITE_REPO): always set it.
            if not config.has_section('remote "origin"'):
                config.add_section('remote "origin"')
            config.set_value('remote "origin"', "url", self.url)
        return repo

    def fetch(self) -> str:
        """Fetch the branch (force-pushes included) and return the commit it points at now."""
        repo = self._repo()
        tracking = f"refs/remotes/origin/{self.branch}"
        try:
            repo.git.fetch(
                "--no-tags", "--prune", "origin", f"+{self._ref}:{tracking}",
                kill_after_timeout=self.timeout,
            )
            return repo.git.rev_parse("--verify", f"{tracking}^{{commit}}")
        except git.GitCommandError as exc:
            raise GitError(f"cannot fetch {self.branch} from {redact_url(self.url)}: {_message(exc)}") from None

    def checkout(self, commit: str) -> None:
        """Make the work tree exactly `commit`, keeping Nikola's build state."""
        repo = self._repo()
        try:
            repo.git.checkout("--force", "--detach", commit, kill_after_timeout=self.timeout)
            excludes = [arg for pattern in BUILD_STATE for arg in ("-e", pattern)]
            repo.git.clean("-ffdx", *excludes, kill_after_timeout=self.timeout)
        except git.GitCommandError as exc:
            raise GitError(f"cannot check out {commit[:12]}: {_message(exc)}") from None

    def changes(self, old: str, new: str) -> list[tuple[str, str]] | None:
        """(status letter, path) of each file changed between two commits; None if `old` is gone."""
        repo = self._repo()
        try:
            out = repo.git.diff("--name-status", "--no-renames", old, new, kill_after_timeout=self.timeout)
        except git.GitCommandError:
            return None
        changes = []
        for line in out.splitlines():
            status, _, path = line.partition("\t")
            changes.append((status[:1], path))
        return changes
