"""The long-running agent: start one instance from an image and a bootstrap YAML, keep it alive.

Everything is checked before the first side effect. Then: the bridge, one container (limits and
hardening from the manifest), its network, and a loop that replaces a dead instance (with
exponential back-off for crash loops), re-adopts instances after an agent restart and applies
changes of the bootstrap YAML by reconciling only what changed.
"""

from __future__ import annotations

import ipaddress
import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import docker
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from pequod_agent import network, runtime
from pequod_agent.bootstrap import Bootstrap, Network, load_bootstrap
from pequod_agent.capacity import Capacity, check_fits, host_capacity
from pequod_agent.errors import AgentError
from pequod_agent.image import manifest_from_image
from pequod_agent.manifest import Manifest
from pequod_agent.state import StateDir

log = logging.getLogger("pequod_agent")

ZONE = "bootstrap"
MAX_BACKOFF = 60.0
STABLE_AFTER = 30.0  # an instance that ran this long resets the crash-loop back-off


def check_requires(manifest: Manifest, bootstrap: Bootstrap) -> None:
    defined = {service.name for service in bootstrap.external_services}
    for require in manifest.requires:
        if require.name not in defined:
            raise AgentError(
                f"{manifest.source}: <require service-name=\"{require.name}\"> is not defined in "
                f"{bootstrap.source} (add it under external_services)"
            )


def restart_delay(quick_failures: int) -> float:
    return 0.0 if quick_failures <= 0 else min(2.0 ** (quick_failures - 1), MAX_BACKOFF)


def hosts_file(hostname: str, address: ipaddress.IPv6Address) -> str:
    return f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{address}\t{hostname}\n"


def resolv_conf(net: Network) -> str:
    if not net.dns:
        return "# no ipv6_dns in the bootstrap YAML\n"
    return "".join(f"nameserver {server}\n" for server in net.dns)


class _ConfigChanged(FileSystemEventHandler):
    def __init__(self, path: Path, flag: threading.Event):
        self.path = path.resolve()
        self.flag = flag

    def on_any_event(self, event: FileSystemEvent) -> None:
        paths = {event.src_path, getattr(event, "dest_path", "")}
        if any(p and Path(str(p)).resolve() == self.path for p in paths):
            self.flag.set()


class Agent:
    def __init__(self, image: str, bootstrap_path: Path, state_dir: Path, client: docker.DockerClient):
        self.image = image
        self.bootstrap_path = bootstrap_path
        self.client = client
        self.state = StateDir(state_dir)
        self.application, self.version = runtime.app_from_image(image)
        self.stop = threading.Event()
        self.config_changed = threading.Event()
        self.manifest: Manifest
        self.bootstrap: Bootstrap
        self.capacity: Capacity
        self.container: Any = None
        self.quick_failures = 0
        self.restart_at = 0.0

    # -- checks, before any side effect ------------------------------------------------------
    def load(self) -> None:
        self.bootstrap = load_bootstrap(str(self.bootstrap_path))
        self.manifest = manifest_from_image(self.client, self.image)
        check_requires(self.manifest, self.bootstrap)
        self.capacity = host_capacity()
        others = [c for c in runtime.our_containers(self.client)
                  if c.status == "running" and runtime.label(c, "application") != self.application]
        in_use = [self._resources_of(c) for c in others]
        check_fits(self.application, self.manifest.resources, [r for r in in_use if r], self.capacity)

    def _resources_of(self, container: Any) -> Any:
        try:
            return manifest_from_image(self.client, runtime.label(container, "image")).resources
        except AgentError:
            return None

    def network(self) -> Network:
        if self.bootstrap.networks:
            return self.bootstrap.networks[0]
        state = self.state.load()
        seed = state.get("generated_network_seed")
        if not seed:
            seed = network.random16().to_bytes(2, "big").hex() + str(time.time())
            state["generated_network_seed"] = seed
            self.state.save(state)
        return network.generated_network(seed.encode())

    # -- instances ----------------------------------------------------------------------------
    def _instances(self) -> list[Any]:
        return [c for c in runtime.our_containers(self.client)
                if runtime.label(c, "zone") == ZONE and runtime.label(c, "application") == self.application]

    def adopt(self) -> None:
        """Take over a running instance left by an earlier agent; remove dead ones and duplicates."""
        running = []
        for container in self._instances():
            if container.status == "running":
                running.append(container)
            else:
                log.info("removing stopped instance %s", container.name)
                runtime.remove(container)
        running.sort(key=lambda c: runtime.label(c, "started"), reverse=True)
        for duplicate in running[1:]:
            log.warning("removing duplicate instance %s", duplicate.name)
            runtime.remove(duplicate)
        if running:
            self.container = running[0]
            pid = self.container.attrs["State"]["Pid"]
            address = runtime.label(self.container, "ipv6")
            if address not in network.instance_addresses(pid):
                log.info("re-wiring the network of %s", self.container.name)
                network.wire_instance(pid, self.container.name, self.network(), ipaddress.IPv6Address(address))
            log.info("re-adopted running instance %s (%s)", self.container.name, address)

    def start_instance(self) -> Any:
        net = self.network()
        suffix = f"{network.random16():04x}"
        instance = runtime.InstanceId(ZONE, "", self.application, self.version, suffix)
        address = network.instance_address(net.subnet, network.host_ipv4(), network.random16())
        etc = {
            "/etc/resolv.conf": str(self.state.write_etc_file(instance.name, "resolv.conf", resolv_conf(net))),
            "/etc/hosts": str(self.state.write_etc_file(instance.name, "hosts", hosts_file(self.application, address))),
        }
        image_user = self.client.images.get(self.image).attrs["Config"].get("User") or ""
        args = runtime.container_args(
            image=self.image, instance=instance, manifest=self.manifest, environment=self.bootstrap.env,
            image_user=image_user, capacity=self.capacity, etc_files=etc,
            labels={"zone": ZONE, "repo": "", "application": self.application, "version": self.version,
                    "ipv6": str(address), "started": f"{time.time():.3f}", "image": self.image},
        )
        container = runtime.create_and_start(self.client, args)
        try:
            network.wire_instance(container.attrs["State"]["Pid"], instance.name, net, address)
        except AgentError:
            runtime.remove(container)
            raise
        log.info("started %s at %s", instance.name, address)
        return container

    def supervise_once(self) -> None:
        if self.container is not None:
            try:
                self.container.reload()
                status = self.container.status
            except docker.errors.NotFound:
                status = "removed"
            if status == "running":
                return
            lived = time.time() - float(runtime.label(self.container, "started") or 0)
            code = self.container.attrs.get("State", {}).get("ExitCode") if status != "removed" else None
            self.quick_failures = self.quick_failures + 1 if lived < STABLE_AFTER else 1
            delay = restart_delay(self.quick_failures)
            log.warning("instance %s %s (exit code %s) after %.0f s; replacing it in %.0f s",
                        self.container.name, status, code, lived, delay)
            runtime.remove(self.container)
            self.container = None
            self.restart_at = time.monotonic() + delay
            state = self.state.load()
            state["restarts"] = int(state.get("restarts", 0)) + 1
            self.state.save(state)
        if self.container is None and time.monotonic() >= self.restart_at:
            try:
                self.container = self.start_instance()
            except AgentError as exc:
                self.quick_failures += 1
                self.restart_at = time.monotonic() + restart_delay(self.quick_failures)
                log.error("%s; retrying", exc)

    # -- configuration changes ------------------------------------------------------------------
    def reload_config(self) -> None:
        try:
            new = load_bootstrap(str(self.bootstrap_path))
            check_requires(self.manifest, new)
        except AgentError as exc:
            log.error("ignoring the changed bootstrap YAML: %s; the running configuration stays", exc)
            return
        old, self.bootstrap = self.bootstrap, new
        if new == old:
            return
        old_net = old.networks[0] if old.networks else None
        new_net = new.networks[0] if new.networks else None
        same_addressing = (old_net and new_net and old_net.subnet == new_net.subnet
                           and old_net.gateway == new_net.gateway) or (old_net is None and new_net is None)
        if new.environment != old.environment or new.external_services != old.external_services \
                or not same_addressing:
            log.info("bootstrap YAML changed (environment, services or addressing): replacing the instance")
            if not same_addressing and new_net is not None:
                network.ensure_bridge(new_net)
            previous, self.container = self.container, None
            if previous is not None:
                runtime.remove(previous)
            self.restart_at = 0
            self.supervise_once()
            return
        if self.container is not None and old_net and new_net:
            pid = self.container.attrs["State"]["Pid"]
            if old_net.routes != new_net.routes:
                network.update_routes(pid, old_net.routes, new_net.routes)
                log.info("bootstrap YAML changed: routes updated in %s", self.container.name)
            if old_net.dns != new_net.dns:
                self.state.write_etc_file(self.container.name, "resolv.conf", resolv_conf(new_net))
                log.info("bootstrap YAML changed: resolv.conf updated in %s", self.container.name)

    # -- the loop -------------------------------------------------------------------------------
    def run(self) -> None:
        network.ensure_bridge(self.network())
        self.adopt()
        observer = Observer()
        observer.schedule(_ConfigChanged(self.bootstrap_path, self.config_changed),
                          str(self.bootstrap_path.resolve().parent))
        observer.start()
        log.info("supervising %s from %s", self.image, self.bootstrap_path)
        try:
            while not self.stop.is_set():
                if self.config_changed.is_set():
                    self.stop.wait(0.3)  # let the editor finish writing
                    self.config_changed.clear()
                    self.reload_config()
                try:
                    self.supervise_once()
                except AgentError as exc:
                    log.error("%s", exc)
                self.stop.wait(1.0)
        finally:
            observer.stop()
            observer.join(5)
        log.info("agent stopped; instances keep running and are re-adopted on the next start")


def teardown(client: docker.DockerClient, state_dir: Path) -> list[str]:
    """Remove every container, link and file of ours; nothing else."""
    removed = []
    for container in runtime.our_containers(client):
        runtime.remove(container, timeout=5)
        removed.append(f"container {container.name}")
    removed += [f"link {name}" for name in network.remove_veths()]
    if network.remove_bridge():
        removed.append(f"link {network.BRIDGE}")
    state = StateDir(state_dir)
    if state.file.exists():
        state.file.unlink()
    instances = state.path / "instances"
    if instances.is_dir():
        shutil.rmtree(instances)
    return removed
