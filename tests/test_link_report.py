"""The link report end to end, through the frontend of the shared agent (tests/test_site_stays_up.py): a pushed
post with a broken link and a broken anchor is live, and both are reported with their page in /_site/status, on
the deploy page and in the metrics."""

from __future__ import annotations

import html

import pytest

from tests.helpers import wait_for
from tests.test_site_stays_up import OWNER, Site, metric
from tests.test_site_stays_up import site as shared_site  # noqa: F401 - the module's agent (a fixture)

pytestmark = pytest.mark.system  # root, Docker

site = shared_site
POST = "posts/broken-links.md"
BROKEN_POST = """<!--
.. title: Broken links
.. slug: broken-links
.. date: 2026-04-02 10:00:00 UTC
-->

See [a post that is not there](/posts/no-such-post/), [a heading that is not there](#no-such-heading) and
[the welcome post](/posts/welcome/).
"""
BROKEN = ({"page": "/posts/broken-links/", "target": "/posts/no-such-post/"},
          {"page": "/posts/broken-links/", "target": "/posts/broken-links/#no-such-heading"})


def live_report(site: Site) -> dict | None:
    status = site.status()
    report = status.get("links") or {}
    return report if report.get("release") == (status.get("current") or {}).get("release") else None


def test_a_broken_link_and_anchor_are_reported_with_their_page(site: Site) -> None:
    before = wait_for("the live release's link report", lambda: live_report(site), 60)
    assert before["broken_count"] == 0, before["broken"]  # the bundled site has none
    site.repo.write(POST, BROKEN_POST)
    try:
        commit = site.repo.commit("A post with a broken link and a broken anchor")
        site.wait_live(commit)  # published: by default the report never holds a release back
        assert site.get("/posts/broken-links/").status_code == 200
        report = wait_for("the new release's link report", lambda: live_report(site), 60)
        for item in BROKEN:
            assert item in report["broken"], report["broken"]
        assert report["broken_count"] == len(report["broken"]) >= 2  # the front page shows the post, links and all
        assert report["checked_pages"] > 10 and report["seconds"] < 10
        assert metric(site, "pequod_site_broken_links ") == report["broken_count"]
        assert metric(site, "pequod_site_link_check_pages ") == report["checked_pages"]
        page = site.get("/_site/", headers=OWNER).text
        assert f"{report['broken_count']} broken internal link(s)" in page
        for item in BROKEN:
            assert html.escape(item["page"]) in page and html.escape(item["target"]) in page
    finally:
        (site.repo.work / POST).unlink(missing_ok=True)
        site.restore()
    after = wait_for("the restored release's link report", lambda: live_report(site), 60)
    assert after["broken_count"] == 0
    assert metric(site, "pequod_site_broken_links ") == 0
