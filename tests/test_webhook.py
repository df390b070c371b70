"""The webhook: the guard's rules as units, then serve.py and the watcher for real (a valid hook,
and a push to a local remote, publish at once although the poll interval is a minute)."""

from __future__ import annotations

import gzip
import hashlib
import hmac
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from pipeline.serve.webhook import MAX_BODY, HookGuard
from tests.helpers import REPO_ROOT, Process, SiteRepo, free_port, python_env, wait_for

pytestmark = pytest.mark.system  # run.sh with real Nikola builds, ports

SECRET = "s3cret-hook"


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_guard_rules() -> None:
    body = b'{"ref": "refs/heads/main"}'
    guard = HookGuard(SECRET, clock=Clock())
    assert guard.precheck(len(body)) is None
    assert guard.check({"x-hub-signature-256": sign(body), "x-github-delivery": "d-1"}, body).status == 202
    assert guard.check({"x-hub-signature-256": sign(body), "x-github-delivery": "d-1"}, body).reason == \
        "replayed delivery"
    assert guard.check({"x-hub-signature-256": sign(body)}, body).status == 409  # same signature, no id
    assert guard.check({"x-hub-signature-256": sign(body + b" ")}, body).status == 403  # forged
    assert guard.check({"x-hub-signature-256": sign(body, "guess")}, body).status == 403
    assert guard.check({"x-hub-signature-256": "sha1=abc"}, body).status == 403
    assert guard.check({}, body).status == 401
    assert guard.check({"authorization": f"Bearer {SECRET}"}, b"").status == 202
    assert guard.check({"x-hook-token": SECRET}, b"").status == 202
    assert guard.check({"x-hook-token": SECRET + "x"}, b"").status == 403
    assert guard.precheck(MAX_BODY + 1).status == 413
    assert guard.precheck(None).status == 411
    assert HookGuard(None).precheck(10).status == 404


def test_guard_rate_limit_counts_refusals_per_client() -> None:
    clock = Clock()
    guard = HookGuard(SECRET, burst=3, per_second=2.0, clock=clock)
    for _ in range(3):
        assert guard.precheck(0, "attacker") is None
        assert guard.refused("attacker", guard.check({}, b"")).status == 401
    assert guard.precheck(0, "attacker").status == 429
    # Another client, valid or not, is not affected; valid requests are never charged.
    for _ in range(20):
        assert guard.precheck(0, "github") is None
        assert guard.refused("github", guard.check({"x-hook-token": SECRET}, b"")).status == 202
    clock.now += 0.5  # one token back for the attacker
    assert guard.precheck(0, "attacker") is None
    assert guard.refused("attacker", guard.check({"x-hook-token": "guess"}, b"")).status == 403
    assert guard.precheck(0, "attacker").status == 429


def test_guard_refuses_bad_lengths() -> None:
    guard = HookGuard(SECRET)
    assert guard.precheck(-1, "c").status == 400
    assert guard.precheck(MAX_BODY + 1, "c").status == 413
    assert guard.precheck(None, "c").status == 411


@pytest.fixture
def hook_server(tmp_path: Path) -> Iterator[tuple[str, Path, Process]]:
    release = tmp_path / "data" / "releases" / "20260101T000000Z-aaaaaaaaaaaa"
    release.mkdir(parents=True)
    page = "<html><body>" + "A paragraph of the blog. " * 200 + "</body></html>"
    (release / "index.html").write_text(page)
    (release / "index.html.gz").write_bytes(gzip.compress(page.encode(), mtime=0))  # as a publish writes it
    (tmp_path / "data" / "current").symlink_to("releases/20260101T000000Z-aaaaaaaaaaaa")
    port = free_port()
    wake = tmp_path / "data" / "wake"
    process = Process([str(Path(python_env()["PATH"].split(":")[0]) / "python"), str(REPO_ROOT / "serve.py"),
                       str(tmp_path / "data" / "current"), "--port", str(port), "--host", "::1",
                       "--wake-file", str(wake)], python_env(WEBHOOK_SECRET=SECRET), tmp_path / "serve.log")
    base = f"http://[::1]:{port}"
    try:
        wait_for("serve.py", lambda: requests.get(base + "/_site/health", timeout=2).status_code == 200, 20)
        yield base, wake, process
    finally:
        process.stop()


def test_hook_endpoint_refuses_what_it_must_and_wakes_on_valid(hook_server: tuple[str, Path, Process]) -> None:
    base, wake, process = hook_server
    url = base + "/_site/hook"
    body = json.dumps({"ref": "refs/heads/main", "after": "0" * 40}).encode()
    assert requests.get(url, timeout=5).status_code == 405
    assert requests.post(url, data=body, timeout=5).status_code == 401
    forged = requests.post(url, data=body, headers={"X-Hub-Signature-256": sign(body, "wrong")}, timeout=5)
    assert forged.status_code == 403 and not wake.exists()
    signed = {"X-Hub-Signature-256": sign(body), "X-GitHub-Delivery": "7f2c", "X-GitHub-Event": "push"}
    accepted = requests.post(url, data=body, headers=signed, timeout=5)
    assert accepted.status_code == 202 and accepted.json() == {"accepted": True, "reason": "signed push"}
    assert wake.exists()
    assert requests.post(url, data=body, headers=signed, timeout=5).status_code == 409  # replayed
    assert requests.post(url, headers={"Authorization": f"Bearer {SECRET}"}, timeout=5).status_code == 202
    # Refused by the HTTP server itself (max_request_body_size), before the application reads it.
    assert requests.post(url, data=b"x" * (MAX_BODY + 1), headers=signed, timeout=10).status_code == 413
    negative = requests.post(url, data=b"", headers={"X-Hook-Token": SECRET, "Content-Length": "-1"}, timeout=5)
    assert negative.status_code == 400
    statuses = [requests.post(url, headers={"X-Hook-Token": "nope"}, timeout=5).status_code for _ in range(15)]
    assert 429 in statuses and set(statuses) <= {403, 429}
    # The refusals were charged to that client only: a request from another client (as HAProxy names it
    # in X-Forwarded-For) with the token is still accepted.
    other = {"X-Hook-Token": SECRET, "X-Forwarded-For": "192.0.2.7"}
    assert requests.post(url, headers=other, timeout=5).status_code == 202
    expected = ("401 unsigned request", "403 bad signature", "202 signed push", "409 replayed delivery",
                "400 negative Content-Length", "429 too many refused requests")
    wait_for(f"every refusal and acceptance in serve.py's log: {expected}",
             lambda: all(line in process.log for line in expected), 5, interval=0.05)


def test_a_client_cannot_name_whose_refusal_budget_it_spends(hook_server: tuple[str, Path, Process]) -> None:
    """`X_Forwarded_For` would land in the same WSGI key as the X-Forwarded-For HAProxy appends, after it;
    serve.py drops underscore headers, so guesses from one client (one /64) run out of budget all the
    same, and the owner elsewhere is not locked out."""
    base = hook_server[0]
    statuses = []
    for attempt in range(15):
        headers = {"Authorization": "Bearer guess", "X-Forwarded-For": f"2001:db8:5::{attempt + 1}",
                   "X_Forwarded_For": f"198.51.100.{attempt}"}
        statuses.append(requests.get(base + "/_site/status", headers=headers, timeout=5).status_code)
    assert statuses[0] == 403 and statuses[-1] == 429, statuses
    owner = {"Authorization": f"Bearer {SECRET}", "X-Forwarded-For": "198.51.100.1"}
    assert "builds" in requests.get(base + "/_site/status", headers=owner, timeout=5).json()


def test_precompressed_pages_for_clients_that_accept_gzip(hook_server: tuple[str, Path, Process]) -> None:
    base, _wake, _process = hook_server
    plain = requests.get(base + "/", headers={"Accept-Encoding": "identity"}, timeout=5)
    packed = requests.get(base + "/", headers={"Accept-Encoding": "gzip, deflate"}, stream=True, timeout=5)
    raw = packed.raw.read(decode_content=False)
    assert "Content-Encoding" not in plain.headers and packed.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(raw).decode() == plain.text and len(raw) < len(plain.content) / 5
    assert plain.headers["Vary"] == packed.headers["Vary"] == "Accept-Encoding"
    assert plain.headers["ETag"] != packed.headers["ETag"]
    again = requests.get(base + "/", headers={"Accept-Encoding": "gzip", "If-None-Match": packed.headers["ETag"]},
                         timeout=5)
    assert again.status_code == 304
    refused = requests.get(base + "/", headers={"Accept-Encoding": "gzip;q=0"}, timeout=5)
    assert "Content-Encoding" not in refused.headers


def test_local_push_publishes_without_polling(site_repo: SiteRepo, start_site) -> None:
    # A poll interval of a minute: only watching the local remote's refs explains publishing in seconds.
    site = start_site(site_repo.url, POLL_INTERVAL=60)
    wait_for("the first release", lambda: site.status()["current"], 60)
    commit = site_repo.add_post("instant", "Instant publish")
    site.wait_live(commit, timeout=15)


def test_valid_hook_publishes_without_polling(site_repo: SiteRepo, start_site, tmp_path: Path) -> None:
    port = free_port()
    daemon = Process(["git", "daemon", "--reuseaddr", "--export-all", f"--base-path={site_repo.bare.parent}",
                      "--listen=::1", f"--port={port}", str(site_repo.bare.parent)], python_env(),
                     tmp_path / "git-daemon.log")
    try:
        # A remote the watcher cannot watch, and a poll interval of a minute: only the hook wakes it.
        site = start_site(f"git://[::1]:{port}/{site_repo.bare.name}", POLL_INTERVAL=60, WEBHOOK_SECRET=SECRET)
        first = wait_for("the first release", lambda: site.status()["current"], 60)
        commit = site_repo.add_post("hooked", "Published by a hook")
        body = json.dumps({"ref": "refs/heads/main", "after": commit}).encode()
        forged = requests.post(site.base + "/_site/hook", data=body,
                               headers={"X-Hub-Signature-256": sign(body, "guess")}, timeout=5)
        assert forged.status_code == 403
        # The wake file is serve.py's only way to wake the watcher (another process), and serve.py has
        # answered: untouched now, it never will be. The signed hook below shows that channel works.
        wake_file = site.data_dir / "wake"
        assert not wake_file.exists()
        assert site.status()["current"]["commit"] == first["commit"]  # neither the forged hook nor a poll
        signed = requests.post(site.base + "/_site/hook", data=body,
                               headers={"X-Hub-Signature-256": sign(body), "X-GitHub-Delivery": "abc"}, timeout=5)
        assert signed.status_code == 202 and wake_file.exists()
        site.wait_live(commit, timeout=15)
    finally:
        daemon.stop()
