"""Everything the pipeline asks of git: the remote head, fetching, checking out a commit."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import shutil
from pathlib import Path

import git
from git.refs.symbolic import SymbolicReference

from pipeline import tree
from pipeline.config import redact_url
from pipeline.errors import GitError, short

log = logging.getLogger(__name__)

_GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_SSH_COMMAND": "ssh -o BatchMode=yes"}


def _message(exc: git.GitCommandError) -> str:
    """git's own explanation: its fatal/error lines (with what follows them), else the last line."""
    stderr = (exc.stderr or "").strip().removeprefix("stderr:").strip(" '\n")
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for index, line in enumerate(lines):
        if line.startswith(("fatal:", "error:")):
            return short(" ".join(lines[index:index + 3]))
    return short(lines[-1]) if lines else f"git exited with status {exc.status}"


MAX_BRANCHES = 1000  # of a remote, the branches looked at (by name)
_UNREAD = object()  # a local repository whose refs could not be read directly


def local_path(url: str) -> str | None:
    """The repository's path when the remote is on this machine (file:// or a plain path)."""
    return url.removeprefix("file://") if url.startswith(("file://", "/")) else None


@dataclasses.dataclass
class TreeFacts:
    largest: str = ""
    size: int = 0
    deepest: str = ""
    depth: int = 0  # directories above the deepest file
    files: int = 0
    longest: str = ""
    length: int = 0  # bytes of the longest path


class GitSource:
    """A remote branch and the local clone the pipeline builds from.

    The repository (`git_dir`) lives outside the work tree (`clone_dir`): a build may write in its work
    tree, never in git's hooks or configuration. Fetches are shallow (the newest commit only), so what
    is fetched is bounded by what is built, not by the branch's history.
    """

    def __init__(self, url: str, branch: str, clone_dir: Path, timeout: float, git_dir: Path | None = None):
        self.url = url
        self.branch = branch
        self.clone_dir = clone_dir
        self.git_dir = git_dir or clone_dir.with_name(clone_dir.name + ".git")
        self.timeout = timeout
        self._remote_repo: git.Repo | None = None  # a repository on this machine, its refs read directly
        self._remote_path: Path | None = None

    @functools.cached_property
    def _env(self) -> dict[str, str]:
        """git's environment, computed once: the config file it may name is written here."""
        env = {**_GIT_ENV, "GIT_DIR": str(self.git_dir), "GIT_WORK_TREE": str(self.clone_dir)}
        path = local_path(self.url)
        if path:
            # A local remote mounted into the container belongs to another user, and git refuses
            # such repositories unless its global config names them safe (the environment and -c
            # do not count). This global config names just that path and includes the user's own.
            config = self.git_dir.parent / ".gitconfig-pequod"
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

        This is the cheap check, made every POLL_INTERVAL: for a repository on this machine, its ref files
        read by GitPython (loose or packed, no process started); else one `git ls-remote`, no objects
        transferred.
        """
        local = local_path(self.url)
        if local is not None:
            found = self._local_head(Path(local))
            if found is not _UNREAD:
                return found
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

    def _local_repo(self, path: Path) -> git.Repo | None:
        """The repository on this machine at `path`, opened once and kept between checks; None when it is not
        one (or no longer: moved or removed since)."""
        try:
            if self._remote_repo is None or self._remote_path != path:
                self._remote_repo, self._remote_path = git.Repo(path), path
        except (git.exc.GitError, OSError):
            self._remote_repo = None
            return None
        if not (Path(self._remote_repo.git_dir) / "HEAD").is_file():
            self._remote_repo = None
        return self._remote_repo

    def _local_head(self, path: Path) -> str | None | object:
        """The branch's commit in the local repository `path`, None when it has no such branch, or _UNREAD when
        its refs cannot be read that way (not a repository: `git ls-remote` then says what is wrong)."""
        repo = self._local_repo(path)
        if repo is None:
            return _UNREAD
        try:
            return SymbolicReference.dereference_recursive(repo, self._ref)
        except ValueError:  # GitPython's "Reference at 'refs/heads/…' does not exist"
            return None
        except (git.exc.GitError, OSError):
            self._remote_repo = None
            return _UNREAD

    def remote_branches(self, limit: int = MAX_BRANCHES) -> dict[str, str]:
        """Every branch of the remote and its commit (at most `limit`, by name): for a repository on this machine
        its ref files read by GitPython, else one `git ls-remote --heads`."""
        local = local_path(self.url)
        if local is not None:
            found = self._local_branches(Path(local), limit)
            if found is not None:
                return found
        cmd = git.Git()
        cmd.update_environment(**self._env)
        try:
            out = cmd.ls_remote("--heads", self.url, kill_after_timeout=self.timeout)
        except git.GitCommandError as exc:
            raise GitError(f"cannot reach {redact_url(self.url)}: {_message(exc)}") from None
        branches = {}
        for line in out.splitlines():
            sha, _, ref = line.partition("\t")
            if ref.startswith("refs/heads/"):
                branches[ref.removeprefix("refs/heads/")] = sha
        return dict(sorted(branches.items())[:limit])

    def _local_branches(self, path: Path, limit: int) -> dict[str, str] | None:
        """Every branch of the local repository `path` and its commit (at most `limit`, by name); None when its
        refs cannot be read that way (`git ls-remote` then)."""
        repo = self._local_repo(path)
        if repo is None:
            return None
        try:
            names = sorted(head.path for head in git.Head.iter_items(repo))[:limit]
            return {name.removeprefix("refs/heads/"): SymbolicReference.dereference_recursive(repo, name)
                    for name in names}
        except ValueError:  # a branch removed while it was read: the next check sees the rest
            return None
        except (git.exc.GitError, OSError):
            self._remote_repo = None
            return None

    def forget_branch(self) -> None:
        """Drop the fetched branch's remote-tracking ref (a preview removed): its objects may go."""
        with contextlib.suppress(git.GitCommandError):
            self._repo().git.update_ref("-d", f"refs/remotes/origin/{self.branch}", kill_after_timeout=self.timeout)

    def _repo(self) -> git.Repo:
        self.clone_dir.mkdir(parents=True, exist_ok=True)
        if (self.git_dir / "HEAD").is_file():
            repo = git.Repo(self.git_dir)
        else:
            repo = git.Repo.init(self.git_dir, bare=True)
            with repo.config_writer() as config:
                config.set_value("core", "bare", "false")
                config.set_value("core", "worktree", str(self.clone_dir))
        repo.git.update_environment(**self._env)
        with repo.config_writer() as config:
            # The remote URL may change between runs (a new SITE_REPO): always set it.
            if not config.has_section('remote "origin"'):
                config.add_section('remote "origin"')
            config.set_value('remote "origin"', "url", self.url)
            # Fetched objects stay in a pack (index-pack streams large files to disk; unpacking them into
            # loose objects would hold each whole in memory).
            config.set_value("fetch", "unpackLimit", "1")
        return repo

    def fetch(self) -> str:
        """Fetch the branch (force-pushes included) and return the commit it points at now."""
        repo = self._repo()
        tracking = f"refs/remotes/origin/{self.branch}"
        try:
            repo.git.fetch(
                "--depth", "1", "--no-tags", "--prune", "origin", f"+{self._ref}:{tracking}",
                kill_after_timeout=self.timeout,
            )
            return repo.git.rev_parse("--verify", f"{tracking}^{{commit}}")
        except git.GitCommandError as exc:
            self._remove_partial_fetch()
            raise GitError(f"cannot fetch {self.branch} from {redact_url(self.url)}: {_message(exc)}") from None

    def _remove_partial_fetch(self) -> None:
        """What an interrupted or failed fetch leaves (temporary packs, quarantine, locks)."""
        objects = self.git_dir / "objects"
        for leftover in [*objects.glob("pack/tmp_*"), *objects.glob("*/tmp_obj_*"), *objects.glob("incoming-*"),
                         *self.git_dir.glob("*.lock")]:
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)

    def drop_fetched(self) -> None:
        """Forget a fetched commit that will not be built (too large, say) and free its space: only what
        the work tree was built from stays."""
        repo = self._repo()
        try:
            repo.git.update_ref("-d", f"refs/remotes/origin/{self.branch}", kill_after_timeout=self.timeout)
            repo.git.reflog("expire", "--expire=now", "--all", kill_after_timeout=self.timeout)
            repo.git.gc("--prune=now", "--quiet", kill_after_timeout=self.timeout)
        except git.GitCommandError as exc:
            log.warning("could not free the space of a refused commit: %s", _message(exc))

    def commit_info(self, commit: str) -> tuple[str, str]:
        """(subject, author name) of a fetched commit; empty when git cannot tell."""
        try:
            out = self._repo().git.log("-1", "--format=%s%x00%an", commit, kill_after_timeout=self.timeout)
        except git.GitCommandError:
            return "", ""
        subject, _, author = out.partition("\x00")
        return subject[:300], author[:100]

    def tree_facts(self, commit: str) -> TreeFacts:
        """The largest and the most deeply nested file of `commit`, without checking it out."""
        try:
            out = self._repo().git.ls_tree("-r", "-l", "-z", "--full-tree", commit, kill_after_timeout=self.timeout,
                                           strip_newline_in_stdout=False)
        except git.GitCommandError as exc:
            raise GitError(f"cannot list {commit[:12]}: {_message(exc)}") from None
        facts = TreeFacts()
        for record in out.split("\0"):
            meta, _, path = record.partition("\t")
            fields = meta.split()
            if len(fields) != 4:
                continue
            facts.files += 1
            length = len(os.fsencode(path))  # git's bytes, also those no encoding reads (surrogate escapes)
            if length > facts.length:
                facts.longest, facts.length = path, length
            depth = path.count("/")
            if depth > facts.depth:
                facts.depth, facts.deepest = depth, path
            if fields[3].isdigit() and int(fields[3]) > facts.size:
                facts.largest, facts.size = path, int(fields[3])
        return facts

    def tree_id(self, commit: str) -> str:
        """The id of `commit`'s tree (equal trees, equal files), or "" when git cannot tell."""
        try:
            return self._repo().git.rev_parse("--verify", f"{commit}^{{tree}}", kill_after_timeout=self.timeout)
        except git.GitCommandError:
            return ""

    def checkout(self, commit: str) -> None:
        """Make the work tree (the publisher's export: no build writes it) exactly `commit`; files git does not
        change keep their modification times."""
        repo = self._repo()
        try:
            repo.git.checkout("--force", "--detach", commit, kill_after_timeout=self.timeout)
            repo.git.clean("-ffdx", kill_after_timeout=self.timeout)
        except git.GitCommandError as exc:
            # What a failed checkout left (paths git itself can no longer clean) never stops the next one.
            with contextlib.suppress(OSError):
                tree.empty_dir(self.clone_dir)
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
