"""What a build may do. A site's `conf.py`, plugins and templates are code from git, run by Nikola:
the build gets an environment without secrets, limits on memory, file size and processes, file
access confined by Landlock to its work tree, its temporary directory and the system's read-only
files, and every process it starts is gone when it ends (the build worker is a child subreaper).
Its input and output are checked for symlinks that leave the site.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import platform
import signal
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

# The only variables a build sees from the pipeline's environment (never WEBHOOK_SECRET, SITE_REPO…).
PASSED_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "BUILD_WORKER_IDLE")
# Read (and execute) only: where Python, Nikola and the system's data live.
SYSTEM_READ = ("/usr", "/lib", "/lib64", "/bin", "/sbin", "/etc", "/opt")
DEVICES = ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random")

_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_CHILD_SUBREAPER = 36
# Landlock (linux/landlock.h); the syscall numbers are the same on x86_64 and arm64.
_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_EXECUTE, _WRITE_FILE, _READ_FILE, _READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_FILE_RIGHTS = _EXECUTE | _WRITE_FILE | _READ_FILE | (1 << 14) | (1 << 15)  # + truncate, ioctl_dev
_READ_RIGHTS = _EXECUTE | _READ_FILE | _READ_DIR


def build_environment(base: Mapping[str, str], *, home: Path, tmpdir: Path,
                      extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The build's whole environment: a short allowlist from `base`, its own HOME and TMPDIR, `extra`."""
    env = {key: base[key] for key in PASSED_ENV if key in base}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.update(HOME=str(home), TMPDIR=str(tmpdir), **(extra or {}))
    return env


def escaping_symlinks(root: Path, skip: Iterable[str] = ()) -> list[tuple[str, str]]:
    """(path relative to root, link text) of every symlink under `root` whose target is outside it."""
    real_root = os.path.realpath(root)
    found = []
    skipped = set(skip)
    for current, dirs, files in os.walk(root):
        if current == str(root):
            dirs[:] = [d for d in dirs if d not in skipped]
        for name in [*dirs, *files]:
            path = os.path.join(current, name)
            if os.path.islink(path):
                real = os.path.realpath(path)
                if real != real_root and not real.startswith(real_root + os.sep):
                    found.append((os.path.relpath(path, root), os.readlink(path)))
    return sorted(found)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def become_subreaper() -> bool:
    """Orphaned descendants (a daemon that double-forked with setsid) become our children, so they can be
    found and ended."""
    return _libc().prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def _processes() -> dict[int, tuple[int, str]]:
    """pid: (ppid, state) of every process."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        # pid (comm) state ppid …: comm may hold spaces and parentheses, so split after the last ')'.
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 1:
            found[int(entry)] = (int(fields[1]), fields[0].decode())
    return found


def descendants(keep: Iterable[int] = ()) -> list[int]:
    """Living descendants of this process, but the processes in `keep` (not their descendants)."""
    table = _processes()
    below: dict[int, list[int]] = {}
    for pid, (ppid, _state) in table.items():
        below.setdefault(ppid, []).append(pid)
    kept = set(keep)
    found, todo = [], list(below.get(os.getpid(), []))
    while todo:
        pid = todo.pop()
        todo.extend(below.get(pid, []))
        if pid not in kept and table[pid][1] != "Z":
            found.append(pid)
    return found


def end_descendants(timeout: float = 5.0, keep: Iterable[int] = ()) -> int:
    """SIGKILL every remaining descendant but `keep` (as subreaper: also every orphan of them) and reap our own
    children; returns how many were ended. Dead children of a kept process are left for it to reap."""
    kept = set(keep)
    ended: set[int] = set()
    deadline = time.monotonic() + timeout
    quiet_rounds = 0
    while time.monotonic() < deadline and quiet_rounds < 3:
        found = descendants(kept)
        if not found:
            quiet_rounds += 1
            time.sleep(0.02)
            continue
        quiet_rounds = 0
        for pid in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            ended.add(pid)
        for pid in found:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        time.sleep(0.005)
    return len(ended)


def reap_children() -> None:
    """Reap children that have ended, without waiting."""
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def set_limits(*, memory_mb: int, file_mb: int, processes: int) -> None:
    """Address space, size of any one written file, and processes (of this user)."""
    import resource

    for limit, value in ((resource.RLIMIT_AS, memory_mb << 20), (resource.RLIMIT_FSIZE, file_mb << 20),
                         (resource.RLIMIT_NPROC, processes)):
        _soft, hard = resource.getrlimit(limit)
        wanted = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(limit, (wanted, wanted))


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 when it is unavailable (old kernel, or refused by seccomp)."""
    if platform.machine() not in ("x86_64", "aarch64"):
        return 0
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    version = libc.syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION))
    return max(int(version), 0)


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def confine(read: Iterable[str], write: Iterable[str]) -> str | None:
    """Allow this process (and what it starts) to read only below `read` and to read and write only below
    `write`. Returns None when applied, else why not (the build then runs without it)."""
    abi = landlock_abi()
    if abi < 1:
        err = ctypes.get_errno()
        return f"Landlock is not available here ({os.strerror(err) if err else 'kernel or seccomp'})"
    handled = (1 << 13) - 1  # ABI 1: execute … make_sym
    if abi >= 2:
        handled |= 1 << 13  # refer
    if abi >= 3:
        handled |= 1 << 14  # truncate
    if abi >= 5:
        handled |= 1 << 15  # ioctl_dev
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    attr = ctypes.c_uint64(handled)
    ruleset = libc.syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(8), ctypes.c_uint32(0))
    if ruleset < 0:
        return f"Landlock refused a ruleset: {os.strerror(ctypes.get_errno())}"
    try:
        for paths, rights in ((read, _READ_RIGHTS), (write, handled)):
            for path in paths:
                try:
                    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
                except OSError:
                    continue  # absent here: nothing to allow
                try:
                    allowed = rights & handled
                    if not os.path.isdir(path):
                        allowed &= _FILE_RIGHTS
                    rule = _PathBeneath(allowed, fd)
                    if libc.syscall(_SYS_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(_RULE_PATH_BENEATH),
                                    ctypes.byref(rule), ctypes.c_uint32(0)) != 0:
                        return f"Landlock refused a rule for {path}: {os.strerror(ctypes.get_errno())}"
                finally:
                    os.close(fd)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            return f"cannot set no_new_privs: {os.strerror(ctypes.get_errno())}"
        if libc.syscall(_SYS_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)) != 0:
            return f"Landlock refused to confine the build: {os.strerror(ctypes.get_errno())}"
    finally:
        os.close(ruleset)
    return None


def python_paths() -> list[str]:
    """This interpreter's installation (a venv may live outside SYSTEM_READ)."""
    return sorted({sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable))})


def is_enospc(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
