"""The bootstrap YAML (`pequod-bootstrap.yaml`), parsed once into frozen, typed objects.

    external_services:
      - {service_name: github-https, service_version: "1", external_host: github.com,
         external_port: 443, zone_name: bootstrap}
    networks:
      - ipv6_subnet_ip: "fd00:5eed:1::"
        ipv6_subnet_prefixlen: 64
        location_name: home
        ipv6_gateway: "fd00:5eed:1::1"
        ipv6_dns: ["fd00:5eed:1::53"]
        ipv6_routes:
          - {destination_ip: "fd99:69a4:fefb:64::", destination_prefixlen: 96, gateway: "fd00:5eed:1::1"}
    nat64:                      # optional; defaults below
      prefix: "fd99:69a4:fefb:64::/96"
      ipv4_pool: "198.19.64.0/24"
    frontend:                   # optional; defaults below
      bind: "::"                # "::" listens on IPv6 and IPv4
      port: 80                  # for every provided service without its own entry in ports
      ports: {srcco-de: 80}     # 0: not published (only instances that require it reach it)
      tls:                      # optional: HTTPS for the service published on `port`
        domains: [blog.example.org]   # certificates from an ACME CA (HTTP-01 through the frontend)
        email: admin@example.org
        acme_directory: https://acme-v02.api.letsencrypt.org/directory   # the default
        acme_ca_bundle: /path/ca.pem  # optional: certifies the ACME server's own HTTPS
        # certificate: /etc/ssl/private/blog.pem   # instead: a PEM with chain and key you provide
        port: 443
    mounts:                     # optional: host paths the instance may read
      - {source: /srv/pequod/site.git, target: /srv/pequod/site.git}
    environment:
      SITE_REPO: file:///srv/pequod/site.git
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import yaml

from container.errors import BootstrapError
from container.manifest import HOSTNAME, NAME

MAX_BYTES = 256 * 1024
IPNetwork = TypeVar("IPNetwork", ipaddress.IPv4Network, ipaddress.IPv6Network)
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ABS_PATH = re.compile(r"/(?!.*(^|/)\.\.(/|\Z))[^\0\n]*")




@dataclass(frozen=True)
class ExternalService:
    name: str
    version: str
    external_host: str
    external_port: int
    zone: str


@dataclass(frozen=True)
class Route:
    destination: ipaddress.IPv6Network
    gateway: ipaddress.IPv6Address


@dataclass(frozen=True)
class Network:
    subnet: ipaddress.IPv6Network
    location: str
    gateway: ipaddress.IPv6Address
    dns: tuple[ipaddress.IPv6Address, ...] = ()
    routes: tuple[Route, ...] = ()


DEFAULT_NAT64_PREFIX = ipaddress.IPv6Network("fd99:69a4:fefb:64::/96")
DEFAULT_NAT64_POOL = ipaddress.IPv4Network("198.19.64.0/24")


@dataclass(frozen=True)
class Nat64:
    """Tayga's NAT64 prefix (/96) and its IPv4 pool (/16 to /28): the pool's first address is Tayga's
    own, the second the host's end of the tunnel, the upper half is mapped to instance addresses."""
    prefix: ipaddress.IPv6Network = DEFAULT_NAT64_PREFIX
    ipv4_pool: ipaddress.IPv4Network = DEFAULT_NAT64_POOL


LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
# A DNS host name (no IP address, no wildcard: HTTP-01 cannot prove those), at least two labels.
_DOMAIN = re.compile(r"(?=.{1,253}\Z)(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*\.[a-z][a-z0-9-]{0,62}")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


def is_domain(name: str) -> bool:
    """A host name `frontend.tls.domains` accepts (lower case, no trailing dot)."""
    return bool(_DOMAIN.fullmatch(name))


@dataclass(frozen=True)
class TlsSettings:
    """HTTPS at the frontend: certificates for `domains` from the ACME CA at `acme_directory`, or the
    administrator's own PEM (`certificate`, chain and key; `key` when the key is a file of its own)."""
    port: int = 443
    domains: tuple[str, ...] = ()
    email: str = ""
    acme_directory: str = LETS_ENCRYPT
    acme_ca_bundle: str | None = None
    certificate: str | None = None
    key: str | None = None
    challenge_port: int = 8402  # loopback port the ACME client answers HTTP-01 challenges on
    renew_days: int = 30  # renew when fewer days than this are left

    @property
    def acme(self) -> bool:
        return self.certificate is None


@dataclass(frozen=True)
class FrontendSettings:
    bind: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv6Address("::")
    port: int = 80
    ports: tuple[tuple[str, int], ...] = ()
    # Per client address (0: no limit): connections open at once, and requests in any 10 s.
    max_connections_per_client: int = 100
    max_requests_per_client: int = 3000
    tls: TlsSettings | None = None

    def port_of(self, service: str) -> int:
        return dict(self.ports).get(service, self.port)


@dataclass(frozen=True)
class Mount:
    """A host path bind-mounted read-only into the instance."""
    source: str
    target: str


Listen = tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]


@dataclass(frozen=True)
class MetricsSettings:
    """Host-only addresses of the agent's metrics and HAProxy's exporter (None: off)."""
    agent: Listen | None = (ipaddress.IPv4Address("127.0.0.1"), 9464)
    haproxy: Listen | None = (ipaddress.IPv4Address("127.0.0.1"), 9465)


@dataclass(frozen=True)
class Bootstrap:
    source: str
    external_services: tuple[ExternalService, ...] = ()
    network: Network | None = None  # at most one per host; None: the agent generates one
    environment: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    nat64: Nat64 = Nat64()
    frontend: FrontendSettings = FrontendSettings()
    mounts: tuple[Mount, ...] = ()
    metrics: MetricsSettings = MetricsSettings()

    @property
    def env(self) -> dict[str, str]:
        return dict(self.environment)

    @property
    def mount_map(self) -> dict[str, str]:
        """target inside the instance → source on the host"""
        return {mount.target: mount.source for mount in self.mounts}


class _Reader:
    def __init__(self, source: str):
        self.source = source

    def fail(self, where: str, message: str) -> BootstrapError:
        """The one-line error: control characters in keys and values (a newline) are escaped."""
        text = f"{self.source}: {where}: {message}"
        return BootstrapError("".join(c if c.isprintable() else ascii(c)[1:-1] for c in text))

    def mapping(self, value: Any, where: str, allowed: tuple[str, ...] | None, required: tuple[str, ...]) -> dict:
        """A mapping with only `allowed` keys (any keys where allowed is None) and every `required` one."""
        if not isinstance(value, dict):
            raise self.fail(where, f"expected a mapping, got {_kind(value)}")
        for key in value:
            if allowed is not None and key not in allowed:
                raise self.fail(f"{where}.{key}", f"unknown key (allowed: {', '.join(allowed)})")
        for key in required:
            if key not in value:
                raise self.fail(where, f"missing key {key}")
        return value

    def listing(self, value: Any, where: str) -> list:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(where, f"expected a list, got {_kind(value)}")
        return value

    def text(self, value: Any, where: str, pattern: re.Pattern[str] | None = None, expected: str = "") -> str:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise self.fail(where, f"expected a string, got {_kind(value)}")
        text = str(value)
        if pattern is not None and not pattern.fullmatch(text):
            raise self.fail(where, f"{text!r} is not {expected}")
        return text

    def integer(self, value: Any, where: str, low: int, high: int, what: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(where, f"expected {what} ({low}-{high}), got {_kind(value)} {value!r}")
        if not low <= value <= high:
            raise self.fail(where, f"{value} is out of range: expected {what} ({low}-{high})")
        return value

    def network(self, value: Any, where: str, kind: type[IPNetwork], example: str) -> IPNetwork:
        """An IPv4Network or IPv6Network, without host bits."""
        text = self.text(value, where)
        try:
            return kind(text)
        except ValueError:
            version = 4 if kind is ipaddress.IPv4Network else 6
            raise self.fail(where, f"{text!r} is not an IPv{version} network such as {example}") from None

    def ipv6(self, value: Any, where: str) -> ipaddress.IPv6Address:
        text = self.text(value, where)
        try:
            return ipaddress.IPv6Address(text)
        except ValueError:
            raise self.fail(where, f"{text!r} is not an IPv6 address") from None


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", type(None): "nothing"}.get(
        type(value), type(value).__name__
    )


def parse_bootstrap(text: str, source: str) -> Bootstrap:
    read = _Reader(source)
    if len(text.encode()) > MAX_BYTES:
        raise read.fail("file", f"larger than {MAX_BYTES} bytes")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "file"
        raise read.fail(where, f"not valid YAML: {getattr(exc, 'problem', None) or exc}") from None
    if data is None:
        data = {}
    top = read.mapping(data, "top level", ("external_services", "networks", "environment", "nat64", "frontend",
                                                 "mounts", "metrics"), ())

    services = []
    for index, item in enumerate(read.listing(top.get("external_services"), "external_services")):
        where = f"external_services[{index}]"
        fields = read.mapping(item, where,
                              ("service_name", "service_version", "external_host", "external_port", "zone_name"),
                      ("service_name", "service_version", "external_host", "external_port"))
        services.append(ExternalService(
            name=read.text(fields["service_name"], f"{where}.service_name", NAME,
                           "a service name (lowercase, digits, '-')"),
            version=read.text(fields["service_version"], f"{where}.service_version"),
            external_host=read.text(fields["external_host"], f"{where}.external_host", HOSTNAME,
                                    "a host name or IPv4 address"),
            external_port=read.integer(fields["external_port"], f"{where}.external_port", 1, 65535, "a port number"),
            zone=read.text(fields.get("zone_name", "bootstrap"), f"{where}.zone_name", NAME, "a zone name"),
        ))
    names = [s.name for s in services]
    for name in names:
        if names.count(name) > 1:
            raise read.fail("external_services", f"service {name!r} is defined twice")

    networks = []
    for index, item in enumerate(read.listing(top.get("networks"), "networks")):
        where = f"networks[{index}]"
        fields = read.mapping(item, where, ("ipv6_subnet_ip", "ipv6_subnet_prefixlen", "location_name", "ipv6_gateway",
                                    "ipv6_dns", "ipv6_routes"), ("ipv6_subnet_ip", "ipv6_subnet_prefixlen"))
        prefixlen = read.integer(fields["ipv6_subnet_prefixlen"], f"{where}.ipv6_subnet_prefixlen", 48, 64,
                              "a prefix length (instances need 64 bits of host part at most)")
        subnet_ip = read.ipv6(fields["ipv6_subnet_ip"], f"{where}.ipv6_subnet_ip")
        try:
            subnet = ipaddress.IPv6Network(f"{subnet_ip}/{prefixlen}")
        except ValueError:
            raise read.fail(f"{where}.ipv6_subnet_ip", f"{subnet_ip} has host bits set for /{prefixlen}") from None
        gateway = read.ipv6(fields["ipv6_gateway"], f"{where}.ipv6_gateway") if "ipv6_gateway" in fields else subnet[1]
        if gateway not in subnet:
            raise read.fail(f"{where}.ipv6_gateway", f"{gateway} is not inside {subnet}")
        dns_list = read.listing(fields.get("ipv6_dns"), f"{where}.ipv6_dns")
        dns = tuple(read.ipv6(value, f"{where}.ipv6_dns[{i}]") for i, value in enumerate(dns_list))
        routes = []
        for route_index, route in enumerate(read.listing(fields.get("ipv6_routes"), f"{where}.ipv6_routes")):
            route_where = f"{where}.ipv6_routes[{route_index}]"
            route_fields = read.mapping(route, route_where, ("destination_ip", "destination_prefixlen", "gateway"),
                           ("destination_ip", "destination_prefixlen", "gateway"))
            dest_ip = read.ipv6(route_fields["destination_ip"], f"{route_where}.destination_ip")
            dest_len = read.integer(route_fields["destination_prefixlen"], f"{route_where}.destination_prefixlen",
                                    0, 128, "a prefix length")
            try:
                destination = ipaddress.IPv6Network(f"{dest_ip}/{dest_len}")
            except ValueError:
                raise read.fail(f"{route_where}.destination_ip",
                                f"{dest_ip} has host bits set for /{dest_len}") from None
            routes.append(Route(destination, read.ipv6(route_fields["gateway"], f"{route_where}.gateway")))
        location = read.text(fields.get("location_name", "default"), f"{where}.location_name")
        networks.append(Network(subnet, location, gateway, dns, tuple(routes)))
    if len(networks) > 1:
        raise read.fail("networks", "this agent runs one network per host; list exactly one")

    environment = read.mapping(top.get("environment") or {}, "environment", None, ())
    env_items = []
    for key, value in environment.items():
        if not isinstance(key, str) or not _ENV_KEY.fullmatch(key):
            raise read.fail(f"environment.{key}", "not a valid environment variable name")
        if isinstance(value, dict | list) or value is None:
            raise read.fail(f"environment.{key}", f"expected a string, got {_kind(value)}")
        env_items.append((key, str(value).lower() if isinstance(value, bool) else str(value)))
    nat64 = _nat64(read, top.get("nat64"), networks)
    frontend = _frontend(read, top.get("frontend"))
    mounts = []
    for index, item in enumerate(read.listing(top.get("mounts"), "mounts")):
        where = f"mounts[{index}]"
        fields = read.mapping(item, where, ("source", "target"), ("source", "target"))
        mounts.append(Mount(*(read.text(fields[key], f"{where}.{key}", _ABS_PATH, "an absolute path without '..'")
                              for key in ("source", "target"))))
    targets = [mount.target for mount in mounts]
    for target in targets:
        if targets.count(target) > 1:
            raise read.fail("mounts", f"target {target} is mounted twice")
    return Bootstrap(source, tuple(services), networks[0] if networks else None, tuple(sorted(env_items)), nat64,
                     frontend, tuple(mounts), _metrics(read, top.get("metrics")))


def _nat64(read: _Reader, value: Any, networks: list[Network]) -> Nat64:
    """The `nat64` section; without one, a /96 among the network's routes is the prefix (as in the seed)."""
    fields = read.mapping(value if value is not None else {}, "nat64", ("prefix", "ipv4_pool"), ())
    routed = [route.destination for net in networks for route in net.routes if route.destination.prefixlen == 96]
    prefix = routed[0] if routed else DEFAULT_NAT64_PREFIX
    if "prefix" in fields:
        prefix = read.network(fields["prefix"], "nat64.prefix", ipaddress.IPv6Network, "fd99:69a4:fefb:64::/96")
        if prefix.prefixlen != 96:
            raise read.fail("nat64.prefix", f"{fields['prefix']} must be a /96")
    if prefix.subnet_of(ipaddress.IPv6Network("64:ff9b::/96")):
        raise read.fail("nat64.prefix", "the well-known prefix 64:ff9b::/96 cannot reach private IPv4 addresses; "
                     "use a network-specific prefix such as fd99:69a4:fefb:64::/96")
    for net in networks:
        if prefix.overlaps(net.subnet):
            raise read.fail("nat64.prefix", f"{prefix} overlaps the instance subnet {net.subnet}")
    pool = DEFAULT_NAT64_POOL
    if "ipv4_pool" in fields:
        pool = read.network(fields["ipv4_pool"], "nat64.ipv4_pool", ipaddress.IPv4Network, "198.19.64.0/24")
        if not 16 <= pool.prefixlen <= 28:
            raise read.fail("nat64.ipv4_pool", f"{fields['ipv4_pool']}: expected a /16 to /28")
    return Nat64(prefix, pool)


def _metrics(read: _Reader, value: Any) -> MetricsSettings:
    """`metrics: {agent: "127.0.0.1:9464", haproxy: "127.0.0.1:9465"}`; `off` turns one off. Loopback only:
    neither may be reachable from outside the host or from an instance."""
    fields = read.mapping(value if value is not None else {}, "metrics", ("agent", "haproxy"), ())
    found = {}
    for key in ("agent", "haproxy"):
        if key not in fields:
            continue
        text = str(fields[key]).strip()
        if text in ("off", "False", "false"):
            found[key] = None
            continue
        host, _, port = text.rpartition(":")
        try:
            address = ipaddress.ip_address(host.strip("[]"))
            number = int(port)
        except ValueError:
            raise read.fail(f"metrics.{key}",
                            f"{text!r}: expected ADDRESS:PORT such as 127.0.0.1:9464, or off") from None
        if not address.is_loopback:
            raise read.fail(f"metrics.{key}", f"{address} is not a loopback address: metrics stay on this host")
        if not 1 <= number <= 65535:
            raise read.fail(f"metrics.{key}", f"{number}: expected a port number 1-65535")
        found[key] = (address, number)
    return MetricsSettings(**found)


def _frontend(read: _Reader, value: Any) -> FrontendSettings:
    fields = read.mapping(value if value is not None else {}, "frontend",
                  ("bind", "port", "ports", "max_connections_per_client", "max_requests_per_client", "tls"), ())
    bind = FrontendSettings.bind
    if "bind" in fields:
        text = read.text(fields["bind"], "frontend.bind")
        try:
            bind = ipaddress.ip_address(text)
        except ValueError:
            raise read.fail("frontend.bind",
                            f"{text!r} is not an IP address (\"::\" listens on IPv6 and IPv4)") from None
    port = (read.integer(fields["port"], "frontend.port", 1, 65535, "a port number") if "port" in fields
            else FrontendSettings.port)
    ports = read.mapping(fields.get("ports") or {}, "frontend.ports", None, ())
    per_service = []
    for name, service_port in ports.items():
        read.text(name, f"frontend.ports.{name}", NAME, "a service name (lowercase, digits, '-')")
        per_service.append((name, read.integer(service_port, f"frontend.ports.{name}", 0, 65535,
                                            "a port number, 0 for not published")))
    limits = {key: read.integer(fields[key], f"frontend.{key}", 0, 1000000, "a whole number (0: no limit)")
              for key in ("max_connections_per_client", "max_requests_per_client") if key in fields}
    tls = _tls(read, fields["tls"], port) if fields.get("tls") is not None else None
    return FrontendSettings(bind, port, tuple(sorted(per_service)), **limits, tls=tls)


def _tls(read: _Reader, value: Any, http_port: int) -> TlsSettings:
    """`frontend.tls`: either ACME (`domains`, `email`, optional `acme_directory`, `acme_ca_bundle`) or the
    administrator's `certificate` (and optional `key`)."""
    fields = read.mapping(value, "frontend.tls", ("domains", "email", "acme_directory", "acme_ca_bundle",
                                                  "certificate", "key", "port", "challenge_port", "renew_days"), ())
    found: dict[str, Any] = {}
    if "port" in fields:
        found["port"] = read.integer(fields["port"], "frontend.tls.port", 1, 65535, "a port number")
    if found.get("port", TlsSettings.port) == http_port:
        raise read.fail("frontend.tls.port", f"{http_port} is already frontend.port (plain HTTP); HTTPS needs "
                                             "a port of its own (443)")
    if "challenge_port" in fields:
        found["challenge_port"] = read.integer(fields["challenge_port"], "frontend.tls.challenge_port", 1, 65535,
                                               "a port number")
    if "renew_days" in fields:
        found["renew_days"] = read.integer(fields["renew_days"], "frontend.tls.renew_days", 1, 365,
                                           "days before expiry")
    domains = fields.get("domains")
    if isinstance(domains, str):
        domains = [domains]
    names = []
    for index, item in enumerate(read.listing(domains, "frontend.tls.domains")):
        name = read.text(item, f"frontend.tls.domains[{index}]").strip().lower().rstrip(".")
        if not _DOMAIN.fullmatch(name):
            raise read.fail(f"frontend.tls.domains[{index}]", f"{item!r} is not a host name such as "
                            "blog.example.org (no IP address, no wildcard, no port)")
        if name in names:
            raise read.fail(f"frontend.tls.domains[{index}]", f"{name} is listed twice")
        names.append(name)
    found["domains"] = tuple(names)
    paths = {key: read.text(fields[key], f"frontend.tls.{key}", _ABS_PATH, "an absolute path")
             for key in ("acme_ca_bundle", "certificate", "key") if fields.get(key) is not None}
    if "certificate" in paths:
        for key in ("email", "acme_directory", "acme_ca_bundle"):
            if key in fields:
                raise read.fail(f"frontend.tls.{key}", "not used with certificate (your own certificate is not "
                                                      "renewed by ACME); remove one of the two")
        return TlsSettings(**found, certificate=paths["certificate"], key=paths.get("key"))
    if "key" in paths:
        raise read.fail("frontend.tls.key", "only used with certificate")
    if not names:
        raise read.fail("frontend.tls", "give domains (certificates from an ACME CA) or certificate (your own PEM)")
    if "email" not in fields:
        raise read.fail("frontend.tls", "missing key email: the ACME CA needs a contact address for the account "
                                        "(expiry warnings go there)")
    found["email"] = read.text(fields["email"], "frontend.tls.email", _EMAIL, "an email address")
    if "acme_directory" in fields:
        url = read.text(fields["acme_directory"], "frontend.tls.acme_directory")
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise read.fail("frontend.tls.acme_directory", f"{url!r} is not an https:// URL of an ACME directory")
        found["acme_directory"] = url
    return TlsSettings(**found, acme_ca_bundle=paths.get("acme_ca_bundle"))


def load_bootstrap(path: str) -> Bootstrap:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read(MAX_BYTES + 1)
    except OSError as exc:
        raise BootstrapError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise BootstrapError(f"{path}: not UTF-8 text") from None
    return parse_bootstrap(text, path)
