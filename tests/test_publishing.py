"""Publishing like a blog platform, end to end through the frontend of the shared agent (see
tests/test_site_stays_up.py): `_redirects`, `_headers` and Nikola's REDIRECTIONS as real HTTP answers, and a
bad rule failing its publish with file and line while the last good release stays live.

Every test pushes files/ and conf.py only, and restores the bundled site (`Site.restore()` resets both).
"""

from __future__ import annotations

import time

import pytest

from tests.helpers import wait_for
from tests.test_site_stays_up import POST, Site
from tests.test_site_stays_up import site as shared_site  # noqa: F401 - the module's agent (a fixture)

pytestmark = pytest.mark.system  # root, Docker

site = shared_site

REDIRECTS = """\
# moved posts and old URLs
/posts/hello-world/   /posts/welcome/
/old/*                /posts/:splat/
/tags/:tag/feed       /categories/:tag.xml   302
/retired/*            /gone.html             410
/about/               /posts/welcome/        301!
/app/*                /posts/welcome/index.html  200
"""
HEADERS = """\
/posts/*
  Content-Security-Policy: default-src 'self'; img-src 'self'
  X-Frame-Options: DENY
"""
CSP = "default-src 'self'; img-src 'self'"


def get(site: Site, path: str):
    return site.get(path, allow_redirects=False)


def push_rules(site: Site, message: str, redirects: str | None = None, headers: str | None = None,
               conf_tail: str = "") -> str:
    if redirects is not None:
        site.repo.write("files/_redirects", redirects)
    if headers is not None:
        site.repo.write("files/_headers", headers)
    if conf_tail:
        conf = site.repo.work / "conf.py"
        conf.write_text(conf.read_text() + "\n" + conf_tail + "\n")
    return site.repo.commit(message)


def test_redirects_headers_and_nikola_redirections_are_real_http(site: Site) -> None:
    site.repo.write("files/gone.html", "<html><body>This shop closed in 2020.</body></html>")
    commit = push_rules(site, "Redirects and headers", REDIRECTS, HEADERS,
                        'REDIRECTIONS = [("posts/old-welcome.html", "/posts/welcome/")]')
    try:
        site.wait_live(commit)
        moved = get(site, "/posts/hello-world/?ref=feed&page=2")  # a moved post, the query kept
        assert (moved.status_code, moved.headers["Location"]) == (301, "/posts/welcome/?ref=feed&page=2")
        splat = get(site, "/old/welcome")
        assert (splat.status_code, splat.headers["Location"]) == (301, "/posts/welcome/")
        placeholder = get(site, "/tags/ipv6/feed")
        assert (placeholder.status_code, placeholder.headers["Location"]) == (302, "/categories/ipv6.xml")
        gone = get(site, "/retired/shop/item-7")
        assert gone.status_code == 410 and "shop closed" in gone.text
        forced = get(site, "/about/")  # forced over the existing About page
        assert (forced.status_code, forced.headers["Location"]) == (301, "/posts/welcome/")
        rewrite = get(site, "/app/any/deep/link")
        assert rewrite.status_code == 200 and "Welcome" in rewrite.text and "Location" not in rewrite.headers
        nikola = get(site, "/posts/old-welcome.html?x=1")  # conf.py's REDIRECTIONS: a 301, not a meta refresh
        assert (nikola.status_code, nikola.headers["Location"]) == (301, "/posts/welcome/?x=1")
        followed = site.get("/posts/hello-world/")
        assert followed.status_code == 200 and followed.url.endswith(POST)

        post = get(site, POST)
        assert post.status_code == 200
        assert post.headers["Content-Security-Policy"] == CSP and post.headers["X-Frame-Options"] == "DENY"
        front = get(site, "/")
        assert front.status_code == 200 and "Content-Security-Policy" not in front.headers
        for name in ("/_redirects", "/_headers"):
            assert get(site, name).status_code == 404
    finally:
        restored_at = time.monotonic()
        site.restore()
    # The frontend's cache keeps nothing of the older release for more than about a second.
    wait_for("the redirect gone with its release", lambda: get(site, "/posts/hello-world/?ref=feed&page=2")
             .status_code == 404, 3, interval=0.1)
    wait_for("the header gone with its release",
             lambda: "Content-Security-Policy" not in get(site, POST).headers, 3, interval=0.1)
    print(f"\nrules of the old release gone {time.monotonic() - restored_at:.1f} s after the restore began")


def test_rules_that_cannot_be_used_fail_the_publish_with_file_and_line(site: Site) -> None:
    live = site.status()["current"]["commit"]
    commit = push_rules(
        site, "A typo in a status, a framing header",
        "# fine so far\n/a  /b\n/c  /d  299\n",
        "/*\n  X-Frame-Options: DENY\n  Content-Length: 12\n",
    )
    try:
        result = site.wait_result(commit)
        assert result["result"] == "failed"
        message = site.status()["last_error"]["message"]
        assert "files/_redirects:3: status '299' is not one of 200, 301" in message, message
        assert "files/_headers:3: Content-Length cannot be set here" in message, message
        assert site.status()["current"]["commit"] == live  # the last good release stays
        assert get(site, POST).status_code == 200 and get(site, "/a").status_code == 404
    finally:
        site.restore()
