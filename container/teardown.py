"""`pequod-agent --teardown`: remove every container, daemon, link, rule and file of ours; nothing else."""

from __future__ import annotations

import shutil
from pathlib import Path

import docker

from container import builders, firewall, frontend, network, runtime, volume
from container.nat64 import Tayga
from container.records import BRIDGE, TUN
from container.settings import Nat64
from container.state import StateDir


def teardown(client: docker.DockerClient, state_dir: Path, purge: bool = False) -> list[str]:
    """Returns what was removed. Persistent volumes are unmounted, and deleted only with `purge`."""
    removed = []
    if frontend.Frontend(state_dir).stop():
        removed.append("haproxy (frontend)")
    for instance in runtime.instances(client):
        runtime.remove(client, instance.name, timeout=5)
        removed.append(f"container {instance.name}")
    removed += builders.remove_all(client)
    removed += volume.unmount_all(state_dir, purge)
    if Tayga(Nat64(), state_dir).stop():
        removed.append("tayga (NAT64)")
    if network.remove_link(TUN):
        removed.append(f"link {TUN}")
    removed += firewall.remove()
    removed += [f"link {name}" for name in network.remove_veths()]
    if network.remove_link(BRIDGE):
        removed.append(f"link {BRIDGE}")
    state = StateDir(state_dir)
    if state.file.exists():
        state.file.unlink()
    for directory in ("instances", "haproxy", "tayga"):
        if (state.path / directory).is_dir():
            shutil.rmtree(state.path / directory)
    return removed
