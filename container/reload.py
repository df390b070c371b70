"""A changed bootstrap YAML, applied while the agent runs: the new file is checked whole first (a bad one
is ignored with a one-line error and the running configuration stays), then the difference of the two
plans (`plan.changes`, pure and unit-tested) is applied, touching only what changed: NAT64, the
frontend, the network of the running instances, or with sites only the sites that were added, removed
or changed."""

from __future__ import annotations

import logging
from typing import Any

from container import checks, instances, nat64, network, plan, runtime, supervision, volume
from container.bootstrap import load_bootstrap
from container.capacity import check_fits
from container.errors import AgentError
from container.nat64 import Tayga
from container.supervision import Supervised

Agent = Any  # container.agent.Agent, which imports this module (named here, not imported: no cycle)

log = logging.getLogger("container")


def reload(agent: Agent) -> None:
    try:
        new = load_bootstrap(str(agent.bootstrap_path))
        apps = plan.site_applications(agent.images_apps, new)
        plan.check_services(apps, new)
        checks.check_mounts([app.manifest for app in agent.images_apps], new)
        new_plan = plan.make_plan(new, new.network or agent.generated_network())
        check_capacity(agent, apps)
        if new.frontend != agent.bootstrap.frontend or new.sites != agent.bootstrap.sites:
            agent.check_frontend(new, new_plan.network, apps)
    except AgentError as exc:
        log.error("ignoring the changed bootstrap YAML: %s; the running configuration stays", exc)
        return
    old_plan = agent.plan
    agent.bootstrap, agent.plan = new, new_plan
    change = plan.changes(old_plan, new_plan)
    if not change.any:
        return
    if change.nat64:
        log.info("bootstrap YAML changed: NAT64 %s, pool %s", new.nat64.prefix, new.nat64.ipv4_pool)
        agent.tayga.stop()
        network.remove_link(nat64.TUN)
        agent.tayga = Tayga(new.nat64, agent.state.path)
        agent.tayga.ensure()
    fresh = apply_sites(agent, apps, change)
    if change.frontend:
        log.info("bootstrap YAML changed: frontend settings")
    agent.configure_certificates()
    agent.publish()  # only a changed frontend configuration reloads HAProxy
    if change.replace_instances:
        replace_all(agent, change, fresh)
        return
    agent.refresh_destinations(force=True)
    for instance in [i for sup in agent.supervised for i in sup.live()]:
        if change.routes:
            network.update_routes(instance.pid, old_plan.network.routes, new_plan.network.routes)
            log.info("bootstrap YAML changed: routes updated in %s", instance.name)
        if change.dns:
            agent.state.write_etc_file(instance.name, "resolv.conf", plan.resolv_conf(new_plan.network))
            log.info("bootstrap YAML changed: resolv.conf updated in %s", instance.name)


def check_capacity(agent: Agent, apps: tuple[plan.Application, ...]) -> None:
    """Sites added or given other limits must fit beside everything else (no overbooking), and every
    site's volumes on the disk."""
    volume.check_disk(agent.state.path, [(app.name, fs) for app in apps for fs in app.manifest.volumes])
    current = {app.name: app.manifest.resources for app in agent.apps}
    grown = [app for app in apps if current.get(app.name) != app.manifest.resources]
    if not grown:
        return
    names = {app.name for app in apps}
    in_use = agent.resources_in_use(exclude=names | set(current))
    in_use += [app.manifest.resources for app in apps if app not in grown]
    for app in grown:
        check_fits(f"site {app.name}" if app.site else app.name, app.manifest.resources, in_use, agent.capacity,
                   app.site is not None)
        in_use.append(app.manifest.resources)


def apply_sites(agent: Agent, apps: tuple[plan.Application, ...], change: plan.Changes) -> set[str]:
    """Sites (or applications) no longer configured retire, new ones start, changed ones get their new
    settings: a new instance (beside the old one until it is healthy) when their environment, mounts or
    limits changed. The one blog of a host without sites serves the default site until it is healthy."""
    agent.apps = apps
    by_name = {app.name: app for app in apps}
    for sup in [sup for sup in agent.supervised if sup.app.name not in by_name]:
        log.info("bootstrap YAML changed: %s %s removed", "site" if sup.app.site else "application", sup.app.name)
        instances.retire(agent, sup)
    for sup in agent.supervised:
        sup.app = by_name[sup.app.name]
    running = {sup.app.name for sup in agent.supervised}
    added = [Supervised(app, runtime.image_info(agent.client, app.image).id) for app in apps if app.name not in running]
    agent.supervised += added
    instances.bridge_from_before_sites(agent)
    for sup in added:
        log.info("bootstrap YAML changed: %s %s added", "site" if sup.app.site else "application", sup.app.name)
        if sup.pending is None:
            start(agent, sup)
    for name in change.sites_replaced:
        sup = next(s for s in agent.supervised if s.app.name == name)
        log.info("bootstrap YAML changed: site %s (environment, mounts or limits): replacing its instance", name)
        agent.state.save(supervision.count_replacement(agent.state.load(), name, "config"))
        if sup.pending is not None:
            runtime.remove(agent.client, sup.pending.instance.name)
            sup.pending = None
        start(agent, sup)
    instances.remember_applications(agent)
    return {sup.app.name for sup in added} | set(change.sites_replaced)


def start(agent: Agent, sup: Supervised) -> None:
    agent.refresh_destinations(force=True)
    try:
        instances.start_pending(agent, sup)
    except AgentError as exc:  # the loop tries again with back-off
        sup.quick_failures += 1
        sup.restart_at = 0.0
        log.error("%s; retrying", exc)


def replace_all(agent: Agent, change: plan.Changes, fresh: set[str]) -> None:
    """The environment, mounts or addressing of every instance changed: new instances for all (but those
    just started with the new settings, unless their address is gone)."""
    log.info("bootstrap YAML changed (environment, mounts or addressing): replacing the instances")
    if change.readdress:
        network.ensure_bridge(agent.network())
    renew = [sup for sup in agent.supervised if change.readdress or sup.app.name not in fresh]
    for sup in renew:
        if change.readdress and sup.serving is not None:  # unreachable now: no point in draining
            runtime.remove(agent.client, sup.serving.name)
            sup.serving = None
        if sup.pending is not None:
            runtime.remove(agent.client, sup.pending.instance.name)
            sup.pending = None
    agent.refresh_destinations(force=True)
    for sup in renew:
        agent.state.save(supervision.count_replacement(agent.state.load(), sup.app.name, "config"))
        instances.start_pending(agent, sup)
