"""The Docker engine: make sure one answers (starting dockerd where no init system does)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import docker
import docker.errors

from container import proc
from container.errors import DockerError

DOCKERD_LOG = Path("/var/log/pequod-dockerd.log")
DOCKERD_PIDFILE = Path("/run/pequod-dockerd.pid")
# Docker's default bridge (172.17.0.0/16) and pools would take private LAN ranges; ours come
# from the benchmarking range so they never collide with a LAN.
DOCKERD_ARGS = ["--bip", "198.18.250.1/24", "--default-address-pool", "base=198.18.224.0/20,size=24"]


def connect(timeout: int = 120) -> docker.DockerClient | None:
    """A client of an engine that answers, or None."""
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
        return client
    except (docker.errors.DockerException, OSError):
        return None


def ensure_engine(progress: Callable[[str], None] = print, wait_seconds: float = 60) -> docker.DockerClient:
    """Return a client of a running engine; start `dockerd` when none answers."""
    client = connect()
    if client is not None:
        return client
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise DockerError(
            "no Docker engine answers and dockerd is not installed: apt-get install docker.io"
        )
    progress(f"starting dockerd (log: {DOCKERD_LOG})")
    with open(DOCKERD_LOG, "ab") as log:
        child = proc.start([dockerd, *DOCKERD_ARGS], output=log, error=DockerError)
    DOCKERD_PIDFILE.write_text(f"{child.pid}\n")
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise DockerError(f"dockerd exited with status {child.returncode}; see {DOCKERD_LOG}")
        client = connect()
        if client is not None:
            progress(f"dockerd (pid {child.pid}) answers")
            return client
        time.sleep(0.5)
    raise DockerError(f"dockerd did not answer within {wait_seconds:g} s; see {DOCKERD_LOG}")

