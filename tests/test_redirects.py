"""`_redirects`, `_headers` and Nikola's redirect pages: the parsers against a golden file of the documented
examples, matching at scale, and serve.py's WSGI application answering from a real release directory."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest
from nikola import utils as nikola_utils

import serve
from pipeline import releases, site_rules
from pipeline.headers import parse_headers
from pipeline.redirects import RuleError, parse_redirects

GOLDEN = Path(__file__).parent / "golden" / "redirects.txt"


def golden_cases() -> list[tuple[str, str, list[str]]]:
    cases, name, lines = [], None, []
    for line in GOLDEN.read_text().splitlines():
        if line.startswith("## "):
            if name:
                cases.append((name, lines))
            name, lines = line[3:], []
        elif name is not None:
            lines.append(line)
    cases.append((name, lines))
    result = []
    for case_name, case_lines in cases:
        checks = [line for line in case_lines if line.startswith(("> ", "! "))]
        rules = "\n".join(line for line in case_lines if not line.startswith(("> ", "! ")))
        result.append((case_name, rules, checks))
    return result


@pytest.mark.parametrize(("name", "rules", "checks"), golden_cases(), ids=[case[0] for case in golden_cases()])
def test_golden_redirects(name: str, rules: str, checks: list[str]) -> None:
    errors = [check[2:] for check in checks if check.startswith("! ")]
    if errors:
        with pytest.raises(RuleError) as raised:
            parse_redirects(rules, "files/_redirects")
        shown = str(raised.value)
        for expected in errors:
            assert expected in shown, (expected, shown)
        assert len(raised.value.problems) == len(errors)
        return
    parsed = parse_redirects(rules, "files/_redirects")
    for check in checks:
        request, expected = (part.strip() for part in re.split(r"\s+=\s+", check[2:], maxsplit=1))
        path, _, exists = request.partition(" ")
        path, _, query = path.partition("?")
        found = parsed.match(path, lambda exists=exists: exists == "file")
        if expected == "-":
            assert found is None, (request, found)
            continue
        assert found is not None, request
        rule, params = found
        assert f"{rule.status} {rule.location(params, query)}" == expected, request


def test_headers_blocks_add_up_and_replace_by_name() -> None:
    headers = parse_headers(
        "# every page\n/*\n  X-Frame-Options: DENY\n  X-Content-Type-Options: nosniff\n\n"
        "/posts/*\n  Content-Security-Policy: default-src 'self'\n"
        "/posts/:slug/\n  X-Frame-Options: SAMEORIGIN\n"
        "/assets/*\n  Cache-Control: public, max-age=31536000, immutable\n"
    )
    assert headers.for_path("/posts/welcome/") == [
        ("X-Frame-Options", "DENY, SAMEORIGIN"), ("X-Content-Type-Options", "nosniff"),
        ("Content-Security-Policy", "default-src 'self'"),
    ]
    assert headers.for_path("/about/") == [("X-Frame-Options", "DENY"), ("X-Content-Type-Options", "nosniff")]
    assert ("Cache-Control", "public, max-age=31536000, immutable") in headers.for_path("/assets/site.css")


@pytest.mark.parametrize(("text", "expected"), [
    ("/*\n  Content-Length: 5\n", "files/_headers:2: Content-Length cannot be set here: framing"),
    ("/*\n  Transfer-Encoding: chunked\n", "files/_headers:2: Transfer-Encoding cannot be set here: framing"),
    ("/*\n  Content-Encoding: br\n", "files/_headers:2: Content-Encoding cannot be set here"),
    ("/*\n  Connection: close\n", "files/_headers:2: Connection cannot be set here: a hop-by-hop header"),
    ("/*\n  Upgrade: h2c\n", "files/_headers:2: Upgrade cannot be set here"),
    ("/*\n  Keep-Alive: timeout=5\n", "files/_headers:2: Keep-Alive cannot be set here"),
    ("/*\n  Set-Cookie: a=b\n", "files/_headers:2: Set-Cookie cannot be set here"),
    ("  X-A: b\n", "files/_headers:1: 'X-A: b': a header comes below a path line"),
    ("/*\n  no colon here\n", "files/_headers:2: 'no colon here': expected `Name: value`"),
    ("/*\n  Bad Name: x\n", "files/_headers:2: 'Bad Name' is not a header name"),
    ("/*\n/x\n  X-A: b\n", "files/_headers:1: /* has no headers under it"),
    ("X-A: b\n", "files/_headers:1: 'X-A: b': a header line is indented below its path"),
])
def test_headers_that_would_break_the_server_are_refused(text: str, expected: str) -> None:
    with pytest.raises(RuleError) as raised:
        parse_headers(text, "files/_headers")
    assert expected in str(raised.value)


def test_thousands_of_rules_match_without_a_scan() -> None:
    count = 20000
    text = "\n".join(f"/old/post-{number}/ /posts/post-{number}/" for number in range(count))
    text += "\n/tag/:name /categories/:name/\n/archive/* /archives/:splat 302\n"
    started = time.perf_counter()
    parsed = parse_redirects(text)
    parse_seconds = time.perf_counter() - started
    assert len(parsed) == count + 2
    started = time.perf_counter()
    for number in range(0, count, 7):
        rule, params = parsed.match(f"/old/post-{number}/", lambda: False)
        assert rule.location(params, "") == f"/posts/post-{number}/"
    for _ in range(3000):
        assert parsed.match("/posts/unrelated/", lambda: False) is None
        rule, params = parsed.match("/archive/2020/05", lambda: False)
    per_lookup = (time.perf_counter() - started) / (count // 7 + 6000)
    assert rule.location(params, "a=1") == "/archives/2020/05?a=1"
    print(f"\n{count} rules parsed in {parse_seconds * 1000:.0f} ms; {per_lookup * 1e6:.1f} µs per lookup")
    assert per_lookup < 50e-6 and parse_seconds < 2


def test_nikola_redirect_pages_are_recognised_by_their_exact_text(tmp_path: Path) -> None:
    page = tmp_path / "old.html"
    nikola_utils.create_redirect(str(page), "/posts/welcome/")
    assert site_rules.nikola_redirect(page.read_bytes()) == "/posts/welcome/"
    page.write_text(page.read_text().replace("Page moved", "Moved"))
    assert site_rules.nikola_redirect(page.read_bytes()) is None
    nikola_utils.create_redirect(str(page), "/x\r\nSet-Cookie: a=b")
    assert site_rules.nikola_redirect(page.read_bytes()) is None


# -- serve.py's application on a real release directory -------------------------------------------------
def make_release(root: Path, redirects: str = "", headers: str = "") -> Path:
    release = root / "releases" / "20260101T000000.000Z-aaaaaaaaaaaa"
    (release / "posts" / "welcome").mkdir(parents=True)
    (release / "posts" / "welcome" / "index.html").write_text("<html>welcome</html>")
    (release / "about.html").write_text("<html>about</html>")
    (release / "gone.html").write_text("<html>gone for good</html>")
    (release / "404.html").write_text("<html>not here</html>")
    nikola_utils.create_redirect(str(release / "posts" / "old-welcome.html"), "/posts/welcome/")
    if redirects:
        (release / "_redirects").write_text(redirects)
    if headers:
        (release / "_headers").write_text(headers)
    (root / "current").symlink_to(os.path.relpath(release, root))
    return release


def call(app: serve.SiteApp, path: str, query: str = "") -> tuple[str, dict[str, str], bytes]:
    answered: list[Any] = []
    body = app({"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": query, "SCRIPT_NAME": ""},
               lambda status, headers, exc_info=None: answered.extend((status, headers)))
    data = b"".join(body)
    return answered[0], dict(answered[1]), data


def test_the_application_answers_with_the_release_rules(tmp_path: Path) -> None:
    make_release(
        tmp_path,
        "/moved/  /posts/welcome/\n/about.html /posts/welcome/ 302!\n/old-shop/* /gone.html 410\n"
        "/spa/* /about.html 200\n/about-unforced.html /x\n",
        "/posts/*\n  Content-Security-Policy: default-src 'self'\n  Cache-Control: no-cache\n",
    )
    app = serve.SiteApp(tmp_path / "current", None)
    status, headers, _ = call(app, "/moved/", "utm=1")
    assert (status, headers["Location"]) == ("301 Moved Permanently", "/posts/welcome/?utm=1")
    assert headers["Cache-Control"] == "public, s-maxage=1"
    assert call(app, "/about.html")[1]["Location"] == "/posts/welcome/"  # forced over an existing file
    status, _, body = call(app, "/old-shop/any")
    assert (status, body) == ("410 Gone", b"<html>gone for good</html>")
    status, _, body = call(app, "/spa/deep/link")
    assert (status, body) == ("200 OK", b"<html>about</html>")
    for _ in range(2):  # the second from the memo: headers all the same
        status, headers, _ = call(app, "/posts/welcome/")
        assert headers["Content-Security-Policy"] == "default-src 'self'" and headers["Cache-Control"] == "no-cache"
    assert "Content-Security-Policy" not in call(app, "/about-unforced.html")[1]
    status, headers, _ = call(app, "/posts/old-welcome.html", "a=b")  # Nikola's REDIRECTIONS page
    assert (status, headers["Location"]) == ("301 Moved Permanently", "/posts/welcome/?a=b")
    for hidden in ("/_redirects", "/_headers"):
        status, _, body = call(app, hidden)
        assert status == "404 Not Found" and b"not here" in body


def test_a_bad_rule_fails_staging_and_leaves_nothing(tmp_path: Path) -> None:
    output = tmp_path / "output"
    output.mkdir()
    (output / "index.html").write_text("home")
    (output / "_redirects").write_text("/ok /fine\n\n/bad /x 299\n")
    meta = releases.Release("20260101T000000.000Z-bbbbbbbbbbbb", "b" * 40, "now", 1.0)
    with pytest.raises(RuleError) as raised:
        releases.stage(output, tmp_path / "releases", meta, None)
    assert str(raised.value).startswith("files/_redirects:3: status '299' is not one of")
    assert os.listdir(tmp_path / "releases") == []
    (output / "_redirects").write_text("/ok /fine\n")
    (output / "_headers").write_text("/*\n  X-Robots-Tag: noindex\n")
    release = releases.stage(output, tmp_path / "releases", meta, None)
    assert json.loads((tmp_path / "releases" / f"{release.name}.json").read_text())["commit"] == "b" * 40
