"""`_headers` rules (the format static-site hosts share): response headers per path pattern.

    /assets/*
      Cache-Control: public, max-age=31536000, immutable
    /posts/*
      Content-Security-Policy: default-src 'self'

A line starting with `/` is a path pattern (as in `_redirects`: literal and `:name` segments, a final `*`);
the indented `Name: value` lines below it are its headers. Every block whose pattern matches a request adds
its headers (a name set by several is joined with `, `); they replace the server's header of the same name.
Whole-line `#` comments. Headers the server or the frontend must own are refused, as is anything else that
cannot be used: RuleError names file, line and reason. Pure: no file access.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.redirects import Pattern, PatternIndex, Problem, RuleError, _Invalid

TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP field name
FRAMING = "framing is the server's: a wrong value breaks the connection or the frontend's cache"
HOP = "a hop-by-hop header belongs to one connection, not to a page"
REFUSED = {
    "content-length": FRAMING,
    "transfer-encoding": FRAMING,
    "content-range": FRAMING,
    "trailer": FRAMING,
    "content-encoding": "the server chooses the encoding (it sends precompressed twins); another one makes the "
                        "body unreadable",
    "connection": HOP,
    "keep-alive": HOP,
    "upgrade": HOP,
    "proxy-connection": HOP,
    "te": HOP,
    "proxy-authenticate": HOP,
    "etag": "the server derives it from the file, for conditional requests",
    "last-modified": "the server derives it from the file, for conditional requests",
    "vary": "the server sets it; the frontend's cache keys answers on it",
    "set-cookie": "the frontend caches answers: one reader's cookie would reach every reader",
    "location": "use _redirects for redirects",
    "date": "the server sets it",
    "age": "the frontend's cache sets it",
    "server": "the server sets it",
    "x-site-release": "the server sets it (which release answered)",
}


@dataclass(frozen=True)
class HeaderBlock:
    line: int
    pattern: Pattern
    headers: tuple[tuple[str, str], ...]


class Headers:
    """The blocks of one `_headers` file, ready to match."""

    def __init__(self, blocks: Sequence[HeaderBlock]):
        self.blocks = tuple(blocks)
        self.index = PatternIndex([(block.pattern, block) for block in self.blocks])

    def __len__(self) -> int:
        return len(self.blocks)

    def for_path(self, path: str) -> list[tuple[str, str]]:
        """The headers for a request path (decoded): every matching block's, in file order, one per name."""
        merged: dict[str, tuple[str, list[str]]] = {}
        for block in self.index.all(path):
            for name, value in block.headers:
                merged.setdefault(name.lower(), (name, []))[1].append(value)
        return [(name, ", ".join(values)) for name, values in merged.values()]


def _header(text: str) -> tuple[str, str]:
    name, colon, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if not colon or not name:
        raise _Invalid(f"{text!r}: expected `Name: value` under a path")
    if not TOKEN.fullmatch(name):
        raise _Invalid(f"{name!r} is not a header name (letters, digits and -)")
    reason = REFUSED.get(name.lower())
    if reason is not None:
        raise _Invalid(f"{name} cannot be set here: {reason}")
    if not value:
        raise _Invalid(f"{name} has no value")
    if any(ord(ch) < 0x20 and ch != "\t" or ord(ch) == 0x7F for ch in value):
        raise _Invalid(f"{name}: the value holds control characters")
    if not value.isascii():
        raise _Invalid(f"{name}: the value is not ASCII (percent-encode URLs in it)")
    return name, value


def parse_headers(text: str, name: str = "_headers") -> Headers:
    blocks: list[HeaderBlock] = []
    problems: list[Problem] = []
    current: tuple[int, Pattern | None, list[tuple[str, str]]] | None = None

    def close() -> None:
        if current is None:
            return
        line, pattern, headers = current
        if pattern is None:
            return  # its problem is already recorded
        if not headers:
            problems.append(Problem(name, line, f"{pattern.text} has no headers under it (indent `Name: value` "
                                    "lines below the path)"))
        else:
            blocks.append(HeaderBlock(line, pattern, tuple(headers)))

    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            if raw[0] in " \t":
                if current is None:
                    raise _Invalid(f"{stripped!r}: a header comes below a path line (e.g. /*)")
                current[2].append(_header(stripped))
            else:
                close()
                current = (number, None, [])
                if ":" in stripped and not stripped.startswith("/"):
                    raise _Invalid(f"{stripped!r}: a header line is indented below its path")
                current = (number, Pattern.parse(stripped), [])
        except (_Invalid, UnicodeDecodeError) as exc:
            problems.append(Problem(name, number, str(exc)))
    close()
    if problems:
        raise RuleError(sorted(problems, key=lambda problem: problem.line))
    return Headers(blocks)
