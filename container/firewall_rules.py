"""The egress allowlist as iptables-restore input: a pure function of the network, the NAT64 settings and
the grants (see `firewall.py`, which checks and applies it)."""

from __future__ import annotations

import ipaddress

from container.records import BRIDGE, TUN, Grant, HostListener
from container.settings import Nat64, Network

FORWARD, INPUT, POSTROUTING, PREROUTING = "PEQUOD-FORWARD", "PEQUOD-INPUT", "PEQUOD-POSTROUTING", "PEQUOD-PREROUTING"


def _comment(text: str) -> str:
    return f'-m comment --comment "pequod: {text}"'


def render_rules(network: Network, nat64: Nat64, grants: tuple[Grant, ...],
                 listeners: tuple[HostListener, ...] = (),
                 sources: tuple[tuple[str, tuple[ipaddress.IPv6Address, ...]], ...] = ()) -> dict[str, str]:
    """iptables-restore input for each of ('ip6tables', 'iptables'): a pure function. `sources` (application,
    its instance addresses) gives each application a reject rule of its own, so its rejections are counted."""
    v6_filter = [
        "*filter", f":{FORWARD} - [0:0]", f":{INPUT} - [0:0]",
        f"-A {FORWARD} -o {BRIDGE} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    ]
    v6_nat = ["*nat", f":{PREROUTING} - [0:0]"]
    v4_filter = [
        "*filter", f":{FORWARD} - [0:0]",
        f"-A {FORWARD} -o {TUN} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    ]
    v4_allowed: list[str] = []
    for grant in grants:
        d = grant.destination
        for v6, v4 in zip(d.ipv6, d.ipv4, strict=True):
            for source in grant.sources:
                if d.local_port != d.external_port:
                    v6_nat.append(f"-A {PREROUTING} -i {BRIDGE} -s {source}/128 -d {v6}/128 -p tcp "
                                  f"--dport {d.local_port} {_comment(d.service)} "
                                  f"-j DNAT --to-destination [{v6}]:{d.external_port}")
                v6_filter.append(f"-A {FORWARD} -i {BRIDGE} -o {TUN} -s {source}/128 -d {v6}/128 -p tcp "
                                 f"--dport {d.external_port} {_comment(d.service)} -j ACCEPT")
            rule = (f"-A {FORWARD} -i {TUN} -s {nat64.ipv4_pool} -d {v4}/32 -p tcp "
                    f"--dport {d.external_port} {_comment(d.service)} -j ACCEPT")
            if grant.sources and rule not in v4_allowed:
                v4_allowed.append(rule)
    v4_filter += v4_allowed
    for server in network.dns:
        chain = INPUT if server == network.gateway else FORWARD
        for proto in ("udp", "tcp"):
            v6_filter.append(
                f"-A {chain} -i {BRIDGE} -d {server}/128 -p {proto} --dport 53 {_comment('dns')} -j ACCEPT")
    v6_filter += [f"-A {FORWARD} -i {BRIDGE} -s {address}/128 {_comment(f'egress not declared: {application}')} "
                  "-j REJECT --reject-with icmp6-adm-prohibited"
                  for application, addresses in sources for address in addresses]
    v6_filter += [
        f"-A {FORWARD} -i {BRIDGE} {_comment('egress not declared')} -j REJECT --reject-with icmp6-adm-prohibited",
        f"-A {FORWARD} -o {BRIDGE} {_comment('inbound to instances')} -j DROP",
        f"-A {INPUT} -i {BRIDGE} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        f"-A {INPUT} -i {BRIDGE} -p ipv6-icmp -j ACCEPT",
        *(f"-A {INPUT} -i {BRIDGE} -s {source}/128 -d {network.gateway}/128 -p tcp --dport {listener.port} "
          f"{_comment(listener.comment)} -j ACCEPT" for listener in listeners for source in listener.sources),
        f"-A {INPUT} -i {BRIDGE} {_comment('host not declared')} -j REJECT --reject-with icmp6-adm-prohibited",
        "COMMIT",
    ]
    v4_filter += [
        f"-A {FORWARD} -i {TUN} {_comment('egress not declared')} -j REJECT --reject-with icmp-admin-prohibited",
        f"-A {FORWARD} -o {TUN} -j DROP",
        "COMMIT",
    ]
    v4_nat = ["*nat", f":{POSTROUTING} - [0:0]",
              f"-A {POSTROUTING} -s {nat64.ipv4_pool} ! -o {TUN} {_comment('NAT44 of the NAT64 pool')} -j MASQUERADE",
              "COMMIT"]
    v6_nat.append("COMMIT")
    return {"ip6tables": "\n".join(v6_filter + v6_nat) + "\n", "iptables": "\n".join(v4_filter + v4_nat) + "\n"}
