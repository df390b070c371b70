"""NAT64 for the IPv6-only instances: Tayga on a tun device, plus the names of external services.

Tayga translates between the NAT64 prefix (IPv6 side, routed from the bridge) and its IPv4 pool;
the firewall masquerades the pool to the outside (NAT44). An instance reaches an IPv4-only service
at `<prefix>:<IPv4>`: the agent resolves each required service's external host on the host and
writes the synthesised addresses under the manifest's local hostname into the instance's /etc/hosts.
"""

from __future__ import annotations

import grp
import ipaddress
import logging
import os
import pwd
import socket
from collections.abc import Callable
from pathlib import Path

from container import network
from container.daemon import Daemon
from container.manifest import Manifest
from container.records import TUN, Destination
from container.settings import ExternalService, Nat64

log = logging.getLogger(__name__)

def tayga_address(nat64: Nat64) -> ipaddress.IPv4Address:
    return nat64.ipv4_pool[1]


def host_tun_address(nat64: Nat64) -> ipaddress.IPv4Address:
    return nat64.ipv4_pool[2]


def dynamic_pool(nat64: Nat64) -> ipaddress.IPv4Network:
    return list(nat64.ipv4_pool.subnets(prefixlen_diff=1))[1]


def render_tayga_conf(nat64: Nat64, data_dir: Path) -> str:
    """Tayga's configuration: a pure function of the NAT64 settings."""
    return (
        "# Written by pequod-agent; changes are overwritten.\n"
        f"tun-device {TUN}\n"
        f"ipv4-addr {tayga_address(nat64)}\n"
        f"prefix {nat64.prefix}\n"
        f"dynamic-pool {dynamic_pool(nat64)}\n"
        f"data-dir {data_dir}\n"
    )


def synthesise(nat64: Nat64, address: ipaddress.IPv4Address) -> ipaddress.IPv6Address:
    """The IPv6 address under which an instance reaches `address` (RFC 6052, /96 prefix)."""
    return ipaddress.IPv6Address(int(nat64.prefix.network_address) | int(address))


def resolve_ipv4(host: str) -> tuple[ipaddress.IPv4Address, ...]:
    """The IPv4 addresses of `host`, resolved on the host, sorted; () when it does not resolve."""
    try:
        return (ipaddress.IPv4Address(host),)
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, family=socket.AF_INET, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        log.warning("cannot resolve %s on the host: %s; retrying later", host, exc)
        return ()
    return tuple(sorted({ipaddress.IPv4Address(info[4][0]) for info in infos}))


def destinations(manifest: Manifest, services: tuple[ExternalService, ...], nat64: Nat64,
                 resolve: Callable[[str], tuple[ipaddress.IPv4Address, ...]] = resolve_ipv4) -> tuple[Destination, ...]:
    """The manifest's requires that `services` defines, resolved (others are provided on this host)."""
    defined = {service.name: service for service in services}
    found = []
    for require in manifest.requires:
        service = defined.get(require.name)
        if service is None:
            continue
        ipv4 = resolve(service.external_host)
        found.append(Destination(require.name, require.local_hostname, require.local_port,
                                 service.external_host, service.external_port, ipv4,
                                 tuple(synthesise(nat64, a) for a in ipv4)))
    return tuple(found)


# Tayga opens its tun device as root, then runs as this user, chrooted into its data directory.
TAYGA_USER, TAYGA_GROUP = "nobody", "nogroup"


def tayga_ids() -> tuple[int, int] | None:
    try:
        return pwd.getpwnam(TAYGA_USER).pw_uid, grp.getgrnam(TAYGA_GROUP).gr_gid
    except KeyError:
        return None


def unprivileged() -> list[str]:
    """Tayga's options to drop root (none where the host lacks the user)."""
    return ["--user", TAYGA_USER, "--group", TAYGA_GROUP, "--chroot"] if tayga_ids() else []


class Tayga:
    """The tun device (pyroute2), its addresses and routes, and the Tayga daemon on it."""

    def __init__(self, nat64: Nat64, state_dir: Path):
        self.nat64 = nat64
        self.dir = state_dir / "tayga"
        self.conf = self.dir / "tayga.conf"
        self.daemon = Daemon("tayga", ["tayga", "--nodetach", "--config", str(self.conf), *unprivileged()],
                             self.dir / "tayga.pid", self.dir / "tayga.log", str(self.conf))

    def ensure(self) -> None:
        """Device, routes and a running Tayga with the current configuration. Idempotent."""
        self.dir.mkdir(parents=True, exist_ok=True)
        data = self.dir / "data"
        data.mkdir(exist_ok=True)
        ids = tayga_ids()
        if ids:  # its address map is written there after dropping root
            for path in [data, *data.iterdir()]:
                os.chown(path, *ids)
        text = render_tayga_conf(self.nat64, data)
        changed = not self.conf.exists() or self.conf.read_text() != text
        if changed:
            self.conf.write_text(text)
        self.ensure_device()
        if changed and self.daemon.pid() is not None:
            log.info("NAT64 settings changed: restarting tayga")
            self.daemon.stop()
        self.daemon.ensure()

    def ensure_device(self) -> None:
        network.ensure_tun(TUN, host_tun_address(self.nat64), self.nat64.ipv4_pool, self.nat64.prefix)

    def stop(self) -> bool:
        return self.daemon.stop()

