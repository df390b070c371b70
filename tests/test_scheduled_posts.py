"""Scheduled posts and drafts follow Nikola's deploy rules: a post dated in the future is not reachable at all
(page, index, feed, tags, sitemap) until its date, and then it is published without a push; a draft stays out
(the bundled site's DEPLOY_DRAFTS = False) until DEPLOY_DRAFTS = True."""

from __future__ import annotations

import time

import pytest

from tests.helpers import SiteRepo, wait_for
from tests.test_site_stays_up import OWNER, Site
from tests.test_site_stays_up import site as shared_site  # noqa: F401 - the module's agent (a fixture)

pytestmark = pytest.mark.system  # run.sh with real Nikola builds, ports

site = shared_site
AHEAD = 40  # seconds a post is scheduled ahead


def _post(slug: str, when: float, extra: str = "") -> str:
    date = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(when))
    return f".. title: Post {slug}\n.. slug: {slug}\n.. date: {date}\n.. tags: later\n{extra}\nText of {slug}.\n"


def _nowhere(get, slug: str) -> None:
    """Not the page, nor any list that would name it."""
    assert get(f"/posts/{slug}/").status_code == 404
    for listing in ("/", "/rss.xml", "/sitemap.xml", "/archive.html", "/categories/later/"):
        assert slug not in get(listing).text, listing


def test_a_scheduled_post_is_published_on_time_without_a_push(site: Site) -> None:
    due = time.time() + AHEAD
    site.repo.write("posts/later.rst", _post("later", due))
    site.repo.write("posts/draft.rst", _post("draft", time.time() - 3600, ".. status: draft\n"))
    try:
        conf = site.repo.work / "conf.py"
        assert "\nDEPLOY_DRAFTS = False\n" in conf.read_text()  # the bundled site's default
        commit = site.repo.commit("A post for later and a draft")
        site.wait_live(commit)
        _nowhere(site.get, "later")
        _nowhere(site.get, "draft")
        scheduled = site.status()["scheduled"]
        assert [item["source"] for item in scheduled] == ["posts/later.rst"], scheduled
        assert "Post later" in site.get("/_site/", headers=OWNER).text  # the deploy page lists it, to the owner
        assert "Post later" not in site.get("/_site/").text + site.get("/_site/status").text  # to no one else
        builds = len(site.status()["builds"])

        page = wait_for("the scheduled post, live by itself", lambda: site.get("/posts/later/").status_code == 200
                        or None, AHEAD + 30, interval=0.25)
        late = time.time() - due
        print(f"\nFIGURES scheduled post live {late:.1f} s after its date")
        assert page and late < 8
        assert "later" in site.get("/").text and "later" in site.get("/rss.xml").text
        status = wait_for("the rebuild's record (it follows the swap)",
                          lambda: (lambda status: status if len(status["builds"]) > builds else None)(site.status()),
                          30, interval=0.2)
        assert len(status["builds"]) == builds + 1 and status["builds"][0]["commit"] == commit  # no push: a rebuild
        assert status["scheduled"] == []
        _nowhere(site.get, "draft")

        # What docs/publishing.md says to publish drafts: DEPLOY_DRAFTS = True.
        conf.write_text(conf.read_text().replace("\nDEPLOY_DRAFTS = False\n", "\nDEPLOY_DRAFTS = True\n"))
        site.wait_live(site.repo.commit("Publish the drafts"))
        assert "Text of draft" in site.get("/posts/draft/").text
    finally:
        for path in ("posts/later.rst", "posts/draft.rst"):
            (site.repo.work / path).unlink(missing_ok=True)
        site.restore()


def test_a_restart_keeps_the_schedule(start_site, site_repo: SiteRepo) -> None:
    """The schedule is in status.json: a watcher started again publishes the post on time all the same."""
    due = time.time() + 25
    site_repo.write("posts/later.rst", _post("later", due))
    commit = site_repo.commit("A post for later")
    running = start_site(site_repo.url)
    running.wait_live(commit)
    assert running.get("/posts/later/").status_code == 404
    assert running.status()["scheduled"][0]["source"] == "posts/later.rst"
    running.process.stop()
    again = start_site(site_repo.url, data_dir=running.data_dir)
    wait_for("the scheduled post after a restart", lambda: again.get("/posts/later/").status_code == 200 or None,
             60, interval=0.25)
    assert time.time() - due < 8
