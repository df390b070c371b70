"""A changed bootstrap YAML, applied while the agent runs: the new file is checked whole first (a bad one
is ignored with a one-line error and the running configuration stays), then the difference of the two
plans (`plan.changes`, pure and unit-tested) is applied, touching only what changed: NAT64, the
frontend, the network of the running instances, or with sites only the sites that were added, removed
or changed. The agent takes the new configuration and its applications itself (`Agent.reload_config`);
the steps that only act on them are here."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from container import checks, frontend, instances, network, plan, preflight, supervision, volume
from container.bootstrap import load_bootstrap
from container.capacity import check_fits
from container.errors import AgentError
from container.instances import Supervised
from container.nat64 import Tayga
from container.plan import Changes, InForce
from container.records import TUN, Application
from container.settings import Bootstrap, Nat64, Network
from container.tls_keeper import Keepers

log = logging.getLogger("container")


class Reloading(instances.Host, Protocol):
    """What a reload needs of the agent besides what the instance functions need: read-only too, the agent
    takes the new configuration itself (`Agent.reload_config`)."""

    @property
    def bootstrap_path(self) -> Path: ...
    @property
    def frontend(self) -> frontend.Frontend: ...
    @property
    def keepers(self) -> Keepers: ...
    def generated_network(self) -> Network: ...
    def refresh_destinations(self, force: bool = False) -> None: ...


@dataclass(frozen=True)
class Reloaded:
    """A changed bootstrap YAML that passed every check, with its applications and the settings it puts in force."""
    bootstrap: Bootstrap
    apps: tuple[Application, ...]
    in_force: InForce


def check(agent: Reloading) -> Reloaded | None:
    """The changed file checked whole; None (and one line of error) when the running configuration stays."""
    try:
        new = load_bootstrap(str(agent.bootstrap_path))
        apps = plan.site_applications(agent.images_apps, new)
        plan.check_services(apps, new)
        checks.check_mounts([app.manifest for app in agent.images_apps], new)
        new_settings = plan.in_force(new, new.network or agent.generated_network())
        check_capacity(agent, apps)
        if new.frontend != agent.bootstrap.frontend or new.sites != agent.bootstrap.sites:
            preflight.check_frontend(agent.frontend, agent.keepers, new, new_settings.network, apps or agent.apps)
    except AgentError as exc:
        log.error("ignoring the changed bootstrap YAML: %s; the running configuration stays", exc)
        return None
    return Reloaded(new, apps, new_settings)


def stop_nat64(tayga: Tayga, nat64: Nat64) -> None:
    """The running Tayga and its device gone, for one on the new prefix and pool."""
    log.info("bootstrap YAML changed: NAT64 %s, pool %s", nat64.prefix, nat64.ipv4_pool)
    tayga.stop()
    network.remove_link(TUN)


def update_instances(agent: Reloading, old_settings: InForce, new_settings: InForce,
                     change: Changes) -> None:
    """Routes and resolv.conf changed in the running instances, which stay."""
    for instance in [i for sup in agent.supervised for i in sup.live()]:
        if change.routes:
            network.update_routes(instance.pid, old_settings.network.routes, new_settings.network.routes)
            log.info("bootstrap YAML changed: routes updated in %s", instance.name)
        if change.dns:
            agent.state.write_etc_file(instance.name, "resolv.conf", plan.resolv_conf(new_settings.network))
            log.info("bootstrap YAML changed: resolv.conf updated in %s", instance.name)


def check_capacity(agent: Reloading, apps: tuple[Application, ...]) -> None:
    """Sites added or given other limits must fit beside everything else (no overbooking), and every
    site's volumes on the disk."""
    volume.check_disk(agent.state.path, [(app.name, fs) for app in apps for fs in app.manifest.volumes])
    current = {app.name: app.manifest.resources for app in agent.apps}
    grown = [app for app in apps if current.get(app.name) != app.manifest.resources]
    if not grown:
        return
    names = {app.name for app in apps}
    in_use = preflight.resources_in_use(agent.client, agent.state, agent.apps, exclude=names | set(current))
    in_use += [app.manifest.resources for app in apps if app not in grown]
    for app in grown:
        check_fits(f"site {app.name}" if app.site else app.name, app.manifest.resources, in_use, agent.capacity,
                   app.site is not None)
        in_use.append(app.manifest.resources)


def start_sites(agent: Reloading, added: list[Supervised], change: Changes) -> set[str]:
    """After the agent took the new applications (`Agent.apply_sites`): new ones start, changed ones get a new
    instance (beside the old one until it is healthy) when their environment, mounts or limits changed. The
    one blog of a host without sites serves the default site until it is healthy. Returns the applications
    that started with the new settings."""
    instances.bridge_from_before_sites(agent)
    for sup in added:
        log.info("bootstrap YAML changed: %s %s added", "site" if sup.app.site else "application", sup.app.name)
        if sup.pending is None:
            start(agent, sup)
    for name in change.sites_replaced:
        sup = next(s for s in agent.supervised if s.app.name == name)
        log.info("bootstrap YAML changed: site %s (environment, mounts or limits): replacing its instance", name)
        agent.state.save(supervision.count_replacement(agent.state.load(), name, "config"))
        instances.remove_pending(agent, sup)
        start(agent, sup)
    instances.remember_applications(agent)
    return {sup.app.name for sup in added} | set(change.sites_replaced)


def start(agent: Reloading, sup: Supervised) -> None:
    agent.refresh_destinations(force=True)
    instances.start_or_retry(agent, sup, back_off=False)  # the loop tries again with back-off


def replace_all(agent: Reloading, change: Changes, fresh: set[str]) -> None:
    """The environment, mounts or addressing of every instance changed: new instances for all (but those
    just started with the new settings, unless their address is gone)."""
    log.info("bootstrap YAML changed (environment, mounts or addressing): replacing the instances")
    if change.readdress:
        network.ensure_bridge(agent.network())
    renew = [sup for sup in agent.supervised if change.readdress or sup.app.name not in fresh]
    for sup in renew:
        if change.readdress:  # unreachable now: no point in draining
            instances.remove_serving(agent, sup)
        instances.remove_pending(agent, sup)
    agent.refresh_destinations(force=True)
    for sup in renew:
        agent.state.save(supervision.count_replacement(agent.state.load(), sup.app.name, "config"))
        instances.start_pending(agent, sup)
