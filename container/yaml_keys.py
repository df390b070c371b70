"""The bootstrap YAML's keys: one table of every key, its value, its default and what it means.

`KEYS` is the only place a key of `pequod-bootstrap.yaml` is declared: the reader (bootstrap.py) takes the
keys each mapping allows, the ones it requires and every default from it (the records in settings.py take
their defaults from it too), and the reference in docs/configuration.md is printed from it
(`python -m container.yaml_keys --reference`; a test compares the two). The checks stay in the reader.

A key's path names it from the top: `frontend.tls.port`; `[]` is any item of a list: `sites[].name`.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from dataclasses import dataclass
from typing import Any

REQUIRED = object()  # a key's default when the mapping it is in must name it


@dataclass(frozen=True)
class Key:
    """One key: its path, what its value may be, its value when absent and its line in the reference."""
    path: str
    type: str
    default: Any
    help: str
    shown: str | None = None  # the reference's default where the value says too little (None, a condition)
    like: str | None = None  # a mapping (or a list of them) with the keys of this other path

    @property
    def parent(self) -> str:
        return self.path.rpartition(".")[0]

    @property
    def name(self) -> str:
        return self.path.rpartition(".")[2]


_PORT = "1-65535"
_NAT64_PREFIX = ipaddress.IPv6Network("fd99:69a4:fefb:64::/96")
_HOST_NAMES = "host names (no IP address, no wildcard, no port), a list or one"
_ABS_PATH = "absolute path without `..`"

KEYS: tuple[Key, ...] = (
    Key("external_services", "list", (), "services applications may `<require>`"),
    Key("external_services[].service_name", "lowercase letters, digits, `-`; unique", REQUIRED,
        "the service's name"),
    Key("external_services[].service_version", "string", REQUIRED, "its version"),
    Key("external_services[].external_host", "host name or IPv4 address", REQUIRED, "where it is"),
    Key("external_services[].external_port", _PORT, REQUIRED, "its port"),
    Key("external_services[].zone_name", "lowercase letters, digits, `-`", "bootstrap", "its zone"),
    Key("networks", "list of one", (), "the instances' network (one per host)",
        shown="(the agent generates one)"),
    Key("networks[].ipv6_subnet_ip", "IPv6 address", REQUIRED, "the instance subnet (no host bits)"),
    Key("networks[].ipv6_subnet_prefixlen", "48-64", REQUIRED, "its prefix length"),
    Key("networks[].location_name", "string", "default", "the network's location"),
    Key("networks[].ipv6_gateway", "IPv6 address inside the subnet", None, "the instances' default gateway",
        shown="(the subnet's first address)"),
    Key("networks[].ipv6_dns", "list of IPv6 addresses", (), "the instances' `/etc/resolv.conf`"),
    Key("networks[].ipv6_routes", "list", (), "extra routes in the instances (e.g. the NAT64 prefix)"),
    Key("networks[].ipv6_routes[].destination_ip", "IPv6 address", REQUIRED, "the destination (no host bits)"),
    Key("networks[].ipv6_routes[].destination_prefixlen", "0-128", REQUIRED, "its prefix length"),
    Key("networks[].ipv6_routes[].gateway", "IPv6 address", REQUIRED, "the next hop"),
    Key("environment", "mapping of variable names to strings", (), "passed to the bootstrapped instance (with "
        "sites: to every site); not `PREVIEWS_*` (those come from `previews`)"),
    Key("nat64", "mapping", None, "Tayga's NAT64 (the instances reach IPv4 through it)",
        shown="(the defaults below)"),
    Key("nat64.prefix", "IPv6 /96, not 64:ff9b::/96, not inside the instance subnet", _NAT64_PREFIX,
        "the NAT64 prefix", shown=f"a /96 among `networks[].ipv6_routes`, else `{_NAT64_PREFIX}`"),
    Key("nat64.ipv4_pool", "IPv4 network, /16 to /28", ipaddress.IPv4Network("198.19.64.0/24"),
        "Tayga's IPv4 pool: its first address is Tayga's, the second the host's end of the tunnel, the upper "
        "half is mapped to instance addresses"),
    Key("frontend", "mapping", None, "the HAProxy frontend that publishes the provided services",
        shown="(the defaults below)"),
    Key("frontend.bind", "IP address", ipaddress.IPv6Address("::"), "where it listens; `::` listens on IPv6 "
        "and IPv4"),
    Key("frontend.port", _PORT, 80, "the port of each provided service without an entry in `ports`"),
    Key("frontend.ports", "mapping of service names to 0-65535", (), "a port per provided service; 0: not "
        "published (only instances that require it reach it)"),
    Key("frontend.max_connections_per_client", "0-1000000", 100, "connections one client (IPv4 address, IPv6 "
        "/64) may hold at once (0: no limit)"),
    Key("frontend.max_requests_per_client", "0-1000000", 3000, "requests one client may make in any 10 s "
        "(0: no limit)"),
    Key("frontend.tls", "mapping", None, "HTTPS for the service published on `port`: certificates from an ACME "
        "CA (`domains`, `email`) or your own (`certificate`)", shown="(no HTTPS)"),
    Key("frontend.tls.domains", _HOST_NAMES, (), "one certificate for all, from the ACME CA (HTTP-01 through "
        "the frontend); not with `sites` (each site lists its own)"),
    Key("frontend.tls.email", "email address", "", "the ACME account's contact (expiry warnings go there)",
        shown="(required with ACME)"),
    Key("frontend.tls.acme_directory", "https:// URL", "https://acme-v02.api.letsencrypt.org/directory",
        "the ACME CA's directory"),
    Key("frontend.tls.acme_ca_bundle", _ABS_PATH, None, "a CA bundle that certifies the ACME server's own "
        "HTTPS"),
    Key("frontend.tls.certificate", _ABS_PATH, None, "instead of `domains` (and `email`, `acme_*`): your own "
        "chain and key in one PEM, not renewed"),
    Key("frontend.tls.key", _ABS_PATH, None, "with `certificate`: the key in a file of its own"),
    Key("frontend.tls.port", f"{_PORT}, not `frontend.port`", 443, "the HTTPS port"),
    Key("frontend.tls.challenge_port", _PORT, 8402, "the loopback port lego answers HTTP-01 challenges on "
        "while it runs"),
    Key("frontend.tls.renew_days", "1-365", 30, "renew a certificate this many days before it expires"),
    Key("mounts", "list", (), "host paths the instances may read (read-only bind mounts)"),
    Key("mounts[].source", _ABS_PATH, REQUIRED, "the path on the host; it must exist"),
    Key("mounts[].target", f"{_ABS_PATH}; unique", REQUIRED, "the path in the instance"),
    Key("metrics", "mapping", None, "host-only (loopback) addresses of the metrics",
        shown="(the defaults below)"),
    Key("metrics.agent", "loopback ADDRESS:PORT, or `off`", (ipaddress.IPv4Address("127.0.0.1"), 9464),
        "the agent's metrics", shown="`127.0.0.1:9464`"),
    Key("metrics.haproxy", "loopback ADDRESS:PORT, or `off`", (ipaddress.IPv4Address("127.0.0.1"), 9465),
        "HAProxy's own Prometheus exporter", shown="`127.0.0.1:9465`"),
    Key("sites", "list", (), "several sites on one host, each an instance of the one image (see Sites below)",
        shown="(one instance per image)"),
    Key("sites[].name", "lowercase letters, digits, `-`; starts with a letter; at most 40; unique", REQUIRED,
        "the site's name"),
    Key("sites[].domains", f"{_HOST_NAMES}; unique across sites", (), "the host names it serves; a site needs "
        "`domains` or `default: true`"),
    Key("sites[].default", "`true` or `false`", False, "`true`: it serves every host name no site owns (at most "
        "one site)"),
    Key("sites[].email", "email address", "", "the ACME contact for this site's certificate",
        shown="(`frontend.tls.email`)"),
    Key("sites[].memory_mb", "1-1000000", None, "its memory limit, at most the manifest's",
        shown="(the manifest's `<resources mb>`)"),
    Key("sites[].vmhz", "1-1000000", None, "its CPU, at most the manifest's",
        shown="(the manifest's `<resources vmhz>`)"),
    Key("sites[].environment", "mapping of variable names to strings", (), "over the top-level `environment`, "
        "for this site only"),
    Key("sites[].mounts", "list, as `mounts`", (), "besides the top-level `mounts` (not the same target)",
        like="mounts"),
    Key("sites[].previews", "mapping with the keys of `previews`, or `false`", None, "over the top-level "
        "`previews`' keys, for this site; `false`: this site has none", shown="(the top-level `previews`)",
        like="previews"),
    Key("previews", "mapping", None, "with `sites`: a preview of every other branch of each site "
        "([previews.md](previews.md))", shown="(no previews)"),
    Key("previews.domain", "host name", None, "previews answer at `BRANCH--SITE.DOMAIN` (wildcard DNS for "
        "`*.DOMAIN` points at this host)", shown="(required, here or in the site's `previews`)"),
    Key("previews.max", "1-100", 10, "previews per site; the least recently pushed retire first"),
    Key("previews.password", "8-128 printable characters", None, "their HTTP Basic password (user `preview`)",
        shown="(derived from the site's `WEBHOOK_SECRET`)"),
    Key("previews.public", "`true` or `false`", False, "`true`: the previews ask no password"),
    Key("previews.certificate", "mapping", None, "HTTPS by a wildcard certificate for `*.DOMAIN` from the ACME CA "
        "of `frontend.tls`, by DNS-01", shown="(plain HTTP)"),
    Key("previews.certificate.dns", "one of lego's DNS providers (`lego dnshelp`)", REQUIRED,
        "who answers the DNS-01 challenge, e.g. `cloudflare`"),
    Key("previews.certificate.environment", "mapping of variable names to strings", (), "the provider's "
        "settings (e.g. `CF_DNS_API_TOKEN`)"),
    Key("previews.certificate.resolvers", "list of HOST:PORT", (), "where lego checks the TXT record, e.g. "
        "`1.1.1.1:53`"),
)
KEY = {key.path: key for key in KEYS}


def _canonical(path: str) -> str:
    """The path whose keys `path` has: a site's `previews` has those of the top-level `previews`."""
    for key in KEYS:
        if key.like is not None and (path == key.path or path.startswith((f"{key.path}.", f"{key.path}[]"))):
            return key.like + path[len(key.path):]
    return path


def keys(path: str) -> tuple[str, ...]:
    """The keys the mapping at `path` allows ("" is the top level), in the table's order."""
    path = _canonical(path)
    return tuple(key.name for key in KEYS if key.parent == path)


def required(path: str) -> tuple[str, ...]:
    """The keys the mapping at `path` must name."""
    path = _canonical(path)
    return tuple(key.name for key in KEYS if key.parent == path and key.default is REQUIRED)


def default(path: str) -> Any:
    """A key's value when absent."""
    return KEY[_canonical(path)].default


# ---- the reference in docs/configuration.md ----

def _literal(value: Any) -> str:
    if value is REQUIRED:
        return "(required)"
    if value is None or value in ((), ""):
        return "(none)"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    return f"`{value}`"


REFERENCE_HEADER = "| key | value | default | meaning |\n|---|---|---|---|\n"


def reference() -> str:
    """The markdown table of docs/configuration.md's bootstrap YAML keys."""
    rows = []
    for key in KEYS:
        shown = key.shown if key.shown is not None else _literal(key.default)
        rows.append(f"| `{key.path}` | {key.type} | {shown} | {key.help} |\n")
    return REFERENCE_HEADER + "".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m container.yaml_keys",
                                     description="The keys of the agent's bootstrap YAML.")
    parser.add_argument("--reference", action="store_true",
                        help="print the markdown table of docs/configuration.md's bootstrap YAML keys")
    args = parser.parse_args(argv)
    if not args.reference:
        parser.error("nothing to do: give --reference")
    sys.stdout.write(reference())
    return 0


if __name__ == "__main__":
    sys.exit(main())
