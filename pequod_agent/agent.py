"""The long-running agent: start one instance per image from a bootstrap YAML, keep them alive.

Everything is checked before the first side effect. Then: the bridge, NAT64 (Tayga) and the egress
firewall, one container (limits and hardening from the manifest), its network, the HAProxy frontend,
and a loop that replaces a dead instance (with exponential back-off for crash loops), restarts Tayga
and HAProxy if they die, re-resolves external services, re-adopts instances after an agent restart
and applies changes of the bootstrap YAML by reconciling only what changed.

A new instance joins the frontend only once it answers its health check; a replacement (after a
configuration change) is started beside the old one, which leaves the frontend and is removed only
after it had time to finish its requests.
"""

from __future__ import annotations

import http.client
import ipaddress
import logging
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any

import docker
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from pequod_agent import firewall, frontend, nat64, network, runtime
from pequod_agent.bootstrap import Bootstrap, Nat64, Network, load_bootstrap
from pequod_agent.capacity import Capacity, check_fits, host_capacity
from pequod_agent.errors import AgentError
from pequod_agent.image import manifest_from_image
from pequod_agent.manifest import Manifest
from pequod_agent.nat64 import Destination, Tayga
from pequod_agent.state import StateDir

log = logging.getLogger("pequod_agent")

ZONE = "bootstrap"
MAX_BACKOFF = 60.0
STABLE_AFTER = 30.0  # an instance that ran this long resets the crash-loop back-off
DRAIN_SECONDS = 3.0  # a replaced instance serves this long after leaving the frontend
RESOLVE_INTERVAL = 60.0  # external hosts are resolved again this often
FIREWALL_CHECK_INTERVAL = 10.0  # our jumps in the built-in chains are checked this often
HOST_PROGRAMS = {"tayga": "tayga", "haproxy": "haproxy", "iptables-restore": "iptables",
                 "ip6tables-restore": "iptables"}


def required_services(apps: list[App], bootstrap: Bootstrap) -> None:
    """Every <require> must be provided by one of the applications here, or defined as external service."""
    provided: dict[str, str] = {}
    for app in apps:
        for provide in app.manifest.provides:
            if provide.name in provided:
                raise AgentError(f"service {provide.name!r} is provided by both {provided[provide.name]} and "
                                 f"{app.image}; run one of them")
            provided[provide.name] = app.image
    external = {service.name for service in bootstrap.external_services}
    local_ports: dict[int, str] = {}
    for app in apps:
        for require in app.manifest.requires:
            if require.name in provided:
                other = local_ports.setdefault(require.local_port, require.name)
                if other != require.name:
                    raise AgentError(f"{app.manifest.source}: <require service-name=\"{require.name}\" "
                                     f"local-port=\"{require.local_port}\">: the port is already used for {other}")
            elif require.name not in external:
                raise AgentError(
                    f"{app.manifest.source}: <require service-name=\"{require.name}\"> is not defined in "
                    f"{bootstrap.source} (add it under external_services) and no application here provides it"
                )


def restart_delay(quick_failures: int) -> float:
    return 0.0 if quick_failures <= 0 else min(2.0 ** (quick_failures - 1), MAX_BACKOFF)


def hosts_file(hostname: str, address: ipaddress.IPv6Address, found: tuple[Destination, ...] = (),
               local: dict[str, ipaddress.IPv6Address] | None = None) -> str:
    """/etc/hosts of an instance: itself, its external services (NAT64), services provided here (gateway)."""
    return (f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{address}\t{hostname}\n"
            + nat64.hosts_entries(found)
            + "".join(f"{gateway}\t{name}\n" for name, gateway in sorted((local or {}).items())))


def check_mounts(apps: list[App], bootstrap: Bootstrap) -> None:
    reserved = {"/etc/hosts", "/etc/resolv.conf", *(fs.mountpoint for app in apps for fs in app.manifest.filesystems)}
    for index, mount in enumerate(bootstrap.mounts):
        if not Path(mount.source).exists():
            raise AgentError(f"{bootstrap.source}: mounts[{index}].source: {mount.source} does not exist on the host")
        if mount.target in reserved:
            raise AgentError(f"{bootstrap.source}: mounts[{index}].target: {mount.target} is managed by the agent "
                             "or the manifest; choose another path")


def check_host_programs() -> None:
    missing = sorted({package for program, package in HOST_PROGRAMS.items() if shutil.which(program) is None})
    if missing:
        raise AgentError(f"missing host programs: install them with apt-get install {' '.join(missing)}")


def check_port_free(address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int, service: str) -> None:
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((str(address), port))
        except OSError as exc:
            raise AgentError(
                f"cannot publish {service} on [{address}]:{port}: {exc.strerror} (another program listens there? "
                "stop it, or choose another frontend.port in the bootstrap YAML)") from None


def answers_health(address: str, port: int, path: str, timeout: float = 1.0) -> bool:
    connection = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        connection.request("GET", path)
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


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


class App:
    """One application (image) the agent runs: its manifest and its instances."""

    def __init__(self, image: str):
        self.image = image
        self.name, self.version = runtime.app_from_image(image)
        self.manifest: Manifest
        self.image_id = ""
        self.container: Any = None  # the instance in the frontend
        self.pending: tuple[Any, float] | None = None  # a started instance and its health deadline
        self.retiring: list[tuple[Any, float]] = []  # replaced instances and when to remove them
        self.starting: ipaddress.IPv6Address | None = None  # the address of an instance being created
        self.quick_failures = 0
        self.restart_at = 0.0

    def live(self) -> list[Any]:
        return [c for c in (self.container, self.pending[0] if self.pending else None) if c is not None]

    def addresses(self) -> tuple[ipaddress.IPv6Address, ...]:
        found = [ipaddress.IPv6Address(runtime.label(c, "ipv6")) for c in self.live()]
        return tuple(found + ([self.starting] if self.starting else []))

    @property
    def health_timeout(self) -> int:
        return max([p.health_check_timeout for p in self.manifest.provides], default=0)


class Agent:
    def __init__(self, images: list[str], bootstrap_path: Path, state_dir: Path, client: docker.DockerClient):
        self.apps = [App(image) for image in images]
        names = [app.name for app in self.apps]
        for name in names:
            if names.count(name) > 1:
                raise AgentError(f"application {name!r} is given twice; one instance per application")
        self.bootstrap_path = bootstrap_path
        self.client = client
        self.state = StateDir(state_dir)
        self.stop = threading.Event()
        self.config_changed = threading.Event()
        self.bootstrap: Bootstrap
        self.capacity: Capacity
        self.tayga: Tayga
        self.frontend = frontend.Frontend(state_dir)
        self.destinations: dict[str, tuple[Destination, ...]] = {}  # application → its external services
        self.resolved_at = -RESOLVE_INTERVAL
        self.rules: dict[str, str] = {}
        self._generated: Network | None = None
        self.firewall_checked = time.monotonic()

    # -- checks, before any side effect ------------------------------------------------------
    def load(self) -> None:
        self.bootstrap = load_bootstrap(str(self.bootstrap_path))
        for app in self.apps:
            app.manifest = manifest_from_image(self.client, app.image)
            app.image_id = self.client.images.get(app.image).id
        required_services(self.apps, self.bootstrap)
        check_mounts(self.apps, self.bootstrap)
        check_host_programs()
        self.capacity = host_capacity()
        ours = {app.name for app in self.apps}
        in_use = [self._resources_of(c) for c in runtime.our_containers(self.client)
                  if c.status == "running" and runtime.label(c, "application") not in ours]
        in_use = [r for r in in_use if r]
        for app in self.apps:
            check_fits(app.name, app.manifest.resources, in_use, self.capacity)
            in_use.append(app.manifest.resources)
        self.check_frontend(self.bootstrap)
        # iptables must accept our kind of rules (conntrack, comment, REJECT, NAT) before anything is set up.
        net = self.bootstrap.networks[0] if self.bootstrap.networks else network.generated_network(b"check")
        firewall.check_rules(firewall.render_rules(net, self.bootstrap.nat64, ()))
        self.tayga = Tayga(self.bootstrap.nat64, self.state.path)

    def check_frontend(self, bootstrap: Bootstrap) -> None:
        """Ports distinct and free (unless our HAProxy holds them), and a configuration HAProxy accepts."""
        services = self.frontend_services(bootstrap)
        ports = [s.port for s in services if s.port]
        for service in services:
            if service.port and ports.count(service.port) > 1:
                raise AgentError(f"{bootstrap.source}: frontend: port {service.port} is used by more than one "
                                 "provided service; give each its own under frontend.ports (0: not published)")
        if self.frontend.daemon.pid() is None:
            for service in services:
                if service.port:
                    check_port_free(service.bind, service.port, service.name)
        frontend.check_config(self.frontend.render(services))

    def _resources_of(self, container: Any) -> Any:
        try:
            return manifest_from_image(self.client, runtime.label(container, "image")).resources
        except AgentError:
            return None

    def network(self) -> Network:
        """The YAML's network, or the generated one (its seed kept in the state dir, read once)."""
        if self.bootstrap.networks:
            return self.bootstrap.networks[0]
        if self._generated is None:
            state = self.state.load()
            seed = state.get("generated_network_seed")
            if not seed:
                seed = network.random16().to_bytes(2, "big").hex() + str(time.time())
                state["generated_network_seed"] = seed
                self.state.save(state)
            self._generated = network.generated_network(seed.encode())
        return self._generated

    # -- services: NAT64, firewall, frontend ---------------------------------------------------
    def _provider(self, service: str) -> App | None:
        return next((app for app in self.apps if any(p.name == service for p in app.manifest.provides)), None)

    def _local_requires(self, app: App) -> list[Any]:
        """The app's <require>s that another application here provides (reached through the frontend)."""
        return [r for r in app.manifest.requires if self._provider(r.name) is not None]

    def refresh_destinations(self, force: bool = False) -> None:
        """Resolve the external services; on a change, update the firewall and the instances' /etc/hosts."""
        if not force and time.monotonic() - self.resolved_at < RESOLVE_INTERVAL:
            return
        self.resolved_at = time.monotonic()
        found = {}
        for app in self.apps:
            local = {r.name for r in self._local_requires(app)}
            external = tuple(s for s in self.bootstrap.external_services if s.name not in local)
            found[app.name] = nat64.destinations(app.manifest, external, self.bootstrap.nat64)
        if found == self.destinations and not force:
            return
        for d in {d for ds in found.values() for d in ds} - {d for ds in self.destinations.values() for d in ds}:
            log.info("%s: %s → %s (as %s:%d)", d.service, d.external_host,
                     ", ".join(map(str, d.ipv4)) or "unresolved", d.local_hostname, d.local_port)
        self.destinations = found
        self.apply_firewall()
        for app in self.apps:
            for container in app.live():
                self.state.write_etc_file(container.name, "hosts", self._hosts(app, runtime.label(container, "ipv6")))

    def apply_firewall(self) -> None:
        """Rules for the current instance addresses; applied only when they changed."""
        grants, listeners = [], []
        for app in self.apps:
            sources = app.addresses()
            grants += [firewall.Grant(sources, d) for d in self.destinations.get(app.name, ())]
            listeners += [firewall.HostListener(sources, r.local_port, f"{app.name} -> {r.name}")
                          for r in self._local_requires(app)]
        rules = firewall.render_rules(self.network(), self.bootstrap.nat64, tuple(grants), tuple(listeners))
        if rules != self.rules:
            firewall.apply(rules)
            self.rules = rules

    def _hosts(self, app: App, address: str) -> str:
        gateway = self.network().gateway
        local = {r.local_hostname: gateway for r in self._local_requires(app)}
        return hosts_file(app.name, ipaddress.IPv6Address(address), self.destinations.get(app.name, ()), local)

    def frontend_services(self, bootstrap: Bootstrap | None = None) -> tuple[frontend.Service, ...]:
        bootstrap = bootstrap or self.bootstrap
        services = []
        for app in self.apps:
            for provide in app.manifest.provides:
                servers: tuple[frontend.Server, ...] = ()
                if app.container is not None:
                    address = ipaddress.IPv6Address(runtime.label(app.container, "ipv6"))
                    servers = (frontend.Server(app.container.name, address, provide.local_port),)
                local_ports = sorted({r.local_port for other in self.apps
                                      for r in other.manifest.requires if r.name == provide.name})
                local_binds: tuple[tuple[ipaddress.IPv6Address, int], ...] = ()
                if local_ports:  # listeners on the gateway for the instances that require this service
                    net = bootstrap.networks[0] if bootstrap.networks else self.network()
                    local_binds = tuple((net.gateway, port) for port in local_ports)
                services.append(frontend.Service(
                    provide.name, bootstrap.frontend.bind, bootstrap.frontend.port_of(provide.name),
                    provide.health_check_path, servers, local_binds))
        return tuple(services)

    def publish(self) -> None:
        if any(app.manifest.provides for app in self.apps):
            self.frontend.apply(self.frontend_services())

    def healthy(self, app: App, container: Any) -> bool:
        address = runtime.label(container, "ipv6")
        return all(answers_health(address, p.local_port, p.health_check_path) for p in app.manifest.provides)

    # -- instances ----------------------------------------------------------------------------
    def _instances(self, app: App) -> list[Any]:
        return [c for c in runtime.our_containers(self.client)
                if runtime.label(c, "zone") == ZONE and runtime.label(c, "application") == app.name]

    def adopt(self, app: App) -> None:
        """Take over a running instance left by an earlier agent (the newest healthy one); remove the rest."""
        running = []
        for container in self._instances(app):
            if container.status == "running":
                running.append(container)
            else:
                log.info("removing stopped instance %s", container.name)
                runtime.remove(container)
        running.sort(key=lambda c: (self.healthy(app, c), runtime.label(c, "started")), reverse=True)
        for duplicate in running[1:]:
            log.warning("removing duplicate instance %s", duplicate.name)
            runtime.remove(duplicate)
        if running:
            app.container = running[0]
            pid = app.container.attrs["State"]["Pid"]
            address = runtime.label(app.container, "ipv6")
            if address not in network.instance_addresses(pid):
                log.info("re-wiring the network of %s", app.container.name)
                network.wire_instance(pid, app.container.name, self.network(), ipaddress.IPv6Address(address))
            self.state.write_etc_file(app.container.name, "hosts", self._hosts(app, address))
            log.info("re-adopted running instance %s (%s)", app.container.name, address)

    def start_instance(self, app: App) -> Any:
        net = self.network()
        suffix = f"{network.random16():04x}"
        instance = runtime.InstanceId(ZONE, "", app.name, app.version, suffix)
        address = network.instance_address(net.subnet, network.host_ipv4(), network.random16())
        app.starting = address
        try:
            self.apply_firewall()  # its services are open before it runs
            etc = {
                "/etc/resolv.conf": str(self.state.write_etc_file(instance.name, "resolv.conf", resolv_conf(net))),
                "/etc/hosts": str(self.state.write_etc_file(instance.name, "hosts", self._hosts(app, str(address)))),
            }
            image = self.client.images.get(app.image)
            app.image_id = image.id
            args = runtime.container_args(
                image=app.image, instance=instance, manifest=app.manifest, environment=self.bootstrap.env,
                image_user=image.attrs["Config"].get("User") or "", capacity=self.capacity,
                read_only_binds={**etc, **self.bootstrap.mount_map},
                labels={"zone": ZONE, "repo": "", "application": app.name, "version": app.version,
                        "ipv6": str(address), "started": f"{time.time():.3f}", "image": app.image,
                        "image_id": app.image_id},
            )
            container = runtime.create_and_start(self.client, args)
            try:
                network.wire_instance(container.attrs["State"]["Pid"], instance.name, net, address)
            except AgentError:
                runtime.remove(container)
                raise
        finally:
            app.starting = None
        log.info("started %s at %s", instance.name, address)
        return container

    @staticmethod
    def _status(container: Any) -> str:
        try:
            container.reload()
            return container.status
        except docker.errors.NotFound:
            return "removed"

    def _failed(self, app: App, container: Any, status: str, why: str = "") -> None:
        """Remove a dead or unhealthy instance and schedule its replacement (back-off for crash loops)."""
        lived = time.time() - float(runtime.label(container, "started") or 0)
        code = container.attrs.get("State", {}).get("ExitCode") if status != "removed" else None
        app.quick_failures = app.quick_failures + 1 if lived < STABLE_AFTER or why else 1
        delay = restart_delay(app.quick_failures)
        log.warning("instance %s %s (exit code %s) after %.0f s%s; replacing it in %.0f s",
                    container.name, status, code, lived, f" ({why})" if why else "", delay)
        runtime.remove(container)
        app.restart_at = time.monotonic() + delay
        state = self.state.load()
        state["restarts"] = int(state.get("restarts", 0)) + 1
        self.state.save(state)

    def supervise_once(self) -> None:
        for app in self.apps:
            self._supervise(app)
        if self.frontend.ensure():
            log.warning("the frontend (haproxy) had stopped: restarted")
        if self.tayga.daemon.ensure():
            log.warning("NAT64 (tayga) had stopped: restarted")
        self.refresh_destinations()
        if time.monotonic() - self.firewall_checked > FIREWALL_CHECK_INTERVAL:
            self.firewall_checked = time.monotonic()
            if not firewall.intact():
                log.warning("our firewall rules were removed from outside: applying them again")
                self.rules = {}
        self.apply_firewall()

    def _supervise(self, app: App) -> None:
        now = time.monotonic()
        if app.container is not None:
            status = self._status(app.container)
            if status != "running":
                dead, app.container = app.container, None
                self.publish()
                self._failed(app, dead, status)
        if app.pending is not None:
            candidate, deadline = app.pending
            status = self._status(candidate)
            if status != "running":
                app.pending = None
                self._failed(app, candidate, status)
            elif self.healthy(app, candidate):
                app.pending = None
                previous, app.container = app.container, candidate
                self.publish()
                log.info("%s is healthy and in the frontend", candidate.name)
                if previous is not None:
                    app.retiring.append((previous, now + DRAIN_SECONDS))
            elif now > deadline:
                app.pending = None
                self._failed(app, candidate, status, f"not healthy within {app.health_timeout} s")
        if app.container is None and app.pending is None and now >= app.restart_at:
            try:
                self.start_pending(app)
            except AgentError as exc:
                app.quick_failures += 1
                app.restart_at = time.monotonic() + restart_delay(app.quick_failures)
                log.error("%s; retrying", exc)
        for item in list(app.retiring):
            if now >= item[1]:
                app.retiring.remove(item)
                log.info("removing replaced instance %s", item[0].name)
                runtime.remove(item[0])

    def start_pending(self, app: App) -> None:
        app.pending = (self.start_instance(app), time.monotonic() + app.health_timeout)

    # -- configuration changes ------------------------------------------------------------------
    def reload_config(self) -> None:
        try:
            new = load_bootstrap(str(self.bootstrap_path))
            required_services(self.apps, new)
            check_mounts(self.apps, new)
            if new.frontend != self.bootstrap.frontend:
                self.check_frontend(new)
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
        if new.nat64 != old.nat64:
            log.info("bootstrap YAML changed: NAT64 %s, pool %s", new.nat64.prefix, new.nat64.ipv4_pool)
            self.tayga.stop()
            network.remove_link(nat64.TUN)
            self.tayga = Tayga(new.nat64, self.state.path)
            self.tayga.ensure()
        if new.frontend != old.frontend:
            log.info("bootstrap YAML changed: frontend settings")
            self.publish()
        if new.environment != old.environment or new.mounts != old.mounts or not same_addressing:
            log.info("bootstrap YAML changed (environment, mounts or addressing): replacing the instances")
            if not same_addressing:
                network.ensure_bridge(self.network())
            for app in self.apps:
                if not same_addressing and app.container is not None:  # unreachable now: no point in draining
                    runtime.remove(app.container)
                    app.container = None
                if app.pending is not None:
                    runtime.remove(app.pending[0])
                    app.pending = None
            self.refresh_destinations(force=True)
            for app in self.apps:
                self.start_pending(app)
            return
        self.refresh_destinations(force=True)
        if old_net and new_net:
            for container in [c for app in self.apps for c in app.live()]:
                pid = container.attrs["State"]["Pid"]
                if old_net.routes != new_net.routes:
                    network.update_routes(pid, old_net.routes, new_net.routes)
                    log.info("bootstrap YAML changed: routes updated in %s", container.name)
                if old_net.dns != new_net.dns:
                    self.state.write_etc_file(container.name, "resolv.conf", resolv_conf(new_net))
                    log.info("bootstrap YAML changed: resolv.conf updated in %s", container.name)

    # -- the loop -------------------------------------------------------------------------------
    def run(self) -> None:
        network.ensure_bridge(self.network())
        self.tayga.ensure()
        self.refresh_destinations(force=True)
        for app in self.apps:
            self.adopt(app)
        self.apply_firewall()
        self.publish()
        for app in self.apps:
            if app.container is not None and runtime.label(app.container, "image_id") not in ("", app.image_id):
                log.info("the image %s changed since %s started: starting a replacement", app.image,
                         app.container.name)
                self.start_pending(app)
        observer = Observer()
        observer.schedule(_ConfigChanged(self.bootstrap_path, self.config_changed),
                          str(self.bootstrap_path.resolve().parent))
        observer.start()
        log.info("supervising %s from %s", ", ".join(app.image for app in self.apps), self.bootstrap_path)
        try:
            while not self.stop.is_set():
                if self.config_changed.is_set():
                    self.stop.wait(0.3)  # let the editor finish writing
                    self.config_changed.clear()
                    try:
                        self.reload_config()
                    except AgentError as exc:
                        log.error("%s", exc)
                try:
                    self.supervise_once()
                except AgentError as exc:
                    log.error("%s", exc)
                busy = any(app.pending or app.retiring for app in self.apps)
                self.stop.wait(0.25 if busy else 1.0)
        finally:
            observer.stop()
            observer.join(5)
        log.info("agent stopped; instances, NAT64 and the frontend keep running and are re-adopted on the next start")


def teardown(client: docker.DockerClient, state_dir: Path) -> list[str]:
    """Remove every container, daemon, link, rule and file of ours; nothing else."""
    removed = []
    if frontend.Frontend(state_dir).stop():
        removed.append("haproxy (frontend)")
    for container in runtime.our_containers(client):
        runtime.remove(container, timeout=5)
        removed.append(f"container {container.name}")
    if Tayga(Nat64(), state_dir).stop():
        removed.append("tayga (NAT64)")
    if network.remove_link(nat64.TUN):
        removed.append(f"link {nat64.TUN}")
    removed += firewall.remove()
    removed += [f"link {name}" for name in network.remove_veths()]
    if network.remove_link(network.BRIDGE):
        removed.append(f"link {network.BRIDGE}")
    state = StateDir(state_dir)
    if state.file.exists():
        state.file.unlink()
    for directory in ("instances", "haproxy", "tayga"):
        if (state.path / directory).is_dir():
            shutil.rmtree(state.path / directory)
    return removed
