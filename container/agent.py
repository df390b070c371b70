"""The long-running agent: the loop that applies the plan (`plan.py`) and the supervision rules
(`supervision.py`) to the host, through one gateway per system (Docker: `runtime.py`, netlink:
`network.py`, Tayga: `nat64.py`, iptables: `firewall.py`, HAProxy: `frontend.py`, volumes:
`volume.py`).

Everything is checked before the first side effect (`preflight.py`). Then: the bridge, NAT64 and the
egress firewall, one instance per image (or per site), its network, the frontend, and a loop that
replaces dead and hung instances (`instances.py`), restarts Tayga and HAProxy if they die, re-resolves
external services, keeps the certificates current (`tls_keeper.py`), re-adopts instances after an agent
restart and applies changes of the bootstrap YAML by comparing plans (`reload.py`). A new instance joins
the frontend only once healthy; a replaced one leaves it first and is removed after it had time to finish.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from container import (
    certificates,
    checks,
    firewall,
    frontend,
    instances,
    metrics,
    nat64,
    network,
    plan,
    preflight,
    runtime,
    supervision,
    swaps,
)
from container import reload as reloading
from container.capacity import Capacity
from container.errors import AgentError
from container.instances import Orphans, Supervised
from container.nat64 import Tayga
from container.records import Application, Destination, Instance
from container.settings import Bootstrap, Network
from container.state import StateDir
from container.tls_keeper import Keepers

log = logging.getLogger("container")

ZONE = instances.ZONE
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
    """The agent's state and its loop. Only the agent writes its fields; the modules it delegates to read
    them through a protocol (`instances.Host`, `reload.Reloading`) or return what it keeps."""

    def __init__(self, images: list[str], bootstrap_path: Path, state_dir: Path, client: docker.DockerClient):
        self.images = images
        names = [runtime.app_from_image(image)[0] for image in images]
        for name in names:
            if names.count(name) > 1:
                raise AgentError(f"application {name!r} is given twice; one instance per application")
        self.bootstrap_path = bootstrap_path
        self.client = client
        self.exits = runtime.Exits(client)  # whether instances run, without asking Docker every round
        self.state = StateDir(state_dir)
        self.stop = threading.Event()
        self.config_changed = threading.Event()
        self.images_apps: tuple[Application, ...] = ()  # the images given, one application each
        self.apps: tuple[Application, ...] = ()  # what runs: the images, or with sites each site
        self.supervised: list[Supervised] = []
        self.orphans = Orphans()  # instances of applications this agent ran before and runs no more
        self.bootstrap: Bootstrap
        self.in_force: plan.InForce
        self.capacity: Capacity
        self.tayga: Tayga
        self.frontend = frontend.Frontend(state_dir)
        self.destinations: dict[str, tuple[Destination, ...]] = {}  # application → its external services
        self.resolved_at = -RESOLVE_INTERVAL
        self.rules: dict[str, str] = {}
        self.firewall_checked = time.monotonic()
        self.keepers = Keepers(state_dir)
        self.swap_watch = swaps.SwapWatch(self.frontend.forget)  # the cache forgets at a swap (swaps.py)
        self.unexpected: dict[str, tuple[int, str]] = {}  # step → (rounds in a row, error) of unexpected failures
        self.loaded_stamp: tuple[int, int, int] | None = None  # the bootstrap YAML as loaded (preflight.py)
        self.rounds = 0  # rounds of the loop finished (a metric: tests wait for rounds, not for seconds)

    # -- checks, before any side effect ------------------------------------------------------
    def load(self) -> None:
        loaded = preflight.load(self.bootstrap_path, self.images, self.client, self.state, self.frontend,
                                self.keepers)
        self.loaded_stamp, self.bootstrap = loaded.stamp, loaded.bootstrap
        self.images_apps, self.apps, self.supervised = loaded.images_apps, loaded.apps, loaded.supervised
        self.capacity, self.tayga = loaded.capacity, loaded.tayga

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
        return self.in_force.network

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
                self.state.write_etc_file(instance.name, "hosts", self.etc_hosts(sup.app, instance.address))

    def apply_firewall(self) -> None:
        """Rules for the current instance addresses; applied only when they changed."""
        addresses = {sup.app.name: sup.addresses() for sup in self.supervised}
        rules = plan.firewall_rules(self.apps, self.network(), self.bootstrap.nat64, addresses, self.destinations)
        if rules != self.rules:
            firewall.apply(rules)
            self.rules = rules

    def etc_hosts(self, app: Application, address: ipaddress.IPv6Address) -> str:
        return plan.instance_hosts(self.apps, app, address, self.network(), self.destinations.get(app.name, ()))

    def publish(self) -> None:
        if any(app.manifest.provides for app in self.apps):
            serving = {sup.app.name: plan.Serving(sup.serving.name, sup.serving.address)
                       for sup in self.supervised if sup.serving is not None}
            tls = self.bootstrap.frontend.tls
            pem, site_pems = self.keepers.pems(tuple(site.name for site in self.bootstrap.sites))
            pem_domains: tuple[str, ...] = ()
            if pem is not None and tls is not None and not tls.domains:  # redirect to the certificate's names
                pem_domains = certificates.redirect_domains(pem)
            preview_pems = {site.name: found for site in self.bootstrap.sites if site.previews
                            and (found := self.keepers.pem_of(site.previews.certificate_key)) is not None}
            self.frontend.apply(plan.frontend_services(self.apps, self.bootstrap.frontend, self.network(), serving,
                                                       pem, pem_domains, site_pems, preview_pems),
                                self.bootstrap.metrics.haproxy)

    def healthy(self, app: Application, instance: Instance) -> bool:
        return all(checks.answers_health(str(instance.address), p.local_port, p.health_check_path)
                   for p in app.manifest.provides)

    # -- HTTPS certificates (tls_keeper.py) -----------------------------------------------------
    def configure_certificates(self) -> None:
        self.keepers.configure(self.bootstrap.frontend.tls,
                               {site.name: (site.domains, site.email) for site in self.bootstrap.sites},
                               {site.previews.certificate_key: (site.previews.domain, site.previews.certificate)
                                for site in self.bootstrap.sites if site.previews and site.previews.certificate})

    def tend_certificates(self) -> None:
        """Obtain or renew certificates when due; serve a new one (the first one of a site: with a reload
        that adds it to the HTTPS listener; later ones through HAProxy's runtime API, without)."""
        changed = self.keepers.tend(self.bootstrap.frontend.port)
        if changed:
            self.publish()
            for keeper in changed:
                certificates.sync_frontend(keeper.store, self.frontend.dir / "admin.sock")

    # -- instances ----------------------------------------------------------------------------
    def supervise_once(self) -> None:
        self._guarded(self.watch_swaps)  # first, before the slower work: a swap inotify missed is told at once
        for sup in self.supervised:
            instances.supervise(self, sup)
        self.exits.keep_only({instance.name for sup in self.supervised for instance in sup.live()})
        if self.frontend.ensure():
            log.warning("the frontend (haproxy) had stopped: restarted")
        if self.tayga.daemon.ensure():
            log.warning("NAT64 (tayga) had stopped: restarted")
        self.refresh_destinations()
        instances.remove_orphans(self)
        self._guarded(self.tend_certificates)
        if time.monotonic() - self.firewall_checked > FIREWALL_CHECK_INTERVAL:
            self.firewall_checked = time.monotonic()
            if not firewall.intact():
                log.warning("our firewall rules were removed from outside: applying them again")
                self.rules = {}
        self.apply_firewall()

    def watch_swaps(self) -> None:
        """The release links of the instances watched on the host: a swap empties their cache at once."""
        self.swap_watch.sync(swaps.links(self.apps, self.state.path))

    # -- configuration changes (reload.py) -----------------------------------------------------
    def reload_config(self) -> None:
        """A changed bootstrap YAML, checked whole first (reload.py); then the agent takes it and applies only
        what changed: NAT64, the sites, the certificates and the frontend, then the running instances."""
        new = reloading.check(self)
        if new is None:
            return
        old_settings = self.in_force
        self.bootstrap, self.in_force = new.bootstrap, new.in_force
        change = plan.changes(old_settings, new.in_force)
        if not change.any:
            return
        if change.nat64:
            reloading.stop_nat64(self.tayga, new.bootstrap.nat64)
            self.tayga = Tayga(new.bootstrap.nat64, self.state.path)
            self.tayga.ensure()
        fresh = self.apply_sites(new.apps, change)
        if change.frontend:
            log.info("bootstrap YAML changed: frontend settings")
        self.configure_certificates()
        self.publish()  # only a changed frontend configuration reloads HAProxy
        if change.replace_instances:
            reloading.replace_all(self, change, fresh)
            return
        self.refresh_destinations(force=True)
        reloading.update_instances(self, old_settings, new.in_force, change)

    def apply_sites(self, apps: tuple[Application, ...], change: plan.Changes) -> set[str]:
        """Sites (or applications) no longer configured retire, new ones are supervised, changed ones get
        their new settings; then `reload.start_sites` starts what must start."""
        self.apps = apps
        by_name = {app.name: app for app in apps}
        for sup in [sup for sup in self.supervised if sup.app.name not in by_name]:
            log.info("bootstrap YAML changed: %s %s removed", "site" if sup.app.site else "application", sup.app.name)
            self.supervised.remove(sup)  # the next publish takes it out of the frontend
            instances.retire(self, sup)
        for sup in self.supervised:
            sup.configure(by_name[sup.app.name])
        running = {sup.app.name for sup in self.supervised}
        added = [Supervised(app, runtime.image_info(self.client, app.image).id) for app in apps
                 if app.name not in running]
        self.supervised += added
        return reloading.start_sites(self, added, change)

    # -- the loop -------------------------------------------------------------------------------
    def run(self) -> None:
        self.in_force = plan.in_force(self.bootstrap, self.bootstrap.network or self.generated_network())
        network.ensure_bridge(self.network())
        self.configure_certificates()  # their settings saved for --renew and -i certificates
        instances.find_orphans(self)
        self.tayga.ensure()
        self.refresh_destinations(force=True)
        for sup in self.supervised:
            instances.adopt(self, sup)
        instances.bridge_from_before_sites(self)
        self.apply_firewall()
        self.publish()
        instances.remove_orphans(self, force=True)
        instances.remember_applications(self)
        for sup in self.supervised:
            adopted = sup.serving or (sup.pending.instance if sup.pending else None)
            if adopted is not None and adopted.image_id != sup.image_id:
                log.info("the image %s changed since %s started: starting a replacement", sup.app.image,
                         adopted.name)
                self.state.save(supervision.count_replacement(self.state.load(), sup.app.name, "image"))
                instances.remove_pending(self, sup)  # still starting: nothing is served by it yet
                instances.start_pending(self, sup)
        if self.bootstrap.metrics.agent:
            metrics.serve(*self.bootstrap.metrics.agent,
                          metrics.AgentCollector(self.metrics_snapshot, self.state.path / "tayga" / "data"))
        observer = Observer()
        observer.schedule(_ConfigChanged(self.bootstrap_path, self.config_changed),
                          str(self.bootstrap_path.resolve().parent))
        observer.start()
        if preflight.file_stamp(self.bootstrap_path) != self.loaded_stamp:  # changed while the agent started
            self.config_changed.set()
        log.info("supervising %s from %s", ", ".join(
            f"site {app.name}" if app.site else app.image for app in self.apps), self.bootstrap_path)
        try:
            while not self.stop.is_set():
                if self.config_changed.is_set():
                    self.stop.wait(0.3)  # let the editor finish writing
                    self.config_changed.clear()
                    self._guarded(self.reload_config)
                self._guarded(self.supervise_once)
                self.rounds += 1
                busy = any(sup.pending or sup.retiring for sup in self.supervised)
                self.stop.wait(0.25 if busy else 1.0)
        finally:
            observer.stop()
            observer.join(5)
            self.swap_watch.stop()
        log.info("agent stopped; instances, NAT64 and the frontend keep running and are re-adopted on the next start")

    def metrics_snapshot(self) -> dict[str, Any]:
        """For the metrics thread: the instances with their states, and the replacement counters."""
        found = []
        for sup in list(self.supervised):
            found += [(sup.serving, "serving")] if sup.serving else []
            found += [(sup.pending.instance, "pending")] if sup.pending else []
            found += [(item.instance, "retiring") for item in sup.retiring]
        certs = self.keepers.snapshot()
        current = next((cert for cert, _ in certs.values() if cert is not None), None)
        return {"instances": found, "replacements": self.state.load().get("replacements", {}),
                "certificate": current, "certificate_failures": sum(failures for _, failures in certs.values()),
                "certificates": certs, "rounds": self.rounds}

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
