"""The agent's watch of release links (container/swaps.py): a swap is told once, whether inotify or the agent's
round sees it first; a lost notice (no watch could be placed) is made good by the next round; a link first seen
counts as a swap only when it is younger than what the frontend's cache may still hold."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from container.frontend import RELEASED_LIFE
from container.swaps import Link, SwapWatch


def publish(folder: Path, release: str, age: float = 0.0) -> None:
    """What an instance does at a swap: a new link, renamed over the old one."""
    (folder / "current.new").symlink_to(f"releases/{release}")
    if age:
        when = time.time() - age
        os.utime(folder / "current.new", (when, when), follow_symlinks=False)
    os.replace(folder / "current.new", folder / "current")


@pytest.fixture
def told() -> list[str]:
    return []


def watch(told: list[str], inotify: bool, monkeypatch: pytest.MonkeyPatch) -> SwapWatch:
    swaps = SwapWatch(told.append)
    if not inotify:  # as when inotify's limits are reached: only the rounds see swaps
        def refuse(*_args: object, **_kwargs: object) -> None:
            raise OSError(28, "inotify watch limit reached")
        monkeypatch.setattr(swaps.observer, "schedule", refuse)
    return swaps


def test_a_swap_is_seen_by_the_next_round_when_no_watch_could_be_placed(
        tmp_path: Path, told: list[str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    publish(tmp_path, "r1", age=3600)
    swaps = watch(told, inotify=False, monkeypatch=monkeypatch)
    links = {"web.blog": Link(tmp_path, "current")}
    try:
        swaps.sync(links)
        assert told == []  # an old link: nothing the cache holds is older than it
        publish(tmp_path, "r2")
        swaps.sync(links)
        assert told == ["web.blog"]
        swaps.sync(links)
        assert told == ["web.blog"]  # told once
        publish(tmp_path, "r3", age=3600)  # a rollback may bring an old-looking link: still a swap
        swaps.sync(links)
        assert told == ["web.blog", "web.blog"]
        assert sum("cannot watch" in record.message for record in caplog.records) == 1  # said once, not each round
    finally:
        swaps.stop()


def test_inotify_tells_at_once_and_the_round_does_not_tell_again(
        tmp_path: Path, told: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    publish(tmp_path, "r1", age=3600)
    swaps = watch(told, inotify=True, monkeypatch=monkeypatch)
    links = {"web.blog": Link(tmp_path, "current")}
    try:
        swaps.sync(links)
        publish(tmp_path, "r2")
        deadline = time.monotonic() + 5
        while not told and time.monotonic() < deadline:  # no round in between: inotify alone
            time.sleep(0.01)
        assert told == ["web.blog"]
        swaps.sync(links)
        time.sleep(0.2)
        assert told == ["web.blog"]
    finally:
        swaps.stop()


def test_a_link_first_seen_is_a_swap_only_while_the_cache_may_hold_pages_from_before(
        tmp_path: Path, told: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    publish(tmp_path / "a", "r1", age=RELEASED_LIFE + 5)  # before the agent (re)started, long ago
    publish(tmp_path / "b", "r1")  # while the agent was restarting
    swaps = watch(told, inotify=False, monkeypatch=monkeypatch)
    try:
        swaps.sync({"web.a": Link(tmp_path / "a", "current"), "web.b": Link(tmp_path / "b", "current"),
                    "web.c": Link(tmp_path / "c", "current")})  # c: not published yet
        assert told == ["web.b"]
    finally:
        swaps.stop()


def test_the_frontend_lengthens_the_life_of_what_serve_py_says_of_html() -> None:
    from container.frontend import HTML_CACHE_CONTROL
    from pipeline.serve.static_files import HTML_CACHE_CONTROL as SAID

    assert HTML_CACHE_CONTROL == SAID  # else HTML would live 1 s in the cache again, unnoticed
