"""Each application's builder (`<builder>` in its manifest): a container of its own beside the instances, where the
application's untrusted work runs (the blog: every build, which runs code from git).

It runs the manifest's `command` in the application's image, as a user of its own (the instance's uid plus
BUILDER_UID_OFFSET: it can signal no instance process and write none of the instance's files), in its own PID
namespace and cgroup, with `network_mode: none`, a read-only root, no capability, no secret (its environment is
BUILDER_SOCKET only) and the builder's limits (never more than the application's). It writes only its own
persistent volume (made its user's; the instances see it too) and reads one folder of the instances' volumes
(`reads`, mounted read-only). Docker restarts it whenever its first process ends
(restart policy `always`), in a fresh PID namespace: whatever it started is gone, which is how the instance
throws it away. One builder per application, kept across instance replacements; removed with the application.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import docker
import docker.errors
from docker.types import Ulimit

from container.capacity import Capacity, nano_cpus
from container.errors import DockerError
from container.manifest import Builder, Manifest, Resources

log = logging.getLogger("container")

LABEL = "org.pequod.builder"  # not runtime.LABEL: a builder is never taken for an instance
BUILDER_UID_OFFSET = 100_000
TMPFS_MB = 16


def name(zone: str, application: str) -> str:
    return f"{zone}-{application}-builder"


def uid(instance_uid: int | None) -> int:
    """The builder's user: the instance's plus BUILDER_UID_OFFSET (nobody's when the instance has no number)."""
    return (instance_uid if instance_uid is not None else 65534) + BUILDER_UID_OFFSET


def resources(builder: Builder, application: Resources) -> Resources:
    """The builder's limits, never more than the application's own (a site may be given less)."""
    return Resources(memory_mb=min(builder.resources.memory_mb, application.memory_mb),
                     cpu_vmhz=min(builder.resources.cpu_vmhz, application.cpu_vmhz),
                     processes=builder.resources.processes, open_files=application.open_files)


def own_volume(directory: Path, owner: int) -> None:
    """The root of the builder's volume (on the host) is its user's, and no one else may write it."""
    st = os.lstat(directory)
    if st.st_uid != owner or st.st_gid != owner:
        os.chown(directory, owner, owner, follow_symlinks=False)
    if st.st_mode & 0o7777 != 0o755:
        os.chmod(directory, 0o755, follow_symlinks=False)


def container_args(*, zone: str, application: str, image: str, image_id: str, manifest: Manifest,
                   volumes: dict[str, str], instance_uid: int | None, capacity: Capacity) -> dict[str, Any]:
    """`volumes`: the host directories of the application's persistent volumes by mountpoint."""
    assert manifest.builder is not None
    builder = manifest.builder
    limits = resources(builder, manifest.resources)
    user = uid(instance_uid)
    binds = {volumes[builder.volume]: {"bind": builder.volume, "mode": "rw"}}
    if builder.reads and builder.reads_volume:
        binds[str(Path(volumes[builder.reads_volume]) / builder.reads_subpath)] = {"bind": builder.reads, "mode": "ro"}
    config = {"command": builder.command, "limits": [limits.memory_mb, limits.cpu_vmhz, limits.processes],
              "user": user, "binds": binds}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    return {
        "image": image,
        "name": name(zone, application),
        "command": list(builder.command),
        "hostname": f"{application}-builder"[:63],
        "detach": True,
        "network_mode": "none",
        "environment": {"BUILDER_SOCKET": builder.socket, "HOME": builder.volume},
        "user": f"{user}:{user}",
        "read_only": True,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "mem_limit": f"{limits.memory_mb}m",
        "memswap_limit": f"{limits.memory_mb}m",
        "nano_cpus": nano_cpus(limits, capacity),
        "pids_limit": limits.processes,
        "ulimits": [Ulimit(name="nofile", soft=limits.open_files, hard=limits.open_files)],
        "tmpfs": {"/tmp": f"size={TMPFS_MB}m,uid={user},gid={user},mode=0700"},
        "volumes": binds,
        "restart_policy": {"Name": "always"},
        "healthcheck": {"test": ["NONE"]},  # the image's is the instance's: nothing else may run in the builder
        "labels": {LABEL: application, f"{LABEL}.zone": zone, f"{LABEL}.image_id": image_id,
                   f"{LABEL}.config": digest},
    }


def ensure(client: docker.DockerClient, args: dict[str, Any]) -> None:
    """The builder running as `args` say: kept when it does already (same image and configuration), else made
    afresh (a new image, other limits), so that instances and builder always run the same code."""
    wanted = args["labels"]
    try:
        found = client.containers.get(args["name"])
    except docker.errors.NotFound:
        found = None
    except docker.errors.APIError as exc:
        raise DockerError(f"cannot inspect {args['name']}: {exc.explanation or exc}") from None
    if found is not None:
        labels = found.labels or {}
        same = all(labels.get(key) == value for key, value in wanted.items())
        if same and found.status in ("running", "restarting"):
            return
        log.info("replacing builder %s (%s)", found.name, "stopped" if same else "new image or configuration")
        _remove(found)
    try:
        container = client.containers.create(**args)
        container.start()
    except docker.errors.APIError as exc:
        raise DockerError(f"cannot start builder {args['name']}: {exc.explanation or exc}") from None
    log.info("started builder %s (user %s, %s of memory, network none)", args["name"], args["user"],
             args["mem_limit"])


def ours(client: docker.DockerClient, zone: str | None = None) -> list[Any]:
    try:
        found = client.containers.list(all=True, filters={"label": LABEL}, ignore_removed=True)
    except docker.errors.APIError as exc:
        raise DockerError(f"cannot list builders: {exc.explanation or exc}") from None
    return [c for c in found if zone is None or (c.labels or {}).get(f"{LABEL}.zone") == zone]


def remove(client: docker.DockerClient, zone: str, application: str) -> bool:
    """Remove the builder of `application` (gone already is fine); whether there was one."""
    try:
        container = client.containers.get(name(zone, application))
    except docker.errors.NotFound:
        return False
    except docker.errors.APIError as exc:
        log.warning("removing builder of %s: %s", application, exc.explanation or exc)
        return False
    _remove(container)
    return True


def remove_all(client: docker.DockerClient) -> list[str]:
    removed = []
    for container in ours(client):
        _remove(container)
        removed.append(f"container {container.name}")
    return removed


def _remove(container: Any) -> None:
    try:
        container.remove(force=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as exc:
        log.warning("removing %s: %s", container.name, exc.explanation or exc)
