"""What should run, as a pure function of the bootstrap settings, the manifests and the instances' addresses.

No Docker, no netlink, no processes, no files: this module imports records (`records.py`) and pure
functions only, and the agent (`agent.py`) applies what these functions compute through the gateways; a
configuration reload compares two plans instead of fields by hand. Everything here is unit-tested
without root (tests/test_imports.py keeps it so).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from container.errors import AgentError
from container.firewall_rules import render_rules
from container.manifest import Manifest, RequiredService
from container.records import Application, Destination, Grant, HostListener, Server, Service, SiteRoute, Tls
from container.settings import Bootstrap, ExternalService, FrontendSettings, Mount, Nat64, Network, Site


@dataclass(frozen=True)
class Serving:
    """An instance in the frontend: its name and address."""
    name: str
    address: ipaddress.IPv6Address


def site_applications(images: tuple[Application, ...], bootstrap: Bootstrap) -> tuple[Application, ...]:
    """What the agent runs: with `sites`, each site as an application of the one image (named after the
    site, with its limits, which may be smaller than the manifest's, never larger); else the images."""
    if not bootstrap.sites:
        return images
    if len(images) != 1:
        raise AgentError(f"{bootstrap.source}: sites: each site runs the one image given to the agent; "
                         f"got {len(images)} ({', '.join(app.image for app in images)})")
    base = images[0]
    if not base.manifest.provides:
        raise AgentError(f"{bootstrap.source}: sites: {base.image} provides no service to publish")
    limits = base.manifest.resources
    apps = []
    for index, site in enumerate(bootstrap.sites):
        if site.name == base.name:  # the application of the image itself (what runs without sites)
            raise AgentError(f"{bootstrap.source}: sites[{index}].name: {site.name!r} is the image's own application "
                             "name; choose another")
        for key, wanted, most, what in (("memory_mb", site.memory_mb, limits.memory_mb, "<resources mb>"),
                                        ("vmhz", site.vmhz, limits.cpu_vmhz, "<resources vmhz>")):
            if wanted is not None and wanted > most:
                raise AgentError(f"{bootstrap.source}: sites[{index}].{key}: {wanted} is more than the manifest's "
                                 f"{what} ({most}); a site may ask for less, never more")
        resources = dataclasses.replace(limits, memory_mb=site.memory_mb or limits.memory_mb,
                                        cpu_vmhz=site.vmhz or limits.cpu_vmhz)
        apps.append(dataclasses.replace(base, name=site.name, site=site,
                                        manifest=dataclasses.replace(base.manifest, resources=resources)))
    return tuple(apps)


def check_services(apps: tuple[Application, ...], bootstrap: Bootstrap) -> None:
    """Every <require> is provided by one of the applications here, or defined as an external service."""
    provided: dict[str, str] = {}
    for app in apps:
        if app.site is not None and app is not apps[0]:
            continue  # every site runs the same image
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


def provider(apps: tuple[Application, ...], service: str) -> Application | None:
    return next((app for app in apps if any(p.name == service for p in app.manifest.provides)), None)


def local_requires(apps: tuple[Application, ...], app: Application) -> tuple[RequiredService, ...]:
    """The app's <require>s that another application here provides (reached through the frontend)."""
    return tuple(r for r in app.manifest.requires if provider(apps, r.name) is not None)


NOTIFY = "notify"


def notify_require(bootstrap: Bootstrap, app: Application | None = None) -> RequiredService | None:
    """The deploy notifications' target (NOTIFY_URL in the environment) as a require of every instance: its
    host name maps to its NAT64 address and the firewall lets exactly that host and port through."""
    url = bootstrap.site_env(app.site if app else None).get("NOTIFY_URL", "")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    return RequiredService(NOTIFY, "1", parts.hostname, port)


def egress_manifest(app: Application, bootstrap: Bootstrap) -> Manifest:
    """The app's manifest with the notification target required too (when there is one)."""
    notify = notify_require(bootstrap, app)
    if notify is None or any(r.name == NOTIFY for r in app.manifest.requires):
        return app.manifest
    return dataclasses.replace(app.manifest, requires=(*app.manifest.requires, notify))


def external_services(apps: tuple[Application, ...], app: Application,
                      bootstrap: Bootstrap) -> tuple[ExternalService, ...]:
    """The bootstrap's external services that the app reaches through NAT64 (not those provided here), with
    the notification target (a `notify` entry of the YAML, else NOTIFY_URL's own host and port)."""
    local = {r.name for r in local_requires(apps, app)}
    services = tuple(s for s in bootstrap.external_services if s.name not in local)
    notify = notify_require(bootstrap, app)
    if notify is not None and not any(s.name == NOTIFY for s in services):
        services += (ExternalService(NOTIFY, "1", notify.local_hostname, notify.local_port, "bootstrap"),)
    return services


def hosts_file(hostname: str, address: ipaddress.IPv6Address, found: tuple[Destination, ...] = (),
               local: dict[str, ipaddress.IPv6Address] | None = None) -> str:
    """/etc/hosts of an instance: itself, its external services (NAT64), services provided here (gateway)."""
    return (f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{address}\t{hostname}\n"
            + hosts_entries(found)
            + "".join(f"{gateway}\t{name}\n" for name, gateway in sorted((local or {}).items())))


def hosts_entries(found: tuple[Destination, ...]) -> str:
    """The /etc/hosts lines of an instance's external services: their NAT64 addresses."""
    return "".join(f"{address}\t{d.local_hostname}\n" for d in found for address in d.ipv6)


def instance_hosts(apps: tuple[Application, ...], app: Application, address: ipaddress.IPv6Address,
                   net: Network, found: tuple[Destination, ...]) -> str:
    local = {r.local_hostname: net.gateway for r in local_requires(apps, app)}
    return hosts_file(app.name, address, found, local)


def resolv_conf(net: Network) -> str:
    if not net.dns:
        return "# no ipv6_dns in the bootstrap YAML\n"
    return "".join(f"nameserver {server}\n" for server in net.dns)


def frontend_services(apps: tuple[Application, ...], settings: FrontendSettings, net: Network,
                      serving: dict[str, Serving], pem: Path | None = None,
                      pem_domains: tuple[str, ...] = (),
                      site_pems: dict[str, Path] | None = None,
                      preview_pems: dict[str, Path] | None = None) -> tuple[Service, ...]:
    """The HAProxy frontends: each provided service on its public port and, for the instances that require
    it, on the gateway; served by the app's instance in `serving` (application name → instance). With
    `frontend.tls`, the service on the default port also speaks HTTPS once `pem` (its certificate) exists;
    `pem_domains` are the names the certificate is for (`certificates.redirect_domains`). Sites share one
    frontend per service, routed by Host, each with its certificate in `site_pems` (site → PEM) and its
    previews' wildcard certificate in `preview_pems` (site → PEM)."""
    services = []
    routed: dict[str, list[SiteRoute]] = {}
    for app in apps:
        for provide in app.manifest.provides:
            instance = serving.get(app.name)
            servers = (Server(instance.name, instance.address, provide.local_port),) if instance else ()
            if app.site is not None:
                routed.setdefault(provide.name, []).append(SiteRoute(
                    app.name, app.site.domains, servers, app.site.default, (site_pems or {}).get(app.name),
                    app.site.previews_host, (preview_pems or {}).get(app.name), provide.release_link is not None))
                if len(routed[provide.name]) > 1:
                    continue
            local_ports = sorted({r.local_port for other in apps for r in other.manifest.requires
                                  if r.name == provide.name})
            public = settings.port_of(provide.name)
            services.append(Service(
                provide.name, settings.bind, public, provide.health_check_path, servers if app.site is None else (),
                tuple((net.gateway, port) for port in local_ports),
                settings.max_connections_per_client, settings.max_requests_per_client,
                frontend_tls(settings, pem, pem_domains) if public == settings.port else None,
                swaps=provide.release_link is not None))
    return tuple(dataclasses.replace(service, sites=tuple(routed[service.name])) if service.name in routed
                 else service for service in services)


def frontend_tls(settings: FrontendSettings, pem: Path | None, pem_domains: tuple[str, ...] = ()) -> Tls | None:
    """HTTPS as configured; plain HTTP redirects to the configured domains, else to the names of the
    administrator's own certificate (`pem_domains`, used only with `pem`)."""
    tls = settings.tls
    if tls is None:
        return None
    domains = tls.domains or (pem_domains if pem is not None else ())
    return Tls(tls.port, pem, tls.challenge_port if tls.acme else None, domains)


def check_frontend_ports(services: tuple[Service, ...], source: str) -> None:
    ports = [s.port for s in services if s.port]
    for service in services:
        if service.port and ports.count(service.port) > 1:
            raise AgentError(f"{source}: frontend: port {service.port} is used by more than one provided service; "
                             "give each its own under frontend.ports (0: not published)")


def firewall_rules(apps: tuple[Application, ...], net: Network, nat64_settings: Nat64,
                   addresses: dict[str, tuple[ipaddress.IPv6Address, ...]],
                   destinations: dict[str, tuple[Destination, ...]]) -> dict[str, str]:
    """The egress rules: each app's instance addresses may reach its external services and the services
    provided here that it requires."""
    grants, listeners = [], []
    for app in apps:
        sources = addresses.get(app.name, ())
        grants += [Grant(sources, d) for d in destinations.get(app.name, ())]
        listeners += [HostListener(sources, r.local_port, f"{app.name} -> {r.name}")
                      for r in local_requires(apps, app)]
    named = tuple((app.name, addresses[app.name]) for app in apps if addresses.get(app.name))
    return render_rules(net, nat64_settings, tuple(grants), tuple(listeners), named)


@dataclass(frozen=True)
class InForce:
    """The settings in force: the bootstrap YAML's the agent acts on, with the network actually used (the YAML's,
    or generated); what a reload compares (`changes`). The plan is what this module derives from them."""
    network: Network
    nat64: Nat64
    frontend: FrontendSettings
    environment: tuple[tuple[str, str], ...] = ()
    mounts: tuple[Mount, ...] = ()
    external: tuple[ExternalService, ...] = field(default_factory=tuple)
    sites: tuple[Site, ...] = ()


def in_force(bootstrap: Bootstrap, net: Network) -> InForce:
    return InForce(net, bootstrap.nat64, bootstrap.frontend, bootstrap.environment, bootstrap.mounts,
                bootstrap.external_services, bootstrap.sites)


@dataclass(frozen=True)
class Changes:
    """What a reload must do to go from one plan to another."""
    nat64: bool = False  # restart Tayga on the new prefix and pool
    frontend: bool = False  # reload HAProxy
    replace_instances: bool = False  # environment, mounts or addressing: new instances beside the old
    readdress: bool = False  # a new subnet or gateway: the old instances are unreachable at once
    routes: bool = False  # apply in the running instances
    dns: bool = False  # rewrite their resolv.conf
    external: bool = False  # resolve again, firewall and /etc/hosts
    # With sites: each change touches only its site. Added sites start, removed ones leave the frontend and
    # stop, a changed environment, mounts or limits replace that site's instance, other changes (domains,
    # default, email) change the frontend (and the certificate) only.
    sites_added: tuple[str, ...] = ()
    sites_removed: tuple[str, ...] = ()
    sites_replaced: tuple[str, ...] = ()
    sites_routed: tuple[str, ...] = ()

    @property
    def any(self) -> bool:
        return any(getattr(self, name) for name in self.__dataclass_fields__)


def changes(old: InForce, new: InForce) -> Changes:
    readdress = (old.network.subnet, old.network.gateway) != (new.network.subnet, new.network.gateway)
    replace = readdress or old.environment != new.environment or old.mounts != new.mounts
    before, after = {site.name: site for site in old.sites}, {site.name: site for site in new.sites}
    kept = [name for name in after if name in before]
    own = ("environment", "mounts", "memory_mb", "vmhz", "previews")  # previews: the instance's environment
    replaced = tuple(name for name in kept if any(getattr(before[name], key) != getattr(after[name], key)
                                                  for key in own))
    return Changes(
        nat64=old.nat64 != new.nat64, frontend=old.frontend != new.frontend, replace_instances=replace,
        readdress=readdress, routes=not replace and old.network.routes != new.network.routes,
        dns=not replace and old.network.dns != new.network.dns, external=old.external != new.external,
        sites_added=tuple(name for name in after if name not in before),
        sites_removed=tuple(name for name in before if name not in after),
        sites_replaced=() if replace else replaced,
        sites_routed=tuple(name for name in kept if before[name] != after[name] and name not in replaced),
    )
