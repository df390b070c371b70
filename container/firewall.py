"""The egress allowlist and NAT44, as iptables/ip6tables rules in chains of our own.

An instance's traffic leaves the bridge only towards what it declared: the external services of
its manifest's `require`s (their NAT64-synthesised addresses and port; rules match the instance's
own address, so each instance gets only its own application's services), the services other
instances provide to it through the frontend's listeners on the gateway, the DNS servers of the
bootstrap YAML, and replies. Anything else is rejected (ICMPv6 "administratively prohibited", so
programs fail at once instead of hanging) and counted. Tayga's IPv4 side is masqueraded to the
outside and may only reach the declared IPv4 addresses and ports.

The rules are rendered as iptables-restore input by a pure function and applied atomically per
table (`--noflush`: only our chains are replaced); the built-in chains get a single jump into ours.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import subprocess
from dataclasses import dataclass

from container import proc
from container.bootstrap import Nat64, Network
from container.errors import FirewallError
from container.nat64 import TUN, Destination
from container.network import BRIDGE

log = logging.getLogger(__name__)

FORWARD, INPUT, POSTROUTING, PREROUTING = "PEQUOD-FORWARD", "PEQUOD-INPUT", "PEQUOD-POSTROUTING", "PEQUOD-PREROUTING"
# (command, table, our chain, built-in chain that jumps into it)
JUMPS = (
    ("ip6tables", "filter", FORWARD, "FORWARD"),
    ("ip6tables", "filter", INPUT, "INPUT"),
    ("ip6tables", "nat", PREROUTING, "PREROUTING"),
    ("iptables", "filter", FORWARD, "FORWARD"),
    ("iptables", "nat", POSTROUTING, "POSTROUTING"),
)




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


def _run(argv: list[str], stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    return proc.run(argv, stdin=stdin, check=check, error=FirewallError, package="iptables")


def check_rules(rules: dict[str, str]) -> None:
    """Ask iptables whether it would accept the rules, without applying them."""
    for command, text in rules.items():
        _run([f"{command}-restore", "--test", "--noflush", "-w"], text)


def apply(rules: dict[str, str]) -> None:
    """Replace our chains (atomically per table) and make sure each built-in chain jumps into them once."""
    for command, text in rules.items():
        _run([f"{command}-restore", "--noflush", "-w"], text)
    for command, table, chain, builtin in JUMPS:
        if _run([command, "-w", "-t", table, "-C", builtin, "-j", chain], check=False).returncode != 0:
            _run([command, "-w", "-t", table, "-I", builtin, "1", "-j", chain])


def intact() -> bool:
    """Every built-in chain still jumps into ours (an `iptables -F` elsewhere would have removed them)."""
    return all(_run([command, "-w", "-t", table, "-C", builtin, "-j", chain], check=False).returncode == 0
               for command, table, chain, builtin in JUMPS)


def remove() -> list[str]:
    """Remove our jumps and chains; returns what was removed."""
    removed = []
    for command, table, chain, builtin in JUMPS:
        while _run([command, "-w", "-t", table, "-D", builtin, "-j", chain], check=False).returncode == 0:
            pass
        if _run([command, "-w", "-t", table, "-F", chain], check=False).returncode == 0:
            _run([command, "-w", "-t", table, "-X", chain], check=False)
            removed.append(f"{command} chain {table}/{chain}")
    return removed


_COUNTED = re.compile(r'^\[(\d+):(\d+)\] -A (PEQUOD-\S+) .*--comment "pequod: ([^"]+)" -j (REJECT|DROP)')


def rejected_by_application() -> dict[str, tuple[int, int]]:
    """(packets, bytes) rejected so far from each application's instances (their own reject rules)."""
    found: dict[str, tuple[int, int]] = {}
    result = _run(["ip6tables-save", "-c", "-t", "filter"], check=False)
    for line in result.stdout.splitlines():
        match = _COUNTED.match(line)
        if match and match.group(4).startswith("egress not declared: "):
            application = match.group(4).removeprefix("egress not declared: ")
            packets, size = found.get(application, (0, 0))
            found[application] = (packets + int(match.group(1)), size + int(match.group(2)))
    return found


def rejected_counts() -> dict[str, int]:
    """Packets rejected or dropped so far, by chain and reason (e.g. 'ip6tables PEQUOD-FORWARD egress not declared')."""
    counts: dict[str, int] = {}
    for command in ("ip6tables", "iptables"):
        result = _run([f"{command}-save", "-c", "-t", "filter"], check=False)
        for line in result.stdout.splitlines():
            match = _COUNTED.match(line)
            if match:
                counts[f"{command} {match.group(3)} {match.group(4)}"] = int(match.group(1))
    return counts

