"""The frontend forgets a site's pages at its swap (container/swaps.py), through the real agent, instance and
HAProxy: a reader hammering the cached front page sees the new post within 100 ms of the swap, never the
old page after it; right after the swap the cache answers again (from what it stored since)."""

from __future__ import annotations

import os
import threading
import time

import pytest
import requests

from container.frontend import cli
from tests.agent_fixtures import AgentRun
from tests.helpers import wait_for

pytestmark = pytest.mark.system  # root, Docker, network namespaces


class Hammer:
    """One keep-alive reader of a page: (wall time when answered, whether `text` was in it), as fast as it can."""

    def __init__(self, url: str, text: str):
        self.url, self.text = url, text
        self.seen: list[tuple[float, bool]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with requests.Session() as session:
            while not self.stop.is_set():
                answer = session.get(self.url, timeout=10)
                self.seen.append((time.time(), self.text in answer.text))

    def __enter__(self) -> Hammer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(15)


def cache_entries(run: AgentRun) -> int:
    """Entries in the frontend's cache right after the front page was read."""
    requests.get(f"{run.frontend}/", timeout=5)
    answer = cli(run.state_dir / "haproxy" / "admin.sock", "show cache\n")
    return sum(1 for line in answer.splitlines() if "hash:" in line)  # entries (the cache's own line has none)


def test_a_swapped_page_is_never_served_from_the_cache_after_the_swap(agent_run: AgentRun) -> None:
    run = agent_run
    run.start()
    wait_for("the blog through the frontend", lambda: "A Pequod Blog" in requests.get(run.frontend, timeout=5).text,
             180, 0.5)
    link = run.state_dir / "volumes" / "srcco-de-workdir" / "current"
    delays = []
    for round_ in range(3):
        title = f"Fresh from the swap {round_}"
        wait_for("the cache to hold the front page", lambda: cache_entries(run) > 0, 20, 0.2)
        with Hammer(f"{run.frontend}/", title) as hammer:
            time.sleep(0.3)
            before = os.lstat(link).st_mtime
            run.repo.add_post(f"swap-{round_}", title)
            wait_for("the swap", lambda before=before: os.lstat(link).st_mtime != before, 120, 0.005)
            swapped = os.lstat(link).st_mtime  # the new link was made just before its rename(2)
            wait_for("the new post on the front page", lambda: any(fresh for _, fresh in hammer.seen), 30, 0.01)
            time.sleep(1.5)  # the old front page is still in the cache (RELEASED_LIFE), never to be served
        first = next(at for at, fresh in hammer.seen if fresh)
        stale_after = [at - swapped for at, fresh in hammer.seen if not fresh and at > first]
        assert stale_after == [], f"old front page served {stale_after} s after the swap"
        delays.append(first - swapped)
        assert len(hammer.seen) > 100, len(hammer.seen)
    print(f"swap -> new front page through the frontend: {', '.join(f'{d * 1000:.0f} ms' for d in delays)}")
    assert max(delays) <= 0.1, delays
    assert cache_entries(run) > 0  # the cache answers again
