"""The container runtime, through the Docker SDK: creating, listing and removing our instances."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
from docker.types import Ulimit

from pequod_agent.capacity import Capacity, nano_cpus
from pequod_agent.errors import DockerError
from pequod_agent.manifest import Manifest

log = logging.getLogger(__name__)

LABEL = "org.pequod.agent"
NOBODY = "65534"


@dataclass(frozen=True)
class InstanceId:
    zone: str
    repo: str
    application: str
    version: str
    suffix: str

    @property
    def name(self) -> str:
        return f"{self.zone}-{self.repo}-{self.application}-{self.version}-{self.suffix}"


def app_from_image(image: str) -> tuple[str, str]:
    """`srcco-de:1` → ("srcco-de", "1"); registry and path prefixes are dropped."""
    name, _, tag = image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (image, "", "latest")
    return name.rsplit("/", 1)[-1], tag


def run_user(image_user: str) -> tuple[str, int | None]:
    """The user to run as (never root) and its numeric uid where known."""
    user = image_user.split(":", 1)[0]
    if user in ("", "0", "root"):
        return NOBODY, int(NOBODY)
    return image_user, int(user) if user.isdigit() else None


def container_args(
    *, image: str, instance: InstanceId, manifest: Manifest, environment: dict[str, str], image_user: str,
    capacity: Capacity, read_only_binds: dict[str, str], labels: dict[str, str],
) -> dict[str, Any]:
    """Everything `containers.create` gets: limits from the manifest and the hardening.

    `read_only_binds` maps paths inside the container to host paths (the /etc files, the YAML's mounts)."""
    res = manifest.resources
    user, uid = run_user(image_user)
    owner = f"uid={uid},gid={uid},mode=0700" if uid is not None else "mode=1777"
    return {
        "image": image,
        "name": instance.name,
        "hostname": instance.application,
        "detach": True,
        "network_mode": "none",
        "environment": environment,
        "user": user,
        "read_only": True,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "mem_limit": f"{res.memory_mb}m",
        "memswap_limit": f"{res.memory_mb}m",
        "nano_cpus": nano_cpus(res, capacity),
        "pids_limit": res.processes,
        "ulimits": [Ulimit(name="nofile", soft=res.open_files, hard=res.open_files)],
        "tmpfs": {fs.mountpoint: f"size={fs.size_mb}m,{owner}" for fs in manifest.filesystems},
        "sysctls": {"net.ipv6.conf.all.disable_ipv6": "0", "net.ipv6.conf.default.disable_ipv6": "0",
                    "net.ipv6.conf.all.accept_dad": "0", "net.ipv6.conf.default.accept_dad": "0"},
        "volumes": {host: {"bind": inside, "mode": "ro"} for inside, host in read_only_binds.items()},
        "labels": {LABEL: "1", **{f"{LABEL}.{key}": value for key, value in labels.items()}},
    }


def our_containers(client: docker.DockerClient) -> list[Any]:
    try:
        return client.containers.list(all=True, filters={"label": LABEL})
    except docker.errors.APIError as exc:
        raise DockerError(f"cannot list containers: {exc.explanation or exc}") from None


def label(container: Any, key: str) -> str:
    return (container.labels or {}).get(f"{LABEL}.{key}", "")


def create_and_start(client: docker.DockerClient, args: dict[str, Any]) -> Any:
    try:
        container = client.containers.create(**args)
    except docker.errors.APIError as exc:
        raise DockerError(f"cannot create {args['name']}: {exc.explanation or exc}") from None
    try:
        container.start()
        container.reload()
    except docker.errors.APIError as exc:
        remove(container)  # a container that failed to start stays in Created state otherwise
        raise DockerError(f"cannot start {args['name']}: {exc.explanation or exc}") from None
    return container


def remove(container: Any, timeout: int = 10) -> None:
    try:
        if container.status == "running":
            container.stop(timeout=timeout)
        container.remove(force=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as exc:
        log.warning("removing %s: %s", container.name, exc.explanation or exc)
