"""What a build may do. A site's `conf.py`, plugins and templates are code from git, run by Nikola:
the build gets an environment without secrets, limits on memory, file size and processes, file
access confined by Landlock to its work tree, its temporary directory and the system's read-only
files, and every process it starts is gone when it ends (the build worker is a child subreaper).
The environment and the paths a build gets are named in its request (pipeline.build.protocol); its input is
checked for symlinks that leave the site by the publisher (pipeline.publish.builds).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import platform
import signal
import time
from collections.abc import Iterable

_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_CHILD_SUBREAPER = 36
# Landlock (linux/landlock.h); the syscall numbers are the same on x86_64 and arm64.
_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_EXECUTE, _WRITE_FILE, _READ_FILE, _READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_FILE_RIGHTS = _EXECUTE | _WRITE_FILE | _READ_FILE | (1 << 14) | (1 << 15)  # + truncate, ioctl_dev
_READ_RIGHTS = _EXECUTE | _READ_FILE | _READ_DIR
_SCOPE_ABSTRACT_UNIX, _SCOPE_SIGNAL = 1 << 0, 1 << 1


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


def others(keep: Iterable[int] = ()) -> list[int]:
    """Living processes this process can see but itself and `keep` (in the builder's PID namespace: whatever a
    build left, wherever it hides in the process tree)."""
    kept = {os.getpid(), *keep}
    return [pid for pid, (_ppid, state) in _processes().items() if pid not in kept and state != "Z"]


def end_descendants(timeout: float = 5.0, keep: Iterable[int] = ()) -> int:
    """SIGKILL every remaining descendant but `keep` (as subreaper: also every orphan of them) and reap our own
    children; returns how many were ended. Dead children of a kept process are left for it to reap."""
    kept = set(keep)
    ended: set[int] = set()
    deadline = time.monotonic() + timeout
    quiet_rounds = 0
    while time.monotonic() < deadline and quiet_rounds < 3:
        found = descendants(kept)
        if not found:  # three walks in a row find nothing (a fork is done in microseconds: a short pause does)
            quiet_rounds += 1
            time.sleep(0.002)
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


ABI_MAX: int | None = None  # LANDLOCK_ABI_MAX (set by the build worker at its start): an older kernel's sandbox


def landlock_abi() -> int:
    """The Landlock ABI version the sandbox uses: the kernel's, capped at ABI_MAX; 0 when it is unavailable (old
    kernel, or refused by seccomp)."""
    if platform.machine() not in ("x86_64", "aarch64"):
        return 0
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    version = libc.syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION))
    return max(int(version), 0) if ABI_MAX is None else min(max(int(version), 0), ABI_MAX)


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
    # struct landlock_ruleset_attr: handled_access_fs, handled_access_net (ABI 4), scoped (ABI 6). Scoped: the
    # build cannot signal (stop, kill) or reach by abstract unix socket any process outside its sandbox.
    attr = (ctypes.c_uint64 * 3)(handled, 0, _SCOPE_SIGNAL | _SCOPE_ABSTRACT_UNIX if abi >= 6 else 0)
    size = 24 if abi >= 6 else 8
    ruleset = libc.syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
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


def scoped_signals() -> bool:
    """Whether confine() also keeps the build's signals inside its sandbox (Landlock ABI 6+)."""
    return landlock_abi() >= 6


# What Landlock does not cover, refused by a seccomp filter: the build can neither change the mode, owner,
# times or extended attributes of any file (its own included: such calls succeed and change nothing, so
# that shutil.copy2 and the like still work), nor change another process's limits or scheduling.
UNCHANGED_ATTRIBUTES = ("chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "fchown", "lchown", "fchownat",
                        "utime", "utimes", "futimesat", "utimensat")
REFUSED = ("setxattr", "lsetxattr", "fsetxattr", "removexattr", "lremovexattr", "fremovexattr", "ptrace",
           "process_vm_writev", "process_madvise", "pidfd_getfd", "kcmp")
ONLY_SELF = {  # syscall: the argument naming the process (0: this one)
    "prlimit64": 0, "setpriority": 1, "ioprio_set": 1, "sched_setaffinity": 0, "sched_setparam": 0,
    "sched_setscheduler": 0, "sched_setattr": 0, "migrate_pages": 0, "move_pages": 0,
}
_SYSCALL_NUMBERS = {"fchmodat2": 452}  # newer than some libseccomp releases; the same number on every arch


def restrict_syscalls() -> str | None:
    """Install the seccomp filter above in this process (inherited by everything it starts), setting
    no_new_privs first (confine() sets it too, but only where Landlock is there). Returns None when installed,
    else why not."""
    if _libc().prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        return f"cannot set no_new_privs: {os.strerror(ctypes.get_errno())}"
    try:
        import pyseccomp as seccomp
    except (ImportError, OSError) as exc:  # OSError: libseccomp itself is missing
        return f"seccomp is not available ({exc})"
    try:
        flt = seccomp.SyscallFilter(seccomp.ALLOW)

        def rule(action: object, name: str, *args: object) -> None:
            try:
                flt.add_rule(action, name, *args)
            except (RuntimeError, ValueError, OSError):
                if name not in _SYSCALL_NUMBERS:
                    raise
                flt.add_rule(action, _SYSCALL_NUMBERS[name], *args)

        for name in UNCHANGED_ATTRIBUTES:
            rule(seccomp.ERRNO(0), name)
        for name in REFUSED:
            rule(seccomp.ERRNO(errno.EPERM), name)
        for name, index in ONLY_SELF.items():
            rule(seccomp.ERRNO(errno.EPERM), name, seccomp.Arg(index, seccomp.NE, 0))
        flt.load()
    except Exception as exc:  # noqa: BLE001 - libseccomp reports every failure its own way
        return f"seccomp refused the build's filter: {exc}"
    return None
