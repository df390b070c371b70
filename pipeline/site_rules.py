"""A release's own rules for serve.py: `_redirects`, `_headers`, and the redirect pages Nikola writes.

Both files sit at the root of the build output (a site keeps them in `files/`, which Nikola copies there).
They are checked when a release is staged (a bad rule fails that publish, naming file, line and reason, and
the live release stays) and parsed again by serve.py on the first request of each release, so they change
exactly when the release does. Neither file is served.

Nikola's `REDIRECTIONS` (and its own moved index pages) are written as tiny meta-refresh pages by
`nikola.utils.create_redirect`. Instead of reading the configuration (that would mean running the site's
conf.py outside its sandbox, or a second output channel out of it), serve.py recognises such a page by its
exact text and answers with a real 301 to the page's own target: whatever wrote that page asked for an
immediate redirect to that URL, so the answer means the same. A page changed by a filter is not recognised
and keeps working as a meta refresh.
"""

from __future__ import annotations

import os
import re
import stat
import sys
import threading
from dataclasses import dataclass

from pipeline import tree
from pipeline.headers import Headers, parse_headers
from pipeline.redirects import Problem, Redirects, RuleError, parse_redirects

REDIRECTS_FILE, HEADERS_FILE = "_redirects", "_headers"
HIDDEN = frozenset({REDIRECTS_FILE, HEADERS_FILE})
MAX_BYTES = 4 << 20

# The text nikola.utils.create_redirect writes (Nikola 8), with the target URL twice.
_NIKOLA_HEAD = ('<!DOCTYPE html>\n<head>\n<meta charset="utf-8">\n<title>Redirecting...</title>\n'
                '<meta name="robots" content="noindex">\n<meta http-equiv="refresh" content="0; url=')
_URL = r"([\x21\x23-\x3b\x3d\x3f-\x5b\x5d-\x7e]{1,1500})"  # printable ASCII but space, quotes, <, >, backslash
_NIKOLA_PAGE = re.compile(re.escape(_NIKOLA_HEAD) + _URL + re.escape('">\n</head>\n<body>\n<p>Page moved <a href="')
                          + r"\1" + re.escape('">here</a>.</p>\n</body>') + r"\s*")
NIKOLA_PAGE_MAX = 4096


def nikola_redirect(data: bytes) -> str | None:
    """The target of a redirect page Nikola wrote, or None for any other content."""
    if len(data) > NIKOLA_PAGE_MAX or not data.startswith(b"<!DOCTYPE html>\n<head>\n<meta charset"):
        return None
    try:
        found = _NIKOLA_PAGE.fullmatch(data.decode("ascii"))
    except UnicodeDecodeError:
        return None
    return found.group(1) if found else None


@dataclass(frozen=True)
class SiteRules:
    redirects: Redirects
    headers: Headers

    @property
    def empty(self) -> bool:
        return not self.redirects and not self.headers


EMPTY = SiteRules(Redirects(()), Headers(()))


def shown_name(name: str) -> str:
    return f"files/{name}"  # where the site keeps it; errors name that


def _read(release_dir: str, name: str) -> str | None:
    try:
        fd = os.open(os.path.join(release_dir, name), tree.FILE_FLAGS)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RuleError([Problem(shown_name(name), 1, f"is {tree.kind(st.st_mode)}, not a file")])
        if st.st_size > MAX_BYTES:
            raise RuleError([Problem(shown_name(name), 1, f"is {st.st_size >> 20} MB; at most {MAX_BYTES >> 20} MB "
                                     "(use `*` and :placeholders for families of paths)")])
        with os.fdopen(os.dup(fd), "rb") as handle:
            data = handle.read(MAX_BYTES + 1)
    finally:
        os.close(fd)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise RuleError([Problem(shown_name(name), line, "is not UTF-8 text")]) from None


def load(release_dir: str) -> SiteRules:
    """The rules of a release (EMPTY without either file). Raises RuleError for rules that cannot be used."""
    redirects_text = _read(release_dir, REDIRECTS_FILE)
    headers_text = _read(release_dir, HEADERS_FILE)
    problems: list[Problem] = []
    redirects, headers = EMPTY.redirects, EMPTY.headers
    try:
        if redirects_text is not None:
            redirects = parse_redirects(redirects_text, shown_name(REDIRECTS_FILE))
    except RuleError as exc:
        problems += exc.problems
    try:
        if headers_text is not None:
            headers = parse_headers(headers_text, shown_name(HEADERS_FILE))
    except RuleError as exc:
        problems += exc.problems
    if problems:
        raise RuleError(problems)
    return SiteRules(redirects, headers)


def check_release(release_dir: os.PathLike[str] | str) -> None:
    """Fail the publish of a release whose `_redirects` or `_headers` holds a rule that cannot be used."""
    load(os.fspath(release_dir))


class RulesCache:
    """The live release's rules, parsed once per release (a release never changes)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entry = ("", EMPTY)  # (release root, its rules): replaced as one, so readers see a matching pair

    def for_release(self, root: str) -> SiteRules:
        entry = self._entry
        if entry[0] == root:
            return entry[1]
        with self._lock:
            if self._entry[0] != root:
                try:
                    rules = load(root)
                except (RuleError, OSError) as exc:
                    # Every release is checked when it is published: one damaged or unreadable since is served
                    # without its rules rather than not at all.
                    print(f"serve.py: {os.path.basename(root)}: its rules are not used: {exc}", file=sys.stderr,
                          flush=True)
                    rules = EMPTY
                self._entry = (root, rules)
            return self._entry[1]
