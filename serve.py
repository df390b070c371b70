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
import os
import socket
import sys
from collections.abc import Iterable
from http import HTTPStatus
from pathlib import Path
from typing import Any

import cheroot.server
import cherrypy

from pipeline import config, heap, heartbeat, layout, metrics, preview_hosts, site_rules
from pipeline.serve import static_files
from pipeline.serve.answers import Answer, Memo, StartResponse, accepts_gzip, memo_path, method_not_allowed, send_plain
from pipeline.serve.site_admin import RESERVED_PREFIX, SiteAdmin
from pipeline.serve.webhook import MAX_BODY, HookGuard

SERVER_NAME = "pequod"


class SiteApp:
    """A WSGI application serving files from the release `site_link` points at (pipeline.serve.static_files), and
    the reserved paths under /_site/ (pipeline.serve.site_admin)."""

    def __init__(self, site_link: Path, status_file: Path | None, wake_file: Path | None = None,
                 hook_guard: HookGuard | None = None, heartbeat_file: Path | None = None,
                 previews: dict[str, Any] | None = None, previews_dir: Path | None = None):
        self._roots: dict[str, str] = {}
        # Previews of the site's other branches (pipeline.config.previews: previews_host, previews_password…).
        self.previews_host: str | None = (previews or {}).get("previews_host")
        self.previews_dir = os.path.realpath(previews_dir or site_link.parent / "previews")
        self.preview_guard = HookGuard((previews or {}).get("previews_password"))
        self.memo = Memo()
        self.site_rules = site_rules.RulesCache()
        self.preview_rules = site_rules.RulesCache()  # its own: previews never push the live site's rules out
        self.site_link = str(site_link)
        self.requests = metrics.Requests()
        self.admin = SiteAdmin(self.live_root, status_file, wake_file, hook_guard or HookGuard(None), heartbeat_file,
                               self.requests, self.memo)

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
            return send_plain(start_response, "400 Bad Request", "a GET or HEAD request has no body\n")
        path_info = environ.get("PATH_INFO") or "/"
        if environ.get("HTTP_SERVICE_WORKER"):
            # A service worker registered from a pushed page with scope "/" would answer for /_site/ too.
            return send_plain(start_response, "403 Forbidden", "service workers are not served here\n")
        if self.previews_host is not None:
            label = preview_hosts.label_of(environ.get("HTTP_HOST") or "", self.previews_host)
            if label is not None:
                return self.preview(label, method, path_info, environ, start_response)
        if path_info.startswith(RESERVED_PREFIX):
            return self.admin.answer(environ, start_response)
        if method not in ("GET", "HEAD"):
            return method_not_allowed(start_response)
        root = self.live_root()
        if root is None:
            return send_plain(
                start_response, "503 Service Unavailable", "no release is live yet\n", [("Retry-After", "5")]
            )
        return self.serve_release(root, environ, start_response)

    def preview(self, label: str, method: str, path_info: str, environ: dict[str, Any],
                start_response: StartResponse) -> Iterable[bytes]:
        """A branch's preview (pipeline.publish.previews): its password asked first (nothing is told before, not even
        whether the preview exists), never the deploy data, never indexed, never kept by a shared cache."""
        start_response = preview_headers(start_response)
        verdict = self.preview_guard.basic(SiteAdmin.client(environ), environ.get("HTTP_AUTHORIZATION") or "")
        if not verdict.accepted:
            extra = [("Retry-After", "1")] if verdict.status == 429 else [("WWW-Authenticate", preview_hosts.REALM)]
            return send_plain(start_response, f"{verdict.status} {HTTPStatus(verdict.status).phrase}",
                              f"{verdict.reason}\n", extra)
        if path_info.startswith(RESERVED_PREFIX):
            return send_plain(start_response, "404 Not Found", "not found\n")
        if method not in ("GET", "HEAD"):
            return method_not_allowed(start_response)
        root = os.path.realpath(os.path.join(self.previews_dir, label, "current"))
        if not os.path.isdir(root) or os.path.dirname(os.path.dirname(root)) != os.path.join(self.previews_dir, label):
            return send_plain(start_response, "404 Not Found", "No preview is served at this address.\n")
        return self.serve_release(root, environ, start_response, memo=False)

    def serve_release(self, root: str, environ: dict[str, Any], start_response: StartResponse,
                      memo: bool = True) -> Iterable[bytes]:
        """The answer from the release at `root` (its rules, then its files); kept in the memo when `memo` (the
        live release's: a preview's readers never push the live site's answers out)."""
        path_info = environ.get("PATH_INFO") or "/"
        rules = (self.site_rules if memo else self.preview_rules).for_release(root)
        if not rules.empty:
            start_response, redirected = static_files.apply_rules(root, rules, environ, start_response)
            if redirected is not None:
                return redirected
        if not memo:
            return static_files.serve(root, environ, start_response)
        # Releases never change: a rendered answer is kept per release (a new release starts afresh).
        # A missing path's answer (the 404 page) is not kept: a flood of distinct URLs must not grow the memo.
        key = (memo_path(path_info), accepts_gzip(environ))
        entry = self.memo.get(root, key)
        self.requests.looked_up(entry is not None)
        if entry is None:
            entry = self.render(root, key[0], key[1], environ.get("SCRIPT_NAME", ""))
            if entry is None:
                return static_files.serve(root, environ, start_response)
            if not entry.status.startswith("404"):
                self.memo.put(root, key, entry)
        return entry.replay(environ, start_response)

    @staticmethod
    def render(root: str, path_info: str, gzip_ok: bool, script_name: str) -> Answer | None:
        """The plain GET answer for a path, when it can be kept (a file small enough, or the 404 page)."""
        captured: list[Any] = []
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path_info, "SCRIPT_NAME": script_name,
                   "HTTP_ACCEPT_ENCODING": "gzip" if gzip_ok else "identity"}
        body = static_files.serve(root, environ,
                                  lambda status, headers, exc_info=None: captured.extend((status, headers)))
        if not isinstance(body, list) or captured[0][:3] not in ("200", "404"):
            close = getattr(body, "close", None)
            if close:
                close()
            return None
        return Answer(captured[0], captured[1], b"".join(body))


def preview_headers(start_response: StartResponse) -> StartResponse:
    """A preview's answers: its own Cache-Control (no shared cache keeps them) and noindex."""
    def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        kept = [(name, value) for name, value in headers if name.lower() not in ("cache-control", "expires")]
        return start_response(status, [*kept, *preview_hosts.HEADERS], exc_info)
    return start


def has_body(environ: dict[str, Any]) -> bool:
    """Whether the request says it carries a body (a Content-Length above 0, or chunked)."""
    length = (environ.get("CONTENT_LENGTH") or "").strip()
    return bool(environ.get("HTTP_TRANSFER_ENCODING")) or length not in ("", "0")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("site_dir", nargs="?", help="directory (or symlink to one) to serve (default: DATA_DIR's "
                        "live release, with its status and wake files)")
    parser.add_argument("--host", default="::", help="address to listen on (default: ::)")
    port = config.SETTING["PORT"].default
    parser.add_argument("--port", type=int, default=port, help=f"port (default: {port})")
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


class NoUnderscoreHeaders(cheroot.server.HeaderReader):
    """Headers with an underscore in their name are dropped (cheroot's own DropUnderscoreHeaderReader tests
    a str against the bytes name and fails every request)."""

    def _allow_header(self, key_name: bytes) -> bool:
        return b"_" not in key_name


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
    guard = HookGuard(config.value(os.environ, "WEBHOOK_SECRET"))
    heartbeat_file = Path(args.heartbeat_file) if args.heartbeat_file else None
    try:
        previews = config.previews(os.environ) if not args.site_dir else {}
    except config.ConfigError as exc:
        print(f"serve.py: {exc}", file=sys.stderr)
        return 2
    cherrypy.tree.graft(SiteApp(site, status_file, wake_file, guard, heartbeat_file, previews, data.previews), "")
    # The HTTP server is made here (not by engine.start()) so it is set up before the first request:
    httpserver, cherrypy.server.bind_addr = cherrypy.server.httpserver_from_self()
    httpserver.keep_alive_conn_limit = 1024  # stock cheroot closes keep-alive connections beyond 10
    httpserver.server_name = SERVER_NAME  # else the bind address (`::`), which HTTP linters flag as malformed
    # `X_Forwarded_For: …` would become HTTP_X_FORWARDED_FOR too and overwrite the address HAProxy appended
    # (a client would pick whose refusal budget it spends); no header we read has an underscore.
    cheroot.server.HTTPRequest.header_reader = NoUnderscoreHeaders()
    cherrypy.server.httpserver = httpserver
    cherrypy.engine.start()
    # Only now: a SIGTERM that CherryPy's handler took before start() was lost (the server then ran on);
    # until here the default action ends the process.
    cherrypy.engine.signals.subscribe()
    heap.release()  # what importing and starting left in the C heap (the idle instance's memory)
    print(f"serve.py: serving {site} on [{args.host}]:{args.port}", file=sys.stderr, flush=True)
    # The engine's main thread only waits for the end (a signal sets it): it looks once a second, not ten times
    # (CherryPy's default), which was most of an idle instance's CPU (0.27 % of a core, now 0.07 %).
    cherrypy.engine.block(interval=1.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
