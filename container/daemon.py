"""Host daemons the agent runs and keeps alive (Tayga, HAProxy): started in their own session so they
outlive an agent restart, found again through a pid file whose process must still be the same program
with the same config, stopped by that PID only."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from pathlib import Path

from container import proc
from container.errors import DaemonError

log = logging.getLogger(__name__)




def running_cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return []
    return [] if state in ("Z", "X") else raw.decode(errors="replace").split("\0")[:-1]


def log_tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


class Daemon:
    """One long-running program; `marker` is an argument (its config path) that identifies our instance."""

    def __init__(self, name: str, argv: list[str], pid_file: Path, log_file: Path, marker: str):
        self.name, self.argv, self.pid_file, self.log_file, self.marker = name, argv, pid_file, log_file, marker
        self._child: proc.Popen[bytes] | None = None

    def pid(self) -> int | None:
        """The running daemon's PID, from our child or the pid file; None when it is not running."""
        if self._child is not None and self._child.poll() is None:
            return self._child.pid
        try:
            pid = int(self.pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        for _ in range(20):
            cmdline = running_cmdline(pid)
            if cmdline:
                return pid if self._matches(cmdline) else None
            if not os.path.exists(f"/proc/{pid}"):
                return None
            # Alive, but no command line for the moment: HAProxy's master re-executes itself on a
            # reload. Look again rather than start a second one beside it.
            time.sleep(0.05)
        return None

    def start(self) -> int:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as out:
            out.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {' '.join(self.argv)}\n".encode())
            out.flush()
            self._child = proc.start(self.argv, output=out, name=f"{self.name} ({self.argv[0]})", error=DaemonError)
        self.pid_file.write_text(f"{self._child.pid}\n")
        time.sleep(0.2)
        if self._child.poll() is not None:
            raise DaemonError(f"{self.name} exited at once with code {self._child.returncode}: "
                              f"{log_tail(self.log_file)} (log: {self.log_file})")
        log.info("started %s (pid %d)", self.name, self._child.pid)
        return self._child.pid

    def ensure(self) -> bool:
        """Start the daemon unless it runs; True when it had to be (re)started."""
        if self.pid() is not None:
            return False
        if self.pid_file.exists():
            log.warning("%s is not running (last log: %s); restarting it", self.name, log_tail(self.log_file, 2))
        self.start()
        return True

    def signal(self, signum: int) -> bool:
        pid = self.pid()
        if pid is None:
            return False
        os.kill(pid, signum)
        return True

    def _matches(self, cmdline: list[str]) -> bool:
        """Our program with our config."""
        return bool(cmdline) and os.path.basename(cmdline[0]) == os.path.basename(self.argv[0]) and \
            self.marker in cmdline

    def _ours(self) -> list[int]:
        """Every process running our program with our config (a duplicate left by a crash included)."""
        return [int(entry) for entry in os.listdir("/proc")
                if entry.isdigit() and self._matches(running_cmdline(int(entry)))]

    def stop(self, timeout: float = 5.0) -> bool:
        stopped = False
        for pid in self._ours():  # a master first: its workers usually go with it
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and running_cmdline(pid):
                if self._child is not None:
                    self._child.poll()
                time.sleep(0.05)
            if running_cmdline(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            stopped = True
        if self._child is not None:
            self._child.wait(timeout)
        self._child = None
        self.pid_file.unlink(missing_ok=True)
        return stopped
