"""The container runtime, through the Docker SDK: creating, listing and removing our instances.

The agent's one gateway to Docker for instances: it deals in typed `Instance` records and names, and
Docker's errors become `DockerError` here."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import select
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
from docker.models.containers import Container
from docker.types import Ulimit

from container.capacity import Capacity, nano_cpus
from container.errors import DockerError
from container.manifest import Manifest
from container.records import Instance

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
    read_write_binds: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Everything `containers.create` gets: limits from the manifest and the hardening.

    `read_only_binds` maps paths inside the container to host paths (the /etc files, the YAML's mounts),
    `read_write_binds` likewise for the application's persistent volumes."""
    res = manifest.resources
    user, uid = run_user(image_user)
    # Not the image's HEALTHCHECK: the agent checks every instance itself every 5 s (and HAProxy its own way),
    # and Docker's check, a process started in the container every 10 s, cost an idle site more CPU in Docker's
    # daemons than everything else it does (bench/sites.py, idle CPU).
    extra: dict[str, Any] = {"healthcheck": {"test": ["NONE"]}}
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
        "volumes": {**{host: {"bind": inside, "mode": "ro"} for inside, host in read_only_binds.items()},
                    **{host: {"bind": inside, "mode": "rw"} for inside, host in (read_write_binds or {}).items()}},
        "labels": {LABEL: "1", **{f"{LABEL}.{key}": value for key, value in labels.items()}},
        **extra,
    }


def our_containers(client: docker.DockerClient) -> list[Container]:
    try:
        # A container removed between the listing and its inspection is left out, not an error.
        return client.containers.list(all=True, filters={"label": LABEL}, ignore_removed=True)
    except docker.errors.APIError as exc:
        raise DockerError(f"cannot list containers: {exc.explanation or exc}") from None


def label(container: Container, key: str) -> str:
    return (container.labels or {}).get(f"{LABEL}.{key}", "")


def _instance(container: Container) -> Instance:
    return Instance(
        name=container.name or "", application=label(container, "application"), version=label(container, "version"),
        zone=label(container, "zone"), repo=label(container, "repo"),
        address=ipaddress.IPv6Address(label(container, "ipv6") or "::"),
        started=float(label(container, "started") or 0), image=label(container, "image"),
        image_id=label(container, "image_id"), pid=int(container.attrs.get("State", {}).get("Pid") or 0),
        running=container.status == "running", site=label(container, "site"),
    )


def instances(client: docker.DockerClient, zone: str | None = None) -> list[Instance]:
    """Our instances (running or not), optionally of one zone."""
    return [_instance(c) for c in our_containers(client) if zone is None or label(c, "zone") == zone]


@dataclass(frozen=True)
class ImageInfo:
    id: str
    user: str  # the image's USER ("" when none)


def image_info(client: docker.DockerClient, image: str) -> ImageInfo:
    try:
        found = client.images.get(image)
    except docker.errors.ImageNotFound:
        raise DockerError(f"image {image} is not present (build it: pequod-agent --build-image {image})") from None
    except docker.errors.APIError as exc:
        raise DockerError(f"cannot inspect image {image}: {exc.explanation or exc}") from None
    config = found.attrs.get("Config") or {}
    return ImageInfo(found.id or "", config.get("User") or "")


def state(client: docker.DockerClient, name: str) -> tuple[str, int | None]:
    """(status — running, exited, … or removed —, exit code) of an instance."""
    container = _inspect(client, name)
    if container is None:
        return "removed", None
    return container.status, container.attrs.get("State", {}).get("ExitCode")


def _inspect(client: docker.DockerClient, name: str) -> Container | None:
    """The container as Docker describes it now; None once it is removed."""
    try:
        return client.containers.get(name)
    except docker.errors.NotFound:
        return None
    except docker.errors.APIError as exc:
        raise DockerError(f"cannot inspect {name}: {exc.explanation or exc}") from None


class Exits:
    """Whether an instance still runs, mostly without asking Docker: a pidfd of its first process, polled (a
    lookup in the kernel), opened once Docker said the container runs with that process. Docker is asked again
    only when the process ended or cannot be watched, so an idle site costs Docker nothing between changes."""

    def __init__(self, client: docker.DockerClient):
        self.client = client
        self._watched: dict[str, int] = {}  # container name → pidfd of its first process

    def state(self, name: str) -> str:
        """running, exited, … or removed, as `state` (Docker's answer whenever the pidfd has something to say)."""
        fd = self._watched.get(name)
        if fd is not None:
            ended = select.poll()
            ended.register(fd, select.POLLIN)
            if not ended.poll(0):
                return "running"
            self.forget(name)  # it ended: Docker says how, and whether it runs again
        container = _inspect(self.client, name)
        if container is None:
            return "removed"
        pid = int(container.attrs.get("State", {}).get("Pid") or 0)
        if container.status == "running" and pid > 0:
            with contextlib.suppress(OSError):  # no pidfds (kernel, seccomp): Docker is asked every time
                self._watched[name] = os.pidfd_open(pid)
        return str(container.status)

    def forget(self, name: str) -> None:
        fd = self._watched.pop(name, None)
        if fd is not None:
            os.close(fd)

    def keep_only(self, names: set[str]) -> None:
        for name in set(self._watched) - names:
            self.forget(name)


def start(client: docker.DockerClient, args: dict[str, Any]) -> Instance:
    """Create and start an instance; a container that fails to start is removed again."""
    try:
        container = client.containers.create(**args)
    except docker.errors.APIError as exc:
        raise DockerError(f"cannot create {args['name']}: {exc.explanation or exc}") from None
    try:
        container.start()
        container.reload()
    except docker.errors.APIError as exc:
        _remove(container)  # a container that failed to start stays in Created state otherwise
        raise DockerError(f"cannot start {args['name']}: {exc.explanation or exc}") from None
    return _instance(container)


def remove(client: docker.DockerClient, name: str, timeout: int = 10) -> None:
    """Stop (SIGTERM, then SIGKILL after `timeout` s) and remove an instance; gone already is fine."""
    try:
        _remove(client.containers.get(name), timeout)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as exc:
        log.warning("removing %s: %s", name, exc.explanation or exc)


def _remove(container: Container, timeout: int = 10) -> None:
    try:
        if container.status == "running":
            container.stop(timeout=timeout)
        container.remove(force=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as exc:
        log.warning("removing %s: %s", container.name, exc.explanation or exc)
