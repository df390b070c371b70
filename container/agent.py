"""The long-running agent: the loop that applies the plan (`plan.py`) and the supervision rules
(`supervision.py`) to the host, through one gateway per system (Docker: `runtime.py`, netlink:
`network.py`, Tayga: `nat64.py`, iptables: `firewall.py`, HAProxy: `frontend.py`, volumes:
`volume.py`).

Everything is checked before the first side effect. Then: the bridge, NAT64 and the egress firewall,
one instance per image, its network, the frontend, and a loop that replaces dead and hung instances,
restarts Tayga and HAProxy if they die, re-resolves external services, re-adopts instances after an
agent restart and applies changes of the bootstrap YAML by comparing plans. A new instance joins the
frontend only once healthy; a replaced one leaves it first and is removed after it had time to finish.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from container import (
    certificates,
    checks,
    firewall,
    frontend,
    metrics,
    nat64,
    network,
    plan,
    runtime,
    supervision,
    volume,
)
from container.bootstrap import Bootstrap, Network, load_bootstrap
from container.capacity import Capacity, check_fits, host_capacity
from container.errors import AgentError
from container.image import load_application, manifest_from_image
from container.nat64 import Destination, Tayga
from container.state import StateDir
from container.supervision import Instance, Pending, Retiring, Supervised

log = logging.getLogger("container")

ZONE = "bootstrap"
RESOLVE_INTERVAL = 60.0  # external hosts are resolved again this often
FIREWALL_CHECK_INTERVAL = 10.0  # our jumps in the built-in chains are checked this often
MAX_UNEXPECTED = 10  # rounds in a row a step may fail with the same bug before the agent exits with it


class _ConfigChanged(FileSystemEventHandler):
    def __init__(self, path: Path, flag: threading.Event):
        self.path = path.resolve()
        self.flag = flag

    def on_any_event(self, event: FileSystemEvent) -> None:
        paths = {event.src_path, getattr(event, "dest_path", "")}
        if any(p and Path(str(p)).resolve() == self.path for p in paths):
            self.flag.set()


class Agent:
    def __init__(self, images: list[str], bootstrap_path: Path, state_dir: Path, client: Any):
        self.images = images
        names = [runtime.app_from_image(image)[0] for image in images]
        for name in names:
            if names.count(name) > 1:
                raise AgentError(f"application {name!r} is given twice; one instance per application")
        self.bootstrap_path = bootstrap_path
        self.client = client
        self.state = StateDir(state_dir)
        self.stop = threading.Event()
        self.config_changed = threading.Event()
        self.apps: tuple[plan.Application, ...] = ()
        self.supervised: list[Supervised] = []
        self.bootstrap: Bootstrap
        self.plan: plan.Plan
        self.capacity: Capacity
        self.tayga: Tayga
        self.frontend = frontend.Frontend(state_dir)
        self.destinations: dict[str, tuple[Destination, ...]] = {}  # application → its external services
        self.resolved_at = -RESOLVE_INTERVAL
        self.rules: dict[str, str] = {}
        self.firewall_checked = time.monotonic()
        self.certs = certificates.Store(state_dir)
        self.cert_thread: threading.Thread | None = None
        self.cert_outcome: str | None = None  # the error of the attempt that just ended, "" for success
        self.cert_next_check = 0.0
        self.cert_failures = 0
        self.cert_synced: float | None = None  # mtime of the PEM last made sure to be served
        self.unexpected: dict[str, tuple[int, str]] = {}  # step → (rounds in a row, error) of unexpected failures

    # -- checks, before any side effect ------------------------------------------------------
    def load(self) -> None:
        self.bootstrap = load_bootstrap(str(self.bootstrap_path))
        self.apps = tuple(load_application(self.client, image) for image in self.images)
        self.supervised = [Supervised(app, runtime.image_info(self.client, app.image).id) for app in self.apps]
        plan.check_services(self.apps, self.bootstrap)
        checks.check_mounts([app.manifest for app in self.apps], self.bootstrap)
        tls = self.bootstrap.frontend.tls
        checks.check_host_programs(any(app.manifest.volumes for app in self.apps), bool(tls and tls.acme))
        checks.check_tls(self.bootstrap)
        self.capacity = host_capacity()
        ours = {app.name for app in self.apps}
        in_use = [r for r in (self._resources_of(i) for i in runtime.instances(self.client)
                              if i.running and i.application not in ours) if r]
        for app in self.apps:
            check_fits(app.name, app.manifest.resources, in_use, self.capacity)
            in_use.append(app.manifest.resources)
        if self.bootstrap.metrics.agent:
            checks.check_port_free(*self.bootstrap.metrics.agent, "the agent's metrics", "metrics.agent")
        net = self.bootstrap.network or network.generated_network(b"check")  # nothing is written while checking
        self.check_frontend(self.bootstrap, net)
        # iptables must accept our kind of rules (conntrack, comment, REJECT, NAT) before anything is set up.
        firewall.check_rules(firewall.render_rules(net, self.bootstrap.nat64, ()))
        self.tayga = Tayga(self.bootstrap.nat64, self.state.path)

    def check_frontend(self, bootstrap: Bootstrap, net: Network) -> None:
        """Ports distinct and free (unless our HAProxy holds them), and a configuration HAProxy accepts."""
        services = plan.frontend_services(self.apps, bootstrap.frontend, net, {})
        plan.check_frontend_ports(services, bootstrap.source)
        if self.frontend.daemon.pid() is None:
            for service in services:
                if service.port:
                    checks.check_port_free(service.bind, service.port, service.name)
            if bootstrap.metrics.haproxy:
                checks.check_port_free(*bootstrap.metrics.haproxy, "HAProxy's metrics", "metrics.haproxy")
            tls = bootstrap.frontend.tls
            if tls is not None:
                checks.check_port_free(bootstrap.frontend.bind, tls.port, "HTTPS", "frontend.tls.port")
        tls = bootstrap.frontend.tls
        if tls is not None and tls.acme and not (self.cert_thread and self.cert_thread.is_alive()):
            checks.check_port_free(ipaddress.IPv4Address("127.0.0.1"), tls.challenge_port,
                                   "the ACME client's challenge answers", "frontend.tls.challenge_port")
        frontend.check_config(self.frontend.render(services, bootstrap.metrics.haproxy))

    def _resources_of(self, instance: Instance) -> Any:
        try:
            return manifest_from_image(self.client, instance.image).resources
        except AgentError:
            return None

    def generated_network(self) -> Network:
        """A stable ULA /64 when the YAML has no network: its seed is kept in the state dir."""
        state = self.state.load()
        seed = state.get("generated_network_seed")
        if not seed:
            seed = network.random16().to_bytes(2, "big").hex() + str(time.time())
            state["generated_network_seed"] = seed
            self.state.save(state)
        return network.generated_network(seed.encode())

    def network(self) -> Network:
        return self.plan.network

    # -- services: NAT64, firewall, frontend ---------------------------------------------------
    def refresh_destinations(self, force: bool = False) -> None:
        """Resolve the external services; on a change, update the firewall and the instances' /etc/hosts."""
        if not force and time.monotonic() - self.resolved_at < RESOLVE_INTERVAL:
            return
        self.resolved_at = time.monotonic()
        found = {app.name: nat64.destinations(plan.egress_manifest(app, self.bootstrap),
                                              plan.external_services(self.apps, app, self.bootstrap),
                                              self.bootstrap.nat64) for app in self.apps}
        if found == self.destinations and not force:
            return
        for d in {d for ds in found.values() for d in ds} - {d for ds in self.destinations.values() for d in ds}:
            log.info("%s: %s → %s (as %s:%d)", d.service, d.external_host,
                     ", ".join(map(str, d.ipv4)) or "unresolved", d.local_hostname, d.local_port)
        self.destinations = found
        self.apply_firewall()
        for sup in self.supervised:
            for instance in sup.live():
                self.state.write_etc_file(instance.name, "hosts", self._hosts(sup.app, instance.address))

    def apply_firewall(self) -> None:
        """Rules for the current instance addresses; applied only when they changed."""
        addresses = {sup.app.name: sup.addresses() for sup in self.supervised}
        rules = plan.firewall_rules(self.apps, self.network(), self.bootstrap.nat64, addresses, self.destinations)
        if rules != self.rules:
            firewall.apply(rules)
            self.rules = rules

    def _hosts(self, app: plan.Application, address: ipaddress.IPv6Address) -> str:
        return plan.instance_hosts(self.apps, app, address, self.network(), self.destinations.get(app.name, ()))

    def publish(self) -> None:
        if any(app.manifest.provides for app in self.apps):
            serving = {sup.app.name: plan.Serving(sup.serving.name, sup.serving.address)
                       for sup in self.supervised if sup.serving is not None}
            tls = self.bootstrap.frontend.tls
            pem = self.certs.pem if tls is not None and self.certs.pem.exists() else None
            pem_domains: tuple[str, ...] = ()
            if pem is not None and tls is not None and not tls.domains:  # redirect to the certificate's names
                pem_domains = certificates.redirect_domains(pem)
            self.frontend.apply(plan.frontend_services(self.apps, self.bootstrap.frontend, self.network(), serving,
                                                       pem, pem_domains), self.bootstrap.metrics.haproxy)

    def healthy(self, app: plan.Application, instance: Instance) -> bool:
        return all(checks.answers_health(str(instance.address), p.local_port, p.health_check_path)
                   for p in app.manifest.provides)

    # -- HTTPS certificates --------------------------------------------------------------------
    def tend_certificates(self) -> None:
        """Obtain or renew the certificate when due (lego in a thread of its own, so supervision goes on),
        with back-off after failures; serve a new one without a reload."""
        tls = self.bootstrap.frontend.tls
        if tls is None:
            return
        now = time.monotonic()
        if not tls.acme:
            if now >= self.cert_next_check:  # the administrator's file: served within 10 s of a change
                self.cert_next_check = now + 10
                pem = certificates.administrator_pem(tls)
                if not self.certs.pem.exists() or self.certs.pem.read_bytes() != pem:
                    self.certs.ensure()
                    self.certs.install(pem)
                    log.info("serving the certificate from %s", tls.certificate)
        elif self.cert_thread is not None and not self.cert_thread.is_alive():
            self.cert_thread = None
            if self.cert_outcome:
                self.cert_failures += 1
                delay = certificates.retry_delay(self.cert_failures)
                self.cert_next_check = now + delay
                log.error("certificate: %s; the current certificate stays; trying again in %.0f s",
                          self.cert_outcome, delay)
            else:
                self.cert_failures, self.cert_next_check = 0, now + certificates.CHECK_INTERVAL
        elif self.cert_thread is None and now >= self.cert_next_check:
            self.cert_next_check = now + certificates.CHECK_INTERVAL
            if certificates.due(self.certs.current(), tls, time.time()) is not None:
                self.cert_thread = threading.Thread(target=self._obtain, args=(tls,), name="acme", daemon=True)
                self.cert_thread.start()
        if self.certs.pem.exists():
            mtime = self.certs.pem.stat().st_mtime
            if mtime != self.cert_synced:  # a new certificate (not on every round of the loop)
                self.publish()  # the HTTPS listener appears with the first certificate
                certificates.sync_frontend(self.certs, self.frontend.dir / "admin.sock")
                self.cert_synced = mtime

    def _obtain(self, tls) -> None:
        try:
            if self.bootstrap.frontend.port and not certificates.challenge_route_ready(self.bootstrap.frontend.port):
                log.warning("the frontend does not route ACME challenges on port %d yet; asking the CA anyway",
                            self.bootstrap.frontend.port)
            certificates.obtain(tls, self.certs)
            self.cert_outcome = ""
        except AgentError as exc:
            self.cert_outcome = str(exc)

    # -- instances ----------------------------------------------------------------------------
    def adopt(self, sup: Supervised) -> None:
        """Take over a running instance left by an earlier agent (the newest healthy one); remove the rest.

        The earlier agent may have been killed while it wired the instance (its network is finished here) or
        before the instance was healthy: one younger than its start period gets the rest of it, as a pending
        instance, instead of the 10 s of liveness of one that served already."""
        running = []
        for instance in runtime.instances(self.client, ZONE):
            if instance.application != sup.app.name:
                continue
            if instance.running:
                running.append((instance, self.healthy(sup.app, instance)))
            else:
                log.info("removing stopped instance %s", instance.name)
                runtime.remove(self.client, instance.name)
        kept, duplicates = supervision.adoption(running)
        for duplicate in duplicates:
            log.warning("removing duplicate instance %s", duplicate.name)
            runtime.remove(self.client, duplicate.name)
        if kept is None:
            return
        missing = network.ensure_wired(kept.pid, kept.name, self.network(), kept.address)
        if missing:
            log.info("re-wired the network of %s: it lacked %s", kept.name, ", ".join(missing))
        self.state.write_etc_file(kept.name, "hosts", self._hosts(sup.app, kept.address))
        start_left = supervision.start_period_left(kept, sup.app.health_timeout, time.time())
        if start_left > 0 and not self.healthy(sup.app, kept):
            sup.pending = Pending(kept, time.monotonic() + start_left)
            log.info("re-adopted running instance %s (%s), still starting: %.0f s left to become healthy",
                     kept.name, kept.address, start_left)
        else:
            sup.serving = kept
            log.info("re-adopted running instance %s (%s)", kept.name, kept.address)

    def start_instance(self, sup: Supervised) -> Instance:
        app, net = sup.app, self.network()
        instance_id = runtime.InstanceId(ZONE, "", app.name, app.version, f"{network.random16():04x}")
        address = network.instance_address(net.subnet, network.host_ipv4(), network.random16())
        sup.starting = address
        try:
            self.apply_firewall()  # its services are open before it runs
            name = instance_id.name
            etc = {
                "/etc/resolv.conf": str(self.state.write_etc_file(name, "resolv.conf", plan.resolv_conf(net))),
                "/etc/hosts": str(self.state.write_etc_file(name, "hosts", self._hosts(app, address))),
            }
            image = runtime.image_info(self.client, app.image)
            sup.image_id = image.id
            uid = runtime.run_user(image.user)[1]
            volumes = {fs.mountpoint: str(volume.ensure(self.state.path, app.name, fs, uid))
                       for fs in app.manifest.volumes}
            args = runtime.container_args(
                image=app.image, instance=instance_id, manifest=app.manifest, environment=self.bootstrap.env,
                image_user=image.user, capacity=self.capacity,
                read_only_binds={**etc, **self.bootstrap.mount_map}, read_write_binds=volumes,
                image_healthcheck=image.healthcheck,
                labels={"zone": ZONE, "repo": "", "application": app.name, "version": app.version,
                        "ipv6": str(address), "started": f"{time.time():.3f}", "image": app.image,
                        "image_id": image.id},
            )
            instance = runtime.start(self.client, args)
            try:
                network.wire_instance(instance.pid, name, net, address)
            except AgentError:
                runtime.remove(self.client, name)
                raise
        finally:
            sup.starting = None
        log.info("started %s at %s", name, address)
        return instance

    def start_pending(self, sup: Supervised) -> None:
        sup.pending = Pending(self.start_instance(sup), time.monotonic() + sup.app.health_timeout)

    def _failed(self, sup: Supervised, instance: Instance, status: str, why: str = "") -> None:
        """Remove a dead or unhealthy instance and schedule its replacement (back-off for crash loops)."""
        _, code = runtime.state(self.client, instance.name)
        lived = time.time() - instance.started
        sup.quick_failures, delay = supervision.after_failure(sup.quick_failures, lived, bool(why))
        log.warning("instance %s %s (exit code %s) after %.0f s%s; replacing it in %.0f s",
                    instance.name, status, code, lived, f" ({why})" if why else "", delay)
        runtime.remove(self.client, instance.name)
        sup.restart_at = time.monotonic() + delay
        self.state.save(supervision.count_replacement(self.state.load(), sup.app.name, "crash"))

    def _check_liveness(self, sup: Supervised, now: float) -> None:
        """Replace the instance in the frontend when it stopped answering its health check; it keeps its
        place until the replacement is healthy (HAProxy stops sending it requests meanwhile)."""
        assert sup.serving is not None
        sup.checked_at = now
        sup.unhealthy_since, replace = supervision.liveness(sup.unhealthy_since, self.healthy(sup.app, sup.serving),
                                                            now)
        if not replace:
            return
        log.warning("instance %s has not answered its health check for %.0f s; starting a replacement",
                    sup.serving.name, now - (sup.unhealthy_since or now))
        self.state.save(supervision.count_replacement(self.state.load(), sup.app.name, "unhealthy"))
        try:
            self.start_pending(sup)
        except AgentError as exc:
            log.error("%s; retrying", exc)

    def _supervise(self, sup: Supervised) -> None:
        now = time.monotonic()
        if sup.serving is not None:
            status, _ = runtime.state(self.client, sup.serving.name)
            if status != "running":
                dead, sup.serving, sup.unhealthy_since = sup.serving, None, None
                self.publish()
                self._failed(sup, dead, status)
            elif sup.pending is None and now - sup.checked_at >= supervision.HEALTH_INTERVAL:
                self._check_liveness(sup, now)
        if sup.pending is not None:
            candidate = sup.pending.instance
            status, _ = runtime.state(self.client, candidate.name)
            if status != "running":
                sup.pending = None
                self._failed(sup, candidate, status)
            elif self.healthy(sup.app, candidate):
                sup.pending, sup.unhealthy_since = None, None
                previous, sup.serving = sup.serving, candidate
                self.publish()
                log.info("%s is healthy and in the frontend", candidate.name)
                if previous is not None:
                    sup.retiring += (Retiring(previous, now + supervision.DRAIN_SECONDS),)
            elif now > sup.pending.deadline:
                sup.pending = None
                self._failed(sup, candidate, status, f"not healthy within {sup.app.health_timeout} s")
        if sup.serving is None and sup.pending is None and now >= sup.restart_at:
            try:
                self.start_pending(sup)
            except AgentError as exc:
                sup.quick_failures += 1
                sup.restart_at = time.monotonic() + supervision.restart_delay(sup.quick_failures)
                log.error("%s; retrying", exc)
        remove, sup.retiring = supervision.due(sup.retiring, now)
        for item in remove:
            log.info("removing replaced instance %s", item.instance.name)
            runtime.remove(self.client, item.instance.name)

    def supervise_once(self) -> None:
        for sup in self.supervised:
            self._supervise(sup)
        if self.frontend.ensure():
            log.warning("the frontend (haproxy) had stopped: restarted")
        if self.tayga.daemon.ensure():
            log.warning("NAT64 (tayga) had stopped: restarted")
        self.refresh_destinations()
        self._guarded(self.tend_certificates)
        if time.monotonic() - self.firewall_checked > FIREWALL_CHECK_INTERVAL:
            self.firewall_checked = time.monotonic()
            if not firewall.intact():
                log.warning("our firewall rules were removed from outside: applying them again")
                self.rules = {}
        self.apply_firewall()

    # -- configuration changes ------------------------------------------------------------------
    def reload_config(self) -> None:
        try:
            new = load_bootstrap(str(self.bootstrap_path))
            plan.check_services(self.apps, new)
            checks.check_mounts([app.manifest for app in self.apps], new)
            new_plan = plan.make_plan(new, new.network or self.generated_network())
            if new.frontend != self.bootstrap.frontend:
                self.check_frontend(new, new_plan.network)
        except AgentError as exc:
            log.error("ignoring the changed bootstrap YAML: %s; the running configuration stays", exc)
            return
        old_frontend = self.bootstrap.frontend
        old_plan, self.bootstrap, self.plan = self.plan, new, new_plan
        change = plan.changes(old_plan, new_plan)
        if not change.any:
            return
        if change.nat64:
            log.info("bootstrap YAML changed: NAT64 %s, pool %s", new.nat64.prefix, new.nat64.ipv4_pool)
            self.tayga.stop()
            network.remove_link(nat64.TUN)
            self.tayga = Tayga(new.nat64, self.state.path)
            self.tayga.ensure()
        if change.frontend:
            log.info("bootstrap YAML changed: frontend settings")
            if new.frontend.tls != old_frontend.tls:
                self.cert_next_check, self.cert_failures = 0.0, 0
                if new.frontend.tls is not None:
                    self.certs.save_settings(new.frontend.tls)
            self.publish()
        if change.replace_instances:
            log.info("bootstrap YAML changed (environment, mounts or addressing): replacing the instances")
            if change.readdress:
                network.ensure_bridge(self.network())
            for sup in self.supervised:
                if change.readdress and sup.serving is not None:  # unreachable now: no point in draining
                    runtime.remove(self.client, sup.serving.name)
                    sup.serving = None
                if sup.pending is not None:
                    runtime.remove(self.client, sup.pending.instance.name)
                    sup.pending = None
            self.refresh_destinations(force=True)
            for sup in self.supervised:
                self.state.save(supervision.count_replacement(self.state.load(), sup.app.name, "config"))
                self.start_pending(sup)
            return
        self.refresh_destinations(force=True)
        for instance in [i for sup in self.supervised for i in sup.live()]:
            if change.routes:
                network.update_routes(instance.pid, old_plan.network.routes, new_plan.network.routes)
                log.info("bootstrap YAML changed: routes updated in %s", instance.name)
            if change.dns:
                self.state.write_etc_file(instance.name, "resolv.conf", plan.resolv_conf(new_plan.network))
                log.info("bootstrap YAML changed: resolv.conf updated in %s", instance.name)

    # -- the loop -------------------------------------------------------------------------------
    def run(self) -> None:
        self.plan = plan.make_plan(self.bootstrap, self.bootstrap.network or self.generated_network())
        network.ensure_bridge(self.network())
        if self.bootstrap.frontend.tls is not None:
            self.certs.save_settings(self.bootstrap.frontend.tls)  # for --renew and -i certificates
        self.tayga.ensure()
        self.refresh_destinations(force=True)
        for sup in self.supervised:
            self.adopt(sup)
        self.apply_firewall()
        self.publish()
        for sup in self.supervised:
            adopted = sup.serving or (sup.pending.instance if sup.pending else None)
            if adopted is not None and adopted.image_id not in ("", sup.image_id):
                log.info("the image %s changed since %s started: starting a replacement", sup.app.image,
                         adopted.name)
                self.state.save(supervision.count_replacement(self.state.load(), sup.app.name, "image"))
                if sup.pending is not None:  # still starting: nothing is served by it yet
                    runtime.remove(self.client, sup.pending.instance.name)
                    sup.pending = None
                self.start_pending(sup)
        if self.bootstrap.metrics.agent:
            metrics.serve(*self.bootstrap.metrics.agent,
                          metrics.AgentCollector(self.metrics_snapshot, self.state.path / "tayga" / "data"))
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
                    self._guarded(self.reload_config)
                self._guarded(self.supervise_once)
                busy = any(sup.pending or sup.retiring for sup in self.supervised)
                self.stop.wait(0.25 if busy else 1.0)
        finally:
            observer.stop()
            observer.join(5)
        log.info("agent stopped; instances, NAT64 and the frontend keep running and are re-adopted on the next start")

    def metrics_snapshot(self) -> dict[str, Any]:
        """For the metrics thread: the instances with their states, and the replacement counters."""
        instances = []
        for sup in list(self.supervised):
            instances += [(sup.serving, "serving")] if sup.serving else []
            instances += [(sup.pending.instance, "pending")] if sup.pending else []
            instances += [(item.instance, "retiring") for item in sup.retiring]
        current = self.certs.current() if self.bootstrap.frontend.tls is not None else None
        return {"instances": instances, "replacements": self.state.load().get("replacements", {}),
                "certificate": current, "certificate_failures": self.cert_failures}

    def _guarded(self, step: Callable[[], None]) -> None:
        """One step of the loop. Expected errors (the error tree) are one line and the next round tries again.
        Anything else is logged with its traceback (once; repeats of the same failure as one line); a failure
        of the operating system or an engine (OSError) is tried again forever, but a bug that fails the same
        step MAX_UNEXPECTED rounds in a row ends the agent with it (exit status 1: its supervisor starts a
        fresh one, which re-adopts the instances)."""
        name = getattr(step, "__name__", repr(step))
        try:
            step()
        except AgentError as exc:
            log.error("%s", exc)
            return
        except Exception as exc:  # noqa: BLE001 - logged with its traceback; a repeated bug ends the agent
            count, last = self.unexpected.get(name, (0, ""))
            text = f"{type(exc).__name__}: {exc}"
            count = count + 1 if text == last else 1
            self.unexpected[name] = (count, text)
            if count == 1:
                log.exception("unexpected error in %s; the next round tries again", name)
            else:
                log.error("unexpected error in %s again (%d rounds in a row): %s", name, count, text)
            if count >= MAX_UNEXPECTED and not isinstance(exc, OSError):
                log.critical("%s failed %d rounds in a row with the same error: stopping the agent", name, count)
                raise
            return
        self.unexpected.pop(name, None)
