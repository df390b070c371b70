"""GitSource's cheap check of the remote (pipeline/publish/git_source.py), with real repositories and git."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pipeline.errors import GitError
from pipeline.publish.git_source import GitSource
from tests.helpers import SiteRepo


def no_process(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a process was started: {args[1:2]}")
    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)


def test_a_local_remote_is_checked_without_starting_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = SiteRepo(tmp_path / "remote")
    source = GitSource(repo.url, "main", tmp_path / "clone", timeout=30)
    head = repo.clone.head.commit.hexsha
    with monkeypatch.context() as patched:
        no_process(patched)  # what an idle watcher does every POLL_INTERVAL: read the ref, no git process
        assert source.remote_head() == head
    newer = repo.add_post("newer", "Newer")
    subprocess.run(["git", "--git-dir", str(repo.bare), "pack-refs", "--all"], check=True)  # packed, as gc leaves
    with monkeypatch.context() as patched:
        no_process(patched)
        assert source.remote_head() == newer
        assert GitSource(repo.url, "no-such-branch", tmp_path / "other", timeout=30).remote_head() is None


def test_what_is_not_a_repository_is_left_to_git_which_says_what_is_wrong(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(GitError, match="cannot reach"):
        GitSource(f"file://{tmp_path / 'empty'}", "main", tmp_path / "clone", timeout=30).remote_head()
    repo = SiteRepo(tmp_path / "remote")
    source = GitSource(repo.url, "main", tmp_path / "clone", timeout=30)
    assert source.remote_head() == repo.clone.head.commit.hexsha
    repo.bare.rename(repo.bare.with_name("moved.git"))  # a repository moved away: unreachable, not "no branch"
    with pytest.raises(GitError, match="cannot reach"):
        source.remote_head()
