"""The records the plan (`plan.py`) computes with and the gateways act on: frozen, and free of any system.

A gateway module (Docker, netlink, iptables, HAProxy, Tayga) imports its records from here, so the plan
can use them without importing the gateway."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from container.manifest import Manifest
from container.settings import Site

BRIDGE = "pequod0"  # the instances' bridge (network.py)
TUN = "pequod64"  # Tayga's tun device (nat64.py)


@dataclass(frozen=True)
class Application:
    """One image the agent runs: its name and version (from the tag) and its manifest. With sites, each
    site is an application of its own: named after the site, with the site's limits in its manifest."""
    image: str
    name: str
    version: str
    manifest: Manifest
    site: Site | None = None

    @property
    def health_timeout(self) -> int:
        return max([p.health_check_timeout for p in self.manifest.provides], default=0)


@dataclass(frozen=True)
class Instance:
    """A running instance of ours, as the runtime reports it."""
    name: str
    application: str
    version: str
    zone: str
    repo: str
    address: ipaddress.IPv6Address
    started: float  # wall-clock time it was started
    image: str
    image_id: str
    pid: int
    running: bool = True
    site: str = ""  # with sites: the site it serves


@dataclass(frozen=True)
class Destination:
    """One external service an instance may reach: its local name and port, and where they lead."""
    service: str
    local_hostname: str
    local_port: int
    external_host: str
    external_port: int
    ipv4: tuple[ipaddress.IPv4Address, ...]
    ipv6: tuple[ipaddress.IPv6Address, ...]


@dataclass(frozen=True)
class Grant:
    """Instances (by address) that may reach an external service through NAT64."""
    sources: tuple[ipaddress.IPv6Address, ...]
    destination: Destination


@dataclass(frozen=True)
class HostListener:
    """A port on the bridge's gateway address that instances may connect to (a service another instance
    provides, through the frontend)."""
    sources: tuple[ipaddress.IPv6Address, ...]
    port: int
    comment: str


@dataclass(frozen=True)
class Tls:
    """HTTPS on `port` with the chain and key in `pem` (None: no certificate yet: plain HTTP, but ACME
    challenges already go to the client on 127.0.0.1:`challenge_port` when it is set). Plain HTTP is
    redirected to one of `domains` (none: not redirected)."""
    port: int
    pem: Path | None
    challenge_port: int | None
    domains: tuple[str, ...] = ()


@dataclass(frozen=True)
class Server:
    name: str
    address: ipaddress.IPv6Address
    port: int


@dataclass(frozen=True)
class SiteRoute:
    """A site behind a shared frontend: the host names it owns, its servers and its certificate (HTTPS is
    served, and plain HTTP for its domains redirected, once `pem` is set)."""
    name: str
    domains: tuple[str, ...]
    servers: tuple[Server, ...] = ()
    default: bool = False
    pem: Path | None = None
    previews: str | None = None  # SITE.DOMAIN: its branches' previews answer at LABEL--SITE.DOMAIN
    preview_pem: Path | None = None  # their wildcard certificate (*.DOMAIN): HTTPS, plain HTTP redirected
    swaps: bool = False  # the cache forgets its answers at the instance's swap (container/swaps.py)


@dataclass(frozen=True)
class Service:
    """A provided service, published on bind:port (port 0: not published), and on `local_binds` (gateway
    address and port) for instances that require it; served by `servers` (instances that passed a check)."""
    name: str
    bind: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int
    health_path: str
    servers: tuple[Server, ...] = ()
    local_binds: tuple[tuple[ipaddress.IPv6Address, int], ...] = ()
    max_connections_per_client: int = 0  # 0: no limit
    max_requests_per_client: int = 0  # in any 10 s; 0: no limit
    tls: Tls | None = None
    sites: tuple[SiteRoute, ...] = ()  # routed by Host to each site's backend (then `servers` is unused)
    swaps: bool = False  # the cache forgets its answers at the instance's swap (container/swaps.py)
