"""What `serve.py` answers with, independent of the HTTP server: request paths checked against the
release, files looked up without following symlinks out of it, caching headers, the memo of
rendered answers (bounded in entries and bytes), and the plain, JSON and text answers that no cache keeps."""

from __future__ import annotations

import email.utils
import json
import mimetypes
import os
import re
import stat
from collections.abc import Callable, Iterable
from typing import Any

StartResponse = Callable[..., Any]
MEMO_BYTES, MEMO_ENTRIES = 32 << 20, 20000

mimetypes.add_type("application/rss+xml", ".xml", strict=False)
mimetypes.add_type("text/markdown", ".md")


class BadPath(ValueError):
    pass


def split_request_path(path_info: str) -> list[str]:
    """The path's segments, or BadPath for anything that could step outside the release.

    PATH_INFO arrives percent-decoded (latin-1 code points of the raw bytes); an encoded slash
    is left as the literal text %2F by the server. Nothing is decoded a second time.
    """
    try:
        path = path_info.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        raise BadPath("path is not UTF-8") from None
    if "\x00" in path or "\\" in path:
        raise BadPath("NUL or backslash in path")
    segments = [segment for segment in path.split("/") if segment]
    for segment in segments:
        if segment in (".", "..") or "%2f" in segment.lower() or "%5c" in segment.lower():
            raise BadPath(f"forbidden path segment {segment!r}")
    return segments


def memo_path(path_info: str) -> str:
    """The spelling of a path its answer is kept under: adjacent slashes merged, as the file looked up is the
    same (`/posts//x/` is `/posts/x/`), so odd spellings cannot fill the memo with copies of one page."""
    return re.sub(r"//+", "/", path_info)


def inside(root: str, candidate: str) -> bool:
    return candidate == root or candidate.startswith(root + os.sep)


def file_inside(root: str, path: str) -> tuple[str, os.stat_result] | None:
    """`path` and its stat when it is a regular file whose real path stays inside `root` (a symlink
    pointing out of the release, or anything that is not a file, gives None)."""
    real = os.path.realpath(path)
    if not inside(root, real):
        return None
    try:
        st = os.stat(real)
    except OSError:
        return None
    return (real, st) if stat.S_ISREG(st.st_mode) else None


def http_date(timestamp: float) -> str:
    return email.utils.formatdate(timestamp, usegmt=True)


def etag_for(st: os.stat_result) -> str:
    return f'"{st.st_mtime_ns:x}-{st.st_size:x}"'


def content_type(name: str) -> str:
    kind, _ = mimetypes.guess_type(name, strict=False)
    kind = kind or "application/octet-stream"
    if kind.startswith("text/") or kind in ("application/javascript", "application/json", "application/rss+xml"):
        kind += "; charset=utf-8"
    return kind


def accepts_gzip(environ: dict[str, Any]) -> bool:
    for item in environ.get("HTTP_ACCEPT_ENCODING", "").split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() in ("gzip", "*"):
            q = params.strip().lower()
            return not (q.startswith("q=") and q[2:].strip() in ("0", "0.0", "0.00", "0.000"))
    return False


def not_modified(environ: dict[str, Any], etag: str, mtime: float) -> bool:
    if_none_match = environ.get("HTTP_IF_NONE_MATCH")
    if if_none_match is not None:
        tags = [tag.strip() for tag in if_none_match.split(",")]
        return "*" in tags or etag in tags or f"W/{etag}" in tags
    since = environ.get("HTTP_IF_MODIFIED_SINCE")
    if since:
        try:
            parsed = email.utils.parsedate_to_datetime(since).timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            return False
        return int(mtime) <= parsed
    return False


class Answer:
    """A rendered GET answer: replayed for GET, HEAD and conditional requests alike."""

    def __init__(self, status: str, headers: list[tuple[str, str]], body: bytes):
        self.status, self.headers, self.body = status, headers, body
        fields = dict(headers)
        self.etag = fields.get("ETag", "")
        modified = fields.get("Last-Modified")
        self.mtime = email.utils.parsedate_to_datetime(modified).timestamp() if modified else 0.0

    def replay(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if self.status.startswith("200") and self.etag and not_modified(environ, self.etag, self.mtime):
            start_response("304 Not Modified", [h for h in self.headers if h[0] != "Content-Length"])
            return []
        start_response(self.status, self.headers)
        return [] if environ.get("REQUEST_METHOD") == "HEAD" else [self.body]


class Memo:
    """Answers of the live release, emptied when the release changes. Bounded in entries and in bytes,
    keys (request paths) counted with the bodies; answers of missing paths are never kept per path
    (see SiteApp.__call__), so a flood of distinct URLs cannot grow it."""

    ENTRY_OVERHEAD = 256  # bytes of bookkeeping counted per entry

    def __init__(self, max_bytes: int = MEMO_BYTES, max_entries: int = MEMO_ENTRIES) -> None:
        self.max_bytes, self.max_entries = max_bytes, max_entries
        self.root = ""
        self.answers: dict[tuple[str, bool], Answer] = {}
        self.size = 0

    def get(self, root: str, key: tuple[str, bool]) -> Answer | None:
        return self.answers.get(key) if root == self.root else None

    def put(self, root: str, key: tuple[str, bool], answer: Answer) -> None:
        if root != self.root:
            self.root, self.answers, self.size = root, {}, 0
        cost = len(key[0]) + len(answer.body) + self.ENTRY_OVERHEAD
        if key not in self.answers and self.size + cost <= self.max_bytes and len(self.answers) < self.max_entries:
            self.answers[key] = answer
            self.size += cost


def send_text(start_response: StartResponse, status: str, data: bytes, kind: str) -> Iterable[bytes]:
    start_response(status, [("Content-Type", kind), ("Content-Length", str(len(data))),
                            ("Cache-Control", "no-store")])
    return [data]


def send_json(start_response: StartResponse, status: str, body: dict[str, Any],
              extra: list[tuple[str, str]] | None = None) -> Iterable[bytes]:
    data = (json.dumps(body, indent=2) + "\n").encode()
    start_response(status, [
        ("Content-Type", "application/json"), ("Content-Length", str(len(data))),
        ("Cache-Control", "no-store"), *(extra or []),
    ])
    return [data]


def send_plain(
    start_response: StartResponse, status: str, text: str, extra: list[tuple[str, str]] | None = None,
) -> Iterable[bytes]:
    data = text.encode()
    start_response(status, [
        ("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data))),
        ("Cache-Control", "no-store"), *(extra or []),
    ])
    return [data]


def method_not_allowed(start_response: StartResponse) -> Iterable[bytes]:
    return send_plain(start_response, "405 Method Not Allowed", "method not allowed\n", [("Allow", "GET, HEAD")])
