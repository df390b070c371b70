"""An agent's instances one by one: adopted after an agent restart, started with their network, limits,
volumes and files, and (with sites) removed when their site is gone. The agent's loop (`agent.py`)
decides when; these functions do it through the gateways."""

from __future__ import annotations

import ipaddress
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import docker

from container import builders, network, plan, runtime, supervision, volume
from container.capacity import Capacity
from container.errors import AgentError
from container.manifest import Builder
from container.records import Application, Instance
from container.settings import Bootstrap, Network
from container.state import StateDir
from container.supervision import Pending, Retiring

log = logging.getLogger("container")

ZONE = "bootstrap"


@dataclass
class Supervised:
    """The agent's live state of one application: its instances and its back-off. Written here only."""
    app: Application
    image_id: str = ""
    serving: Instance | None = None  # the instance in the frontend
    pending: Pending | None = None
    retiring: tuple[Retiring, ...] = ()
    starting: ipaddress.IPv6Address | None = None  # the address of an instance being created
    quick_failures: int = 0
    restart_at: float = 0.0
    unhealthy_since: float | None = None
    checked_at: float = 0.0

    def configure(self, app: Application) -> None:
        """The application's new settings (a changed bootstrap YAML); its instances stay until replaced."""
        self.app = app

    def live(self) -> list[Instance]:
        return [i for i in (self.serving, self.pending.instance if self.pending else None) if i is not None]

    def addresses(self) -> tuple[ipaddress.IPv6Address, ...]:
        return tuple([i.address for i in self.live()] + ([self.starting] if self.starting else []))


@dataclass
class Orphans:
    """Instances of applications (sites) the agent runs no more, removed once the frontend no longer sends
    them requests (at `due`, monotonic), and the applications whose volumes are still mounted (`gone`)."""
    instances: list[Instance] = field(default_factory=list)
    due: float = 0.0
    gone: list[str] = field(default_factory=list)


class Host(Protocol):
    """What these functions need of the agent (`agent.Agent` is one). A protocol, because the agent imports
    this module; its fields read-only, because only the agent writes them."""

    @property
    def client(self) -> docker.DockerClient: ...
    @property
    def state(self) -> StateDir: ...
    @property
    def bootstrap(self) -> Bootstrap: ...
    @property
    def capacity(self) -> Capacity: ...
    @property
    def images_apps(self) -> tuple[Application, ...]: ...
    @property
    def apps(self) -> tuple[Application, ...]: ...
    @property
    def supervised(self) -> Sequence[Supervised]: ...
    @property
    def orphans(self) -> Orphans: ...
    @property
    def exits(self) -> runtime.Exits: ...
    def network(self) -> Network: ...
    def etc_hosts(self, app: Application, address: ipaddress.IPv6Address) -> str: ...
    def healthy(self, app: Application, instance: Instance) -> bool: ...
    def apply_firewall(self) -> None: ...
    def publish(self) -> None: ...


def adopt(agent: Host, sup: Supervised) -> None:
    """Take over a running instance left by an earlier agent (the newest healthy one); remove the rest.

    The earlier agent may have been killed while it wired the instance (its network is finished here) or
    before the instance was healthy: one younger than its start period gets the rest of it, as a pending
    instance, instead of the 10 s of liveness of one that served already."""
    running = []
    for instance in runtime.instances(agent.client, ZONE):
        if instance.application != sup.app.name:
            continue
        if instance.running:
            running.append((instance, agent.healthy(sup.app, instance)))
        else:
            log.info("removing stopped instance %s", instance.name)
            runtime.remove(agent.client, instance.name)
    kept, duplicates = supervision.adoption(running)
    for duplicate in duplicates:
        log.warning("removing duplicate instance %s", duplicate.name)
        runtime.remove(agent.client, duplicate.name)
    if kept is None:
        return
    missing = network.ensure_wired(kept.pid, kept.name, agent.network(), kept.address)
    if missing:
        log.info("re-wired the network of %s: it lacked %s", kept.name, ", ".join(missing))
    agent.state.write_etc_file(kept.name, "hosts", agent.etc_hosts(sup.app, kept.address))
    start_left = supervision.start_period_left(kept, sup.app.health_timeout, time.time())
    if start_left > 0 and not agent.healthy(sup.app, kept):
        sup.pending = Pending(kept, time.monotonic() + start_left)
        log.info("re-adopted running instance %s (%s), still starting: %.0f s left to become healthy",
                 kept.name, kept.address, start_left)
    else:
        sup.serving = kept
        log.info("re-adopted running instance %s (%s)", kept.name, kept.address)

def start_instance(agent: Host, sup: Supervised) -> Instance:
    app, net = sup.app, agent.network()
    instance_id = runtime.InstanceId(ZONE, "", app.name, app.version, f"{network.random16():04x}")
    address = network.instance_address(net.subnet, network.host_ipv4(), network.random16())
    sup.starting = address
    try:
        agent.apply_firewall()  # its services are open before it runs
        name = instance_id.name
        etc = {
            "/etc/resolv.conf": str(agent.state.write_etc_file(name, "resolv.conf", plan.resolv_conf(net))),
            "/etc/hosts": str(agent.state.write_etc_file(name, "hosts", agent.etc_hosts(app, address))),
        }
        image = runtime.image_info(agent.client, app.image)
        sup.image_id = image.id
        user = site_user(agent, app.name) if app.site is not None else image.user
        uid = runtime.run_user(user)[1]
        builder = app.manifest.builder
        owners = {builder.volume: builders.uid(uid)} if builder is not None else {}
        volumes = {fs.mountpoint: str(volume.ensure(agent.state.path, app.name, fs, owners.get(fs.mountpoint, uid)))
                   for fs in app.manifest.volumes}
        environment = {**({"USER": "site", "LOGNAME": "site"} if app.site else {}),  # a user without a passwd line
                       **agent.bootstrap.site_env(app.site)}
        if builder is not None:
            start_builder(agent, app, builder, image.id, volumes, uid)
            environment["BUILDER_SOCKET"] = builder.socket
        args = runtime.container_args(
            image=app.image, instance=instance_id, manifest=app.manifest,
            environment=environment,
            image_user=user, capacity=agent.capacity,
            read_only_binds={**etc, **{m.target: m.source for m in agent.bootstrap.site_mounts(app.site)}},
            read_write_binds=volumes,
            labels={"zone": ZONE, "repo": "", "application": app.name, "version": app.version,
                    "ipv6": str(address), "started": f"{time.time():.3f}", "image": app.image,
                    "image_id": image.id, **({"site": app.site.name} if app.site else {})},
        )
        instance = runtime.start(agent.client, args)
        try:
            network.wire_instance(instance.pid, name, net, address)
        except AgentError:
            runtime.remove(agent.client, name)
            raise
    finally:
        sup.starting = None
    log.info("started %s at %s", name, address)
    return instance

def start_builder(agent: Host, app: Application, builder: Builder, image_id: str, volumes: dict[str, str],
                  uid: int | None) -> None:
    """The application's builder (container/builders.py) running with this image, before its instance starts:
    its volume its user's, the folder it reads present (the instance's user's)."""
    builders.own_volume(Path(volumes[builder.volume]), builders.uid(uid))
    if builder.reads and builder.reads_volume:  # the folder it reads, the instance's (bind-mounted, so it must exist)
        folder = Path(volumes[builder.reads_volume]) / builder.reads_subpath
        folder.mkdir(mode=0o755, parents=True, exist_ok=True)
        if uid is not None and folder.stat().st_uid != uid:
            os.chown(folder, uid, uid, follow_symlinks=False)
    builders.ensure(agent.client, builders.container_args(
        zone=ZONE, application=app.name, image=app.image, image_id=image_id, manifest=app.manifest,
        volumes=volumes, instance_uid=uid, capacity=agent.capacity))


SITE_UIDS = 20000  # the first site's user; each further site the next number, kept in state.json


def site_user(agent: Host, site: str) -> str:
    """Each site's instances run as a user of their own ("uid:gid", none of them root or another site's),
    allocated once and kept: per-user kernel limits (the build sandbox's RLIMIT_NPROC counts every
    process of a user on the host) and file ownership then stay per site, and one site's processes
    cannot signal another's."""
    state = agent.state.load()
    uids: dict[str, int] = state.setdefault("site_uids", {})
    if site not in uids:
        uids[site] = max([SITE_UIDS - 1, *uids.values()]) + 1
        agent.state.save(state)
    return f"{uids[site]}:{uids[site]}"


def start_pending(agent: Host, sup: Supervised) -> None:
    sup.pending = Pending(start_instance(agent, sup), time.monotonic() + sup.app.health_timeout)

def remove_orphans(agent: Host, force: bool = False) -> None:
    orphans = agent.orphans
    if orphans.instances and (force or time.monotonic() >= orphans.due):
        for instance in orphans.instances:
            log.info("removing %s: its application (site) is no longer configured", instance.name)
            runtime.remove(agent.client, instance.name)
        orphans.instances = []
        release_volumes(agent)

def release_volumes(agent: Host) -> None:
    """Unmount the volumes of the applications (sites) gone; their data stays in its image file."""
    running = {app.name for app in agent.apps}
    for name in sorted(set(agent.orphans.gone) - running):
        if builders.remove(agent.client, ZONE, name):
            log.info("removed the builder of %s", name)
        for fs in agent.images_apps[0].manifest.volumes if agent.images_apps else ():
            volume.release(agent.state.path, name, fs)
    agent.orphans.gone = []

def remember_applications(agent: Host) -> None:
    """The applications this agent runs, so a later start knows which instances of ours are orphans."""
    state = agent.state.load()
    names = sorted(app.name for app in agent.apps)
    if state.get("applications") != names:
        state["applications"] = names
        agent.state.save(state)


def previous_applications(state_dir: StateDir) -> set[str]:
    """What this agent ran before (remember_applications); nothing on its first start."""
    return set(state_dir.load().get("applications", []))


def find_orphans(agent: Host) -> None:
    """Instances of applications (sites) this agent ran before and runs no more: removed once the
    frontend no longer sends them requests."""
    found = runtime.instances(agent.client, ZONE)
    previous = previous_applications(agent.state) - {app.name for app in agent.apps}
    agent.orphans.instances = [i for i in found if i.application in previous]
    agent.orphans.gone = sorted(previous)


def retire(agent: Host, sup: Supervised) -> None:
    """A site (or application) no longer configured, and no longer supervised (the agent took it out of its
    list), so the next publish takes it out of the frontend: its instances are removed after they had time
    to finish, its volumes unmounted (their data stays)."""
    agent.orphans.instances += [*sup.live(), *(item.instance for item in sup.retiring)]
    agent.orphans.due = time.monotonic() + supervision.DRAIN_SECONDS
    agent.orphans.gone.append(sup.app.name)


def bridge_from_before_sites(agent: Host) -> None:
    """A host that ran the blog before it had sites ran it as the image's own application. That instance
    keeps serving the default site until the site's own instance is healthy, then retires like any
    replaced instance: turning a host into one with sites drops no reader."""
    images = {app.name for app in agent.images_apps}
    site = next((sup for sup in agent.supervised if sup.app.site is not None and sup.app.site.default
                 and sup.serving is None and sup.pending is None), None)
    before = next((i for i in agent.orphans.instances if i.running and i.application in images and not i.site),
                  None)
    if site is None or before is None:
        return
    agent.orphans.instances.remove(before)
    site.serving = before
    log.info("%s (from before sites) serves the default site %s until its own instance is healthy", before.name,
             site.app.name)
    agent.state.save(supervision.count_replacement(agent.state.load(), site.app.name, "config"))
    start_pending(agent, site)


def remove_pending(agent: Host, sup: Supervised) -> None:
    """The instance still starting (nothing is served by it yet) removed."""
    if sup.pending is not None:
        runtime.remove(agent.client, sup.pending.instance.name)
        sup.pending = None


def remove_serving(agent: Host, sup: Supervised) -> None:
    """The instance in the frontend removed at once, without draining (it is unreachable)."""
    if sup.serving is not None:
        runtime.remove(agent.client, sup.serving.name)
        sup.serving = None


def start_or_retry(agent: Host, sup: Supervised, back_off: bool = True) -> None:
    """A new pending instance; when it cannot start, the loop tries again: after the back-off, or (a
    configuration just changed) in its next round."""
    try:
        start_pending(agent, sup)
    except AgentError as exc:
        sup.quick_failures += 1
        sup.restart_at = (time.monotonic() + supervision.restart_delay(sup.quick_failures)) if back_off else 0.0
        log.error("%s; retrying", exc)


def failed(agent: Host, sup: Supervised, instance: Instance, status: str, why: str = "") -> None:
    """Remove a dead or unhealthy instance and schedule its replacement (back-off for crash loops)."""
    _, code = runtime.state(agent.client, instance.name)
    lived = time.time() - instance.started
    sup.quick_failures, delay = supervision.after_failure(sup.quick_failures, lived, bool(why))
    log.warning("instance %s %s (exit code %s) after %.0f s%s; replacing it in %.0f s",
                instance.name, status, code, lived, f" ({why})" if why else "", delay)
    runtime.remove(agent.client, instance.name)
    sup.restart_at = time.monotonic() + delay
    agent.state.save(supervision.count_replacement(agent.state.load(), sup.app.name, "crash"))

def check_liveness(agent: Host, sup: Supervised, now: float) -> None:
    """Replace the instance in the frontend when it stopped answering its health check; it keeps its
    place until the replacement is healthy (HAProxy stops sending it requests meanwhile)."""
    assert sup.serving is not None
    sup.checked_at = now
    sup.unhealthy_since, replace = supervision.liveness(sup.unhealthy_since, agent.healthy(sup.app, sup.serving),
                                                        now)
    if not replace:
        return
    log.warning("instance %s has not answered its health check for %.0f s; starting a replacement",
                sup.serving.name, now - (sup.unhealthy_since or now))
    agent.state.save(supervision.count_replacement(agent.state.load(), sup.app.name, "unhealthy"))
    try:
        start_pending(agent, sup)
    except AgentError as exc:
        log.error("%s; retrying", exc)

def supervise(agent: Host, sup: Supervised) -> None:
    now = time.monotonic()
    if sup.serving is not None:
        status = agent.exits.state(sup.serving.name)
        if status != "running":
            dead, sup.serving, sup.unhealthy_since = sup.serving, None, None
            agent.publish()
            failed(agent, sup, dead, status)
        elif sup.pending is None and now - sup.checked_at >= supervision.HEALTH_INTERVAL:
            check_liveness(agent, sup, now)
    if sup.pending is not None:
        candidate = sup.pending.instance
        status = agent.exits.state(candidate.name)
        if status != "running":
            sup.pending = None
            failed(agent, sup, candidate, status)
        elif agent.healthy(sup.app, candidate):
            sup.pending, sup.unhealthy_since = None, None
            previous, sup.serving = sup.serving, candidate
            agent.publish()
            log.info("%s is healthy and in the frontend", candidate.name)
            if previous is not None:
                sup.retiring += (Retiring(previous, now + supervision.DRAIN_SECONDS),)
        elif now > sup.pending.deadline:
            sup.pending = None
            failed(agent, sup, candidate, status, f"not healthy within {sup.app.health_timeout} s")
    if sup.serving is None and sup.pending is None and now >= sup.restart_at:
        start_or_retry(agent, sup)
    remove, sup.retiring = supervision.due(sup.retiring, now)
    for item in remove:
        log.info("removing replaced instance %s", item.instance.name)
        runtime.remove(agent.client, item.instance.name)
