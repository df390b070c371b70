"""A real OpenSSH server for push-by-key tests: the test's own `sshd` on a free loopback port, with its own host
key and configuration, the accounts' own `~/.ssh/authorized_keys` (as the host's server reads them), and `ssh`
clients with one key each. Stopped by its PID."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

from tests.helpers import Process, free_port, wait_for

SSHD = Path("/usr/sbin/sshd")
PRIVSEP = Path("/run/sshd")  # the server's privilege separation directory


class SshServer:
    def __init__(self, root: Path, user: str):
        if not SSHD.exists() or not shutil.which("ssh"):
            raise AssertionError(f"{SSHD} or ssh is missing: install openssh-server and openssh-client (test.sh does)")
        root.mkdir(parents=True, exist_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / "host_key")], check=True)
        self.port = free_port()
        self.config = root / "sshd_config"
        self.config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {root / 'host_key'}\nPidFile {root / 'sshd.pid'}\n"
            "AuthorizedKeysFile .ssh/authorized_keys\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            f"UsePAM no\nStrictModes yes\nAllowUsers {user}\nLogLevel VERBOSE\n")
        self.made_privsep = not PRIVSEP.exists()
        PRIVSEP.mkdir(mode=0o755, exist_ok=True)
        self.process = Process([str(SSHD), "-D", "-e", "-f", str(self.config)], dict(os.environ), root / "sshd.log")
        wait_for("the test's sshd", self._answers, 15, interval=0.1)

    def _answers(self) -> bool:
        assert self.process.proc.poll() is None, self.process.log
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                return sock.recv(4) == b"SSH-"
        except OSError:
            return False

    def ssh(self, key: Path) -> list[str]:
        """The ssh client with `key` alone, for this server (the host key is new each run: not checked)."""
        return ["ssh", "-i", str(key), "-p", str(self.port), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
                "-o", "ConnectTimeout=10"]

    def git_env(self, key: Path) -> dict[str, str]:
        return {**os.environ, "GIT_SSH_COMMAND": " ".join(self.ssh(key))}

    def stop(self) -> None:
        self.process.stop()
        if self.made_privsep:
            shutil.rmtree(PRIVSEP, ignore_errors=True)

    def __enter__(self) -> SshServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def make_key(folder: Path, name: str) -> Path:
    """A new ed25519 key pair `folder/name` (and `.pub`); returns the private key's path."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{name}@test", "-f", str(folder / name)],
                   check=True)
    return folder / name

