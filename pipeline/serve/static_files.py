"""How `serve.py` answers a request from one release directory: files and directory indexes, the site's 404
page, Nikola's redirect pages as real redirects, and the release's own `_redirects` and `_headers`.

Each function is given the release's canonical path (`root`, resolved once per request by serve.py), so a
request is answered entirely from one release; nothing here follows a path out of it.
"""

from __future__ import annotations

import os
import stat
import urllib.parse
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any

from pipeline import site_rules
from pipeline.redirects import REDIRECT_STATUSES, Redirect, with_query
from pipeline.releases import COMPRESSIBLE
from pipeline.serve.answers import (
    BadPath,
    StartResponse,
    accepts_gzip,
    content_type,
    etag_for,
    file_inside,
    http_date,
    inside,
    not_modified,
    send_plain,
    split_request_path,
)

INDEX_FILE = "index.html"
NOT_FOUND_PAGES = ("404.html", "404/index.html")
READ_WHOLE_LIMIT = 1 << 20
CHUNK = 64 * 1024
# HTML: a shared cache (the frontend's) may keep it 1 s; browsers find it already expired and
# revalidate on every request (cheap with ETag), so a new release shows at once. (max-age=0 would
# say the same to browsers, but HAProxy's cache then stores nothing.) Other files may be reused
# for a short while.
HTML_CACHE_CONTROL = "public, s-maxage=1"
HTML_EXPIRES = "Thu, 01 Jan 1970 00:00:00 GMT"
ASSET_CACHE_CONTROL = "public, max-age=60"


def serve(root: str, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """The answer for PATH_INFO from the release at `root` (without its `_redirects` and `_headers`)."""
    path_info = environ.get("PATH_INFO") or "/"
    try:
        segments = split_request_path(path_info)
    except BadPath:
        return send_plain(start_response, "400 Bad Request", "bad request path\n")
    if len(segments) == 1 and segments[0] in site_rules.HIDDEN:  # the rules themselves are not served
        return not_found(root, environ, start_response)
    target = os.path.realpath(os.path.join(root, *segments))
    if not inside(root, target):  # a symlink pointing out of the release
        return not_found(root, environ, start_response)
    try:
        st = os.stat(target)
    except OSError:
        return not_found(root, environ, start_response)
    if stat.S_ISDIR(st.st_mode):
        if not path_info.endswith("/"):
            query = environ.get("QUERY_STRING")
            location = environ.get("SCRIPT_NAME", "") + path_info + "/" + (f"?{query}" if query else "")
            return send_plain(start_response, "301 Moved Permanently", "moved\n", [("Location", location)])
        index = file_inside(root, os.path.join(target, INDEX_FILE))
        if index is None:
            return not_found(root, environ, start_response)
        target, st = index
    if not stat.S_ISREG(st.st_mode):
        return not_found(root, environ, start_response)
    if target.endswith(".html") and st.st_size <= site_rules.NIKOLA_PAGE_MAX:
        with open(target, "rb") as handle:
            moved_to = site_rules.nikola_redirect(handle.read(site_rules.NIKOLA_PAGE_MAX + 1))
        if moved_to is not None:  # a page Nikola wrote for REDIRECTIONS: answered as a real redirect
            return redirect(start_response, 301, with_query(moved_to, environ.get("QUERY_STRING", "")))
    return send_file(environ, start_response, root, target, st, "200 OK")


def apply_rules(root: str, rules: site_rules.SiteRules, environ: dict[str, Any],
                start_response: StartResponse) -> tuple[StartResponse, Iterable[bytes] | None]:
    """The release's `_headers` for the request path (added to whatever answers it), and the answer of
    its `_redirects` rule for the path, if one applies (None: the path is served as usual)."""
    path_info = environ.get("PATH_INFO") or "/"
    try:
        path = "/" + "/".join(split_request_path(path_info))
    except BadPath:
        return start_response, None  # serve() answers 400
    extra = rules.headers.for_path(path) if rules.headers else []
    if extra:
        start_response = _with_site_headers(start_response, extra)
    found = rules.redirects.match(path, lambda: find_file(root, path_info) is not None) \
        if rules.redirects else None
    if found is None:
        return start_response, None
    return start_response, follow(root, *found, environ, start_response)


def follow(root: str, rule: Redirect, params: dict[str, str], environ: dict[str, Any],
           start_response: StartResponse) -> Iterable[bytes]:
    """The answer of a `_redirects` rule: a redirect, a rewrite (200), or a page with the rule's status."""
    location = rule.location(params, environ.get("QUERY_STRING", ""))
    if rule.status in REDIRECT_STATUSES:
        prefix = "" if rule.external else environ.get("SCRIPT_NAME", "")
        return redirect(start_response, rule.status, prefix + location)
    target_info = urllib.parse.unquote_to_bytes(location).decode("latin-1")  # as PATH_INFO spells it
    if rule.status == 200:  # a rewrite: the target's answer, at the requested URL
        return serve(root, {**environ, "PATH_INFO": target_info}, start_response)
    status = f"{rule.status} {HTTPStatus(rule.status).phrase}"
    page = find_file(root, target_info)
    if page is None:
        return send_plain(start_response, status, f"{HTTPStatus(rule.status).phrase.lower()}\n")
    return send_file(environ, start_response, root, *page, status)


def find_file(root: str, path_info: str) -> tuple[str, os.stat_result] | None:
    """The file a path is served from (a directory's index file), as serve() finds it; None if none."""
    try:
        segments = split_request_path(path_info)
    except BadPath:
        return None
    if len(segments) == 1 and segments[0] in site_rules.HIDDEN:
        return None
    target = os.path.realpath(os.path.join(root, *segments))
    if not inside(root, target):
        return None
    if os.path.isdir(target):
        target = os.path.join(target, INDEX_FILE)
    return file_inside(root, target)


def redirect(start_response: StartResponse, code: int, location: str) -> Iterable[bytes]:
    """A redirect that, like a page, a browser revalidates (the frontend's cache stores only 200 answers): a
    changed rule shows with the next release (a plain 301 would stay in browsers' caches for good)."""
    data = b"moved\n"
    start_response(f"{code} {HTTPStatus(code).phrase}", [
        ("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data))), ("Location", location),
        ("Cache-Control", HTML_CACHE_CONTROL), ("Expires", HTML_EXPIRES),
    ])
    return [data]


def send_file(
    environ: dict[str, Any], start_response: StartResponse, root: str, path: str,
    st: os.stat_result, status: str,
) -> Iterable[bytes]:
    kind = content_type(path)
    headers = [
        ("Content-Type", kind),
        ("Last-Modified", http_date(st.st_mtime)),
        ("Cache-Control", HTML_CACHE_CONTROL if kind.startswith("text/html") else ASSET_CACHE_CONTROL),
        ("X-Site-Release", os.path.basename(root)),
    ]
    if kind.startswith("text/html"):
        headers.append(("Expires", HTML_EXPIRES))
    etag = etag_for(st)
    if path.endswith(COMPRESSIBLE):
        headers.append(("Vary", "Accept-Encoding"))
        twin = file_inside(root, path + ".gz") if accepts_gzip(environ) else None  # precompressed at publish
        if twin is not None:
            path, st = twin
            etag = etag[:-1] + '-gz"'  # each representation has its own tag
            headers.append(("Content-Encoding", "gzip"))
    headers.append(("ETag", etag))
    if status.startswith("200") and not_modified(environ, etag, st.st_mtime):
        start_response("304 Not Modified", headers)
        return []
    headers.append(("Content-Length", str(st.st_size)))
    if environ.get("REQUEST_METHOD") == "HEAD":
        start_response(status, headers)
        return []
    handle = open(path, "rb")  # noqa: SIM115 - closed by the iterator below
    start_response(status, headers)
    if st.st_size <= READ_WHOLE_LIMIT:
        with handle:
            return [handle.read()]
    return _file_chunks(handle)


def not_found(root: str, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """The site's own 404 page, or a plain one."""
    for name in NOT_FOUND_PAGES:
        page = file_inside(root, os.path.join(root, name))
        if page is not None:
            return send_file(environ, start_response, root, *page, "404 Not Found")
    return send_plain(start_response, "404 Not Found", "not found\n")


def _with_site_headers(start_response: StartResponse, extra: list[tuple[str, str]]) -> StartResponse:
    """The site's own headers (from `_headers`) replace the server's of the same name."""
    names = {name.lower() for name, _value in extra}

    def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        return start_response(status, [h for h in headers if h[0].lower() not in names] + extra, exc_info)
    return start


def _file_chunks(handle: Any) -> Iterable[bytes]:
    with handle:
        while chunk := handle.read(CHUNK):
            yield chunk
