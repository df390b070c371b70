"""The egress allowlist and NAT44, as iptables/ip6tables rules in chains of our own.

An instance's traffic leaves the bridge only towards what it declared: the external services of
its manifest's `require`s (their NAT64-synthesised addresses and port; rules match the instance's
own address, so each instance gets only its own application's services), the services other
instances provide to it through the frontend's listeners on the gateway, the DNS servers of the
bootstrap YAML, and replies. Anything else is rejected (ICMPv6 "administratively prohibited", so
programs fail at once instead of hanging) and counted. Tayga's IPv4 side is masqueraded to the
outside and may only reach the declared IPv4 addresses and ports.

The rules are rendered as iptables-restore input by a pure function (`firewall_rules.py`) and applied atomically per
table (`--noflush`: only our chains are replaced); the built-in chains get a single jump into ours.
"""

from __future__ import annotations

import logging
import re

from container import proc
from container.errors import FirewallError
from container.firewall_rules import FORWARD, INPUT, POSTROUTING, PREROUTING
from container.firewall_rules import render_rules as render_rules  # the pure half, re-exported
from container.records import Grant as Grant
from container.records import HostListener as HostListener

log = logging.getLogger(__name__)

# (command, table, our chain, built-in chain that jumps into it)
JUMPS = (
    ("ip6tables", "filter", FORWARD, "FORWARD"),
    ("ip6tables", "filter", INPUT, "INPUT"),
    ("ip6tables", "nat", PREROUTING, "PREROUTING"),
    ("iptables", "filter", FORWARD, "FORWARD"),
    ("iptables", "nat", POSTROUTING, "POSTROUTING"),
)


def _run(argv: list[str], stdin: str | None = None, check: bool = True) -> proc.CompletedProcess[str]:
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


# A line of `iptables-save -c`: the counters of one of our commented REJECT or DROP rules (tests read it too).
COUNTED = re.compile(r'^\[(\d+):(\d+)\] -A (PEQUOD-\S+) .*--comment "pequod: ([^"]+)" -j (REJECT|DROP)')


def rejected_by_application() -> dict[str, tuple[int, int]]:
    """(packets, bytes) rejected so far from each application's instances (their own reject rules)."""
    found: dict[str, tuple[int, int]] = {}
    result = _run(["ip6tables-save", "-c", "-t", "filter"], check=False)
    for line in result.stdout.splitlines():
        match = COUNTED.match(line)
        if match and match.group(4).startswith("egress not declared: "):
            application = match.group(4).removeprefix("egress not declared: ")
            packets, size = found.get(application, (0, 0))
            found[application] = (packets + int(match.group(1)), size + int(match.group(2)))
    return found
