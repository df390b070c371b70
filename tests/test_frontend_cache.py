"""The frontend's cache with real HAProxy and serve.py: a large page hammered by many clients while its
cache entry keeps expiring is always served whole (partially cached pages were seen elsewhere)."""

from __future__ import annotations

import concurrent.futures
import ipaddress
import random
import string
import sys
import time
from pathlib import Path

import requests

from container.frontend import Server, Service, render_haproxy_conf
from tests.helpers import REPO_ROOT, Process, free_port, python_env, wait_for


def test_large_page_under_concurrent_misses_is_served_whole(tmp_path: Path) -> None:
    release = tmp_path / "releases" / "r1"
    release.mkdir(parents=True)
    rng = random.Random(7)  # incompressible, so no .gz shortcut
    page = "<html>" + "".join(rng.choice(string.ascii_letters) for _ in range(1_500_000)) + "</html>"
    (release / "index.html").write_text(page)
    (tmp_path / "current").symlink_to("releases/r1")
    backend, port = free_port(), free_port()
    serve = Process([sys.executable, str(REPO_ROOT / "serve.py"), str(tmp_path / "current"), "--host", "::1",
                     "--port", str(backend)], python_env(), tmp_path / "serve.log")
    config = tmp_path / "haproxy.cfg"
    config.write_text(render_haproxy_conf(
        (Service("site", ipaddress.IPv6Address("::1"), port, "/_site/health",
                 (Server("s1", ipaddress.IPv6Address("::1"), backend),)),), tmp_path))
    haproxy = Process(["haproxy", "-W", "-f", str(config)], python_env(), tmp_path / "haproxy.log")
    url = f"http://[::1]:{port}/"
    try:
        wait_for("the page through HAProxy", lambda: requests.get(url, timeout=5).status_code == 200, 30)

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
    finally:
        haproxy.stop()
        serve.stop()
