"""The deploy data is the owner's: /_site/status and the deploy page show a stranger only the live
release, its time and whether the instance is healthy; the token (or a request from inside the instance)
shows the history, commit subjects and authors, logs, scheduled posts, links and kept releases.
(Through the real frontend and agent: tests/test_sites.py, tests/test_site_stays_up.py, and in Chromium
tests/test_deploy_page_isolation.py.)"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from pipeline.metrics import Requests
from pipeline.serve import deploy_page
from pipeline.serve.answers import Memo
from pipeline.serve.site_admin import SiteAdmin
from pipeline.serve.webhook import HookGuard
from pipeline.status import write_atomic

SECRET = "owner-token"
SUBJECT = "Embargo: Initech deal (do not leak)"
STATUS = {
    "remote": "file:///srv/pequod/site.git", "branch": "main", "last_check": "2026-12-06T10:00:00Z",
    "builds": [{"commit": "c0ffee" * 6 + "abcd", "subject": SUBJECT, "author": "A. Author", "result": "success",
                "release": "r-live"},
               {"commit": "c0ffee" * 6 + "abcd", "subject": SUBJECT, "result": "failed",
                "error": "nikola build failed", "log_tail": "Traceback: secret-path/conf.py",
                "finished_at": "2026-12-06T10:00:00Z"}],
    "last_error": {"at": "2026-12-06T10:00:00Z", "message": "nikola build failed in conf.py"},
    "scheduled": [{"at": "2026-12-24T08:00:00Z", "title": "Launch of the new thing", "source": "posts/launch.rst"}],
}
PRIVATE = (SUBJECT, "A. Author", "secret-path", "Launch of the new thing", "posts/launch.rst", "site.git",
           "c0ffee", "r-older")


@pytest.fixture
def admin(tmp_path: Path) -> SiteAdmin:
    releases = tmp_path / "releases"
    for release in ("r-older", "r-live"):
        (releases / release).mkdir(parents=True)
        (releases / f"{release}.json").write_text(json.dumps({
            "release": release, "commit": "c0ffee" * 6 + "abcd", "built_at": "2026-12-06T09:00:00Z",
            "build_seconds": 1.5}))
    status_file = tmp_path / "status.json"
    write_atomic(status_file, STATUS)
    return SiteAdmin(lambda: str(releases / "r-live"), status_file, None, HookGuard(SECRET), None, Requests(),
                     Memo())


def ask(admin: SiteAdmin, path: str, remote: str = "2001:db8::7", **headers: str) -> tuple[int, str]:
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "REMOTE_ADDR": remote, "wsgi.input": io.BytesIO(),
               **{f"HTTP_{key.upper()}": value for key, value in headers.items()}}
    answer: list[str] = []
    body = b"".join(admin.answer(environ, lambda status, headers, exc_info=None: answer.append(status)))
    return int(answer[0].split()[0]), body.decode()


def test_a_stranger_learns_only_the_live_release_and_its_health(admin: SiteAdmin) -> None:
    status, body = ask(admin, "/_site/status", x_forwarded_for="2001:db8::7")
    assert status == 200
    public = json.loads(body)
    assert public["healthy"] is True
    assert public["current"] == {"release": "r-live", "built_at": "2026-12-06T09:00:00Z"}
    status, page = ask(admin, "/_site/", x_forwarded_for="2001:db8::7")
    assert status == 200 and "r-live" in page and "id=token" in page
    for text in (body, page):
        for private in PRIVATE:
            assert private not in text, private


def test_the_token_shows_everything_and_a_wrong_one_is_refused(admin: SiteAdmin) -> None:
    status, body = ask(admin, "/_site/status", authorization=f"Bearer {SECRET}", x_forwarded_for="2001:db8::7")
    full = json.loads(body)
    assert status == 200 and full["builds"][0]["subject"] == SUBJECT and full["scheduled"] and full["healthy"]
    assert set(full["releases"]) == {"r-live", "r-older"}
    status, page = ask(admin, "/_site/", authorization=f"Bearer {SECRET}")
    assert status == 200 and [private for private in PRIVATE if private not in page] == []
    assert "form class=rollback" in page
    assert ask(admin, "/_site/status", authorization="Bearer guess")[0] == 403
    # Another scheme (a site behind Basic auth) is no token: the public page, nothing charged.
    status, page = ask(admin, "/_site/", authorization="Basic b3duZXI6dG9rZW4=")
    assert status == 200 and SUBJECT not in page
    # Guessing is refused per client once its budget is spent; others are not affected.
    # Guessing is refused per client (an IPv6 client is its /64) once its budget is spent; others are
    # not affected.
    codes = [ask(admin, "/_site/status", remote=f"2001:db8::{n + 1:x}", authorization="Bearer guess")[0]
             for n in range(30)]
    assert codes[0] == 403 and codes[-1] == 429
    assert ask(admin, "/_site/status", remote="2001:db8::9", authorization=f"Bearer {SECRET}")[0] == 429
    assert ask(admin, "/_site/status", remote="2001:db8:1::9", authorization=f"Bearer {SECRET}")[0] == 200


def test_the_metrics_are_the_owners(admin: SiteAdmin) -> None:
    status, body = ask(admin, "/_site/metrics")
    assert status == 401 and "c0ffee" not in body
    status, body = ask(admin, "/_site/metrics", authorization=f"Bearer {SECRET}")
    assert status == 200 and "pequod_live_release_info" in body


def test_inside_the_instance_is_the_owner_but_not_what_the_frontend_forwards(admin: SiteAdmin) -> None:
    assert "builds" in json.loads(ask(admin, "/_site/status", remote="::1")[1])
    assert "builds" in json.loads(ask(admin, "/_site/status", remote="127.0.0.1")[1])
    assert "builds" not in json.loads(ask(admin, "/_site/status", remote="::1", x_forwarded_for="::1")[1])


def test_a_site_without_a_token_shows_its_deploy_data_to_no_stranger(tmp_path: Path, admin: SiteAdmin) -> None:
    admin.hook_guard = HookGuard(None)
    assert ask(admin, "/_site/status", authorization="Bearer anything")[0] == 404
    status, page = ask(admin, "/_site/")
    assert status == 200 and SUBJECT not in page and "has no token" in page and "id=token" not in page


def test_the_page_script_keeps_the_token_in_memory_only() -> None:
    for storage in ("localStorage", "sessionStorage", "document.cookie", "indexedDB"):
        assert storage not in deploy_page.SCRIPT
    csp = dict(deploy_page.HEADERS)["Content-Security-Policy"]
    assert "connect-src 'self'" in csp and "unsafe-inline" not in csp
