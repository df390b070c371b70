"""The link report: the internal links and anchors of a release, checked after every publish.

A link is internal when it is relative, root-relative, or absolute with the site's own origin (the one the
front page's canonical link names, i.e. Nikola's SITE_URL). Its target is fine when the release has that file,
or that directory with an index.html (what serve.py answers); a `#fragment` must name an `id` (or the `name`
of an `<a>`) in the target page. Links into /_site/ (the instance's own pages) are not checked.

Pages are what a build wrote, so they may be hostile: lxml's parser without huge_tree, MAX_PAGE_BYTES per
page, MAX_PAGES per release, an iterative walk, and at most MAX_REPORTED broken links kept (all are counted).

Cheap when little changed: a page's links and ids are kept, keyed by its inode, size and mtime, and releases
hard-link unchanged files from the previous one, so only pages the build rewrote are parsed again; checking
every link against the new release's files then costs dictionary lookups. By default the watcher runs it after
the swap (it never delays push → live); with LINKS_BROKEN_FAIL=1 before it, and broken links fail the build.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

from pipeline import heap, releases, tree
from pipeline.errors import BuildError
from pipeline.files import replace_file
from pipeline.releases import REPORT_SUFFIX

log = logging.getLogger(__name__)

PAGE_SUFFIXES = (".html", ".htm")
MAX_PAGE_BYTES = 4 << 20  # larger pages are not parsed (counted as skipped)
MAX_PAGES = 50_000  # pages parsed per release; the rest are counted as skipped
MAX_FILES = 1_000_000  # files listed per release (a Nikola blog of 2,000 posts has ~5,000 with the .gz twins)
MAX_LINKS_PER_PAGE = 20_000
MAX_REPORTED = 100  # broken links kept in the report (all are counted)
SHOWN_IN_ERROR = 5  # broken links named in a failed build's one-line error (all MAX_REPORTED are in its log)
RESERVED = "/_site/"
_NO_FRAGMENT_CHECK = ("", "top")  # "#" and "#top" scroll to the top without an element (HTML's rules)

PageKey = tuple[int, int, int, int]  # st_dev, st_ino, st_size, st_mtime_ns
Link = tuple[str, str]  # (URL path, fragment), both percent-decoded


@dataclass(frozen=True)
class Page:
    key: PageKey
    links: tuple[Link, ...]
    ids: frozenset[str]


class BrokenLinks(BuildError):
    """LINKS_BROKEN_FAIL is set and the built release has broken internal links."""


def page_url(relpath: str) -> str:
    """The URL path readers use for a release file: `posts/a/index.html` → `/posts/a/`."""
    if relpath == "index.html" or relpath.endswith("/index.html"):
        return "/" + relpath[: -len("index.html")]
    return "/" + relpath


def _fragment_of(raw: str) -> str:
    return unquote(raw) if "%" in raw else raw


def _parser() -> Any:
    import lxml.html  # imported here, when a report is made

    return lxml.html.HTMLParser(huge_tree=False, no_network=True, remove_comments=True, remove_pis=True,
                                recover=True)


class LinkChecker:
    """Checks releases one after the other, keeping the parsed pages of the last one."""

    def __init__(self) -> None:
        self._pages: dict[str, Page] = {}
        self._origin: str | None = None
        self._resolved: dict[tuple[str, str], Link | None] = {}
        self._parser: Any = None
        self._xpath: Any = None

    # -- parsing --------------------------------------------------------------------------------------
    def _parse(self, data: bytes, relpath: str, key: PageKey) -> Page:
        import lxml.etree
        import lxml.html

        if self._parser is None:
            self._parser = _parser()
            self._xpath = (lxml.etree.XPath("//@href | //@src", smart_strings=False),
                           lxml.etree.XPath("//@id | //a/@name", smart_strings=False),
                           lxml.etree.XPath("//base/@href", smart_strings=False))
        links_of, ids_of, base_of = self._xpath
        try:
            root = lxml.html.document_fromstring(data, parser=self._parser)
        except (lxml.etree.ParserError, lxml.etree.XMLSyntaxError, ValueError):
            return Page(key, (), frozenset())
        base = page_url(relpath)  # what readers' browsers resolve against (`/posts/a/` for its index.html)
        bases = base_of(root)
        if bases:
            resolved = self._resolve(base, str(bases[0]))
            if resolved is not None:
                base = resolved[0]
        links = []
        for href in links_of(root)[:MAX_LINKS_PER_PAGE]:
            link = self._resolve(base, str(href))
            if link is not None:
                links.append(link)
        ids = frozenset(sys.intern(str(value)) for value in ids_of(root))
        return Page(key, tuple(dict.fromkeys(links)), ids)

    def _resolve(self, base: str, href: str) -> Link | None:
        """An internal link as (URL path, fragment); None for external links and what is not a link."""
        base_dir = base[: base.rfind("/") + 1]
        memo_key = (base_dir if href[:1] not in ("#", "?", "") else base, href)
        if memo_key in self._resolved:
            return self._resolved[memo_key]
        link = self._resolve_uncached(base, href)
        if len(self._resolved) > 200_000:
            self._resolved.clear()
        self._resolved[memo_key] = link
        return link

    def _resolve_uncached(self, base: str, href: str) -> Link | None:
        href = href.strip()
        if not href or href.startswith("//"):
            return None
        try:
            parts = urlsplit(href)
        except ValueError:
            return None
        if parts.scheme or parts.netloc:
            if self._origin is None or f"{parts.scheme}://{parts.netloc}".lower() != self._origin:
                return None
            path = parts.path or "/"
        else:
            path = urljoin(base, parts.path) if parts.path else base
        path = unquote(path)
        if path.startswith(RESERVED) or "\x00" in path:
            return None
        return sys.intern(path), sys.intern(_fragment_of(parts.fragment))

    # -- the release ---------------------------------------------------------------------------------
    def check(self, release_dir: Path) -> dict[str, Any]:
        """Check one release; returns the report (see as_report)."""
        started = time.monotonic()
        files, pages, truncated = _walk(release_dir)
        origin = self._site_origin(release_dir, pages)
        if origin != self._origin:  # links resolved for another origin are stale
            self._origin, self._pages, self._resolved = origin, {}, {}
        parsed: dict[str, Page] = {}
        skipped = reparsed = 0
        for relpath, key in pages:
            page = self._pages.get(relpath)
            if page is None or page.key != key:
                if len(parsed) >= MAX_PAGES:
                    skipped += 1
                    continue
                data = _read_page(release_dir, relpath)
                if data is None:
                    skipped += 1
                    continue
                page = self._parse(data, relpath, key)
                reparsed += 1
            parsed[relpath] = page
        self._pages = parsed
        broken_count, broken = _evaluate(files, parsed, _redirected(release_dir))
        return {
            "release": release_dir.name, "checked_pages": len(parsed), "reparsed_pages": reparsed,
            "skipped_pages": skipped + truncated, "broken_count": broken_count, "broken": broken,
            "seconds": round(time.monotonic() - started, 3),
        }

    def _site_origin(self, release_dir: Path, pages: list[tuple[str, PageKey]]) -> str | None:
        """`scheme://host` of the front page's canonical link, when it names the front page itself."""
        if not any(relpath == "index.html" for relpath, _key in pages):
            return None
        data = _read_page(release_dir, "index.html")
        if not data:
            return None
        import lxml.etree
        import lxml.html

        try:
            root = lxml.html.document_fromstring(data, parser=self._parser or _parser())
        except (lxml.etree.ParserError, lxml.etree.XMLSyntaxError, ValueError):
            return None
        for href in root.xpath("//link[@rel='canonical']/@href", smart_strings=False):
            parts = urlsplit(str(href).strip())
            if parts.scheme in ("http", "https") and parts.netloc and parts.path in ("", "/"):
                return f"{parts.scheme}://{parts.netloc}".lower()
        return None


def _walk(release_dir: Path) -> tuple[set[str], list[tuple[str, PageKey]], int]:
    """Every file of the release (relative paths), its pages with their keys (sorted), and how many entries
    were left out (over MAX_FILES). Iterative; links are not followed (a release has none)."""
    files: set[str] = set()
    pages: list[tuple[str, PageKey]] = []
    left_out = 0
    todo = [""]
    while todo:
        prefix = todo.pop()
        try:
            scanner = os.scandir(release_dir / prefix if prefix else release_dir)
        except OSError:
            continue
        with scanner:
            for entry in scanner:
                relpath = prefix + entry.name
                try:
                    if entry.is_dir(follow_symlinks=False):
                        todo.append(relpath + "/")
                        continue
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    if len(files) >= MAX_FILES:
                        left_out += 1
                        continue
                    files.add(relpath)
                    if entry.name.endswith(PAGE_SUFFIXES):
                        st = entry.stat(follow_symlinks=False)
                        pages.append((relpath, (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)))
                except OSError:
                    continue
    pages.sort()
    return files, pages, left_out


def _read_page(release_dir: Path, relpath: str) -> bytes | None:
    try:
        fd = os.open(release_dir / relpath, tree.FILE_FLAGS)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_PAGE_BYTES:
            return None
        with os.fdopen(os.dup(fd), "rb") as handle:
            return handle.read(MAX_PAGE_BYTES + 1)[:MAX_PAGE_BYTES]
    except OSError:
        return None
    finally:
        os.close(fd)


def target_file(files: set[str], path: str) -> str | None:
    """The release file serve.py answers a URL path with, or None (a 404)."""
    relpath = path.lstrip("/")
    if not relpath or relpath.endswith("/"):
        relpath += "index.html"
        return relpath if relpath in files else None
    if relpath in files:
        return relpath
    index = relpath + "/index.html"
    return index if index in files else None


def _redirected(release_dir: Path) -> Callable[[str], bool]:
    """Whether the release's `_redirects` answers a path that has no file (with anything but a 404 or 410)."""
    try:
        from pipeline import site_rules

        rules = site_rules.load(str(release_dir)).redirects
    except Exception:  # noqa: BLE001 - unusable rules fail the publish elsewhere; here they answer nothing
        return lambda _path: False
    if not rules:
        return lambda _path: False

    def answered(path: str) -> bool:
        found = rules.match(path, lambda: False)
        return found is not None and found[0].status not in (404, 410)
    return answered


def _evaluate(files: set[str], pages: dict[str, Page],
              redirected: Callable[[str], bool]) -> tuple[int, list[dict[str, str]]]:
    """(how many links are broken, the first MAX_REPORTED as {page, target})."""
    verdicts: dict[Link, bool] = {}
    count = 0
    broken: list[dict[str, str]] = []
    for relpath, page in pages.items():
        for link in page.links:
            ok = verdicts.get(link)
            if ok is None:
                ok = verdicts[link] = _link_ok(files, pages, link) or (
                    target_file(files, link[0]) is None and redirected(link[0]))
            if not ok:
                count += 1
                if len(broken) < MAX_REPORTED:
                    path, fragment = link
                    broken.append({"page": page_url(relpath), "target": path + (f"#{fragment}" if fragment else "")})
    return count, broken


def _link_ok(files: set[str], pages: dict[str, Page], link: Link) -> bool:
    path, fragment = link
    relpath = target_file(files, path)
    if relpath is None:
        return False
    if fragment in _NO_FRAGMENT_CHECK:
        return True
    page = pages.get(relpath)
    # Fragments of files that are not pages, or of pages not parsed (too large), are not checked.
    return page is None or fragment in page.ids


# -- reports: written beside the release (pipeline.releases.report_path), read by serve.py for the live one -------
def write_report(release_dir: Path, report: dict[str, Any]) -> None:
    replace_file(releases.report_path(release_dir), json.dumps(report, indent=1) + "\n")
    for stale in release_dir.parent.glob(f"*{REPORT_SUFFIX}"):  # of pruned releases
        if not stale.name.startswith(".") and not (stale.parent / stale.name[: -len(REPORT_SUFFIX)]).is_dir():
            with contextlib.suppress(OSError):
                stale.unlink()


def describe(report: dict[str, Any]) -> str:
    """One line: how many links are broken, the first few named."""
    shown = ", ".join(f"{item['page']} → {item['target']}" for item in report["broken"][:SHOWN_IN_ERROR])
    more = report["broken_count"] - min(SHOWN_IN_ERROR, len(report["broken"]))
    return (f"{report['broken_count']} broken internal link(s) in {report['checked_pages']} pages: {shown}"
            + (f" and {more} more" if more > 0 else ""))


class LinkReport:
    """The watcher's side: `before_swap` (only with LINKS_BROKEN_FAIL) and `after_swap`. The report of a live
    release is made in a thread of its own (after a clean build of a 5,000-post blog it parses every page, for
    seconds), so the next push is built meanwhile; one report at a time (`wait`)."""

    def __init__(self, fail_on_broken: bool):
        self.fail_on_broken = fail_on_broken
        self.checker = LinkChecker()
        self._checked: tuple[Path, dict[str, Any]] | None = None
        self._thread: threading.Thread | None = None

    def wait(self) -> None:
        """Until the report after_swap started is written."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def before_swap(self, release_dir: Path) -> None:
        """With LINKS_BROKEN_FAIL: check the staged release; broken links remove it and raise BrokenLinks."""
        if not self.fail_on_broken:
            return
        self.wait()  # the checker goes on from the last report's pages
        try:
            report = self._check(release_dir)
        except Exception as exc:  # noqa: BLE001 - a checker that fails does not fail the build; after_swap records it
            log.warning("links of %s not checked: %s: %s", release_dir.name, type(exc).__name__, exc)
            return
        if report.get("broken_count"):
            tree.remove_tree(release_dir)
            (release_dir.parent / f"{release_dir.name}.json").unlink(missing_ok=True)
            lines = "\n".join(f"{item['page']} → {item['target']}" for item in report["broken"])
            raise BrokenLinks(f"{describe(report)} (LINKS_BROKEN_FAIL=1: fix them, or unset it to publish with "
                              "a link report)", f"broken internal links:\n{lines}\n")

    def after_swap(self, release_dir: Path) -> None:
        """Check the live release (unless before_swap did) and write its report, in a thread (see the class).
        Never raises: the release is live whatever happens here."""
        self.wait()
        self._thread = threading.Thread(target=self._report, args=(release_dir,), name="link-report", daemon=True)
        self._thread.start()

    def _report(self, release_dir: Path) -> None:
        try:
            report = self._check(release_dir)
            write_report(release_dir, report)
        except Exception as exc:  # noqa: BLE001 - a report that cannot be made must not fail a publish
            log.warning("no link report for %s: %s: %s", release_dir.name, type(exc).__name__, exc)
            with contextlib.suppress(Exception):
                write_report(release_dir, {"release": release_dir.name, "error": f"{type(exc).__name__}: {exc}"})
            return
        finally:
            heap.release()  # what parsing the pages needed goes back (the deploy's own release came before)
        if report["broken_count"]:
            log.warning("link report: %s", describe(report))
        log.info("link report of %s: %d pages (%d parsed), %d broken link(s), %.2f s", release_dir.name,
                 report["checked_pages"], report["reparsed_pages"], report["broken_count"], report["seconds"])

    def _check(self, release_dir: Path) -> dict[str, Any]:
        if self._checked is not None and self._checked[0] == release_dir:
            return self._checked[1]
        report = self.checker.check(release_dir)
        self._checked = (release_dir, report)
        return report
