"""The checks an agent makes before its first side effect (and a reload before it applies anything):
the YAML against the images, mounts, host programs and files, the host's remaining capacity (no
overbooking), free ports and a frontend configuration HAProxy accepts."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

import docker

from container import checks, firewall, frontend, instances, network, plan, runtime, volume
from container.bootstrap import load_bootstrap
from container.capacity import Capacity, check_fits, host_capacity
from container.errors import AgentError
from container.image import load_application, manifest_from_image
from container.instances import Supervised
from container.manifest import Resources
from container.nat64 import Tayga
from container.records import Application, Instance
from container.settings import Bootstrap, Network
from container.state import StateDir
from container.tls_keeper import Keepers

ZONE = instances.ZONE


def file_stamp(path: Path) -> tuple[int, int, int] | None:
    """What tells a changed file: its inode, size and modification time (None: not there)."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_ino, found.st_size, found.st_mtime_ns


@dataclass(frozen=True)
class Loaded:
    """What the agent starts with, all of it checked: the agent keeps it (`Agent.load`)."""
    stamp: tuple[int, int, int] | None  # the bootstrap YAML as read
    bootstrap: Bootstrap
    images_apps: tuple[Application, ...]  # the images given, one application each
    apps: tuple[Application, ...]  # what runs: the images, or with sites each site
    supervised: list[Supervised]
    capacity: Capacity
    tayga: Tayga


def load(bootstrap_path: Path, images: list[str], client: docker.DockerClient, state: StateDir,
         proxy: frontend.Frontend, keepers: Keepers) -> Loaded:
    stamp = file_stamp(bootstrap_path)  # before reading: a later change is seen as one
    bootstrap = load_bootstrap(str(bootstrap_path))
    images_apps = tuple(load_application(client, image) for image in images)
    apps = plan.site_applications(images_apps, bootstrap)
    image_ids = {app.image: runtime.image_info(client, app.image).id for app in images_apps}
    supervised = [Supervised(app, image_ids[app.image]) for app in apps]
    plan.check_services(apps, bootstrap)
    checks.check_mounts([app.manifest for app in images_apps], bootstrap)
    tls = bootstrap.frontend.tls
    checks.check_host_programs(any(app.manifest.volumes for app in apps), bool(tls and tls.acme))
    checks.check_tls(bootstrap)
    capacity = host_capacity()
    in_use = resources_in_use(client, state, apps, exclude={app.name for app in apps})
    volume.check_disk(state.path, [(app.name, fs) for app in apps for fs in app.manifest.volumes])
    for app in apps:
        check_fits(f"site {app.name}" if app.site else app.name, app.manifest.resources, in_use, capacity,
                   app.site is not None)
        in_use.append(app.manifest.resources)
    if bootstrap.metrics.agent:
        checks.check_port_free(*bootstrap.metrics.agent, "the agent's metrics", "metrics.agent")
    net = bootstrap.network or network.generated_network(b"check")  # nothing is written while checking
    check_frontend(proxy, keepers, bootstrap, net, apps)
    # iptables must accept our kind of rules (conntrack, comment, REJECT, NAT) before anything is set up.
    firewall.check_rules(firewall.render_rules(net, bootstrap.nat64, ()))
    return Loaded(stamp, bootstrap, images_apps, apps, supervised, capacity, Tayga(bootstrap.nat64, state.path))

def check_frontend(proxy: frontend.Frontend, keepers: Keepers, bootstrap: Bootstrap, net: Network,
                   apps: tuple[Application, ...]) -> None:
    """Ports distinct and free (unless our HAProxy holds them), and a configuration HAProxy accepts."""
    services = plan.frontend_services(apps, bootstrap.frontend, net, {})
    plan.check_frontend_ports(services, bootstrap.source)
    if proxy.daemon.pid() is None:
        for service in services:
            if service.port:
                checks.check_port_free(service.bind, service.port, service.name)
        if bootstrap.metrics.haproxy:
            checks.check_port_free(*bootstrap.metrics.haproxy, "HAProxy's metrics", "metrics.haproxy")
        tls = bootstrap.frontend.tls
        if tls is not None:
            checks.check_port_free(bootstrap.frontend.bind, tls.port, "HTTPS", "frontend.tls.port")
    tls = bootstrap.frontend.tls
    if tls is not None and tls.acme and not keepers.busy():
        checks.check_port_free(ipaddress.IPv4Address("127.0.0.1"), tls.challenge_port,
                               "the ACME client's challenge answers", "frontend.tls.challenge_port")
    frontend.check_config(proxy.render(services, bootstrap.metrics.haproxy))

def resources_of(client: docker.DockerClient, instance: Instance) -> Resources | None:
    try:
        return manifest_from_image(client, instance.image).resources
    except AgentError:
        return None

def resources_in_use(client: docker.DockerClient, state: StateDir, apps: tuple[Application, ...],
                     exclude: set[str]) -> list[Resources]:
    """What the running instances of others ask for (a site's smaller limits count as they are): not
    those of `exclude`, nor the ones this agent ran before and is about to remove."""
    found = runtime.instances(client)
    previous = instances.previous_applications(state)
    site_limits = {app.name: app.manifest.resources for app in apps if app.site is not None}
    in_use = []
    for instance in found:
        if not instance.running or instance.application in exclude:
            continue
        if instance.zone == ZONE and instance.application in previous:
            if instance.application not in site_limits:
                continue  # an orphan, removed at start
            in_use.append(site_limits[instance.application])
            continue
        resources = resources_of(client, instance)
        if resources is not None:
            in_use.append(resources)
    return in_use
