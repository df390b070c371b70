#!/usr/bin/env python3
"""Serve the live release of a static site with CherryPy.

    serve.py [SITE_DIR] [--host ::] [--port 8000] [--status-file FILE] [--wake-file FILE] [--heartbeat-file FILE]

Without SITE_DIR it serves DATA_DIR's live release (`current`, see pipeline/layout.py) with DATA_DIR's
status and wake files; that is how run.sh starts it. SITE_DIR is usually such a `current` symlink. It
is resolved once per request, so a request is answered entirely from one release even while a new one
is swapped in.
Reserved paths (never shadowed by site content): /_site/health, /_site/status, and
POST /_site/hook (a push webhook: with WEBHOOK_SECRET set, a valid hook touches the wake file,
which makes the watcher check the remote at once). Answers under /_site/ carry deploy_page.HEADERS
(no framing, own opener group, strict CSP), and no service worker script is served at all: pushed
scripts share the origin, and must not reach the deploy page's token field.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import stat
import sys
import urllib.parse
from collections.abc import Iterable
from http import HTTPStatus
from pathlib import Path
from typing import Any

import cherrypy
from prometheus_client import CONTENT_TYPE_LATEST

from pipeline import deploy_page, heartbeat, layout, links, metrics, releases, site_rules
from pipeline.answers import (
    Answer,
    BadPath,
    Memo,
    StartResponse,
    accepts_gzip,
    content_type,
    etag_for,
    file_inside,
    http_date,
    inside,
    memo_path,
    not_modified,
    split_request_path,
)
from pipeline.errors import ReleaseError
from pipeline.redirects import REDIRECT_STATUSES, Redirect, with_query
from pipeline.releases import COMPRESSIBLE
from pipeline.status import read_status
from pipeline.webhook import MAX_BODY, HookGuard, Verdict

SERVING_ONLY = "serving"  # /_site/health?serving: the frontend's check, about serving only
RESERVED_PREFIX = "/_site/"
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
SERVER_NAME = "pequod"



class SiteApp:
    """A WSGI application serving files from the release `site_link` points at."""

    def __init__(self, site_link: Path, status_file: Path | None, wake_file: Path | None = None,
                 hook_guard: HookGuard | None = None, heartbeat_file: Path | None = None):
        self._roots: dict[str, str] = {}
        self.heartbeat_file = heartbeat_file
        self.memo = Memo()
        self.site_rules = site_rules.RulesCache()
        self.site_link = str(site_link)
        self.status_file = status_file
        self.wake_file = wake_file
        self.hook_guard = hook_guard or HookGuard(None)
        self.requests = metrics.Requests()
        self.metrics = metrics.registry(metrics.InstanceCollector(
            lambda: self.status(self.live_root()), self.requests, lambda: (len(self.memo.answers), self.memo.size)))

    def live_root(self) -> str | None:
        """The live release's canonical path: one readlink(2) per request; the (costly) canonical path
        of a link target is computed once, as releases never move."""
        try:
            target = os.readlink(self.site_link)
        except OSError:
            target = ""  # a plain directory, or nothing yet
        root = self._roots.get(target)
        if root is None:
            root = os.path.realpath(self.site_link)
            if not os.path.isdir(root):
                return None
            self._roots = {target: root}
        return root

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        def counted(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            self.requests.answered(status)
            return start_response(status, headers, exc_info)

        return self.answer(environ, counted)

    def answer(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        if method in ("GET", "HEAD") and has_body(environ):
            # Refused as at the frontend, for clients that reach the instance directly (a cluster's
            # Ingress): a body a GET ignores is a way to smuggle a request past a proxy.
            return self.plain(start_response, "400 Bad Request", "a GET or HEAD request has no body\n")
        path_info = environ.get("PATH_INFO") or "/"
        if environ.get("HTTP_SERVICE_WORKER"):
            # A service worker registered from a pushed page with scope "/" would answer for /_site/ too.
            return self.plain(start_response, "403 Forbidden", "service workers are not served here\n")
        if path_info.startswith(RESERVED_PREFIX):
            start_response = _with_headers(start_response, deploy_page.HEADERS)
            if path_info == RESERVED_PREFIX + "hook":
                return self.hook(environ, method, start_response)
            if path_info == RESERVED_PREFIX + "rollback":
                return self.rollback(environ, method, start_response)
            return self.reserved(path_info[len(RESERVED_PREFIX):], method, start_response,
                                 environ.get("QUERY_STRING", ""))
        if method not in ("GET", "HEAD"):
            return self.method_not_allowed(start_response)
        root = self.live_root()
        if root is None:
            return self.plain(
                start_response, "503 Service Unavailable", "no release is live yet\n", [("Retry-After", "5")]
            )
        rules = self.site_rules.for_release(root)
        if not rules.empty:
            start_response, redirected = self.apply_rules(root, rules, environ, start_response)
            if redirected is not None:
                return redirected
        # Releases never change: a rendered answer is kept per release (a new release starts afresh).
        # A missing path's answer (the 404 page) is not kept: a flood of distinct URLs must not grow the memo.
        key = (memo_path(path_info), accepts_gzip(environ))
        entry = self.memo.get(root, key)
        self.requests.looked_up(entry is not None)
        if entry is None:
            entry = self.render(root, key[0], key[1], environ.get("SCRIPT_NAME", ""))
            if entry is None:
                return self.serve(root, environ, start_response)
            if not entry.status.startswith("404"):
                self.memo.put(root, key, entry)
        return entry.replay(environ, start_response)

    def render(self, root: str, path_info: str, gzip_ok: bool, script_name: str) -> Answer | None:
        """The plain GET answer for a path, when it can be kept (a file small enough, or the 404 page)."""
        captured: list[Any] = []
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path_info, "SCRIPT_NAME": script_name,
                   "HTTP_ACCEPT_ENCODING": "gzip" if gzip_ok else "identity"}
        body = self.serve(root, environ, lambda status, headers, exc_info=None: captured.extend((status, headers)))
        if not isinstance(body, list) or captured[0][:3] not in ("200", "404"):
            close = getattr(body, "close", None)
            if close:
                close()
            return None
        return Answer(captured[0], captured[1], b"".join(body))

    def serve(self, root: str, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path_info = environ.get("PATH_INFO") or "/"
        try:
            segments = split_request_path(path_info)
        except BadPath:
            return self.plain(start_response, "400 Bad Request", "bad request path\n")
        if len(segments) == 1 and segments[0] in site_rules.HIDDEN:  # the rules themselves are not served
            return self.not_found(root, environ, start_response)
        target = os.path.realpath(os.path.join(root, *segments))
        if not inside(root, target):  # a symlink pointing out of the release
            return self.not_found(root, environ, start_response)
        try:
            st = os.stat(target)
        except OSError:
            return self.not_found(root, environ, start_response)
        if stat.S_ISDIR(st.st_mode):
            if not path_info.endswith("/"):
                query = environ.get("QUERY_STRING")
                location = environ.get("SCRIPT_NAME", "") + path_info + "/" + (f"?{query}" if query else "")
                return self.plain(start_response, "301 Moved Permanently", "moved\n", [("Location", location)])
            index = file_inside(root, os.path.join(target, INDEX_FILE))
            if index is None:
                return self.not_found(root, environ, start_response)
            target, st = index
        if not stat.S_ISREG(st.st_mode):
            return self.not_found(root, environ, start_response)
        if target.endswith(".html") and st.st_size <= site_rules.NIKOLA_PAGE_MAX:
            with open(target, "rb") as handle:
                moved_to = site_rules.nikola_redirect(handle.read(site_rules.NIKOLA_PAGE_MAX + 1))
            if moved_to is not None:  # a page Nikola wrote for REDIRECTIONS: answered as a real redirect
                return self.redirect(start_response, 301, with_query(moved_to, environ.get("QUERY_STRING", "")))
        return self.send_file(environ, start_response, root, target, st, "200 OK")

    def apply_rules(self, root: str, rules: site_rules.SiteRules, environ: dict[str, Any],
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
        found = rules.redirects.match(path, lambda: self.find_file(root, path_info) is not None) \
            if rules.redirects else None
        if found is None:
            return start_response, None
        return start_response, self.follow(root, *found, environ, start_response)

    def follow(self, root: str, rule: Redirect, params: dict[str, str], environ: dict[str, Any],
               start_response: StartResponse) -> Iterable[bytes]:
        location = rule.location(params, environ.get("QUERY_STRING", ""))
        if rule.status in REDIRECT_STATUSES:
            prefix = "" if rule.external else environ.get("SCRIPT_NAME", "")
            return self.redirect(start_response, rule.status, prefix + location)
        target_info = urllib.parse.unquote_to_bytes(location).decode("latin-1")  # as PATH_INFO spells it
        if rule.status == 200:  # a rewrite: the target's answer, at the requested URL
            return self.serve(root, {**environ, "PATH_INFO": target_info}, start_response)
        status = f"{rule.status} {HTTPStatus(rule.status).phrase}"
        page = self.find_file(root, target_info)
        if page is None:
            return self.plain(start_response, status, f"{HTTPStatus(rule.status).phrase.lower()}\n")
        return self.send_file(environ, start_response, root, *page, status)

    @staticmethod
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

    @staticmethod
    def redirect(start_response: StartResponse, code: int, location: str) -> Iterable[bytes]:
        """A redirect that, like a page, a browser revalidates and the frontend keeps for a second at most: a
        changed rule shows with the next release (a plain 301 would stay in browsers' caches for good)."""
        data = b"moved\n"
        start_response(f"{code} {HTTPStatus(code).phrase}", [
            ("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data))), ("Location", location),
            ("Cache-Control", HTML_CACHE_CONTROL), ("Expires", HTML_EXPIRES),
        ])
        return [data]

    def send_file(
        self, environ: dict[str, Any], start_response: StartResponse, root: str, path: str,
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

    def not_found(self, root: str, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        for name in NOT_FOUND_PAGES:
            page = file_inside(root, os.path.join(root, name))
            if page is not None:
                return self.send_file(environ, start_response, root, *page, "404 Not Found")
        return self.plain(start_response, "404 Not Found", "not found\n")

    def reserved(self, name: str, method: str, start_response: StartResponse, query: str = "") -> Iterable[bytes]:
        if method not in ("GET", "HEAD"):
            return self.method_not_allowed(start_response)
        root = self.live_root()
        if name == "health":
            return self.health(root, start_response, serving_only=query == SERVING_ONLY)
        if name == "status":
            return self.json(start_response, "200 OK", self.status(root))
        if name == "":
            page = deploy_page.render(self.status(root), rollback_enabled=self.hook_guard.secret is not None)
            return self.text(start_response, "200 OK", page.encode(), "text/html; charset=utf-8")
        if name == "metrics":
            return self.text(start_response, "200 OK", metrics.exposition(self.metrics), CONTENT_TYPE_LATEST)
        return self.plain(start_response, "404 Not Found", "not found\n")

    def health(self, root: str | None, start_response: StartResponse, serving_only: bool = False) -> Iterable[bytes]:
        """200 while a release is live and (beside a watcher) the watcher's heartbeat is fresh: an instance that
        serves but no longer publishes is replaced too. With `?serving` (the frontend's check) only serving
        counts: readers keep the instance until its replacement is healthy."""
        body: dict[str, Any] = {"release": os.path.basename(root) if root else None}
        if self.heartbeat_file is not None:
            body["watcher"] = heartbeat.state(self.heartbeat_file)
        healthy = root is not None and (serving_only or body.get("watcher", "beating") == "beating")
        return self.json(start_response, "200 OK" if healthy else "503 Service Unavailable",
                         {"healthy": healthy, **body})

    def rollback(self, environ: dict[str, Any], method: str, start_response: StartResponse) -> Iterable[bytes]:
        """`POST /_site/rollback` with `release=<id>` (form or query): only with the webhook secret as a bearer
        token (no cookie carries authority, so no other site can make a browser do it)."""
        if self.hook_guard.secret is None or self.status_file is None:
            return self.plain(start_response, "404 Not Found", "not found\n")
        if method != "POST":
            return self.plain(start_response, "405 Method Not Allowed", "POST only\n", [("Allow", "POST")])
        client = self.client(environ)
        verdict, body = self.guarded_body(environ, client, missing_length=0)  # a query alone may name the release
        if verdict is None:
            verdict = self.hook_guard.refused(client, self.hook_guard.check_bearer(environ.get("HTTP_AUTHORIZATION")))
        if not verdict.accepted:
            return self.json(start_response, f"{verdict.status} {HTTPStatus(verdict.status).phrase}",
                             {"message": verdict.reason})
        fields = urllib.parse.parse_qs(body.decode("utf-8", "replace") + "&" + environ.get("QUERY_STRING", ""))
        wanted = (fields.get("release") or [None])[0]
        try:
            meta = releases.rollback(layout.Layout(self.status_file.parent), wanted)
        except ReleaseError as exc:
            return self.json(start_response, "400 Bad Request", {"message": str(exc)})
        print(f"serve.py: rollback by {client} to {meta.release}", file=sys.stderr, flush=True)
        return self.json(start_response, "200 OK", {"message": f"{meta.release} is live until the next push",
                                                    "release": meta.release})

    def guarded_body(self, environ: dict[str, Any], client: str,
                     missing_length: int | None) -> tuple[Verdict | None, bytes]:
        """The request body, read only when the guard lets the client in (configured, not refused too often,
        a sane length; `missing_length` stands in for an absent Content-Length, None: refused)."""
        try:
            length: int | None = int(environ["CONTENT_LENGTH"])
        except (KeyError, ValueError):
            length = missing_length
        verdict = self.hook_guard.precheck(length, client)
        if verdict is not None:
            return verdict, b""
        return None, environ["wsgi.input"].read(length) if length else b""

    @staticmethod
    def client(environ: dict[str, Any]) -> str:
        """Behind the frontend: the last address HAProxy appended (earlier ones are the client's own
        claims); without it, the peer."""
        return (environ.get("HTTP_X_FORWARDED_FOR") or environ.get("REMOTE_ADDR", "?")).rsplit(",", 1)[-1].strip()

    def hook(self, environ: dict[str, Any], method: str, start_response: StartResponse) -> Iterable[bytes]:
        if method != "POST":
            return self.plain(start_response, "405 Method Not Allowed", "POST only\n", [("Allow", "POST")])
        client = self.client(environ)
        verdict, body = self.guarded_body(environ, client, missing_length=None)
        if verdict is None:
            headers = {key[5:].replace("_", "-").lower(): value for key, value in environ.items()
                       if key.startswith("HTTP_")}
            verdict = self.hook_guard.refused(client, self.hook_guard.check(headers, body))
        if verdict.accepted and self.wake_file is not None:
            layout.wake(self.wake_file)
        print(f"serve.py: hook from {client}: {verdict.status} {verdict.reason}", file=sys.stderr, flush=True)
        extra = [("Retry-After", "1")] if verdict.status == 429 else []
        return self.json(start_response, f"{verdict.status} {HTTPStatus(verdict.status).phrase}",
                         {"accepted": verdict.accepted, "reason": verdict.reason}, extra)

    def status(self, root: str | None) -> dict[str, Any]:
        status = read_status(self.status_file) if self.status_file else {}
        meta = releases.read_meta(Path(root)) if root else None
        if meta is not None:
            status["current"] = {
                "release": meta.release, "commit": meta.commit,
                "built_at": meta.built_at, "build_seconds": meta.build_seconds,
            }
        elif root is not None:
            status["current"] = {
                "release": os.path.basename(root), "commit": None, "built_at": None, "build_seconds": None,
            }
        else:
            status["current"] = None
        status["releases"] = releases.list_releases(Path(root).parent) if root else []
        status["links"] = links.read_report(Path(root)) if root else None  # the live release's link report
        return status

    @classmethod
    def method_not_allowed(cls, start_response: StartResponse) -> Iterable[bytes]:
        return cls.plain(start_response, "405 Method Not Allowed", "method not allowed\n", [("Allow", "GET, HEAD")])

    @staticmethod
    def text(start_response: StartResponse, status: str, data: bytes, kind: str) -> Iterable[bytes]:
        start_response(status, [("Content-Type", kind), ("Content-Length", str(len(data))),
                                ("Cache-Control", "no-store")])
        return [data]

    @staticmethod
    def json(start_response: StartResponse, status: str, body: dict[str, Any],
             extra: list[tuple[str, str]] | None = None) -> Iterable[bytes]:
        data = (json.dumps(body, indent=2) + "\n").encode()
        start_response(status, [
            ("Content-Type", "application/json"), ("Content-Length", str(len(data))),
            ("Cache-Control", "no-store"), *(extra or []),
        ])
        return [data]

    @staticmethod
    def plain(
        start_response: StartResponse, status: str, text: str, extra: list[tuple[str, str]] | None = None,
    ) -> Iterable[bytes]:
        data = text.encode()
        start_response(status, [
            ("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data))),
            ("Cache-Control", "no-store"), *(extra or []),
        ])
        return [data]


def _with_headers(start_response: StartResponse, extra: Iterable[tuple[str, str]]) -> StartResponse:
    def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        return start_response(status, [*headers, *extra], exc_info)
    return start


def _with_site_headers(start_response: StartResponse, extra: list[tuple[str, str]]) -> StartResponse:
    """The site's own headers (from `_headers`) replace the server's of the same name."""
    names = {name.lower() for name, _value in extra}

    def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        return start_response(status, [h for h in headers if h[0].lower() not in names] + extra, exc_info)
    return start


def has_body(environ: dict[str, Any]) -> bool:
    """Whether the request says it carries a body (a Content-Length above 0, or chunked)."""
    length = (environ.get("CONTENT_LENGTH") or "").strip()
    return bool(environ.get("HTTP_TRANSFER_ENCODING")) or length not in ("", "0")


def _file_chunks(handle: Any) -> Iterable[bytes]:
    with handle:
        while chunk := handle.read(CHUNK):
            yield chunk


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("site_dir", nargs="?", help="directory (or symlink to one) to serve (default: DATA_DIR's "
                        "live release, with its status and wake files)")
    parser.add_argument("--host", default="::", help="address to listen on (default: ::)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    parser.add_argument("--status-file", help="deploy status JSON (default: status.json beside SITE_DIR)")
    parser.add_argument("--threads", type=int, default=32, help="worker threads (default: 32)")
    parser.add_argument("--heartbeat-file", default=os.environ.get(heartbeat.ENV) or None,
                        help="the watcher's heartbeat: /_site/health fails once it is stale (default: "
                        "$WATCHER_HEARTBEAT, which run.sh sets; none: health is about serving only)")
    parser.add_argument("--wake-file", help="touched by a valid POST /_site/hook (WEBHOOK_SECRET from the environment)")
    args = parser.parse_args(argv)
    if not 1 <= args.port <= 65535:
        parser.error(f"--port {args.port}: expected a port number 1-65535")
    if args.threads < 1:
        parser.error(f"--threads {args.threads}: expected at least 1")
    return args


def listen_host(host: str) -> str:
    """`host`, or 0.0.0.0 when it is `::` and IPv6 is disabled here (Docker's default bridge)."""
    if host != "::":
        return host
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::", 0))
    except OSError:
        print("serve.py: IPv6 is not available here; listening on 0.0.0.0", file=sys.stderr)
        return "0.0.0.0"
    return host


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    args.host = listen_host(args.host)
    data = layout.Layout.from_env()
    site = Path(os.path.abspath(args.site_dir)) if args.site_dir else data.current
    status_file = Path(args.status_file) if args.status_file else site.parent / "status.json"
    if not args.site_dir and not args.wake_file:
        args.wake_file = str(data.wake_file)
    cherrypy.config.update({
        "environment": "production",
        "engine.autoreload.on": False,
        "log.screen": False,
        "server.socket_host": args.host,
        "server.socket_port": args.port,
        "server.thread_pool": args.threads,
        # Stock values (backlog 5) make bursts of more than a few clients wait for SYN retries.
        "server.socket_queue_size": 1024,
        "server.shutdown_timeout": 1,
        # Bounds of their own, also without the frontend in front: request headers and bodies.
        "server.max_request_header_size": 64 * 1024,
        "server.max_request_body_size": MAX_BODY,
    })
    wake_file = Path(args.wake_file) if args.wake_file else None
    guard = HookGuard(os.environ.get("WEBHOOK_SECRET") or None)
    heartbeat_file = Path(args.heartbeat_file) if args.heartbeat_file else None
    cherrypy.tree.graft(SiteApp(site, status_file, wake_file, guard, heartbeat_file), "")
    # The HTTP server is made here (not by engine.start()) so it is set up before the first request:
    httpserver, cherrypy.server.bind_addr = cherrypy.server.httpserver_from_self()
    httpserver.keep_alive_conn_limit = 1024  # stock cheroot closes keep-alive connections beyond 10
    httpserver.server_name = SERVER_NAME  # else the bind address (`::`), which HTTP linters flag as malformed
    cherrypy.server.httpserver = httpserver
    cherrypy.engine.start()
    # Only now: a SIGTERM that CherryPy's handler took before start() was lost (the server then ran on);
    # until here the default action ends the process.
    cherrypy.engine.signals.subscribe()
    print(f"serve.py: serving {site} on [{args.host}]:{args.port}", file=sys.stderr, flush=True)
    cherrypy.engine.block()
    return 0


if __name__ == "__main__":
    sys.exit(main())
