"""How `serve.py` answers under /_site/ (reserved: never shadowed by site content): the health check, the
deploy status as JSON and as a page, the metrics, the push webhook and the rollback.

Every answer here carries deploy_page.HEADERS (no framing, own opener group, strict CSP). Only the webhook
and the rollback act, and only for a caller the HookGuard lets in (WEBHOOK_SECRET): a valid hook touches
the wake file, which makes the watcher check the remote at once.

The deploy data (history, commit subjects and authors, build logs, scheduled posts, the link report, the
kept releases, the metrics) is the owner's: the status, the deploy page and the metrics show it only to a
request with the site's token (`Authorization: Bearer <WEBHOOK_SECRET>`) or from inside the instance
(loopback, not forwarded by the frontend). Anyone else learns what a reader may know: healthy or not,
the live release and its time.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterable
from http import HTTPStatus
from pathlib import Path
from typing import Any

from pipeline import heartbeat, layout, metrics, releases
from pipeline.errors import ReleaseError
from pipeline.serve import deploy_page
from pipeline.serve.answers import Memo, StartResponse, method_not_allowed, send_json, send_plain, send_text
from pipeline.serve.webhook import HookGuard, Verdict
from pipeline.status import Status

RESERVED_PREFIX = "/_site/"
SERVING_ONLY = "serving"  # /_site/health?serving: the frontend's check, about serving only
LOOPBACK = frozenset({"127.0.0.1", "::1", "::ffff:127.0.0.1"})
OWNER_ONLY = "the deploy data needs the site's token: Authorization: Bearer <WEBHOOK_SECRET>"


class SiteAdmin:
    """The answers under RESERVED_PREFIX, about the release `live_root()` gives (None: none is live)."""

    def __init__(self, live_root: Callable[[], str | None], status_file: Path | None, wake_file: Path | None,
                 hook_guard: HookGuard, heartbeat_file: Path | None, requests: metrics.Requests, memo: Memo):
        self.live_root = live_root
        self.status_file = status_file
        self.wake_file = wake_file
        self.hook_guard = hook_guard
        self.heartbeat_file = heartbeat_file
        self.collector = metrics.InstanceCollector(
            lambda: self.status(self.live_root()), requests, lambda: (len(memo.answers), memo.size))
        self._registry: Any = None  # made at the first scrape (prometheus_client is imported then)

    def answer(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """The answer for a PATH_INFO under RESERVED_PREFIX."""
        method = environ.get("REQUEST_METHOD", "GET")
        path_info = environ.get("PATH_INFO") or "/"
        start_response = _with_headers(start_response, deploy_page.HEADERS)
        if path_info == RESERVED_PREFIX + "hook":
            return self.hook(environ, method, start_response)
        if path_info == RESERVED_PREFIX + "rollback":
            return self.rollback(environ, method, start_response)
        if path_info == RESERVED_PREFIX + "rebuild":
            return self.rebuild(environ, method, start_response)
        return self.reserved(path_info[len(RESERVED_PREFIX):], method, start_response, environ)

    def reserved(self, name: str, method: str, start_response: StartResponse,
                 environ: dict[str, Any]) -> Iterable[bytes]:
        if method not in ("GET", "HEAD"):
            return method_not_allowed(start_response)
        root = self.live_root()
        if name == "health":
            return self.health(root, start_response, serving_only=environ.get("QUERY_STRING") == SERVING_ONLY)
        if name in ("status", "", "metrics"):
            owner, refusal = self.access(environ)
            if refusal is not None:
                extra = [("Retry-After", "1")] if refusal.status == 429 else []
                return send_json(start_response, f"{refusal.status} {HTTPStatus(refusal.status).phrase}",
                                 {"message": refusal.reason}, extra)
            if name == "metrics":
                if not owner:
                    return send_json(start_response, "401 Unauthorized", {"message": OWNER_ONLY})
                if self._registry is None:
                    self._registry = metrics.registry(self.collector)
                return send_text(start_response, "200 OK", metrics.exposition(self._registry),
                                 metrics.content_type())
            status = ({**self.status(root), "healthy": self.healthy(root, self.watcher())} if owner
                      else self.public_status(root))
            if name == "status":
                return send_json(start_response, "200 OK", status)
            page = deploy_page.render(status, rollback_enabled=self.hook_guard.secret is not None, owner=owner)
            return send_text(start_response, "200 OK", page.encode(), "text/html; charset=utf-8")
        return send_plain(start_response, "404 Not Found", "not found\n")

    def access(self, environ: dict[str, Any]) -> tuple[bool, Verdict | None]:
        """(whether the request is the owner's, the refusal of a wrong token). Without Authorization, only a
        request from inside the instance is (HAProxy adds X-Forwarded-For to everything it forwards)."""
        authorization = environ.get("HTTP_AUTHORIZATION") or ""
        if not authorization.lower().startswith("bearer "):  # none, or another scheme (a site behind Basic auth)
            return environ.get("REMOTE_ADDR") in LOOPBACK and "HTTP_X_FORWARDED_FOR" not in environ, None
        verdict = self.hook_guard.owner(self.client(environ), authorization)
        return verdict.accepted, None if verdict.accepted else verdict

    def public_status(self, root: str | None) -> dict[str, Any]:
        """What a reader may know: healthy or not, the live release and when it was built."""
        meta = releases.read_meta(Path(root)) if root else None
        current = None if root is None else {"release": meta.release if meta else os.path.basename(root),
                                              "built_at": meta.built_at if meta else None}
        return {"healthy": self.healthy(root, self.watcher()), "current": current, "more": OWNER_ONLY}

    def watcher(self) -> str | None:
        """The watcher's heartbeat state (heartbeat.state); None: no watcher beside this server."""
        return heartbeat.state(self.heartbeat_file) if self.heartbeat_file is not None else None

    @staticmethod
    def healthy(root: str | None, watcher: str | None) -> bool:
        """A release is live and the watcher, if there is one, beats."""
        return root is not None and watcher in (None, "beating")

    def health(self, root: str | None, start_response: StartResponse, serving_only: bool = False) -> Iterable[bytes]:
        """200 while a release is live and (beside a watcher) the watcher's heartbeat is fresh: an instance that
        serves but no longer publishes is replaced too. With `?serving` (the frontend's check) only serving
        counts: readers keep the instance until its replacement is healthy."""
        body: dict[str, Any] = {"release": os.path.basename(root) if root else None}
        watcher = self.watcher()
        if watcher is not None:
            body["watcher"] = watcher
        healthy = self.healthy(root, None if serving_only else watcher)
        return send_json(start_response, "200 OK" if healthy else "503 Service Unavailable",
                         {"healthy": healthy, **body})

    def _owner_post(self, environ: dict[str, Any], method: str,
                    start_response: StartResponse) -> tuple[str, bytes] | Iterable[bytes]:
        """(client, body) of a POST by the site's owner (the webhook secret as a bearer token: no cookie carries
        authority, so no other site can make a browser do it), or the refusal to send."""
        if self.hook_guard.secret is None or self.status_file is None:
            return send_plain(start_response, "404 Not Found", "not found\n")
        if method != "POST":
            return send_plain(start_response, "405 Method Not Allowed", "POST only\n", [("Allow", "POST")])
        client = self.client(environ)
        verdict, body = self.guarded_body(environ, client, missing_length=0)  # a query alone may name the release
        if verdict is None:
            verdict = self.hook_guard.refused(client, self.hook_guard.check_bearer(environ.get("HTTP_AUTHORIZATION")))
        if not verdict.accepted:
            return send_json(start_response, f"{verdict.status} {HTTPStatus(verdict.status).phrase}",
                             {"message": verdict.reason})
        return client, body

    def rebuild(self, environ: dict[str, Any], method: str, start_response: StartResponse) -> Iterable[bytes]:
        """`POST /_site/rebuild`: a clean build of the branch's head, published when it succeeds (the owner's)."""
        allowed = self._owner_post(environ, method, start_response)
        if not isinstance(allowed, tuple):
            return allowed
        assert self.status_file is not None
        data = layout.Layout(self.status_file.parent)
        data.rebuild_file.write_text(f"{time.time():.3f}\n")
        data.wake()
        print(f"serve.py: clean build asked for by {allowed[0]}", file=sys.stderr, flush=True)
        return send_json(start_response, "202 Accepted",
                         {"message": "a clean build of the branch's head starts now; it is live when it succeeds"})

    def rollback(self, environ: dict[str, Any], method: str, start_response: StartResponse) -> Iterable[bytes]:
        """`POST /_site/rollback` with `release=<id>` (form or query): the owner's (see _owner_post)."""
        allowed = self._owner_post(environ, method, start_response)
        if not isinstance(allowed, tuple):
            return allowed
        client, body = allowed
        fields = urllib.parse.parse_qs(body.decode("utf-8", "replace") + "&" + environ.get("QUERY_STRING", ""))
        wanted = (fields.get("release") or [None])[0]
        try:
            meta = releases.rollback(layout.Layout(self.status_file.parent), wanted)
        except ReleaseError as exc:
            return send_json(start_response, "400 Bad Request", {"message": str(exc)})
        print(f"serve.py: rollback by {client} to {meta.release}", file=sys.stderr, flush=True)
        return send_json(start_response, "200 OK", {"message": f"{meta.release} is live until the next push",
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
        claims; serve.py drops underscore headers, so `X_Forwarded_For` cannot replace it); without it, the
        peer. An IPv6 client is its /64, as for the frontend's limits (one host commonly holds a whole /64)."""
        address = (environ.get("HTTP_X_FORWARDED_FOR") or environ.get("REMOTE_ADDR", "?")).rsplit(",", 1)[-1].strip()
        with contextlib.suppress(ValueError):
            parsed = ipaddress.ip_address(address)
            if parsed.version == 6 and parsed.ipv4_mapped is None:
                return str(ipaddress.IPv6Network((parsed, 64), strict=False))
        return address

    def hook(self, environ: dict[str, Any], method: str, start_response: StartResponse) -> Iterable[bytes]:
        if method != "POST":
            return send_plain(start_response, "405 Method Not Allowed", "POST only\n", [("Allow", "POST")])
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
        return send_json(start_response, f"{verdict.status} {HTTPStatus(verdict.status).phrase}",
                         {"accepted": verdict.accepted, "reason": verdict.reason}, extra)

    def status(self, root: str | None) -> dict[str, Any]:
        """status.json with what is live now, the kept releases and the live release's link report."""
        status = Status.load(self.status_file).to_json() if self.status_file else {}
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
        status["links"] = releases.read_report(Path(root)) if root else None  # the live release's link report
        return status


def _with_headers(start_response: StartResponse, extra: Iterable[tuple[str, str]]) -> StartResponse:
    def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        return start_response(status, [*headers, *extra], exc_info)
    return start
