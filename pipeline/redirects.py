"""`_redirects` rules (the format static-site hosts share): parsed into frozen rules, matched per request.

One rule a line: `FROM TO [STATUS][!]`; `#` starts a comment. FROM is a path: literal segments, `:name`
segments (one segment each) and a final `*` (the rest, as `:splat` in TO). TO is a path or an http(s) URL.
STATUS: 301 (default), 302, 303, 307, 308 redirect; 200 answers with TO's file (a rewrite); 404 and 410
answer with TO's file and that status. A rule applies only where no file exists, unless it ends in `!`.
The first matching rule wins; the request's query string is kept.

Pure: no file access. Everything that cannot be used raises RuleError naming file, line and reason; nothing
is skipped.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from pipeline.tree import TreeError

T = TypeVar("T")
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
STATUSES = (200, *REDIRECT_STATUSES, 404, 410)
MAX_ERRORS_SHOWN = 10
PLACEHOLDER = re.compile(r":([A-Za-z_][A-Za-z0-9_]*)")
CONDITION = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*=")


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


class RuleError(TreeError):
    """Rules of a site file that cannot be used (a release is not published with them)."""

    def __init__(self, problems: Sequence[Problem]):
        self.problems = tuple(problems)
        shown = "; ".join(str(problem) for problem in self.problems[:MAX_ERRORS_SHOWN])
        more = len(self.problems) - MAX_ERRORS_SHOWN
        super().__init__(shown + (f"; and {more} more" if more > 0 else ""))


class _Invalid(ValueError):
    """One line's reason, turned into a Problem by the parser that knows file and line."""


def request_path(path: str) -> str:
    """The spelling rules are matched in: decoded, adjacent slashes merged, no trailing slash (but `/`)."""
    path = re.sub(r"//+", "/", path)
    return path.rstrip("/") or "/"


@dataclass(frozen=True)
class Pattern:
    """A path pattern: literal and `:name` segments, optionally a final `*`."""

    text: str
    parts: tuple[str, ...]
    splat: bool

    @classmethod
    def parse(cls, text: str) -> Pattern:
        if not text.startswith("/"):
            if text.startswith(("http://", "https://")):
                raise _Invalid(f"{text!r}: a rule for another host is not supported (this site has one host); "
                               "write the path only")
            raise _Invalid(f"{text!r}: a path starts with /")
        if "?" in text:
            raise _Invalid(f"{text!r}: a path to match has no query string (the request's is kept)")
        if any(ch.isspace() for ch in text):
            raise _Invalid(f"{text!r}: a path has no spaces (percent-encode them as %20)")
        decoded = urllib.parse.unquote(text, errors="strict") if "%" in text else text
        parts = [part for part in request_path(decoded).split("/") if part]
        splat = bool(parts) and parts[-1] == "*"
        if splat:
            parts.pop()
        for part in parts:
            if "*" in part:
                raise _Invalid(f"{text!r}: `*` is allowed only as the whole last segment, as in /blog/*")
            if part.startswith(":") and not PLACEHOLDER.fullmatch(part):
                raise _Invalid(f"{text!r}: {part!r} is not a placeholder name (letters, digits, _)")
        names = [part[1:] for part in parts if part.startswith(":")]
        if len(set(names)) != len(names):
            raise _Invalid(f"{text!r}: a placeholder name is used twice")
        return cls(text, tuple(parts), splat)

    @property
    def literal(self) -> str | None:
        """The one path this pattern matches, when it has no placeholder and no `*`."""
        if self.splat or any(part.startswith(":") for part in self.parts):
            return None
        return "/" + "/".join(self.parts)

    @property
    def names(self) -> frozenset[str]:
        found = {part[1:] for part in self.parts if part.startswith(":")}
        return frozenset(found | {"splat"} if self.splat else found)

    def match(self, segments: Sequence[str]) -> dict[str, str] | None:
        count = len(self.parts)
        if len(segments) < count or (not self.splat and len(segments) != count):
            return None
        params: dict[str, str] = {}
        for part, segment in zip(self.parts, segments, strict=False):
            if part.startswith(":"):
                params[part[1:]] = segment
            elif part != segment:
                return None
        if self.splat:
            params["splat"] = "/".join(segments[count:])
        return params


class PatternIndex(Generic[T]):
    """Patterns in file order, found without a scan of all of them: plain paths by a dict lookup, the others
    by their first literal segment (those starting with a placeholder or `*` are tried for every path)."""

    def __init__(self, entries: Sequence[tuple[Pattern, T]]):
        self.entries = list(entries)
        self.exact: dict[str, list[int]] = {}
        self.by_first: dict[str, list[int]] = {}
        self.everywhere: list[int] = []
        for index, (pattern, _value) in enumerate(self.entries):
            literal = pattern.literal
            if literal is not None:
                self.exact.setdefault(literal, []).append(index)
            elif pattern.parts and not pattern.parts[0].startswith(":"):
                self.by_first.setdefault(pattern.parts[0], []).append(index)
            else:
                self.everywhere.append(index)

    def __len__(self) -> int:
        return len(self.entries)

    def _dynamic(self, segments: list[str]) -> tuple[list[int], list[int]]:
        return (self.by_first.get(segments[0], []) if segments else []), self.everywhere

    def first(self, path: str) -> tuple[T, dict[str, str]] | None:
        """The first entry (in file order) whose pattern matches the request path `path` (see request_path)."""
        path = request_path(path)
        exact = self.exact.get(path)
        best, params = (exact[0], {}) if exact else (len(self.entries), {})
        segments = [part for part in path.split("/") if part]
        for candidates in self._dynamic(segments):
            for index in candidates:
                if index >= best:
                    break
                found = self.entries[index][0].match(segments)
                if found is not None:
                    best, params = index, found
                    break
        return (self.entries[best][1], params) if best < len(self.entries) else None

    def all(self, path: str) -> list[T]:
        """Every entry whose pattern matches `path`, in file order."""
        path = request_path(path)
        segments = [part for part in path.split("/") if part]
        indices = list(self.exact.get(path, ()))
        for candidates in self._dynamic(segments):
            indices += [index for index in candidates if self.entries[index][0].match(segments) is not None]
        return [self.entries[index][1] for index in sorted(indices)]


@dataclass(frozen=True)
class Redirect:
    line: int
    source: Pattern
    target: str
    status: int = 301
    force: bool = False

    @property
    def external(self) -> bool:
        return self.target.startswith(("http://", "https://"))

    def location(self, params: dict[str, str], query: str) -> str:
        """TO with the placeholders filled (percent-encoded) and the request's query string appended."""
        def fill(found: re.Match[str]) -> str:
            value = params.get(found.group(1))
            return found.group(0) if value is None else urllib.parse.quote(value, safe="/")
        target = PLACEHOLDER.sub(fill, self.target)
        return with_query(target, query) if self.status in REDIRECT_STATUSES else target


def with_query(location: str, query: str) -> str:
    """`location` with a request's query string added (before a fragment)."""
    if not query:
        return location
    location, hash_, fragment = location.partition("#")
    return location + ("&" if "?" in location else "?") + query + hash_ + fragment


def parse_redirect(text: str, line: int) -> Redirect:
    fields = text.split()
    if len(fields) < 2:
        raise _Invalid("expected `FROM TO [STATUS]`, e.g. `/old/ /new/ 301`")
    source, target, *rest = fields
    if CONDITION.match(target):
        raise _Invalid(f"{target!r}: matching on query parameters is not supported; match the path only "
                       "(the query string is passed on)")
    pattern = Pattern.parse(source)
    status, force = 301, False
    if rest:
        word = rest.pop(0)
        force = word.endswith("!")
        number = word[:-1] if force else word
        if not number.isdigit() or int(number) not in STATUSES:
            raise _Invalid(f"status {word!r} is not one of {', '.join(map(str, STATUSES))} "
                           "(optionally followed by !)")
        status = int(number)
    if rest:
        extra = " ".join(rest)
        if CONDITION.match(rest[0]):
            raise _Invalid(f"conditions ({extra}) are not supported: every reader gets the same answer")
        raise _Invalid(f"unexpected {extra!r} after the status")
    if not target.startswith(("/", "http://", "https://")):
        raise _Invalid(f"target {target!r}: expected a path starting with / or an http(s):// URL")
    if any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in target) or any(ch in target for ch in '"<>\\'):
        raise _Invalid(f"target {target!r}: characters that must be percent-encoded")
    external = target.startswith(("http://", "https://"))
    if external and status not in REDIRECT_STATUSES:
        raise _Invalid(f"status {status} with another site's URL would be a proxy, which is not supported; "
                       "use a redirect status (301, 302, 303, 307, 308)")
    if not external and status in (200, 404, 410):
        if "?" in target or "#" in target:
            raise _Invalid(f"target {target!r}: the file to answer with has no query string or fragment")
        try:
            urllib.parse.unquote(target, errors="strict")
        except UnicodeDecodeError:
            raise _Invalid(f"target {target!r} is not UTF-8 once decoded") from None
    # A `:word` in a static rule's target is text (`/wiki/Help:Contents`); in a dynamic one, most likely a typo.
    unknown = set(PLACEHOLDER.findall(target.split("?", 1)[0])) - pattern.names if pattern.names else set()
    if unknown and not external:
        raise _Invalid(f"target {target!r} uses :{', :'.join(sorted(unknown))}, which FROM does not capture")
    return Redirect(line, pattern, target, status, force)


def parse_lines(text: str, name: str, parse_line: Callable[[str, int], T]) -> list[T]:
    """Lines without comments (whole lines, or from ` #` on) and blanks, each parsed; every problem is
    collected, then all raised at once."""
    rules, problems = [], []
    for number, raw in enumerate(text.splitlines(), 1):
        line = re.split(r"\s#", raw, maxsplit=1)[0].strip()
        if not line or line.startswith("#"):
            continue
        try:
            rules.append(parse_line(line, number))
        except (_Invalid, UnicodeDecodeError) as exc:
            problems.append(Problem(name, number, str(exc)))
    if problems:
        raise RuleError(problems)
    return rules


class Redirects:
    """The rules of one `_redirects` file, ready to match."""

    def __init__(self, rules: Sequence[Redirect]):
        self.rules = tuple(rules)
        self.any_rule = PatternIndex([(rule.source, rule) for rule in self.rules])
        self.forced = PatternIndex([(rule.source, rule) for rule in self.rules if rule.force])

    def __len__(self) -> int:
        return len(self.rules)

    def match(self, path: str, file_exists: Callable[[], bool]) -> tuple[Redirect, dict[str, str]] | None:
        """The rule for a request path (decoded): the first match, unless that one is not forced and a file
        exists at the path (then the first forced one). `file_exists` is asked only then."""
        found = self.any_rule.first(path)
        if found is None or found[0].force or not file_exists():
            return found
        return self.forced.first(path)


def parse_redirects(text: str, name: str = "_redirects") -> Redirects:
    rules = parse_lines(text, name, parse_redirect)
    problems = []
    first: dict[str, Redirect] = {}  # per plain path: its first rule, and its first forced rule
    first_forced: dict[str, Redirect] = {}
    for rule in rules:
        literal = rule.source.literal
        if literal is None:
            continue
        earlier = first.get(literal)
        # A later rule for the same path is used only as the forced one behind an unforced first rule.
        shadow = first_forced.get(literal) if rule.force else earlier
        if earlier is not None and earlier.force:
            shadow = earlier
        if shadow is not None:
            problems.append(Problem(name, rule.line, f"{rule.source.text} is matched by line {shadow.line} "
                                    "first: this rule would never be used"))
            continue
        first.setdefault(literal, rule)
        if rule.force:
            first_forced.setdefault(literal, rule)
    if problems:
        raise RuleError(problems)
    return Redirects(rules)
