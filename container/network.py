"""The instances' IPv6 network, through pyroute2: a host bridge and one veth per instance.

The bridge carries the subnet's gateway address; each instance gets a veth whose inner end is
`eth0` in the container's network namespace, one global IPv6 address, a default route via the
gateway and the bootstrap's extra routes. The container has no IPv4 at all.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import random
import socket
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from container.errors import NetworkError
from container.records import BRIDGE
from container.settings import Network, Route

log = logging.getLogger(__name__)

VETH_PREFIX = "pq-"
IFA_F_NODAD = 0x02




def instance_address(
    subnet: ipaddress.IPv6Network, host_ipv4: ipaddress.IPv4Address, rand16: int,
) -> ipaddress.IPv6Address:
    """The seed's pattern: <subnet /64>:aacc:<16 random bits>:<host IPv4 as two hex groups>."""
    base = int(subnet.network_address) & ~((1 << 64) - 1)
    host_part = (0xAACC << 48) | ((rand16 & 0xFFFF) << 32) | int(host_ipv4)
    return ipaddress.IPv6Address(base | host_part)


def random16() -> int:
    return random.SystemRandom().randrange(0x10000)


def generated_network(seed: bytes) -> Network:
    """A stable ULA /64 (fd00::/8) for hosts whose bootstrap YAML names no network."""
    digest = hashlib.sha256(seed).digest()
    prefix = (0xFD << 120) | (int.from_bytes(digest[:7], "big") << 64)
    subnet = ipaddress.IPv6Network((prefix, 64))
    return Network(subnet=subnet, location="generated", gateway=subnet[1])


def host_ipv4() -> ipaddress.IPv4Address:
    """The source address of the host's default IPv4 route (0.0.0.0 where there is none)."""
    with IPRoute() as ipr:
        for route in ipr.get_routes(family=socket.AF_INET):
            if route.get("dst_len") == 0 and route.get("RTA_PREFSRC"):
                return ipaddress.IPv4Address(route.get("RTA_PREFSRC"))
            if route.get("dst_len") == 0 and route.get("RTA_OIF"):
                for addr in ipr.get_addr(family=socket.AF_INET, index=route.get("RTA_OIF")):
                    return ipaddress.IPv4Address(addr.get("IFA_ADDRESS"))
    return ipaddress.IPv4Address(0)


def veth_name(instance: str) -> str:
    return VETH_PREFIX + hashlib.sha1(instance.encode()).hexdigest()[:10]


def sysctl(path: str, value: str) -> None:
    try:
        Path("/proc/sys/net", path).write_text(value)
    except OSError as exc:
        raise NetworkError(f"cannot set net.{path.replace('/', '.')}={value}: {exc.strerror}") from None


def ensure_bridge(network: Network) -> None:
    """Create the bridge with the gateway address, up, and IPv6 forwarding on. Idempotent."""
    try:
        with IPRoute() as ipr:
            if not ipr.link_lookup(ifname=BRIDGE):
                ipr.link("add", ifname=BRIDGE, kind="bridge")
                log.info("created bridge %s", BRIDGE)
            index = ipr.link_lookup(ifname=BRIDGE)[0]
            sysctl(f"ipv6/conf/{BRIDGE}/disable_ipv6", "0")
            sysctl(f"ipv6/conf/{BRIDGE}/accept_dad", "0")
            present = {a.get("IFA_ADDRESS") for a in ipr.get_addr(family=socket.AF_INET6, index=index)}
            if str(network.gateway) not in present:
                ipr.addr("add", index=index, address=str(network.gateway), prefixlen=network.subnet.prefixlen,
                         flags=IFA_F_NODAD)
            ipr.link("set", index=index, state="up")
        sysctl("ipv6/conf/all/forwarding", "1")
    except NetlinkError as exc:
        raise NetworkError(f"cannot set up bridge {BRIDGE}: {exc}") from None


def ensure_tun(name: str, host_address: ipaddress.IPv4Address, ipv4_routed: ipaddress.IPv4Network,
               ipv6_routed: ipaddress.IPv6Network) -> None:
    """A tun device (NAT64's), up, with the host's IPv4 address on it and both networks routed into it;
    IPv4 and IPv6 forwarding on. Idempotent."""
    try:
        with IPRoute() as ipr:
            if not ipr.link_lookup(ifname=name):
                ipr.link("add", ifname=name, kind="tuntap", mode="tun")
                log.info("created NAT64 device %s", name)
            index = ipr.link_lookup(ifname=name)[0]
            ipr.link("set", index=index, state="up")
            present = {a.get("IFA_ADDRESS") for a in ipr.get_addr(index=index)}
            if str(host_address) not in present:
                ipr.addr("add", index=index, address=str(host_address), prefixlen=32)
            ipr.route("replace", dst=str(ipv4_routed.network_address), dst_len=ipv4_routed.prefixlen, oif=index,
                      family=socket.AF_INET)
            ipr.route("replace", dst=str(ipv6_routed.network_address), dst_len=ipv6_routed.prefixlen, oif=index,
                      family=socket.AF_INET6)
    except (NetlinkError, OSError) as exc:
        raise NetworkError(f"cannot set up the device {name}: {exc} (is /dev/net/tun available and are we root?)"
                           ) from None
    sysctl("ipv4/ip_forward", "1")
    sysctl("ipv6/conf/all/forwarding", "1")


def remove_link(name: str) -> bool:
    """Delete the link `name` (the bridge, the NAT64 device) if it exists; True when it did."""
    try:
        with IPRoute() as ipr:
            if ipr.link_lookup(ifname=name):
                ipr.link("del", ifname=name)
                return True
    except (NetlinkError, OSError) as exc:
        raise NetworkError(f"cannot remove link {name}: {exc}") from None
    return False


def remove_veths() -> list[str]:
    """Host ends of instance veths left behind (normally they vanish with the container)."""
    removed = []
    try:
        with IPRoute() as ipr:
            for link in ipr.get_links():
                name = link.get("IFLA_IFNAME") or ""
                if name.startswith(VETH_PREFIX):
                    try:
                        ipr.link("del", index=link["index"])
                        removed.append(name)
                    except NetlinkError:
                        pass  # gone with its container meanwhile
    except (NetlinkError, OSError) as exc:
        raise NetworkError(f"cannot list links: {exc}") from None
    return removed


def _netns(pid: int) -> IPRoute:
    return IPRoute(netns=f"/proc/{pid}/ns/net", flags=0)


def wire_instance(pid: int, instance: str, network: Network, address: ipaddress.IPv6Address) -> str:
    """Give the container whose init has `pid` its eth0, address and routes. Returns the host veth."""
    host_if, temp_if = veth_name(instance), "pqtmp" + hashlib.sha1(instance.encode()).hexdigest()[:8]
    try:
        with IPRoute() as ipr:
            if ipr.link_lookup(ifname=host_if):
                ipr.link("del", ifname=host_if)
            ipr.link("add", ifname=host_if, kind="veth", peer={"ifname": temp_if, "net_ns_pid": pid})
            host_index = ipr.link_lookup(ifname=host_if)[0]
            bridge_index = ipr.link_lookup(ifname=BRIDGE)[0]
            ipr.link("set", index=host_index, master=bridge_index, state="up")
            isolate_port(ipr, host_index)
        with _netns(pid) as ns:
            index = ns.link_lookup(ifname=temp_if)[0]
            ns.link("set", index=index, ifname="eth0")
            ns.link("set", index=index, state="up")
            ns.addr("add", index=index, address=str(address), prefixlen=network.subnet.prefixlen, flags=IFA_F_NODAD)
            ns.route("add", dst="::/0", gateway=str(network.gateway), oif=index, family=socket.AF_INET6)
            for route in network.routes:
                _add_route(ns, index, route)
    except (NetlinkError, OSError, IndexError) as exc:
        raise NetworkError(f"cannot wire the network of {instance} (pid {pid}): {exc}") from None
    return host_if


def isolate_port(ipr: IPRoute, index: int) -> None:
    """An instance's port on the bridge talks to the host only, never to another instance's port: sites
    on one host cannot reach each other over the shared link (routed traffic between them is refused by
    the firewall's FORWARD rules)."""
    ipr.brport("set", index=index, isolated=1)


def ensure_wired(pid: int, instance: str, network: Network, address: ipaddress.IPv6Address) -> list[str]:
    """Finish what `wire_instance` may have left half done (the agent was killed while wiring): wire it
    afresh when the address is missing, else add the routes that are missing. Returns what was missing."""
    if str(address) not in instance_addresses(pid):
        wire_instance(pid, instance, network, address)
        return ["eth0 with its address"]
    missing = []
    try:
        with _netns(pid) as ns:
            index = ns.link_lookup(ifname="eth0")[0]
            present = {(r.get("RTA_DST") or "::", r["dst_len"]) for r in ns.get_routes(family=socket.AF_INET6)}
            if ("::", 0) not in present:
                ns.route("replace", dst="::/0", gateway=str(network.gateway), oif=index, family=socket.AF_INET6)
                missing.append("the default route")
            for route in network.routes:
                if (str(route.destination.network_address), route.destination.prefixlen) not in present:
                    _add_route(ns, index, route)
                    missing.append(f"the route to {route.destination}")
    except (NetlinkError, OSError, IndexError) as exc:
        raise NetworkError(f"cannot check the network of {instance} (pid {pid}): {exc}") from None
    return missing


def _add_route(ns: IPRoute, index: int, route: Route) -> None:
    ns.route("replace", dst=str(route.destination.network_address), dst_len=route.destination.prefixlen,
             gateway=str(route.gateway), oif=index, family=socket.AF_INET6)


def update_routes(pid: int, old: tuple[Route, ...], new: tuple[Route, ...]) -> None:
    """Apply a change of the extra routes to a running instance, touching only what changed."""
    try:
        with _netns(pid) as ns:
            index = ns.link_lookup(ifname="eth0")[0]
            for route in old:
                if route not in new:
                    ns.route("del", dst=str(route.destination.network_address),
                             dst_len=route.destination.prefixlen, family=socket.AF_INET6)
            for route in new:
                if route not in old:
                    _add_route(ns, index, route)
    except (NetlinkError, OSError, IndexError) as exc:
        raise NetworkError(f"cannot update routes of pid {pid}: {exc}") from None


def instance_addresses(pid: int) -> list[str]:
    """Global addresses (IPv6 and, which must never happen, IPv4) inside the instance."""
    try:
        with _netns(pid) as ns:
            found = []
            for addr in ns.get_addr():
                value = addr.get("IFA_ADDRESS")
                if addr["family"] == socket.AF_INET6 and addr["scope"] != 0:
                    continue  # link-local and host scope
                if addr["family"] == socket.AF_INET and value.startswith("127."):
                    continue
                if value == "::1":
                    continue
                found.append(value)
            return found
    except (NetlinkError, OSError):
        return []
