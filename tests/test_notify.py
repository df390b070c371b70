"""Deploy notifications: signed events for success, failure and recovery, never delaying a publish."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.helpers import SiteRepo, free_port, wait_for

pytestmark = pytest.mark.system  # run.sh with real Nikola builds, ports

SECRET = "notify-secret"


class Receiver:
    """A chat-webhook-like receiver on ::1 that records what it gets."""

    def __init__(self) -> None:
        self.port = free_port()
        self.events: list[tuple[dict, dict]] = []  # (headers, body)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.events.append((dict(self.headers), json.loads(body) | {"_raw": body.decode()}))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            address_family = __import__("socket").AF_INET6

        self.server = Server(("::1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://[::1]:{self.port}/pequod"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait(self, event: str, commit: str) -> tuple[dict, dict]:
        def found() -> tuple[dict, dict] | None:
            return next(((h, b) for h, b in self.events if b["event"] == event and b["commit"] == commit), None)
        return wait_for(f"{event} for {commit[:12]}", found, 60, interval=0.2)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.stop()


def test_events_are_signed_and_a_dead_receiver_delays_nothing(site_repo: SiteRepo, start_site,
                                                             receiver: Receiver) -> None:
    site = start_site(site_repo.url, NOTIFY_URL=receiver.url, NOTIFY_SECRET=SECRET)
    first = site_repo.clone.head.commit.hexsha
    headers, body = receiver.wait("deploy.succeeded", first)
    expected = "sha256=" + hmac.new(SECRET.encode(), body["_raw"].encode(), hashlib.sha256).hexdigest()
    assert headers["X-Pequod-Signature-256"] == expected and headers["X-Pequod-Event"] == "deploy.succeeded"
    assert body["subject"] == "Initial site" and body["release"] and body["error"] is None
    assert SECRET not in body["_raw"]

    (site_repo.work / "conf.py").write_text("this is not python\n")
    bad = site_repo.commit("Broken conf.py")
    _, failed = receiver.wait("deploy.failed", bad)
    assert "nikola build failed" in failed["error"] and "conf.py" in failed["log_tail"]
    site_repo.clone.git.checkout(first, "--", "conf.py")
    fixed = site_repo.commit("Fixed conf.py")
    receiver.wait("deploy.recovered", fixed)

    receiver.stop()  # down: the publish does not wait for it
    started = time.monotonic()
    later = site_repo.add_post("while-down", "Published while the receiver is down")
    site.wait_live(later, timeout=30)
    assert time.monotonic() - started < 10
    note = wait_for("the undelivered notification on the status",
                    lambda: (site.status().get("notifications") or {}).get("last_error"), 60, interval=0.5)
    assert "deploy.succeeded" in note["message"] and "not delivered" in note["message"]
    assert "Notification not delivered" in site.get("/_site/").text


def test_a_previews_build_is_notified_with_its_address(site_repo: SiteRepo, start_site, receiver: Receiver) -> None:
    from tests.test_previews import HOST, PASSWORD, push_branch

    site = start_site(site_repo.url, NOTIFY_URL=receiver.url, NOTIFY_SECRET=SECRET, PREVIEWS_HOST=HOST,
                      PREVIEWS_PASSWORD=PASSWORD)
    receiver.wait("deploy.succeeded", site_repo.clone.head.commit.hexsha)
    commit = push_branch(site_repo, "New_Theme", "theme-post", "Theme branch post")
    headers, body = receiver.wait("preview.succeeded", commit)
    assert headers["X-Pequod-Event"] == "preview.succeeded"
    assert (body["branch"], body["preview"]) == ("New_Theme", f"http://new-theme--{HOST}/")
    assert body["subject"] == "Theme branch post on New_Theme" and body["error"] is None
    assert PASSWORD not in body["_raw"]
    assert site.status()["builds"][0]["commit"] != commit  # the site's history has no preview
