"""The build's work tree, made by the build worker (in the builder) before every build: emptied of whatever the
last build left, Nikola's incremental state kept only when nothing about it is in doubt, and the commit's files
copied in from the publisher's export (which no build can write).

Everything here runs before any code of the site does in this build, on a tree that earlier builds' code wrote:
it goes by descriptor and trusts nothing in it (pipeline.tree).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import time
from pathlib import Path

from pipeline import tree
from pipeline.files import replace_file

# Nikola's incremental state: carried over into the next build when it can be trusted, removed for a clean build.
STATE_DIRS = ("output", "cache")
STATE_FILES = (".doit.db", ".doit.db.bak", ".doit.db.dat", ".doit.db.dir", ".doit.db.db")
# The targets of the tasks a build ran (pipeline.build.runner writes it; not imported: it imports Nikola's parts).
WRITTEN_REPORT = ".pequod-written"
WRITTEN_REPORT_BYTES = 16 << 20
CTIME_SLACK_NS = 1_000_000_000  # file times come from a coarse clock: a build "started" this much earlier
FINE_CTIME_SLACK_NS = 50_000_000  # ... where the volume keeps times finer than a millisecond (a clock tick)
MIN_FREE_BYTES = 64 << 20  # less free on the build's volume before a build: Nikola's state goes (a clean build)
# Beside the work tree (where no build may write): the inode of each directory of Nikola's state before the last
# build's code ran ("inode NUL path NUL" each), so that a directory it moved is known (see _doubt).
FOLDERS_SUFFIX = ".folders"
FOLDERS_BYTES = 64 << 20


def prepare(site_dir: Path, tmp_dir: Path, reason: str | None, started_ns: int, finished_ns: int,
            after_ns: int = 0, keep_sources: bool = False) -> str | None:
    """An empty work tree for the commit's files, but for Nikola's state when the build is incremental (`reason`
    None) and nothing about that state is in doubt; an empty HOME and TMPDIR. Whatever else the last build left
    (paths beyond PATH_MAX, links, FIFOs, unreadable directories, a full volume) is removed first, so it can
    never stop this build. Of the state kept, every file written during the last build (`started_ns` to
    `finished_ns`) that none of its tasks made is removed: the task it belongs to makes it again, so no page
    edited by code of the site outlives that code. File times lag the clock, so "during" starts CTIME_SLACK_NS
    earlier, but not before the build before it ended (`after_ns`, when known: nothing of the site ran between)
    where the volume keeps fine times (then less than FINE_CTIME_SLACK_NS earlier): the files that build made
    last are not taken for the last build's. With `keep_sources` (and an incremental build), the last build's
    copy of the commit's files stays for sync_in to bring up to date. Returns why the build is clean, or None."""
    tree.empty_dir(tmp_dir)
    site_dir.mkdir(parents=True, exist_ok=True)
    if reason is None and short_of_space(site_dir):
        reason = "the build's volume is nearly full"
    if reason is None:
        doubt = _doubt(site_dir, started_ns, finished_ns, after_ns)
        if doubt is not None:
            reason = f"Nikola's state is not kept: {doubt}"
    keep = () if reason is not None else (*STATE_DIRS, *STATE_FILES)
    fd = tree.open_dir(str(site_dir))
    try:
        for name, st in tree.entries(fd):
            kept_kind = stat.S_ISDIR if name in STATE_DIRS else stat.S_ISREG
            if name in keep and kept_kind(st.st_mode):
                continue
            if keep_sources and reason is None and name not in (*STATE_DIRS, *STATE_FILES):
                continue  # sync_in's
            if stat.S_ISDIR(st.st_mode):
                tree.remove_tree_at(fd, name)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=fd)
    finally:
        os.close(fd)
    if reason is not None:
        _remember_folders(site_dir, {})  # Nikola's state is gone: every directory of the next one is the build's
    return reason


def make(export_dir: Path, site_dir: Path, tmp_dir: Path, reason: str | None, started_ns: int, finished_ns: int,
         after_ns: int = 0, trusted_before_ns: int = 0) -> tuple[str | None, int]:
    """The work tree for a build (prepare, then the commit's files from `export_dir`): why the build is clean
    (or None), and the `trusted_before_ns` for the next build of this work tree (0: copy everything then).

    With `trusted_before_ns` from the last build (made by this process, whose copy it was), an incremental
    build keeps the commit's files that are still the ones copied (sync_in): a one-post change copies one
    file, not the site. Anything unexpected in the work tree falls back to emptying it (Nikola's state kept).
    The next build's mark (_mark_after_copy) lies between the change times of what was copied and of anything
    changed afterwards, by the build's code included, which runs only after it."""
    reason = prepare(site_dir, tmp_dir, reason, started_ns, finished_ns, after_ns,
                     keep_sources=bool(trusted_before_ns))
    synced = False
    if trusted_before_ns and reason is None:
        try:
            sync_in(export_dir, site_dir, trusted_before_ns)
            synced = True
        except (OSError, tree.TreeError):
            reason = prepare(site_dir, tmp_dir, reason, started_ns, finished_ns, after_ns)
    if not synced:
        copy_in(export_dir, site_dir)
    return reason, _mark_after_copy(tmp_dir)


def _mark_after_copy(tmp_dir: Path, wait: float = 0.1) -> int:
    """A change time later than every file change so far and not later than any to come: one more than the change
    time a new file gets now, once a newer file gets a later one (file times come from a clock that moves in
    ticks of a few milliseconds, so that is waited for). 0 when the volume does not keep times finer than a
    millisecond, or the clock does not move within `wait` seconds."""
    first = _change_time_now(tmp_dir)
    if first is None or first % 1_000_000 == 0:
        return 0
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        later = _change_time_now(tmp_dir)
        if later is None:
            return 0
        if later > first:
            return first + 1
        time.sleep(0.001)
    return 0


def _change_time_now(tmp_dir: Path) -> int | None:
    """The change time a file made in `tmp_dir` (the build's, just emptied) gets now."""
    probe = tmp_dir / ".pequod-time"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            return os.fstat(fd).st_ctime_ns
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError:
        return None


def short_of_space(site_dir: Path) -> bool:
    """Whether the build's volume is nearly full (a build filled it)."""
    try:
        usage = shutil.disk_usage(site_dir)
    except OSError:
        return False
    return usage.free < min(MIN_FREE_BYTES, usage.total // 10)


def _doubt(site_dir: Path, started_ns: int, finished_ns: int, after_ns: int = 0) -> str | None:
    """Why the kept state cannot be trusted (see prepare); removes the files the last build wrote that none of
    its tasks made (its report, WRITTEN_REPORT), and the directories it moved (whose files kept their change
    times), with all they hold: the inodes of the directories before it ran are known (_remember_folders)."""
    if not started_ns or not finished_ns:
        return "the last build's times are not known"
    report = _made_by_last_build(site_dir)
    if report is None:
        return "the last build's report of what it wrote cannot be read"
    folders = _folders_before(site_dir)
    if folders is None:
        return "the folders of the last build's state are not known"
    made, fine_times = report
    since = started_ns - CTIME_SLACK_NS
    if after_ns and fine_times:
        since = max(since, after_ns - FINE_CTIME_SLACK_NS)
    now: dict[str, int] = {}
    for name in STATE_DIRS:
        why = tree.drop_changed_files(site_dir / name, since, finished_ns, made.__contains__, folders, now)
        if why is not None:
            return why
    _remember_folders(site_dir, now)
    return None


def _folders_path(site_dir: Path) -> Path:
    return site_dir.parent / f".{site_dir.name}{FOLDERS_SUFFIX}"


def _remember_folders(site_dir: Path, folders: dict[str, int]) -> None:
    """Keep the inodes of the directories of Nikola's state (relative path → inode) for the next build."""
    data = b"".join(b"%d\0%s\0" % (inode, relative.encode("utf-8", "surrogateescape"))
                    for relative, inode in folders.items())
    replace_file(_folders_path(site_dir), data, 0o600)


def _folders_before(site_dir: Path) -> dict[str, int] | None:
    """What _remember_folders kept last, or None (a worker of an older version, or no longer readable)."""
    found = _read_small(_folders_path(site_dir), FOLDERS_BYTES)
    if found is None:
        return None
    fields = found[0].split(b"\0")[:-1]
    try:
        return {relative.decode("utf-8", "surrogateescape"): int(inode)
                for inode, relative in zip(fields[::2], fields[1::2], strict=True)}
    except ValueError:
        return None


def _made_by_last_build(site_dir: Path) -> tuple[set[str], bool] | None:
    """The targets of the tasks the last build ran, as it reported them (a regular file, at most
    WRITTEN_REPORT_BYTES), and whether the volume keeps file times finer than a millisecond (the report's
    change time, which no process sets, has digits below one); None when there is no such report."""
    found = _read_small(site_dir / WRITTEN_REPORT, WRITTEN_REPORT_BYTES)
    if found is None:
        return None
    data, st = found
    return set(data.decode("utf-8", "surrogateescape").splitlines()), st.st_ctime_ns % 1_000_000 != 0


def _read_small(path: Path, limit: int) -> tuple[bytes, os.stat_result] | None:
    """The bytes of `path` and its fstat when it is a regular file (not a link, not a FIFO) of at most `limit`
    bytes; else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            return None
        data = b""
        while chunk := os.read(fd, limit + 1 - len(data)):
            data += chunk
    finally:
        os.close(fd)
    return data, st


def copy_in(export_dir: Path, site_dir: Path) -> int:
    """Copy the commit's files (the publisher's export, a git work tree: regular files, directories and symbolic
    links) into the emptied work tree, with their modification times (so Nikola's checks of unchanged sources
    stay cheap); `.git` and what is already there (Nikola's state) are left out. Returns the files copied.
    (sync_in with nothing to keep.)"""
    return sync_in(export_dir, site_dir, 0)


def sync_in(export_dir: Path, site_dir: Path, trusted_before_ns: int) -> int:
    """The commit's files into the work tree, which may still hold the last build's copy of them (prepare with
    `keep_sources`; with `trusted_before_ns` 0 nothing is kept, as in an emptied one). A file is kept where it is
    the export's (same size, modification time and mode, one link) and its inode has not changed since
    `trusted_before_ns` (its change time, which no process sets: before the code of the last build ran), in a
    directory whose inode has not changed either (a renamed or moved one has changed: it is made again), else
    made again; a kept file gets a new change time (see _sync_dir). Whatever the export does not have (at the
    top: but Nikola's state) is removed, links are made again. The work tree is walked by descriptor, following
    no link. Returns the files copied. OSError or tree.TreeError: start from an empty work tree instead (prepare
    without `keep_sources`)."""
    copied = 0
    top = tree.open_dir(str(site_dir))
    todo: list[tuple[str, int]] = [("", top)]
    try:
        while todo:
            relative, dst = todo.pop()
            try:
                src = tree.open_dir(str(export_dir / relative) if relative else str(export_dir))
                try:
                    copied += _sync_dir(src, dst, relative, trusted_before_ns, todo)
                finally:
                    os.close(src)
            finally:
                os.close(dst)
    finally:
        for _relative, fd in todo:
            os.close(fd)
    return copied


def _sync_dir(src: int, dst: int, relative: str, trusted_before_ns: int, todo: list[tuple[str, int]]) -> int:
    copied = 0
    theirs = dict(tree.entries(dst))
    for name, st in tree.entries(src):
        if not relative and name in (".git", *STATE_DIRS, *STATE_FILES, WRITTEN_REPORT):
            continue
        mine = theirs.pop(name, None)
        mode = 0o755 if st.st_mode & 0o111 else 0o644
        if stat.S_ISREG(st.st_mode) and mine is not None and stat.S_ISREG(mine.st_mode) \
                and (mine.st_size, mine.st_mtime_ns, stat.S_IMODE(mine.st_mode)) == (st.st_size, st.st_mtime_ns, mode) \
                and mine.st_ctime_ns < trusted_before_ns and mine.st_nlink == 1:
            # A new change time (nothing else changes): should this build's code move the file into Nikola's
            # state (output/, cache/), it counts as written during this build there (prepare's doubt).
            os.chmod(name, mode, dir_fd=dst, follow_symlinks=False)
            continue
        # A directory renamed or moved (two swapped) has a new change time; the files in it keep theirs.
        if stat.S_ISDIR(st.st_mode) and mine is not None and stat.S_ISDIR(mine.st_mode) \
                and mine.st_ctime_ns < trusted_before_ns:
            todo.append((f"{relative}/{name}" if relative else name, tree.open_dir(name, dir_fd=dst)))
            continue
        if mine is not None:
            tree.remove_entry_at(dst, name, mine)
        if stat.S_ISDIR(st.st_mode):
            os.mkdir(name, 0o755, dir_fd=dst)
            todo.append((f"{relative}/{name}" if relative else name, tree.open_dir(name, dir_fd=dst)))
        elif stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(name, dir_fd=src), name, dir_fd=dst)
        elif stat.S_ISREG(st.st_mode):
            _copy_file(src, name, dst, st)
            copied += 1
    for name, mine in theirs.items():  # not in the commit
        if relative or name not in (*STATE_DIRS, *STATE_FILES, WRITTEN_REPORT):
            tree.remove_entry_at(dst, name, mine)
    return copied


def _copy_file(src: int, name: str, dst: int, st: os.stat_result) -> None:
    """Copy the export's file `name` (in `src`) to the same name in `dst`."""
    fd = os.open(name, tree.FILE_FLAGS, dir_fd=src)
    try:
        tree.copy_into(fd, st, name, 0o755 if st.st_mode & 0o111 else 0o644, dst)
    finally:
        os.close(fd)
