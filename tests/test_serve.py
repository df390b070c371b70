"""serve.py as a real process: files, redirects, 404, caching headers, path safety, health."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.helpers import REPO_ROOT, Process, free_port, python_env, wait_for

SECRET = "TOP-SECRET-OUTSIDE-THE-RELEASE"
SERVERS: dict[str, int] = {}  # base URL → pid of the serve.py answering there


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    data = tmp_path / "data"
    release = data / "releases" / "20260101T000000Z-aaaaaaaaaaaa"
    (release / "sub").mkdir(parents=True)
    (release / "index.html").write_text("<html>home</html>")
    (release / "404.html").write_text("<html>custom not found</html>")
    (release / "sub" / "index.html").write_text("<html>sub</html>")
    (release / "style.css").write_text("body{}")
    (release / "big.bin").write_bytes(os.urandom(3 << 20))
    (release / "link-in.html").symlink_to("index.html")
    (release / "link-out.txt").symlink_to(data / "secret.txt")
    (release / "dir-out").symlink_to(data)
    # Symlinks out of the release where serve.py looks by itself: a directory index, a .gz twin.
    (release / "index-out").mkdir()
    (release / "index-out" / "index.html").symlink_to(data / "secret.txt")
    (release / "twin.css").write_text("body{color:red}" * 100)
    (release / "twin.css.gz").symlink_to(data / "secret.txt")
    (data / "secret.txt").write_text(SECRET)
    (data / "releases" / "secret.txt").write_text(SECRET)
    port = free_port()
    process = Process(
        [str(python_env()["PATH"].split(":")[0] + "/python"), str(REPO_ROOT / "serve.py"), str(data / "current"),
         "--port", str(port), "--host", "::1"],
        python_env(), tmp_path / "serve.log",
    )
    base = f"http://[::1]:{port}"
    SERVERS[base] = process.proc.pid
    try:
        wait_for("serve.py", lambda: requests.get(base + "/_site/health", timeout=2).status_code == 503, 20)
        yield base, data
    finally:
        process.stop()
        SERVERS.pop(base, None)


def go_live(data: Path) -> None:
    (data / "current").symlink_to("releases/20260101T000000Z-aaaaaaaaaaaa")


def raw_get(base: str, path: str, accept_gzip: bool = False) -> tuple[int, bytes]:
    host, port = base.removeprefix("http://[").split("]:")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    conn.putrequest("GET", path, skip_host=False, skip_accept_encoding=True)
    if accept_gzip:
        conn.putheader("Accept-Encoding", "gzip")
    conn.endheaders()
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, body


def test_health_turns_200_once_a_release_is_live(server: tuple[str, Path]) -> None:
    base, data = server
    assert requests.get(base + "/_site/health", timeout=5).status_code == 503
    assert requests.get(base + "/", timeout=5).status_code == 503
    go_live(data)
    health = requests.get(base + "/_site/health", timeout=5)
    assert health.status_code == 200
    assert health.json()["release"] == "20260101T000000Z-aaaaaaaaaaaa"


def test_files_index_redirect_and_404(server: tuple[str, Path]) -> None:
    base, data = server
    go_live(data)
    home = requests.get(base + "/", timeout=5)
    assert home.status_code == 200 and home.text == "<html>home</html>"
    assert home.headers["Content-Type"].startswith("text/html")
    assert home.headers["X-Site-Release"] == "20260101T000000Z-aaaaaaaaaaaa"
    moved = requests.get(base + "/sub?x=1", timeout=5, allow_redirects=False)
    assert moved.status_code == 301 and moved.headers["Location"] == "/sub/?x=1"
    assert requests.get(base + "/sub/", timeout=5).text == "<html>sub</html>"
    missing = requests.get(base + "/no/such/page.html", timeout=5)
    assert missing.status_code == 404 and "custom not found" in missing.text
    assert requests.get(base + "/style.css", timeout=5).headers["Content-Type"].startswith("text/css")
    big = requests.get(base + "/big.bin", timeout=10)
    assert big.content == (data / "releases/20260101T000000Z-aaaaaaaaaaaa/big.bin").read_bytes()
    assert requests.get(base + "/link-in.html", timeout=5).text == "<html>home</html>"
    assert requests.post(base + "/", timeout=5).status_code == 405
    assert requests.head(base + "/", timeout=5).headers["Content-Length"] == str(len("<html>home</html>"))


def test_spellings_of_one_path_share_one_memo_entry_and_a_body_on_get_or_head_is_refused(
        server: tuple[str, Path]) -> None:
    base, data = server
    go_live(data)
    for spelling in ("/sub/", "/sub//", "/sub///", "/sub/"):  # (cheroot reads a leading // as a host name)
        assert requests.get(base + spelling, timeout=5).text == "<html>sub</html>"
    metrics = requests.get(base + "/_site/metrics", timeout=5).text
    assert "pequod_answer_cache_entries 1.0" in metrics
    assert 'pequod_answer_cache_lookups_total{result="hit"} 3.0' in metrics
    assert requests.get(base + "/sub//?x=1", allow_redirects=False, timeout=5).status_code == 200
    # Without the frontend (a cluster's Ingress in front), the instance itself refuses what the frontend does.
    host, port = base.removeprefix("http://[").split("]:")
    for method in ("GET", "HEAD"):
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
        conn.request(method, "/", body=b"hello")
        response = conn.getresponse()
        response.read()
        conn.close()
        assert response.status == 400, method


def test_etag_last_modified_and_304(server: tuple[str, Path]) -> None:
    base, data = server
    go_live(data)
    first = requests.get(base + "/style.css", timeout=5)
    etag, modified = first.headers["ETag"], first.headers["Last-Modified"]
    assert "max-age" in first.headers["Cache-Control"]
    page = requests.get(base + "/", timeout=5).headers
    assert page["Cache-Control"] == "public, s-maxage=1" and page["Expires"] == "Thu, 01 Jan 1970 00:00:00 GMT"
    again = requests.get(base + "/style.css", headers={"If-None-Match": etag}, timeout=5)
    assert again.status_code == 304 and again.content == b""
    since = requests.get(base + "/style.css", headers={"If-Modified-Since": modified}, timeout=5)
    assert since.status_code == 304
    # A new release (releases never change once published) answers anew, also for a kept tag.
    time.sleep(0.01)
    shutil.copytree(data / "releases/20260101T000000Z-aaaaaaaaaaaa", data / "releases/20260102T000000Z-bbbbbbbbbbbb",
                    symlinks=True)
    (data / "releases/20260102T000000Z-bbbbbbbbbbbb/style.css").write_text("body{color:red}")
    (data / "next").symlink_to("releases/20260102T000000Z-bbbbbbbbbbbb")
    os.replace(data / "next", data / "current")
    changed = requests.get(base + "/style.css", headers={"If-None-Match": etag}, timeout=5)
    assert changed.status_code == 200 and changed.text == "body{color:red}"
    assert changed.headers["X-Site-Release"] == "20260102T000000Z-bbbbbbbbbbbb"


@pytest.mark.parametrize("path", [
    "/../secret.txt",
    "/../../../../etc/passwd",
    "/%2e%2e/secret.txt",
    "/%2E%2E/%2E%2E/secret.txt",
    "/..%2fsecret.txt",
    "/%2e%2e%2fsecret.txt",
    "/sub/..%2f..%2fsecret.txt",
    "/sub/%2e%2e%5c%2e%2e%5csecret.txt",
    "/..\\secret.txt",
    "/%252e%252e/secret.txt",
    "/%c0%ae%c0%ae/secret.txt",
    "/sub/../../secret.txt",
    "/secret.txt%00.html",
    "/%00",
    "/link-out.txt",
    "/dir-out/secret.txt",
    "/dir-out/releases/secret.txt",
    "//secret.txt",
    "/./../secret.txt",
    "/index-out/",
    "/twin.css",
])
def test_no_request_reads_outside_the_release(server: tuple[str, Path], path: str) -> None:
    base, data = server
    go_live(data)
    status, body = raw_get(base, path)
    _, gzipped = raw_get(base, path, accept_gzip=True)
    assert SECRET.encode() not in body and SECRET.encode() not in gzipped
    assert b"root:" not in body
    # The server reads "//secret.txt" as an authority ("secret.txt") and path "/": the home page; twin.css
    # is served itself (its .gz twin, a symlink out, is not).
    assert status in (400, 404) or body in (b"<html>home</html>", b"body{color:red}" * 100), (path, status)


def test_status_reports_the_live_release(server: tuple[str, Path]) -> None:
    base, data = server
    assert requests.get(base + "/_site/status", timeout=5).json()["current"] is None
    go_live(data)
    (data / "releases" / "20260101T000000Z-aaaaaaaaaaaa.json").write_text(
        '{"release": "20260101T000000Z-aaaaaaaaaaaa", "commit": "aaaa", "built_at": "2026-01-01T00:00:00Z",'
        ' "build_seconds": 1.5, "mode": "clean"}'
    )
    status = requests.get(base + "/_site/status", timeout=5).json()
    assert status["current"] == {
        "release": "20260101T000000Z-aaaaaaaaaaaa", "commit": "aaaa",
        "built_at": "2026-01-01T00:00:00Z", "build_seconds": 1.5,
    }
    assert status["releases"] == ["20260101T000000Z-aaaaaaaaaaaa"]


def test_reserved_paths_are_not_shadowed_by_content(server: tuple[str, Path]) -> None:
    base, data = server
    release = data / "releases" / "20260101T000000Z-aaaaaaaaaaaa"
    (release / "_site").mkdir()
    (release / "_site" / "health").write_text("shadow")
    go_live(data)
    assert requests.get(base + "/_site/health", timeout=5).json()["healthy"] is True


def test_burst_of_many_clients_is_served(server: tuple[str, Path]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    base, data = server
    go_live(data)

    def fetch(_: int) -> int:
        with requests.Session() as session:
            return sum(session.get(base + "/", timeout=10).status_code == 200 for _ in range(5))

    with ThreadPoolExecutor(max_workers=48) as pool:
        assert sum(pool.map(fetch, range(48))) == 48 * 5


def test_404_page_symlinked_out_of_the_release_is_not_served(server: tuple[str, Path]) -> None:
    base, data = server
    release = data / "releases" / "20260101T000000Z-aaaaaaaaaaaa"
    (release / "404.html").unlink()
    (release / "404.html").symlink_to(data / "secret.txt")
    go_live(data)
    missing = requests.get(base + "/no-such-page", timeout=5)
    assert missing.status_code == 404 and SECRET not in missing.text


def test_server_header_names_the_server_not_the_bind_address(server: tuple[str, Path]) -> None:
    base, data = server
    go_live(data)
    assert requests.get(base + "/", timeout=5).headers["Server"] == "pequod"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_distinct_junk_paths_do_not_grow_memory(server: tuple[str, Path]) -> None:
    """Every distinct missing path used to be kept as an answer of its own (keys uncounted)."""
    base, data = server
    go_live(data)
    session = requests.Session()
    assert session.get(base + "/", timeout=5).status_code == 200
    server_pid = SERVERS[base]
    for number in range(200):  # warm up: thread stacks, allocator arenas
        session.get(f"{base}/{number:08d}" + "a" * 8000, headers={"Accept-Encoding": "gzip"}, timeout=5)
    before = rss_kib(server_pid)
    for number in range(3000):
        response = session.get(f"{base}/{number:08d}" + "a" * 8000, headers={"Accept-Encoding": "gzip"}, timeout=5)
        assert response.status_code == 404
    grown = rss_kib(server_pid) - before
    # 3000 keys of 8 kB each were 24 MB (and 100,000 through the frontend took a 384 MB instance down).
    assert grown < 8 * 1024, f"serve.py grew by {grown} KiB for 3000 distinct missing paths"
    assert session.get(base + "/", timeout=5).text == "<html>home</html>"


def write_status(data: Path, **fields: object) -> None:
    status = {"remote": "git://example.org/site.git", "branch": "main", "last_check": "2026-11-30T10:00:00Z",
              "last_error": None, "consecutive_failures": 0, "last_attempted_commit": None, "builds": []}
    status.update(fields)
    (data / "status.json").write_text(json.dumps(status))


def test_deploy_page_shows_everything_from_git_as_text(server: tuple[str, Path]) -> None:
    base, data = server
    go_live(data)
    write_status(data, builds=[
        {"commit": "c" * 40, "subject": "<script>alert(1)</script> A post", "author": "<b>Writer</b>",
         "result": "failed", "error": "nikola build failed with status 1", "log_tail": "<img src=x onerror=1>",
         "finished_at": "2026-11-30T10:00:00Z", "build_seconds": 1.5, "mode": "incremental"}],
        last_error={"at": "2026-11-30T10:00:00Z", "message": "nikola build failed with status 1"})
    page = requests.get(base + "/_site/", timeout=5)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "&lt;script&gt;alert(1)&lt;/script&gt; A post" in page.text and "<script>alert(1)" not in page.text
    assert "&lt;img src=x onerror=1&gt;" in page.text and "<img" not in page.text
    assert "nikola build failed with status 1" in page.text
    assert "make live" not in page.text  # no WEBHOOK_SECRET: no rollback
    assert requests.post(base + "/_site/rollback", data={"release": "x"}, timeout=5).status_code == 404


def test_metrics_are_valid_prometheus_text(server: tuple[str, Path]) -> None:
    base, data = server
    go_live(data)
    write_status(data, counters={"builds": {"success": 3, "failed": 2}, "remote_check_failures": 4,
                                 "build_seconds": {"buckets": {"1": 2, "2": 4, "5": 5}, "sum": 6.5, "count": 5},
                                 "last_success_at": 1764496800.0})
    for path in ("/", "/", "/missing"):
        requests.get(base + path, timeout=5)
    response = requests.get(base + "/_site/metrics", timeout=5)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain")
    check = subprocess.run(["promtool", "check", "metrics"], input=response.text, capture_output=True, text=True,
                           timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    text = response.text
    assert 'pequod_builds_total{result="failed"} 2.0' in text and "pequod_remote_check_failures_total 4.0" in text
    assert 'pequod_build_duration_seconds_bucket{le="+Inf"} 5.0' in text
    assert 'pequod_live_release_info{commit="",release="20260101T000000Z-aaaaaaaaaaaa"} 1.0' in text
    assert 'pequod_http_requests_total{code="2xx"}' in text and 'pequod_http_requests_total{code="4xx"}' in text
    assert 'pequod_answer_cache_lookups_total{result="hit"} 1.0' in text
