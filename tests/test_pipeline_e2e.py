"""run.sh end to end: real git remotes, real Nikola builds, real CherryPy."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from pathlib import Path

import git
import pytest
import requests

from tests.helpers import SiteRepo, python_env, wait_for, wait_for_checks

pytestmark = pytest.mark.system  # run.sh with real Nikola builds and git remotes, ports

MARKER = re.compile(r"release-marker:([0-9a-f]{40})")
# conf.py addition that stamps every page with the commit being built.
MARKER_CONF = '\nimport os\nCONTENT_FOOTER = "release-marker:" + os.environ.get("SITE_COMMIT", "none")\n'


def test_missing_branch_is_503_until_the_first_push(tmp_path: Path, start_site) -> None:
    repo = SiteRepo(tmp_path / "remote", branch="main")
    site = start_site(repo.url, SITE_BRANCH="publish")
    wait_for("the missing branch to be reported", lambda: site.status()["consecutive_failures"] >= 1, 30)
    assert site.get("/_site/health").status_code == 503
    assert "does not exist" in site.status()["last_error"]["message"]
    repo.branch = "publish"
    commit = repo.commit("Publish", push=True)
    site.wait_live(commit)
    assert site.get("/_site/health").status_code == 200
    home = site.get("/")
    assert home.status_code == 200 and "A Pequod Blog" in home.text
    for page in ("/posts/welcome/", "/posts/writing-posts/", "/about/", "/categories/pequod/", "/archive.html"):
        assert site.get(page).status_code == 200, page
    missing = site.get("/no-such-page/")
    assert missing.status_code == 404 and "Page not found" in missing.text


def test_push_goes_live_and_idle_remote_builds_nothing(site_repo: SiteRepo, start_site) -> None:
    site = start_site(site_repo.url)
    first = site.wait_live(site_repo.clone.head.commit.hexsha)
    commit = site_repo.add_post("fresh-news", "Fresh news from the test")
    current = site.wait_live(commit, timeout=30)
    assert current["release"] != first["release"]
    page = site.get("/posts/fresh-news/")
    assert page.status_code == 200 and "Fresh news from the test" in page.text
    assert "Fresh news from the test" in site.get("/").text
    site.wait_attempted(commit)  # its record follows the swap (`current` is the live link's)
    status = site.status()
    assert status["builds"][0]["result"] == "success" and status["builds"][0]["mode"] == "incremental"
    assert [b["worker"] for b in status["builds"]] == ["warm", "cold"]  # Nikola stayed loaded
    assert [b["site"] for b in status["builds"]] == ["warm", "fresh"]  # ... and so did the site
    assert "site kept loaded" in site.get("/_site/").text
    builds_before = len(status["builds"])
    status = wait_for_checks(site.status, moves=3)  # whole checks over 2+ s of polling, the remote unchanged
    assert len(status["builds"]) == builds_before  # it did check; it just did not build
    assert "building" not in status
    assert status["consecutive_failures"] == 0


def test_broken_commit_keeps_the_last_good_release(site_repo: SiteRepo, start_site) -> None:
    site = start_site(site_repo.url)
    good = site.wait_live(site_repo.clone.head.commit.hexsha)
    site_repo.write("conf.py", (site_repo.work / "conf.py").read_text() + "\nthis is not python(\n")
    broken = site_repo.commit("Break the configuration")
    failed = site.wait_attempted(broken)
    assert failed["result"] == "failed"
    assert "nikola build failed" in failed["error"]
    assert "SyntaxError" in failed["log_tail"] or "cannot be parsed" in failed["log_tail"]
    status = site.status()
    assert status["current"]["release"] == good["release"]
    assert status["consecutive_failures"] == 1
    assert site.get("/_site/health").status_code == 200
    assert site.get("/").status_code == 200
    site_repo.write("conf.py", (site_repo.work / "conf.py").read_text().replace("this is not python(", ""))
    fixed = site_repo.commit("Fix the configuration")
    site.wait_live(fixed)
    assert site.status()["consecutive_failures"] == 0


def test_build_timeout_and_memory_limit_fail_cleanly(site_repo: SiteRepo, start_site) -> None:
    site = start_site(site_repo.url, BUILD_TIMEOUT=4, BUILD_MEMORY_MB=1024)
    good = site.wait_live(site_repo.clone.head.commit.hexsha)
    conf = (site_repo.work / "conf.py").read_text()
    site_repo.write("conf.py", conf + "\nimport time\ntime.sleep(30)\n")
    slow = site_repo.commit("A build that hangs")
    assert "timed out" in site.wait_attempted(slow)["error"]
    site_repo.write("conf.py", conf + "\nhog = bytearray(4 * 1024 ** 3)\n")
    hungry = site_repo.commit("A build that needs too much memory")
    assert "memory" in site.wait_attempted(hungry)["error"]
    assert site.status()["current"]["release"] == good["release"]
    assert site.get("/_site/health").status_code == 200


def test_readers_only_ever_see_whole_releases(site_repo: SiteRepo, start_site) -> None:
    site_repo.write("conf.py", (site_repo.work / "conf.py").read_text() + MARKER_CONF)
    first = site_repo.commit("Stamp pages with the commit")
    site = start_site(site_repo.url)
    site.wait_live(first)
    deployed = {first}
    problems: list[str] = []
    seen: set[str] = set()
    stop = threading.Event()

    def reader() -> None:
        session = requests.Session()
        while not stop.is_set():
            for path in ("/", "/posts/welcome/", "/archive.html", "/categories/pequod/"):
                response = session.get(site.base + path, timeout=10)
                markers = set(MARKER.findall(response.text))
                if response.status_code != 200:
                    problems.append(f"{path}: status {response.status_code}")
                elif len(markers) != 1:
                    problems.append(f"{path}: markers {markers}")
                else:
                    marker = markers.pop()
                    seen.add(marker)
                    release = response.headers["X-Site-Release"]
                    if marker[:12] not in release:
                        problems.append(f"{path}: body of {marker[:12]} in release {release}")

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        for number in range(20):
            commit = site_repo.add_post(f"post-{number}", f"Post number {number}")
            deployed.add(commit)
            site.wait_live(commit, timeout=60)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert problems == []
    assert seen <= deployed and len(seen) > 10
    site.wait_attempted(commit)  # the build's record is written after the prune that follows the swap
    assert len(site.status()["releases"]) == 5  # the last five are kept


def test_force_push_deleted_branch_and_unreachable_remote(site_repo: SiteRepo, start_site) -> None:
    site = start_site(site_repo.url)
    base_commit = site_repo.clone.head.commit.hexsha
    site.wait_live(base_commit)
    site_repo.add_post("doomed", "A post about to be rewritten away")
    site.wait_live(site_repo.clone.head.commit.hexsha)
    site_repo.clone.git.reset("--hard", base_commit)
    site_repo.write("posts/rewritten.rst", ".. title: History was rewritten\n.. slug: rewritten\n"
                    ".. date: 2026-04-02 10:00:00 UTC\n\nNew history.\n")
    rewritten = site_repo.commit("Rewrite history", force=True)
    site.wait_live(rewritten)
    assert site.get("/posts/doomed/").status_code == 404
    assert site.get("/posts/rewritten/").status_code == 200

    git.Repo(site_repo.bare).git.update_ref("-d", "refs/heads/main")
    wait_for("the deleted branch to be reported",
             lambda: "does not exist" in (site.status()["last_error"] or {}).get("message", ""), 30)
    assert site.get("/posts/rewritten/").status_code == 200
    site_repo.push()

    moved = site_repo.bare.with_name("moved.git")
    site_repo.bare.rename(moved)
    wait_for("the unreachable remote to be reported",
             lambda: "cannot reach" in (site.status()["last_error"] or {}).get("message", ""), 30)
    failures = site.status()["consecutive_failures"]
    assert failures >= 1
    assert site.get("/_site/health").status_code == 200
    moved.rename(site_repo.bare)
    commit = site_repo.add_post("back-again", "The remote is back")
    site.wait_live(commit, timeout=120)  # within the back-off
    assert site.status()["consecutive_failures"] == 0


def test_rollback_holds_until_the_next_push(site_repo: SiteRepo, start_site) -> None:
    site = start_site(site_repo.url)
    first = site.wait_live(site_repo.clone.head.commit.hexsha)
    second_commit = site_repo.add_post("second", "Second")
    site.wait_live(second_commit)
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "--data-dir", str(site.data_dir), "rollback"],
        capture_output=True, text=True, env=python_env(), timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert site.status()["current"]["release"] == first["release"]
    assert site.get("/posts/second/").status_code == 404
    # Whole checks after the rollback: the watcher had its chance to undo it (it must not).
    assert wait_for_checks(site.status)["current"]["release"] == first["release"]
    third = site_repo.add_post("third", "Third")
    site.wait_live(third)
    assert site.get("/posts/second/").status_code == 200
    bad = subprocess.run(
        [sys.executable, "-m", "pipeline", "--data-dir", str(site.data_dir), "rollback", "nope"],
        capture_output=True, text=True, env=python_env(), timeout=60,
    )
    assert bad.returncode == 1 and "no release 'nope'" in bad.stderr
