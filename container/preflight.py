"""The checks an agent makes before its first side effect (and a reload before it applies anything):
the YAML against the images, mounts, host programs and files, the host's remaining capacity (no
overbooking), free ports and a frontend configuration HAProxy accepts."""

from __future__ import annotations

import ipaddress
import os
from typing import Any

from container import checks, firewall, frontend, instances, network, plan, runtime, volume
from container.bootstrap import Bootstrap, Network, load_bootstrap
from container.capacity import check_fits, host_capacity
from container.errors import AgentError
from container.image import load_application, manifest_from_image
from container.nat64 import Tayga
from container.supervision import Instance, Supervised

Agent = Any  # container.agent.Agent, which imports this module (named here, not imported: no cycle)
ZONE = instances.ZONE


def file_stamp(path: Any) -> tuple[int, int, int] | None:
    """What tells a changed file: its inode, size and modification time (None: not there)."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_ino, found.st_size, found.st_mtime_ns


def load(agent: Agent) -> None:
    agent.loaded_stamp = file_stamp(agent.bootstrap_path)  # before reading: a later change is seen as one
    agent.bootstrap = load_bootstrap(str(agent.bootstrap_path))
    agent.images_apps = tuple(load_application(agent.client, image) for image in agent.images)
    agent.apps = plan.site_applications(agent.images_apps, agent.bootstrap)
    image_ids = {app.image: runtime.image_info(agent.client, app.image).id for app in agent.images_apps}
    agent.supervised = [Supervised(app, image_ids[app.image]) for app in agent.apps]
    plan.check_services(agent.apps, agent.bootstrap)
    checks.check_mounts([app.manifest for app in agent.images_apps], agent.bootstrap)
    tls = agent.bootstrap.frontend.tls
    checks.check_host_programs(any(app.manifest.volumes for app in agent.apps), bool(tls and tls.acme))
    checks.check_tls(agent.bootstrap)
    agent.capacity = host_capacity()
    in_use = resources_in_use(agent, exclude={app.name for app in agent.apps})
    volume.check_disk(agent.state.path, [(app.name, fs) for app in agent.apps for fs in app.manifest.volumes])
    for app in agent.apps:
        check_fits(f"site {app.name}" if app.site else app.name, app.manifest.resources, in_use, agent.capacity,
                   app.site is not None)
        in_use.append(app.manifest.resources)
    if agent.bootstrap.metrics.agent:
        checks.check_port_free(*agent.bootstrap.metrics.agent, "the agent's metrics", "metrics.agent")
    net = agent.bootstrap.network or network.generated_network(b"check")  # nothing is written while checking
    check_frontend(agent, agent.bootstrap, net)
    # iptables must accept our kind of rules (conntrack, comment, REJECT, NAT) before anything is set up.
    firewall.check_rules(firewall.render_rules(net, agent.bootstrap.nat64, ()))
    agent.tayga = Tayga(agent.bootstrap.nat64, agent.state.path)

def check_frontend(agent: Agent, bootstrap: Bootstrap, net: Network, apps: tuple[plan.Application, ...] = ()) -> None:
    """Ports distinct and free (unless our HAProxy holds them), and a configuration HAProxy accepts."""
    services = plan.frontend_services(apps or agent.apps, bootstrap.frontend, net, {})
    plan.check_frontend_ports(services, bootstrap.source)
    if agent.frontend.daemon.pid() is None:
        for service in services:
            if service.port:
                checks.check_port_free(service.bind, service.port, service.name)
        if bootstrap.metrics.haproxy:
            checks.check_port_free(*bootstrap.metrics.haproxy, "HAProxy's metrics", "metrics.haproxy")
        tls = bootstrap.frontend.tls
        if tls is not None:
            checks.check_port_free(bootstrap.frontend.bind, tls.port, "HTTPS", "frontend.tls.port")
    tls = bootstrap.frontend.tls
    if tls is not None and tls.acme and not agent.keepers.busy():
        checks.check_port_free(ipaddress.IPv4Address("127.0.0.1"), tls.challenge_port,
                               "the ACME client's challenge answers", "frontend.tls.challenge_port")
    frontend.check_config(agent.frontend.render(services, bootstrap.metrics.haproxy))

def resources_of(agent: Agent, instance: Instance) -> Any:
    try:
        return manifest_from_image(agent.client, instance.image).resources
    except AgentError:
        return None

def resources_in_use(agent: Agent, exclude: set[str]) -> list[Any]:
    """What the running instances of others ask for (a site's smaller limits count as they are): not
    those of `exclude`, nor the ones this agent ran before and is about to remove."""
    found = runtime.instances(agent.client)
    previous = instances.previous_applications(agent, [i for i in found if i.zone == ZONE])
    site_limits = {app.name: app.manifest.resources for app in agent.apps if app.site is not None}
    in_use = []
    for instance in found:
        if not instance.running or instance.application in exclude:
            continue
        if instance.zone == ZONE and instance.application in previous:
            if instance.application not in site_limits:
                continue  # an orphan, removed at start
            in_use.append(site_limits[instance.application])
            continue
        resources = resources_of(agent, instance)
        if resources is not None:
            in_use.append(resources)
    return in_use
