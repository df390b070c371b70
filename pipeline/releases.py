"""Release directories, the atomic `current` symlink, pruning and rollback.

Layout under DATA_DIR:
    releases/<id>/       one built site, never modified after it is published
    releases/<id>.json   its metadata (commit, built_at, build_seconds, mode)
    releases/<id>.links.json   its link report (written by pipeline.publish.links, read by serve.py)
    current -> releases/<id>   swapped with rename(2), so readers see one release or the other
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import json
import os
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline import site_rules, tree
from pipeline.errors import ReleaseError
from pipeline.layout import Layout
from pipeline.status import StatusStore


@dataclass(frozen=True)
class Release:
    release: str
    commit: str
    built_at: str
    build_seconds: float
    mode: str = "clean"
    tree: str = ""  # the commit's tree: a later commit of the same tree is published from this release
    holds_back: bool = False  # it leaves out posts scheduled for later (not reused: one may be due by now)


def release_id(commit: str, now: float | None = None) -> str:
    """`<UTC time to the millisecond>-<commit>`: ids sort by time, also for two publishes in one second."""
    now = time.time() if now is None else now
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
    return f"{stamp}.{int(now * 1000) % 1000:03d}Z-{commit[:12]}"


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return a.st_size == b.st_size and a.st_mtime_ns == b.st_mtime_ns


COMPRESSIBLE = (".html", ".css", ".js", ".xml", ".json", ".svg", ".txt", ".md", ".rss", ".atom", ".map")
COMPRESS_MIN_BYTES = 512
COMPRESS_MAX_BYTES = 32 << 20  # larger text files are sent as they are (compressing them holds them in memory)
MAX_DEPTH = 64  # directories nested in a release (a site's own go 4 or 5 deep)
FILE_MODE, DIR_MODE = 0o644, 0o755  # what a release's files and directories get, whatever the build gave


def _precompress_at(dir_fd: int, name: str) -> bool:
    """Write `name`.gz beside a text file in `dir_fd` when that saves at least 10 %; deterministic (no name,
    no time in the header) and given the file's mtime, so an unchanged file's .gz is shared like the file."""
    if not name.endswith(COMPRESSIBLE):
        return False
    fd = os.open(name, tree.FILE_FLAGS, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or not COMPRESS_MIN_BYTES <= st.st_size <= COMPRESS_MAX_BYTES:
            return False
        with os.fdopen(os.dup(fd), "rb") as handle:
            data = handle.read()
    finally:
        os.close(fd)
    packed = gzip.compress(data, compresslevel=9, mtime=0)
    if len(packed) > 0.9 * len(data):
        return False
    try:
        out = os.open(name + ".gz", tree.NEW_FILE, FILE_MODE, dir_fd=dir_fd)
    except FileExistsError:
        return False
    with os.fdopen(out, "wb") as handle:
        handle.write(packed)
        handle.flush()
        os.utime(handle.fileno(), ns=(st.st_atime_ns, st.st_mtime_ns))
    return True


def stage(output: Path | int, releases_dir: Path, meta: Release, previous: Path | None,
          spare: Spare | None = None) -> Path:
    """Copy a build's output (a directory, or an open descriptor of one) into a new release directory and
    return it.

    The output is code's work and trusted in nothing: it is walked by descriptor without following a link
    (pipeline.tree), only regular files and directories are taken (anything else fails the staging with
    tree.TreeError naming it), each file is read from what was opened and checked (a file swapped for a link
    or a FIFO meanwhile is refused, never followed), and the copies get modes of our choosing. Files
    identical (size and mtime) to the previous release are hard-linked instead of copied (with their
    precompressed .gz): releases are never modified, so sharing is safe, and keeping five releases then
    costs little more than one. Text files get a gzip copy beside them (`name.gz`) that serve.py sends to
    clients accepting gzip.

    With `spare` (Spare: a copy of `previous` made since it went live, all hard links), the release is that
    copy brought up to date instead: only what differs from `previous` is touched (a one-post change makes no
    folder and links no file), and the result is the same.
    """
    releases_dir.mkdir(parents=True, exist_ok=True)
    final = releases_dir / meta.release
    tmp = releases_dir / f".{meta.release}.tmp"
    meta_file = releases_dir / f"{meta.release}.json"
    tree.remove_tree(tmp)
    copy = None if spare is None else spare.take(previous)
    if copy is not None:
        try:
            os.rename(copy, tmp)
        except OSError:
            copy = None
    source = os.dup(output) if isinstance(output, int) else tree.open_dir(str(output))
    try:
        if copy is not None:
            assert spare is not None
            _sync_tree(source, tmp, spare.listing)
        else:
            _copy_tree(source, tmp, previous)
        site_rules.check_release(tmp)  # a bad _redirects or _headers rule fails the publish (RuleError)
        meta_file.write_text(json.dumps(asdict(meta), indent=2) + "\n")
        os.replace(tmp, final)
    except BaseException:
        # A full volume, something refused: nothing half-copied is left behind.
        with contextlib.suppress(OSError):
            tree.remove_tree(tmp)
        meta_file.unlink(missing_ok=True)
        raise
    finally:
        os.close(source)
    return final


Listing = dict[str, dict[str, os.stat_result]]  # folder ("" or "a/b/") → name → lstat of each entry in it


def _copy_tree(source: int, tmp: Path, previous: Path | None, listing: Listing | None = None) -> None:
    """Copy the output `source` into the new folder `tmp`, linking what `previous` has unchanged (_copy_dir);
    with `listing`, note in it what each folder of the copy holds."""
    tmp.mkdir(mode=DIR_MODE)
    old = None
    if previous is not None:
        with contextlib.suppress(OSError):
            old = tree.open_dir(str(previous))

    def enter(name: str, parent: list[int | None], fds: list[int | None]) -> None:
        os.mkdir(name, DIR_MODE, dir_fd=parent[1])
        fds[1] = tree.open_dir(name, dir_fd=parent[1])
        if parent[2] is not None:
            with contextlib.suppress(OSError):
                fds[2] = tree.open_dir(name, dir_fd=parent[2])

    def per_dir(fds: list[int | None], prefix: str) -> list[str]:
        return _copy_dir(fds, prefix, listing)

    _walk_output([os.dup(source), None, old], tmp, per_dir, enter)


def _walk_output(fds: list[int | None], tmp: Path, per_dir: Callable[[list[int | None], str], list[str]],
                 enter: Callable[[str, list[int | None], list[int | None]], None]) -> None:
    """Depth-first over the output's folders. Each level of the walk holds its folder's descriptors (the output's
    first, then the release's `tmp` and any more; `fds` those of the top) and the names of its subfolders still
    to walk, so descriptors are bounded by MAX_DEPTH. `per_dir(fds, prefix)` does one folder and returns its
    subfolders' names; `enter(name, parent's fds, fds)` opens the release's side of subfolder `name`."""
    levels: list[tuple[list[int | None], str, Iterator[str]]] = []
    try:
        fds[1] = tree.open_dir(str(tmp))
        levels.append((fds, "", iter(per_dir(fds, ""))))
        while levels:
            parent, prefix, pending = levels[-1]
            name = next(pending, None)
            if name is None:
                _close(levels.pop()[0])
                continue
            path = prefix + name
            if len(levels) > MAX_DEPTH:
                raise tree.TreeError(f"{tree.shown(path)} is nested more than {MAX_DEPTH} directories deep")
            opened = _open_or_refuse(name, parent[0], prefix, directory=True)  # type: ignore[arg-type]
            fds = [opened, *[None] * (len(parent) - 1)]
            levels.append((fds, path + "/", iter(())))
            enter(name, parent, fds)
            levels[-1] = (fds, path + "/", iter(per_dir(fds, path + "/")))
    finally:
        if not levels:
            _close(fds)
        for level in levels:
            _close(level[0])


class Spare:
    """A copy of a release (`previous`: the live one) made in a thread after it went live, for the next
    stage() to bring up to date: hard links of its files, folders of its own (making the folders is most of
    staging a large site). Taken once; whatever is not taken is removed (discard)."""

    NAME = ".spare.tmp"  # in releases/ (prune() leaves it; the next Spare replaces it)

    def __init__(self, releases_dir: Path, previous: Path) -> None:
        import threading

        self.previous = previous
        self.path = releases_dir / self.NAME
        self.error: BaseException | None = None
        self.listing: Listing = {}  # what each folder of the copy holds, as it was made: see _sync_tree
        self._thread = threading.Thread(target=self._make, name="spare-release", daemon=True)
        self._thread.start()

    def _make(self) -> None:
        try:
            tree.remove_tree(self.path)
            source = tree.open_dir(str(self.previous))
            try:
                _copy_tree(source, self.path, self.previous, self.listing)
            finally:
                os.close(source)
        except BaseException as exc:  # noqa: BLE001 - then stage() copies as it would without a spare
            self.error = exc

    def take(self, previous: Path | None) -> Path | None:
        """The finished copy when it is one of `previous`; None (and nothing left) otherwise."""
        self._thread.join()
        if self.error is None and previous is not None and os.path.realpath(previous) == \
                os.path.realpath(self.previous):
            return self.path
        self.discard()
        return None

    def discard(self) -> None:
        self._thread.join()
        with contextlib.suppress(OSError):
            tree.remove_tree(self.path)


def _sync_tree(source: int, tmp: Path, listing: Listing) -> None:
    """Make `tmp` (a Spare: the previous release's folders, its files hard links; `listing` what it holds) what
    _copy_tree would make of the output `source` with that release as `previous`: each folder of the output
    walked by descriptor as there, an unchanged file (and its .gz) left as it is, a changed one replaced (never
    written into: its inode is the previous release's), what the output does not have removed. The copy is not
    read (its listing is known: no process but the publisher writes in releases/), and a folder of it is opened
    only to change something in it: a one-post change opens the folders of what changed, not all 5,000."""
    top: list[int | None] = [os.dup(source), None]

    def enter(name: str, parent: list[int | None], fds: list[int | None]) -> None:
        pass  # the copy's side of a folder is opened when something in it changes (_sync_dir)

    def per_dir(fds: list[int | None], prefix: str) -> list[str]:
        return _sync_dir(fds, prefix, listing.get(prefix, {}), top)

    _walk_output(top, tmp, per_dir, enter)


def _sync_dir(fds: list[int | None], prefix: str, had: dict[str, os.stat_result], top: list[int | None]) -> list[str]:
    """Bring one folder of the spare (which held `had`) up to date with the output's; return the names of its
    subfolders (each there as a folder when this returns). `top`: the descriptors of the walk's top folders."""
    src = fds[0]
    assert src is not None

    def dst() -> int:
        if fds[1] is None:
            assert top[1] is not None
            fds[1] = _open_below(top[1], prefix)
        return fds[1]

    listing = tree.entries(src)
    names = {name for name, _st in listing}
    have = dict(had)
    wanted: set[str] = set()
    below = []
    for name, st in listing:
        old = have.get(name)
        wanted.add(name)
        if stat.S_ISDIR(st.st_mode):
            below.append(name)
            if old is not None and not stat.S_ISDIR(old.st_mode):
                os.unlink(name, dir_fd=dst())
                old = None
            if old is None:
                os.mkdir(name, DIR_MODE, dir_fd=dst())
            continue
        if not stat.S_ISREG(st.st_mode):
            raise tree.TreeError(f"{tree.shown(prefix + name)} is {tree.kind(st.st_mode)}: a release takes "
                                 "regular files and directories only")
        packed = name + ".gz"
        own_gz = packed in names
        if old is not None and stat.S_ISREG(old.st_mode) and _same_file(st, old):
            kept_gz = have.get(packed)
            if not own_gz and kept_gz is not None and stat.S_ISREG(kept_gz.st_mode):
                wanted.add(packed)  # the previous release's, as stage() links it
            continue
        if old is not None:
            tree.remove_entry_at(dst(), name, old)
        if not own_gz and packed in have:
            tree.remove_entry_at(dst(), packed, have.pop(packed))
        fd = _open_or_refuse(name, src, prefix, directory=False)
        try:
            tree.copy_into(fd, os.fstat(fd), name, FILE_MODE, dst())
        finally:
            os.close(fd)
        if not own_gz and _precompress_at(dst(), name):
            wanted.add(packed)
    for name, st in have.items():
        if name not in wanted:
            tree.remove_entry_at(dst(), name, st)
    return below


def _open_below(top: int, prefix: str) -> int:
    """Open the folder `prefix` ("a/b/") below the open folder `top`, one name at a time (a path may be longer
    than the kernel takes in one call)."""
    fd = os.dup(top)
    try:
        for name in prefix.rstrip("/").split("/"):
            below = tree.open_dir(name, dir_fd=fd)
            os.close(fd)
            fd = below
    except BaseException:
        os.close(fd)
        raise
    return fd


def _close(fds: list[int | None]) -> None:
    for fd in fds:
        if fd is not None:
            os.close(fd)
    fds[:] = [None] * len(fds)


def _copy_dir(fds: list[int | None], prefix: str, made: Listing | None = None) -> list[str]:
    """Copy one directory's files; return the names of its subdirectories. With `made`, note in it what the copy
    of the directory holds (its files as they are, its subdirectories, which the walk makes next)."""
    src, dst, old = fds
    assert src is not None and dst is not None
    listing = tree.entries(src)
    names = {name for name, _st in listing}
    below = []
    for name, st in listing:
        if stat.S_ISDIR(st.st_mode):
            below.append(name)
        elif stat.S_ISREG(st.st_mode):
            _copy_file(name, src, dst, old, prefix, names, st)
        else:
            raise tree.TreeError(f"{tree.shown(prefix + name)} is {tree.kind(st.st_mode)}: a release takes "
                                 "regular files and directories only")
    if made is not None:
        folder = os.fstat(dst)  # what a subdirectory's entry is taken as (a directory: all _sync_dir asks)
        made[prefix] = {**dict(tree.entries(dst)), **{name: folder for name in below}}
    return below


def _open_or_refuse(name: str, dir_fd: int, prefix: str, *, directory: bool) -> int:
    """Open an entry of the output without following a link; what is not what the scan saw is refused."""
    try:
        fd = os.open(name, tree.DIR_FLAGS if directory else tree.FILE_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENXIO, errno.ENOENT):
            raise tree.TreeError(f"{tree.shown(prefix + name)} changed (into a link, a special file, or gone) "
                                 "while it was published: something the build started still runs") from None
        raise
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISDIR(mode) if directory else stat.S_ISREG(mode)):
        os.close(fd)
        raise tree.TreeError(f"{tree.shown(prefix + name)} is {tree.kind(mode)}: a release takes regular files "
                             "and directories only")
    return fd


def _copy_file(name: str, src: int, dst: int, old: int | None, prefix: str, names: set[str],
               listed: os.stat_result) -> None:
    """Copy one file of the output (`listed`: its lstat from the listing), or hard-link the previous release's
    identical one: then the output's file is not even opened (nothing of it is read)."""
    if old is not None:
        try:
            old_st = os.stat(name, dir_fd=old, follow_symlinks=False)
            if stat.S_ISREG(old_st.st_mode) and _same_file(listed, old_st):
                os.link(name, name, src_dir_fd=old, dst_dir_fd=dst, follow_symlinks=False)
                if name + ".gz" not in names:  # the output's own .gz wins over the one made for the old file
                    with contextlib.suppress(OSError):
                        os.link(name + ".gz", name + ".gz", src_dir_fd=old, dst_dir_fd=dst, follow_symlinks=False)
                return
        except OSError:
            pass
    fd = _open_or_refuse(name, src, prefix, directory=False)
    try:
        tree.copy_into(fd, os.fstat(fd), name, FILE_MODE, dst)
    finally:
        os.close(fd)
    if name + ".gz" not in names:
        _precompress_at(dst, name)


def same_tree(releases_dir: Path, tree_id: str) -> Path | None:
    """The newest kept release built from the tree `tree_id` that holds nothing back, or None."""
    if not tree_id:
        return None
    for name in reversed(list_releases(releases_dir)):
        meta = read_meta(releases_dir / name)
        if meta is not None and meta.tree == tree_id and not meta.holds_back:
            return releases_dir / name
    return None


def current_release_dir(current_link: Path) -> Path | None:
    """The live release directory, or None when nothing has been published yet."""
    try:
        target = current_link.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    return target if target.is_dir() else None


def read_meta(release_dir: Path) -> Release | None:
    try:
        data = json.loads((release_dir.parent / f"{release_dir.name}.json").read_text())
        return Release(**data)
    except (OSError, ValueError, TypeError):
        return None


REPORT_SUFFIX = ".links.json"  # releases/<id>.links.json, beside releases/<id>.json


def report_path(release_dir: Path) -> Path:
    """Where the link report of `release_dir` is (pipeline.publish.links writes it)."""
    return release_dir.parent / f"{release_dir.name}{REPORT_SUFFIX}"


def read_report(release_dir: Path) -> dict[str, Any] | None:
    """The link report of `release_dir`; None when there is none or it cannot be read."""
    with contextlib.suppress(OSError, ValueError):
        report = json.loads(report_path(release_dir).read_text())
        if isinstance(report, dict):
            return report
    return None


def publish(current_link: Path, release_dir: Path) -> None:
    """Point `current` at `release_dir` in one atomic rename."""
    tmp_link = current_link.with_name(f".{current_link.name}.{os.getpid()}.tmp")
    if tmp_link.is_symlink():
        tmp_link.unlink()
    os.symlink(os.path.relpath(release_dir, current_link.parent), tmp_link)
    os.replace(tmp_link, current_link)


def list_releases(releases_dir: Path) -> list[str]:
    """Release ids, oldest first (ids start with a UTC timestamp)."""
    if not releases_dir.is_dir():
        return []
    return sorted(p.name for p in releases_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def prune(releases_dir: Path, current_link: Path, keep: int) -> list[str]:
    """Delete all but the newest `keep` releases; never the live one. Returns what was removed."""
    live = current_release_dir(current_link)
    ids = list_releases(releases_dir)
    removed = []
    for name in ids[:-keep] if keep > 0 else ids:
        if live is not None and live.name == name:
            continue
        shutil.rmtree(releases_dir / name, ignore_errors=True)
        (releases_dir / f"{name}.json").unlink(missing_ok=True)
        removed.append(name)
    for leftover in releases_dir.glob(".*.tmp"):  # an interrupted stage() (the spare is the next one's)
        if leftover.name == Spare.NAME:
            continue
        shutil.rmtree(leftover, ignore_errors=True)
    return removed


def rollback_target(ids: list[str], live: str | None, wanted: str | None) -> str:
    """Which release a rollback goes to: `wanted`, or the one before the live one."""
    if wanted is not None:
        if wanted not in ids:
            raise ReleaseError(f"no release {wanted!r}; kept releases: {', '.join(ids) or 'none'}")
        return wanted
    if live not in ids:
        raise ReleaseError("no live release to roll back from")
    index = ids.index(live)
    if index == 0:
        raise ReleaseError(f"{live} is the oldest kept release; nothing to roll back to")
    return ids[index - 1]


def rollback(layout: Layout, wanted: str | None) -> Release:
    """Point `current` at an earlier kept release. It stays live until the next push. Raises ReleaseError
    (naming the kept releases) for an unknown one."""
    store = StatusStore(layout.status)
    with store.edit() as status:
        live = current_release_dir(layout.current)
        ids = list_releases(layout.releases)
        target = rollback_target(ids, live.name if live else None, wanted)
        release_dir = layout.releases / target
        publish(layout.current, release_dir)
        meta = read_meta(release_dir) or Release(target, "", "", 0.0)
        status.rolled_back(asdict(meta))
    return meta
