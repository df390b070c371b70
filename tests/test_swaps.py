"""The agent's watch of release links (container/swaps.py): a swap is told once, whether inotify or the agent's
round sees it first; a lost notice (no watch could be placed) or one the frontend did not take is made good by
the next round; a link first seen counts as a swap only when it was put in place more recently than what the
frontend's cache may still hold; backends whose links share a folder share its watch."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from container import swaps as swaps_module
from container.swaps import Link, SwapWatch

LIFE = 0.3  # the cache's life of a page, shortened so that a link can be older than it


@pytest.fixture(autouse=True)
def short_life(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(swaps_module, "RELEASED_LIFE", LIFE)


def publish(folder: Path, release: str, link: str = "current") -> None:
    """What an instance does at a swap: a new link, renamed over the old one."""
    (folder / f"{link}.new").symlink_to(f"releases/{release}")
    os.replace(folder / f"{link}.new", folder / link)


def publish_long_ago(folder: Path, release: str, link: str = "current") -> None:
    publish(folder, release, link)
    time.sleep(LIFE + 0.1)


@pytest.fixture
def told() -> list[str]:
    return []


def watch(told: list[str], inotify: bool, monkeypatch: pytest.MonkeyPatch) -> SwapWatch:
    def tell(name: str) -> bool:
        told.append(name)
        return True

    swaps = SwapWatch(tell)
    if not inotify:  # as when inotify's limits are reached: only the rounds see swaps
        def refuse(*_args: object, **_kwargs: object) -> None:
            raise OSError(28, "inotify watch limit reached")
        monkeypatch.setattr(swaps.observer, "schedule", refuse)
    return swaps


def test_a_swap_is_seen_by_the_next_round_when_no_watch_could_be_placed(
        tmp_path: Path, told: list[str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    publish_long_ago(tmp_path, "r1")
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
        (tmp_path / "old").symlink_to("releases/r1")  # made long ago, put in place now (a rollback's link)
        time.sleep(LIFE + 0.1)
        os.replace(tmp_path / "old", tmp_path / "current")
        swaps.sync(links)
        assert told == ["web.blog", "web.blog"]
        assert sum("cannot watch" in record.message for record in caplog.records) == 1  # said once, not each round
    finally:
        swaps.stop()


def test_inotify_tells_at_once_and_the_round_does_not_tell_again(
        tmp_path: Path, told: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    publish_long_ago(tmp_path, "r1")
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
    publish_long_ago(tmp_path / "a", "r1")  # before the agent (re)started, long ago
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


def test_a_swap_the_frontend_did_not_take_is_told_again_next_round(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    answers = [False, True]
    told: list[str] = []

    def tell(name: str) -> bool:  # the frontend did not answer the first time
        told.append(name)
        return answers.pop(0) if answers else True

    publish_long_ago(tmp_path, "r1")
    swaps = SwapWatch(tell)
    monkeypatch.setattr(swaps.observer, "schedule", lambda *_a, **_k: (_ for _ in ()).throw(OSError(28, "limit")))
    links = {"web.blog": Link(tmp_path, "current")}
    try:
        swaps.sync(links)
        publish(tmp_path, "r2")
        swaps.sync(links)
        swaps.sync(links)
        swaps.sync(links)
        assert told == ["web.blog", "web.blog"]  # once refused, once taken, then no more
    finally:
        swaps.stop()


def test_backends_whose_links_share_a_folder_keep_their_watch_when_one_goes(tmp_path: Path, told: list[str],
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    publish_long_ago(tmp_path, "r1", "current")
    publish_long_ago(tmp_path, "r1", "preview")
    swaps = watch(told, inotify=True, monkeypatch=monkeypatch)
    try:
        swaps.sync({"web.a": Link(tmp_path, "current"), "web.b": Link(tmp_path, "preview")})
        swaps.sync({"web.b": Link(tmp_path, "preview")})  # a's watch of the folder was b's too
        swaps.sync({"web.b": Link(tmp_path, "preview")})
        publish(tmp_path, "r2", "preview")
        deadline = time.monotonic() + 5
        while not told and time.monotonic() < deadline:  # no round: b's watch was placed again
            time.sleep(0.01)
        assert told == ["web.b"]
        swaps.sync({})
        swaps.sync({})
    finally:
        swaps.stop()
