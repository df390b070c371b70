"""The link report (pipeline.publish.links): the checker on real files in tmp dirs, the report beside its release, the
setting, the deploy page and the metrics; LINKS_BROKEN_FAIL through the real pipeline (run.sh, no Docker)."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from pipeline import metrics, releases
from pipeline.config import settings_from_env
from pipeline.errors import ConfigError
from pipeline.publish import links
from pipeline.serve import deploy_page
from tests.helpers import SiteRepo, wait_for

HEAD = "<!doctype html><html><head><link rel=canonical href='http://blog.example/{path}'></head><body>"


def page(release: Path, relpath: str, body: str) -> None:
    path = release / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    url = links.page_url(relpath).lstrip("/")
    path.write_text(HEAD.format(path=url) + body + "</body></html>")


def make_release(root: Path) -> Path:
    release = root / "releases" / "r1"
    page(release, "index.html", "<a href='posts/a/'>a</a><a href='http://blog.example/posts/b/'>b</a>")
    page(release, "posts/a/index.html", """
        <h2 id=here>Here</h2><a name=old-style></a>
        <a href='../b/'>fine</a> <a href='../b'>fine, answered with a redirect</a>
        <a href='/posts/b/#section'>fine</a> <a href='#here'>fine</a> <a href='#old-style'>fine</a>
        <a href='#'>top</a> <a href='#top'>top</a> <a href='?page=2'>same page</a>
        <a href='/file.pdf#page=2'>a file's fragment is not checked</a> <img src='../../logo.png'>
        <a href='https://elsewhere.example/nothing/'>external</a> <a href='mailto:me@example.org'>mail</a>
        <a href='//cdn.example/x.js'>protocol-relative</a> <a href='/_site/status'>the instance's own</a>
        <a href='javascript:void(0)'>script</a> <a href='data:text/plain,x'>data</a>
        <a href='../missing/'>missing page</a> <a href='#gone'>missing anchor</a>
        <a href='/posts/b/#nope'>missing anchor elsewhere</a> <img src='/images/missing.png'>
        <a href='http://blog.example/posts/c/'>missing, absolute with the site's own origin</a>
        <a href='../no%20such.html'>missing, percent-encoded</a> <a href='../missing/'>the same link twice</a>
    """)
    page(release, "posts/b/index.html", "<section id=section><a href='../a/#here'>back</a></section>")
    (release / "file.pdf").write_bytes(b"%PDF")
    (release / "logo.png").write_bytes(b"png")
    (release / "posts" / "a" / "index.html.gz").write_bytes(b"not a page")
    return release


EXPECTED = {
    ("/posts/a/", "/posts/missing/"), ("/posts/a/", "/posts/a/#gone"), ("/posts/a/", "/posts/b/#nope"),
    ("/posts/a/", "/images/missing.png"), ("/posts/a/", "/posts/c/"), ("/posts/a/", "/posts/no such.html"),
}


def broken(report: dict) -> set[tuple[str, str]]:
    return {(item["page"], item["target"]) for item in report["broken"]}


def test_broken_links_and_anchors_are_found_with_their_page(tmp_path: Path) -> None:
    report = links.LinkChecker().check(make_release(tmp_path))
    assert broken(report) == EXPECTED
    assert report["broken_count"] == len(EXPECTED)
    assert report["checked_pages"] == 3 and report["skipped_pages"] == 0
    assert report["release"] == "r1" and report["seconds"] < 5


def test_paths_the_sites_redirects_answer_are_not_broken(tmp_path: Path) -> None:
    release = make_release(tmp_path)
    (release / "_redirects").write_text("/posts/missing/  /posts/b/  301\n/images/*  /logo.png  200\n"
                                        "/posts/c/  /404.html  410\n")
    assert broken(links.LinkChecker().check(release)) == EXPECTED - {
        ("/posts/a/", "/posts/missing/"), ("/posts/a/", "/images/missing.png")}


def test_only_changed_pages_are_parsed_again_and_vanished_targets_are_found(tmp_path: Path) -> None:
    checker = links.LinkChecker()
    first = make_release(tmp_path)
    assert checker.check(first)["reparsed_pages"] == 3
    again = checker.check(first)
    assert again["reparsed_pages"] == 0 and broken(again) == EXPECTED
    # The next release as releases.stage() makes it: unchanged files hard-linked, one page new, one gone.
    second = first.parent / "r2"
    shutil.copytree(first, second, copy_function=os.link)
    shutil.rmtree(second / "posts" / "b")
    (second / "index.html").unlink()
    page(second, "index.html", "<a href='posts/a/'>a</a><a href='posts/new/'>new</a>")
    report = checker.check(second)
    assert report["reparsed_pages"] == 1 and report["checked_pages"] == 2
    assert broken(report) == EXPECTED | {
        ("/", "/posts/new/"), ("/posts/a/", "/posts/b/"), ("/posts/a/", "/posts/b"),
        ("/posts/a/", "/posts/b/#section")}


def test_hostile_pages_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    release = tmp_path / "r"
    page(release, "index.html", "".join(f"<a href='/nothing-{n}/'>x</a>" for n in range(3000)))
    page(release, "deep.html", "<div>" * 200_000 + "<a href='/deep-missing/'>x</a>")
    (release / "huge.html").write_bytes(b"<a href='/huge-missing/'>" + b"x" * (links.MAX_PAGE_BYTES + 1))
    (release / "binary.html").write_bytes(os.urandom(50_000))
    (release / "empty.html").write_bytes(b"")
    started = time.monotonic()
    report = links.LinkChecker().check(release)
    assert time.monotonic() - started < 10
    assert report["skipped_pages"] == 1  # huge.html
    assert report["broken_count"] >= 3000 and len(report["broken"]) == links.MAX_REPORTED
    monkeypatch.setattr(links, "MAX_PAGES", 2)
    assert links.LinkChecker().check(release)["skipped_pages"] == 3  # two parsed; the rest, and huge.html


def test_the_report_lives_beside_its_release_and_stale_ones_go(tmp_path: Path) -> None:
    release = make_release(tmp_path)
    gone = release.parent / f"pruned{releases.REPORT_SUFFIX}"
    gone.write_text("{}")
    reporter = links.LinkReport(fail_on_broken=False)
    reporter.before_swap(release)  # does nothing without the setting
    assert release.is_dir() and releases.read_report(release) is None
    reporter.after_swap(release)
    reporter.wait()  # made in a thread: the next push is not held up by it
    report = releases.read_report(release)
    assert report is not None and broken(report) == EXPECTED
    assert not gone.exists()


def test_the_report_after_a_swap_does_not_hold_up_the_next_push(tmp_path: Path) -> None:
    """after_swap returns while the pages are still being checked (a clean build's report parses every page); the
    next report, or a check before a swap, waits for it."""
    release = make_release(tmp_path)
    reporter = links.LinkReport(fail_on_broken=False)
    checking, go_on = threading.Event(), threading.Event()
    real_check = reporter.checker.check

    def check(release_dir: Path) -> dict:
        checking.set()
        go_on.wait(10)
        return real_check(release_dir)

    reporter.checker.check = check  # type: ignore[method-assign]
    reporter.after_swap(release)  # returns at once: the watcher goes on to the next push
    assert checking.wait(10) and releases.read_report(release) is None
    go_on.set()
    reporter.wait()
    assert broken(releases.read_report(release)) == EXPECTED


def test_with_the_setting_broken_links_remove_the_staged_release_and_fail(tmp_path: Path) -> None:
    release = make_release(tmp_path)
    meta = release.parent / "r1.json"
    meta.write_text("{}")
    with pytest.raises(links.BrokenLinks) as failure:
        links.LinkReport(fail_on_broken=True).before_swap(release)
    message = str(failure.value)
    assert "\n" not in message and message.startswith("6 broken internal link(s) in 3 pages: /posts/a/ → ")
    assert "LINKS_BROKEN_FAIL=1" in message and "and 1 more" in message
    assert all(f"{p} → {t}" in failure.value.log_tail for p, t in EXPECTED)
    assert not release.exists() and not meta.exists()
    fine = tmp_path / "fine" / "r2"
    page(fine, "index.html", "<a href='#x' id=x>x</a>")
    reporter = links.LinkReport(fail_on_broken=True)
    reporter.before_swap(fine)
    reporter.after_swap(fine)
    reporter.wait()
    assert releases.read_report(fine)["broken_count"] == 0


def test_the_setting_is_checked_with_the_others() -> None:
    base = {"SITE_REPO": "https://example.org/site.git"}
    assert settings_from_env(base).links_broken_fail is False
    assert settings_from_env({**base, "LINKS_BROKEN_FAIL": "1"}).links_broken_fail is True
    assert settings_from_env({**base, "LINKS_BROKEN_FAIL": "off"}).links_broken_fail is False
    with pytest.raises(ConfigError, match=r"^LINKS_BROKEN_FAIL='maybe': expected 1 or 0 \(true/false, yes/no, "
                                          r"on/off\)$"):
        settings_from_env({**base, "LINKS_BROKEN_FAIL": "maybe"})


def test_the_deploy_page_and_the_metrics_show_the_report() -> None:
    report = {"release": "r1", "checked_pages": 3, "broken_count": 2, "seconds": 0.01, "skipped_pages": 0,
              "broken": [{"page": "/posts/<b>/", "target": "/x/#<i>"}]}
    html = deploy_page.render({"links": report, "builds": []}, rollback_enabled=False)
    assert "2 broken internal link(s)" in html and "the first 1 are listed" in html
    assert "/posts/&lt;b&gt;/" in html and "/x/#&lt;i&gt;" in html and "<b>" not in html
    assert "No link report" in deploy_page.render({"builds": []}, rollback_enabled=False)
    assert "No broken internal links" in deploy_page.render(
        {"links": {**report, "broken_count": 0, "broken": []}, "builds": []}, rollback_enabled=False)
    collector = metrics.InstanceCollector(lambda: {"links": report}, metrics.Requests(), lambda: (0, 0))
    text = metrics.exposition(metrics.registry(collector)).decode()
    assert "pequod_site_broken_links 2.0" in text and "pequod_site_link_check_pages 3.0" in text
    collector = metrics.InstanceCollector(lambda: {}, metrics.Requests(), lambda: (0, 0))
    assert "pequod_site_broken_links " not in metrics.exposition(metrics.registry(collector)).decode()


BROKEN_POST = """<!--
.. title: Broken links
.. slug: broken-links
.. date: 2026-04-02 10:00:00 UTC
-->

See [a post that is not there](/posts/no-such-post/) and [a heading that is not there](#no-such-heading).
"""


def test_links_broken_fail_keeps_the_live_release(site_repo: SiteRepo, start_site) -> None:
    site = start_site(site_repo.url, LINKS_BROKEN_FAIL=1)
    site.wait_live(site_repo.clone.head.commit.hexsha)
    wait_for("the first link report", lambda: (site.status().get("links") or {}).get("broken_count") == 0, 30)
    live = site.status()["current"]["release"]
    site_repo.write("posts/broken-links.md", BROKEN_POST)
    commit = site_repo.commit("A post with broken links")
    build = site.wait_attempted(commit)
    assert build["result"] == "failed", build
    # The front page shows the post in full: its links are broken there too.
    assert build["error"].startswith("4 broken internal link(s)") and "LINKS_BROKEN_FAIL=1" in build["error"]
    for pair in ("/posts/broken-links/ → /posts/no-such-post/", "/posts/broken-links/ → /posts/broken-links/#no-such-"
                 "heading", "/ → /posts/no-such-post/", "/ → /posts/broken-links/#no-such-heading"):
        assert pair in build["log_tail"], build["log_tail"]
    status = site.status()
    assert status["current"]["release"] == live and status["links"]["broken_count"] == 0
    assert live in status["releases"] and len(status["releases"]) == 1  # the refused release is not kept
    assert site.get("/posts/broken-links/").status_code == 404
    site_repo.write("posts/broken-links.md", BROKEN_POST.replace("/posts/no-such-post/", "/posts/welcome/")
                    .replace("#no-such-heading", "#"))
    fixed = site_repo.commit("Links fixed")
    site.wait_live(fixed)
    assert site.get("/posts/broken-links/").status_code == 200
