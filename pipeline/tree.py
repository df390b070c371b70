"""Walking and removing trees a build wrote, trusting nothing in them.

A build runs code from git, so what it leaves may hold symlinks, FIFOs, a directory swapped for a link
while it is read, names with newlines or invalid UTF-8, or thousands of nested directories. Everything
here goes by file descriptor, one component at a time (`openat` with O_NOFOLLOW, then `fstat` on what
was opened), and iterates (a stranger chooses the depth; recursion would crash on it).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import stat
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from pipeline.errors import PipelineError

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO swapped in for a file must not block the opener.
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# Directories open at once while removing a tree; deeper ones are first moved up (see remove_tree).
REMOVE_OPEN_DIRS = 32


class TreeError(PipelineError):
    """A tree holds something that cannot be taken (a link, a special file, too deep); names the path."""


def shown(path: str) -> str:
    """A path as a message shows it: control characters and undecodable bytes escaped, long paths cut."""
    text = path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    text = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text)
    return text if len(text) <= 200 else f"{text[:90]}…{text[-90:]}"


def copy_contents(source: int, target: int, st: os.stat_result) -> None:
    """Copy the open file `source` (whose fstat is `st`) into the open, empty file `target`, with its times."""
    while os.sendfile(target, source, None, 1 << 20):
        pass
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))


NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def copy_into(source: int, st: os.stat_result, target: str | Path, mode: int, dir_fd: int | None = None) -> None:
    """Copy the open file `source` (whose fstat is `st`) into the new file `target` (made here, never an existing
    one or a link; relative to `dir_fd` when given) with `mode`, and its times."""
    out = os.open(target, NEW_FILE, mode, dir_fd=dir_fd)
    try:
        copy_contents(source, out, st)
    finally:
        os.close(out)


def open_dir(name: str, dir_fd: int | None = None) -> int:
    """Open a directory that is really one (not a link to one); fstat confirms what was opened."""
    fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    if not stat.S_ISDIR(os.fstat(fd).st_mode):  # O_DIRECTORY already refuses; kept for clarity
        os.close(fd)
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", name)
    return fd


def open_beneath(root: Path, relative: str) -> int:
    """The directory `relative` (no `..`, no absolute path) under `root`, opened one component at a time
    without following a link. Raises TreeError naming the first component that is not a real directory."""
    parts = [part for part in relative.split("/") if part not in ("", ".")]
    if relative.startswith("/") or ".." in parts:
        raise TreeError(f"{shown(relative)} is not a path inside the site")
    fd = open_dir(str(root))
    walked = ""
    try:
        for part in parts:
            walked = f"{walked}/{part}" if walked else part
            try:
                child = open_dir(part, dir_fd=fd)
            except OSError as exc:
                raise TreeError(f"{shown(walked)} is not a directory of the site ({_reason(exc, part, fd)})") \
                    from None
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _reason(exc: OSError, name: str, dir_fd: int) -> str:
    with contextlib.suppress(OSError):
        mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
        if not stat.S_ISDIR(mode) and not stat.S_ISREG(mode):
            return kind(mode)
    if exc.errno == errno.ELOOP:
        return "a symbolic link"
    if exc.errno == errno.ENOTDIR:
        return "not a directory"
    if exc.errno == errno.ENOENT:
        return "missing"
    return exc.strerror or str(exc)


def kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")):
        if test(mode):
            return name
    return "not a regular file"


def entries(dir_fd: int) -> list[tuple[str, os.stat_result]]:
    """(name, lstat) of each entry of an open directory, sorted by name."""
    found = []
    with os.scandir(dir_fd) as scan:
        for entry in scan:
            with contextlib.suppress(FileNotFoundError):  # gone since the directory was read
                found.append((entry.name, entry.stat(follow_symlinks=False)))
    found.sort(key=lambda item: item[0])
    return found


def remove_tree(path: Path) -> None:
    """Remove `path` (a directory or anything else) and everything below it, following no link. Missing is
    fine. Directories are walked with at most REMOVE_OPEN_DIRS open at once: a deeper one is moved up to
    beside `path` and removed from there, so any depth works with a few descriptors."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(mode):
        path.unlink(missing_ok=True)
        return
    parent_fd = open_dir(str(path.parent))
    try:
        remove_tree_at(parent_fd, path.name)
    finally:
        os.close(parent_fd)


def empty_dir(path: Path) -> None:
    """Remove everything inside `path` (created if missing), keeping the directory itself."""
    path.mkdir(parents=True, exist_ok=True)
    fd = open_dir(str(path))
    try:
        for name, st in entries(fd):
            if stat.S_ISDIR(st.st_mode):
                remove_tree(path / name)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=fd)
    finally:
        os.close(fd)


def _remove_dir(top_fd: int, top_name: str, todo: list[str], spare_name: Callable[[], str]) -> None:
    """Remove the directory `top_name` in `top_fd`; subdirectories deeper than REMOVE_OPEN_DIRS are renamed
    into `top_fd` (names from `spare_name()`) and appended to `todo`."""
    stack: list[tuple[int, str, Iterator[tuple[str, os.stat_result]]]] = []
    try:
        fd = _open_for_removal(top_name, top_fd)
        if fd is None:
            return
        stack.append((fd, top_name, iter(entries(fd))))
        while stack:
            fd, name, pending = stack[-1]
            item = next(pending, None)
            if item is None:
                stack.pop()
                os.close(fd)
                parent = stack[-1][0] if stack else top_fd
                with contextlib.suppress(FileNotFoundError):
                    os.rmdir(name, dir_fd=parent)
                continue
            child, st = item
            if not stat.S_ISDIR(st.st_mode):
                with contextlib.suppress(FileNotFoundError):
                    _unlink(child, fd)
                continue
            if len(stack) >= REMOVE_OPEN_DIRS:
                spare = spare_name()
                os.rename(child, spare, src_dir_fd=fd, dst_dir_fd=top_fd)
                todo.append(spare)
                continue
            sub = _open_for_removal(child, fd)
            if sub is not None:
                stack.append((sub, child, iter(entries(sub))))
    finally:
        for fd, _name, _pending in stack:
            os.close(fd)


def _open_for_removal(name: str, dir_fd: int) -> int | None:
    """Open a directory to empty it; one whose mode keeps its owner out is given its owner's rights back."""
    for attempt in range(2):
        try:
            fd = open_dir(name, dir_fd=dir_fd)
            if attempt:
                return fd
            if os.fstat(fd).st_mode & 0o700 != 0o700:
                os.fchmod(fd, 0o700)
            return fd
        except FileNotFoundError:
            return None
        except PermissionError:
            if attempt:
                raise
            os.chmod(name, 0o700, dir_fd=dir_fd, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                raise
            _unlink(name, dir_fd)  # swapped for a file or a link meanwhile
            return None
    return None


def _unlink(name: str, dir_fd: int) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except IsADirectoryError:  # swapped for a directory meanwhile
        remove_tree_at(dir_fd, name)


def remove_tree_at(dir_fd: int, name: str) -> None:
    """Remove the directory `name` in `dir_fd` (see remove_tree); deep parts are moved up beside it first."""
    todo = [name]
    serial = itertools.count()
    while todo:
        _remove_dir(dir_fd, todo.pop(), todo, lambda: f".{name}.rm-{os.getpid()}-{next(serial)}")


def remove_entry_at(dir_fd: int, name: str, st: os.stat_result) -> None:
    """Remove the entry `name` of `dir_fd` whose lstat is `st`: a directory with all it holds, else the entry."""
    if stat.S_ISDIR(st.st_mode):
        remove_tree_at(dir_fd, name)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dir_fd)


def drop_changed_files(path: Path, since_ns: int, until_ns: int, made: Callable[[str], bool],
                       folders_before: Mapping[str, int], folders_now: dict[str, int] | None = None,
                       max_depth: int = 64, max_entries: int = 1_000_000) -> str | None:
    """Remove every regular file under the directory `path` whose inode changed (its ctime, which no process can
    set) at or after `since_ns` unless `made(relative path)` (the name of `path` first, "output/a/b.html"), so
    that what must make them makes them again; and every directory, with all it holds, that was moved: its inode
    was another path's in `folders_before` (relative path → inode of each directory, as `folders_now` records
    them: a rename changes the change time of what is renamed, never of the files inside). Returns None, or why
    the tree cannot be trusted at all (then nothing is promised about what was removed): a file changed after
    `until_ns`, an entry that is neither a regular file nor a directory, nesting deeper than `max_depth`, more
    than `max_entries` entries, `path` itself not a real directory."""
    try:
        top = open_dir(str(path))
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"{path.name} is not a real directory ({exc.strerror})"
    known = set(folders_before.values())
    now = folders_now if folders_now is not None else {}

    def moved(relative: str, inode: int) -> bool:
        return inode in known and folders_before.get(relative) != inode

    inode = os.fstat(top).st_ino
    if moved(path.name, inode):
        os.close(top)
        remove_tree(path)
        return None
    now[path.name] = inode
    stack: list[tuple[int, str, Iterator[tuple[str, os.stat_result]]]] = [(top, path.name, _lazy_entries(top))]
    seen = 0
    try:
        while stack:
            fd, where, pending = stack[-1]
            item = next(pending, None)
            if item is None:
                stack.pop()
                os.close(fd)
                continue
            name, st = item
            seen += 1
            if seen > max_entries:
                return f"{path.name} holds more than {max_entries} entries"
            relative = f"{where}/{name}"
            if stat.S_ISREG(st.st_mode):
                if st.st_ctime_ns > until_ns:
                    return f"{shown(relative)} changed after the build ended"
                if st.st_ctime_ns >= since_ns and not made(relative):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(name, dir_fd=fd)
                continue
            if not stat.S_ISDIR(st.st_mode):
                return f"{shown(relative)} is {kind(st.st_mode)}"
            if len(stack) >= max_depth:
                return f"{shown(where)} is nested more than {max_depth} directories deep"
            try:
                sub = open_dir(name, dir_fd=fd)
            except OSError as exc:
                return f"{shown(relative)} cannot be read ({_reason(exc, name, fd)})"
            inode = os.fstat(sub).st_ino
            if moved(relative, inode):
                os.close(sub)
                remove_tree_at(fd, name)
                continue
            now[relative] = inode
            stack.append((sub, relative, _lazy_entries(sub)))
    finally:
        for fd, _where, _pending in stack:
            os.close(fd)
    return None


def _lazy_entries(dir_fd: int) -> Iterator[tuple[str, os.stat_result]]:
    """(name, lstat) of each entry, read as needed (a directory of a million entries is never held at once)."""
    with os.scandir(dir_fd) as scan:
        for entry in scan:
            with contextlib.suppress(FileNotFoundError):
                yield entry.name, entry.stat(follow_symlinks=False)
