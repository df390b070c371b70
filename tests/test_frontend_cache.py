"""The frontend with real HAProxy and serve.py: a large page hammered by many clients while its cache entry
keeps expiring is always served whole (partially cached pages were seen elsewhere); spellings of one file
share one cache entry; a GET or HEAD with a body is refused; where the frontend is told of swaps, a page
stays cached between them (clients still see the instance's Cache-Control) and is forgotten at one, and a
reloaded HAProxy is told each backend's last swap again."""

from __future__ import annotations

import concurrent.futures
import contextlib
import gzip
import ipaddress
import os
import random
import socket
import string
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from container.frontend import RELEASED_LIFE, SWAPS, Server, Service, cli, render_haproxy_conf
from tests.helpers import REPO_ROOT, Process, free_port, python_env, wait_for

pytestmark = pytest.mark.system  # HAProxy, ports


@contextlib.contextmanager
def frontend(tmp_path: Path, release: Path, swaps: bool = False) -> Iterator[int]:
    """HAProxy as the agent configures it, in front of serve.py serving `release`; HAProxy's port. With `swaps`,
    the backend's cache forgets at a swap (the agent's swaps map, set through HAProxy's runtime API)."""
    (tmp_path / "current").symlink_to(release)
    if swaps:
        (tmp_path / SWAPS).write_text("site 0\n")
    backend, port = free_port(), free_port()
    serve = Process([sys.executable, str(REPO_ROOT / "serve.py"), str(tmp_path / "current"), "--host", "::1",
                     "--port", str(backend)], python_env(), tmp_path / "serve.log")
    config = tmp_path / "haproxy.cfg"
    config.write_text(render_haproxy_conf(
        (Service("site", ipaddress.IPv6Address("::1"), port, "/_site/health",
                 (Server("s1", ipaddress.IPv6Address("::1"), backend),), swaps=swaps),), tmp_path))
    haproxy = Process(["haproxy", "-W", "-f", str(config)], python_env(), tmp_path / "haproxy.log")
    try:
        wait_for("the site through HAProxy",
                 lambda: requests.get(f"http://[::1]:{port}/", timeout=5).status_code == 200, 30)
        yield port
    finally:
        haproxy.stop()
        serve.stop()


def raw_request(port: int, data: bytes) -> bytes:
    with socket.create_connection(("::1", port), timeout=10) as sock:
        sock.sendall(data)
        return sock.recv(4096)


def test_large_page_under_concurrent_misses_is_served_whole(tmp_path: Path) -> None:
    release = tmp_path / "releases" / "r1"
    release.mkdir(parents=True)
    rng = random.Random(7)  # incompressible, so no .gz shortcut
    page = "<html>" + "".join(rng.choice(string.ascii_letters) for _ in range(1_500_000)) + "</html>"
    (release / "index.html").write_text(page)
    with frontend(tmp_path, release) as port:
        url = f"http://[::1]:{port}/"

        def fetch(_: int) -> tuple[int, bool]:
            response = requests.get(url, headers={"Accept-Encoding": "identity"}, timeout=10)
            return len(response.content), "Age" in response.headers

        results = []
        deadline = time.monotonic() + 4  # several expiries of the 1 s entries
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            while time.monotonic() < deadline:
                results += pool.map(fetch, range(64))
        assert {size for size, _cached in results} == {len(page)}
        assert any(cached for _size, cached in results)  # some came from the cache


def test_spellings_of_one_file_share_one_cache_entry(tmp_path: Path) -> None:
    release = tmp_path / "releases" / "r1"
    (release / "posts" / "x").mkdir(parents=True)
    (release / "index.html").write_text("<html>home</html>")
    (release / "posts" / "x" / "index.html").write_text("<html>post x</html>")
    with frontend(tmp_path, release) as port:
        base = f"http://[::1]:{port}"
        first = requests.get(f"{base}/posts/x/", timeout=5)
        assert first.text == "<html>post x</html>" and "Age" not in first.headers  # the instance answered
        for spelling in ("/posts//x/", "//posts/x/", "/posts/x//", "/posts///x/"):
            again = requests.get(base + spelling, timeout=5)
            assert again.text == "<html>post x</html>" and "Age" in again.headers, spelling  # from the cache
        redirect = requests.get(f"{base}/posts//x", allow_redirects=False, timeout=5)
        assert redirect.status_code == 301 and redirect.headers["Location"] == "/posts/x/"


def test_a_client_that_asks_for_no_coding_gets_the_page_plain_after_a_browser_got_it_gzipped(tmp_path: Path) -> None:
    """HAProxy's cache takes a request without Accept-Encoding as accepting any coding, so curl got the
    gzip bytes a browser's request had stored; the frontend asks for identity for such a client."""
    release = tmp_path / "releases" / "r1"
    release.mkdir(parents=True)
    page = "<html>" + "a page worth compressing " * 100 + "</html>"
    (release / "index.html").write_text(page)
    (release / "index.html.gz").write_bytes(gzip.compress(page.encode()))
    with frontend(tmp_path, release) as port:
        for _ in range(3):
            browser = requests.get(f"http://[::1]:{port}/", headers={"Accept-Encoding": "gzip, br"}, timeout=5)
            assert browser.headers.get("Content-Encoding") == "gzip" and browser.text == page
            answer = raw_request(port, b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
            head, _, body = answer.partition(b"\r\n\r\n")
            assert b"Content-Encoding" not in head and body.startswith(b"<html>a page"), head


def test_a_get_or_head_with_a_body_is_refused(tmp_path: Path) -> None:
    release = tmp_path / "releases" / "r1"
    release.mkdir(parents=True)
    (release / "index.html").write_text("<html>home</html>")
    with frontend(tmp_path, release) as port:
        for method in (b"GET", b"HEAD"):
            answer = raw_request(port, method + b" / HTTP/1.1\r\nHost: b\r\nContent-Length: 5\r\n\r\nhello")
            assert answer.startswith(b"HTTP/1.1 400"), (method, answer)
            answer = raw_request(port, method + b" / HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\n\r\n"
                                 b"5\r\nhello\r\n0\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 411"), (method, answer)
            answer = raw_request(port, method + b" / HTTP/1.1\r\nHost: b\r\nContent-Length: 0\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 200"), (method, answer)
            # HTTP/2 (here cleartext, as HAProxy also takes it on the plain port) with a body and no length
            h2 = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-X", method, "--data-binary", "hello",
                                 "-H", "Content-Length:", "-H", "Content-Type:", "-o", "/dev/null", "-D", "-",
                                 "-w", "%{http_version} %{http_code}", f"http://[::1]:{port}/"],
                                capture_output=True, text=True, timeout=30)
            assert h2.stdout.endswith("2 400"), h2.stdout + h2.stderr
            assert "server: pequod" not in h2.stdout.lower()  # refused by HAProxy, not only by the instance


def test_between_swaps_a_page_stays_cached_and_at_a_swap_it_is_forgotten(tmp_path: Path) -> None:
    """Hot pages are asked of the instance once per RELEASED_LIFE, not every second (each expiry makes every
    connection wanting the page wait on the instance), and the client sees the Cache-Control the instance
    sent, whether the page came from the instance, from the cache, or as a 304 from the cache."""
    r1, r2 = tmp_path / "releases" / "r1", tmp_path / "releases" / "r2"
    for release, text in ((r1, "first"), (r2, "second")):
        (release / "posts" / "x").mkdir(parents=True)
        (release / "posts" / "x" / "index.html").write_text(f"<html>{text}</html>")
        (release / "index.html").write_text("<html>home</html>")
    with frontend(tmp_path, r1, swaps=True) as port:
        url = f"http://[::1]:{port}/posts/x/"
        first = requests.get(url, timeout=5)
        assert first.text == "<html>first</html>" and "Age" not in first.headers  # the instance answered
        (tmp_path / "current.new").symlink_to(r2)
        os.replace(tmp_path / "current.new", tmp_path / "current")  # a swap the frontend has not been told of
        time.sleep(2.5)  # past the 1 s the instance allows (s-maxage=1)
        held = requests.get(url, timeout=5)
        assert held.text == "<html>first</html>" and int(held.headers["Age"]) >= 2, held.headers
        assert int(held.headers["Age"]) <= RELEASED_LIFE
        unchanged = requests.get(url, headers={"If-None-Match": first.headers["ETag"]}, timeout=5)
        assert unchanged.status_code == 304 and "Age" in unchanged.headers
        for answer in (first, held, unchanged):
            assert answer.headers["Cache-Control"] == "public, s-maxage=1", answer.headers
        told = cli(tmp_path / "admin.sock", f"set map {tmp_path / SWAPS} site {int(time.time() * 1000)}\n")
        assert told.strip() == ""
        after = requests.get(url, timeout=5)  # the agent's Frontend.forget, as at a swap
        assert after.text == "<html>second</html>" and "Age" not in after.headers
        again = requests.get(url, timeout=5)
        assert again.text == "<html>second</html>" and "Age" in again.headers  # cached again at once
        assert again.headers["Cache-Control"] == "public, s-maxage=1"


def test_after_a_reload_the_new_worker_knows_each_backends_last_swap(tmp_path: Path) -> None:
    """A swap told while HAProxy reloads may reach the old worker after the new one read the swaps map's file:
    the agent's Frontend tells the new worker every backend's last swap again once it runs."""
    from container.frontend import Frontend

    address = ipaddress.IPv6Address("::1")
    front = Frontend(tmp_path / "state")

    try:
        server = Server("s1", address, free_port())
        assert front.apply((Service("site", address, free_port(), "/_site/health", (server,), swaps=True),))
        wait_for("HAProxy's runtime API", lambda: front.reloads() is not None, 30)
        assert front.forget("site")
        told = front.swaps["site"]
        # As if the new worker had read the file just before the swap was written to it:
        (front.dir / SWAPS).write_text("site 1\n")
        front.reload()
        shown = cli(front.dir / "admin.sock", f"show map {front.dir / SWAPS}\n")
        assert f"site {told}" in shown, shown
    finally:
        front.stop()
