"""The bootstrap YAML (`pequod-bootstrap.yaml`), parsed once into frozen, typed objects. Its keys, the ones
each mapping requires and their defaults come from the table in yaml_keys.py; the checks are here.

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
    sites:                      # optional: several sites, each an instance of the one image (docs/sites.md)
      - name: blog
        default: true           # serves hosts no site names (at most one site)
        domains: [blog.example.org]
        email: me@example.org   # optional: the ACME contact for this site (else frontend.tls.email)
        memory_mb: 256          # optional: less than the manifest's <resources mb> (never more)
        vmhz: 500               # optional: less than the manifest's <resources vmhz>
        environment: {SITE_REPO: file:///srv/pequod/site.git}   # over the top-level environment
        mounts: [{source: /srv/pequod/site.git, target: /srv/pequod/site.git}]   # besides the top-level ones
        previews: {max: 5}      # optional: over the top-level previews, for this site
    previews:                   # optional: a preview per branch at BRANCH--SITE.DOMAIN (docs/previews.md)
      domain: preview.example.org   # wildcard DNS *.preview.example.org points at this host
      max: 10                   # per site; the least recently pushed retire first
      password: "…"             # HTTP Basic, user `preview`; default: derived from the site's token
      public: false             # true: no password
      certificate:              # optional: HTTPS by a wildcard certificate for *.preview.example.org (DNS-01)
        dns: cloudflare         # one of lego's DNS providers (lego dnshelp)
        environment: {CF_DNS_API_TOKEN: "…"}   # the provider's settings
        resolvers: ["1.1.1.1:53"]              # optional: where lego checks the TXT record
"""
from __future__ import annotations

import ipaddress
import re
from typing import Any
from urllib.parse import urlsplit

import yaml

from container.errors import BootstrapError
from container.manifest import HOSTNAME, NAME
from container.settings import (  # noqa: F401 - the records are imported from here too
    ABS_PATH,
    DOMAIN,
    EMAIL,
    ENV_KEY,
    MAX_BYTES,
    SITE_NAME,
    Bootstrap,
    DnsChallenge,
    ExternalService,
    FrontendSettings,
    Listen,
    MetricsSettings,
    Mount,
    Nat64,
    Network,
    Previews,
    Route,
    Site,
    TlsSettings,
    is_domain,
)
from container.yaml_keys import default, keys, required
from container.yaml_reader import Reader, kind


def parse_bootstrap(text: str, source: str) -> Bootstrap:
    read = Reader(source)
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
    top = read.mapping(data, "top level", keys(""), required(""))
    networks = _networks(read, top.get("networks"))
    frontend = _frontend(read, top.get("frontend"), bool(top.get("sites")))
    environment = _environment(read, top.get("environment"), "environment")
    sites = _sites(read, top.get("sites"), frontend, top.get("previews"), environment)
    return Bootstrap(source, _services(read, top.get("external_services")), networks[0] if networks else None,
                     environment, _nat64(read, top.get("nat64"), networks), frontend,
                     _mounts(read, top.get("mounts"), "mounts"), _metrics(read, top.get("metrics")), sites)


def _services(read: Reader, value: Any) -> tuple[ExternalService, ...]:
    services = []
    for index, item in enumerate(read.listing(value, "external_services")):
        where = f"external_services[{index}]"
        fields = read.mapping(item, where, keys("external_services[]"), required("external_services[]"))
        services.append(ExternalService(
            name=read.text(fields["service_name"], f"{where}.service_name", NAME,
                           "a service name (lowercase, digits, '-')"),
            version=read.text(fields["service_version"], f"{where}.service_version"),
            external_host=read.text(fields["external_host"], f"{where}.external_host", HOSTNAME,
                                    "a host name or IPv4 address"),
            external_port=read.integer(fields["external_port"], f"{where}.external_port", 1, 65535, "a port number"),
            zone=read.text(fields.get("zone_name", default("external_services[].zone_name")), f"{where}.zone_name",
                           NAME, "a zone name"),
        ))
    names = [s.name for s in services]
    for name in names:
        if names.count(name) > 1:
            raise read.fail("external_services", f"service {name!r} is defined twice")
    return tuple(services)


def _networks(read: Reader, value: Any) -> list[Network]:
    networks = []
    for index, item in enumerate(read.listing(value, "networks")):
        where = f"networks[{index}]"
        fields = read.mapping(item, where, keys("networks[]"), required("networks[]"))
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
        routes = tuple(_route(read, route, f"{where}.ipv6_routes[{i}]")
                       for i, route in enumerate(read.listing(fields.get("ipv6_routes"), f"{where}.ipv6_routes")))
        location = read.text(fields.get("location_name", default("networks[].location_name")),
                             f"{where}.location_name")
        networks.append(Network(subnet, location, gateway, dns, routes))
    if len(networks) > 1:
        raise read.fail("networks", "this agent runs one network per host; list exactly one")
    return networks


def _route(read: Reader, value: Any, where: str) -> Route:
    fields = read.mapping(value, where, keys("networks[].ipv6_routes[]"), required("networks[].ipv6_routes[]"))
    dest_ip = read.ipv6(fields["destination_ip"], f"{where}.destination_ip")
    dest_len = read.integer(fields["destination_prefixlen"], f"{where}.destination_prefixlen", 0, 128,
                            "a prefix length")
    try:
        destination = ipaddress.IPv6Network(f"{dest_ip}/{dest_len}")
    except ValueError:
        raise read.fail(f"{where}.destination_ip", f"{dest_ip} has host bits set for /{dest_len}") from None
    return Route(destination, read.ipv6(fields["gateway"], f"{where}.gateway"))


def _environment(read: Reader, value: Any, where: str) -> tuple[tuple[str, str], ...]:
    found = _environment_items(read, value, where)
    for key, _ in found:
        if key.startswith("PREVIEWS_"):
            raise read.fail(f"{where}.{key}", "previews are set in the `previews` section (docs/previews.md), not "
                            "in the environment")
    return found


def _environment_items(read: Reader, value: Any, where: str) -> tuple[tuple[str, str], ...]:
    environment = read.mapping(value or {}, where, None, ())
    items = []
    for key, item in environment.items():
        if not isinstance(key, str) or not ENV_KEY.fullmatch(key):
            raise read.fail(f"{where}.{key}", "not a valid environment variable name")
        if isinstance(item, dict | list) or item is None:
            raise read.fail(f"{where}.{key}", f"expected a string, got {kind(item)}")
        items.append((key, str(item).lower() if isinstance(item, bool) else str(item)))
    return tuple(sorted(items))


def _mounts(read: Reader, value: Any, where: str) -> tuple[Mount, ...]:
    mounts = []
    for index, item in enumerate(read.listing(value, where)):
        fields = read.mapping(item, f"{where}[{index}]", keys("mounts[]"), required("mounts[]"))
        mounts.append(Mount(*(read.text(fields[key], f"{where}[{index}].{key}", ABS_PATH,
                                        "an absolute path without '..'") for key in ("source", "target"))))
    targets = [mount.target for mount in mounts]
    for target in targets:
        if targets.count(target) > 1:
            raise read.fail(where, f"target {target} is mounted twice")
    return tuple(mounts)


DNS_PROVIDER = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
RESOLVER = re.compile(r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}")


def _dns_challenge(read: Reader, value: Any, where: str) -> DnsChallenge:
    fields = read.mapping(value, where, keys("previews.certificate"), required("previews.certificate"))
    provider = read.text(fields["dns"], f"{where}.dns", DNS_PROVIDER, "a DNS provider of lego's (lego dnshelp "
                         "lists them), e.g. cloudflare")
    resolvers = tuple(read.text(item, f"{where}.resolvers[{index}]", RESOLVER, "host:port, e.g. 1.1.1.1:53")
                      for index, item in enumerate(read.listing(fields.get("resolvers"), f"{where}.resolvers")))
    return DnsChallenge(provider, _environment_items(read, fields.get("environment"), f"{where}.environment"),
                        resolvers)


def _preview_fields(read: Reader, value: Any, where: str) -> dict[str, Any]:
    """One `previews` mapping (at the top: for every site; in a site's entry: over the top's), each key checked."""
    if value is None:
        return {}
    fields = dict(read.mapping(value, where, keys("previews"), required("previews")))
    if "domain" in fields:
        fields["domain"] = read.text(fields["domain"], f"{where}.domain").strip().lower().rstrip(".")
        if not DOMAIN.fullmatch(fields["domain"]):
            raise read.fail(f"{where}.domain", f"{fields['domain']!r} is not a host name such as preview.example.org "
                            "(its wildcard *.preview.example.org points at this host)")
    if "max" in fields:
        fields["max"] = read.integer(fields["max"], f"{where}.max", 1, 100, "previews per site")
    if "password" in fields:
        password = read.text(fields["password"], f"{where}.password")
        if not 8 <= len(password) <= 128 or not password.isprintable():
            raise read.fail(f"{where}.password", "expected 8 to 128 printable characters")
        fields["password"] = password
    if "public" in fields and not isinstance(fields["public"], bool):
        raise read.fail(f"{where}.public", f"expected true or false, got {kind(fields['public'])}")
    if "certificate" in fields:
        fields["certificate"] = _dns_challenge(read, fields["certificate"], f"{where}.certificate")
    return fields


def _site_previews(read: Reader, top: dict[str, Any], value: Any, where: str, name: str,
                   env: dict[str, str]) -> Previews | None:
    if value is False:  # this site has none, whatever the top-level previews say
        return None
    fields = {**top, **_preview_fields(read, value, f"{where}.previews")}
    if not fields:
        return None
    if "domain" not in fields:
        raise read.fail(f"{where}.previews", "missing key domain (here or in the top-level previews)")
    if "--" in name:
        raise read.fail(f"{where}.name", f"{name!r}: with previews, a site's name has no '--' (it separates a "
                        "branch's label from the site's name in a preview's address)")
    if len(f"{name}.{fields['domain']}") > 253:
        raise read.fail(f"{where}.previews", f"{name}.{fields['domain']} is longer than a host name may be (253)")
    public = fields.get("public", default("previews.public"))
    if not public and not fields.get("password") and not env.get("WEBHOOK_SECRET"):
        raise read.fail(f"{where}.previews", "previews ask for a password: set previews.password, give the site a "
                        "WEBHOOK_SECRET (the password is then derived from it), or set previews.public: true")
    return Previews(fields["domain"], fields.get("max", default("previews.max")),
                    fields.get("password", default("previews.password")), public,
                    fields.get("certificate", default("previews.certificate")))


def _sites(read: Reader, value: Any, frontend: FrontendSettings, previews: Any = None,
           environment: tuple[tuple[str, str], ...] = ()) -> tuple[Site, ...]:
    """`sites`: names and domains unique across sites; at most one default; with HTTPS, domains per site."""
    top_previews = _preview_fields(read, previews, "previews")
    if previews is not None and not value:
        raise read.fail("previews", "previews are per site: list the sites under `sites`")
    sites: list[Site] = []
    owner: dict[str, str] = {}
    for index, item in enumerate(read.listing(value, "sites")):
        where = f"sites[{index}]"
        fields = read.mapping(item, where, keys("sites[]"), required("sites[]"))
        name = read.text(fields["name"], f"{where}.name", SITE_NAME, "a site name (lowercase letters, digits, '-', "
                         "at most 40, starting with a letter)")
        if any(site.name == name for site in sites):
            raise read.fail(f"{where}.name", f"site {name!r} is defined twice")
        domains = _domains(read, fields.get("domains"), f"{where}.domains")
        for domain in domains:
            if domain in owner:
                raise read.fail(f"{where}.domains", f"{domain} belongs to site {owner[domain]!r} already; a domain "
                                "belongs to one site")
            owner[domain] = name
        is_default = fields.get("default", default("sites[].default"))
        if not isinstance(is_default, bool):
            raise read.fail(f"{where}.default", f"expected true or false, got {kind(is_default)}")
        if is_default and any(site.default for site in sites):
            raise read.fail(f"{where}.default", "another site is the default already; at most one site is")
        if not domains and not is_default:
            raise read.fail(where, "a site needs domains (the host names it serves) or default: true")
        limits = {key: read.integer(fields[key], f"{where}.{key}", 1, 1000000, what)
                  for key, what in (("memory_mb", "megabytes"), ("vmhz", "virtual MHz")) if key in fields}
        email = (read.text(fields["email"], f"{where}.email", EMAIL, "an email address") if "email" in fields
                 else default("sites[].email"))
        site_env = _environment(read, fields.get("environment"), f"{where}.environment")
        site_previews = _site_previews(read, top_previews, fields.get("previews"), where, name,
                                       {**dict(environment), **dict(site_env)})
        sites.append(Site(name, domains, is_default, email, environment=site_env,
                          mounts=_mounts(read, fields.get("mounts"), f"{where}.mounts"), previews=site_previews,
                          **limits))
    certificates: dict[str, DnsChallenge] = {}
    for index, site in enumerate(sites):  # one wildcard certificate per previews' domain, by ACME
        if site.previews is None or site.previews.certificate is None:
            continue
        if frontend.tls is None or not frontend.tls.acme:
            raise read.fail(f"sites[{index}].previews.certificate", "a certificate for the previews comes from "
                            "the ACME CA of frontend.tls (with its email): configure frontend.tls")
        shared = certificates.setdefault(site.previews.domain, site.previews.certificate)
        if shared != site.previews.certificate:
            raise read.fail(f"sites[{index}].previews.certificate", f"the previews at {site.previews.domain} share "
                            "one wildcard certificate: give them one certificate setting")
    for site in sites:  # a preview's name is never a site's domain
        for other in sites:
            previews = other.previews
            if previews is None:
                continue
            clash = next((d for d in site.domains if d.endswith("." + previews.domain)), None)
            if clash is not None:
                raise read.fail(f"sites[{sites.index(site)}].domains", f"{clash} is under the previews' domain "
                                f"{previews.domain} (site {other.name!r}), whose names are the previews'")
    if sites and frontend.tls is not None and frontend.tls.domains:
        raise read.fail("frontend.tls.domains", "with sites, each site lists its own domains; remove these")
    return tuple(sites)


def _domains(read: Reader, value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    names: list[str] = []
    for index, item in enumerate(read.listing(value, where)):
        name = read.text(item, f"{where}[{index}]").strip().lower().rstrip(".")
        if not DOMAIN.fullmatch(name):
            raise read.fail(f"{where}[{index}]", f"{item!r} is not a host name such as blog.example.org "
                            "(no IP address, no wildcard, no port)")
        if name in names:
            raise read.fail(f"{where}[{index}]", f"{name} is listed twice")
        names.append(name)
    return tuple(names)


def _nat64(read: Reader, value: Any, networks: list[Network]) -> Nat64:
    """The `nat64` section; without one, a /96 among the network's routes is the prefix (as in the seed)."""
    fields = read.mapping(value if value is not None else {}, "nat64", keys("nat64"), required("nat64"))
    routed = [route.destination for net in networks for route in net.routes if route.destination.prefixlen == 96]
    prefix = routed[0] if routed else default("nat64.prefix")
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
    pool = default("nat64.ipv4_pool")
    if "ipv4_pool" in fields:
        pool = read.network(fields["ipv4_pool"], "nat64.ipv4_pool", ipaddress.IPv4Network, "198.19.64.0/24")
        if not 16 <= pool.prefixlen <= 28:
            raise read.fail("nat64.ipv4_pool", f"{fields['ipv4_pool']}: expected a /16 to /28")
    return Nat64(prefix, pool)


def _metrics(read: Reader, value: Any) -> MetricsSettings:
    """`metrics: {agent: "127.0.0.1:9464", haproxy: "127.0.0.1:9465"}`; `off` turns one off. Loopback only:
    neither may be reachable from outside the host or from an instance."""
    fields = read.mapping(value if value is not None else {}, "metrics", keys("metrics"), required("metrics"))
    found: dict[str, Listen | None] = {}
    for key in keys("metrics"):
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


def _frontend(read: Reader, value: Any, per_site: bool = False) -> FrontendSettings:
    fields = read.mapping(value if value is not None else {}, "frontend", keys("frontend"), required("frontend"))
    bind = default("frontend.bind")
    if "bind" in fields:
        text = read.text(fields["bind"], "frontend.bind")
        try:
            bind = ipaddress.ip_address(text)
        except ValueError:
            raise read.fail("frontend.bind",
                            f"{text!r} is not an IP address (\"::\" listens on IPv6 and IPv4)") from None
    port = (read.integer(fields["port"], "frontend.port", 1, 65535, "a port number") if "port" in fields
            else default("frontend.port"))
    ports = read.mapping(fields.get("ports") or {}, "frontend.ports", None, ())
    per_service = []
    for name, service_port in ports.items():
        read.text(name, f"frontend.ports.{name}", NAME, "a service name (lowercase, digits, '-')")
        per_service.append((name, read.integer(service_port, f"frontend.ports.{name}", 0, 65535,
                                            "a port number, 0 for not published")))
    limits = {key: read.integer(fields[key], f"frontend.{key}", 0, 1000000, "a whole number (0: no limit)")
              for key in ("max_connections_per_client", "max_requests_per_client") if key in fields}
    tls = _tls(read, fields["tls"], port, per_site) if fields.get("tls") is not None else None
    return FrontendSettings(bind, port, tuple(sorted(per_service)), **limits, tls=tls)


def _tls(read: Reader, value: Any, http_port: int, per_site: bool = False) -> TlsSettings:
    """`frontend.tls`: either ACME (`domains`, `email`, optional `acme_directory`, `acme_ca_bundle`) or the
    administrator's `certificate` (and optional `key`). With sites, the domains are the sites' own."""
    fields = read.mapping(value, "frontend.tls", keys("frontend.tls"), required("frontend.tls"))
    found: dict[str, Any] = {}
    if "port" in fields:
        found["port"] = read.integer(fields["port"], "frontend.tls.port", 1, 65535, "a port number")
    if found.get("port", default("frontend.tls.port")) == http_port:
        raise read.fail("frontend.tls.port", f"{http_port} is already frontend.port (plain HTTP); HTTPS needs "
                                             "a port of its own (443)")
    if "challenge_port" in fields:
        found["challenge_port"] = read.integer(fields["challenge_port"], "frontend.tls.challenge_port", 1, 65535,
                                               "a port number")
    if "renew_days" in fields:
        found["renew_days"] = read.integer(fields["renew_days"], "frontend.tls.renew_days", 1, 365,
                                           "days before expiry")
    names = _domains(read, fields.get("domains"), "frontend.tls.domains")
    found["domains"] = names
    paths = {key: read.text(fields[key], f"frontend.tls.{key}", ABS_PATH, "an absolute path")
             for key in ("acme_ca_bundle", "certificate", "key") if fields.get(key) is not None}
    if "certificate" in paths:
        for key in ("email", "acme_directory", "acme_ca_bundle"):
            if key in fields:
                raise read.fail(f"frontend.tls.{key}", "not used with certificate (your own certificate is not "
                                                      "renewed by ACME); remove one of the two")
        return TlsSettings(**found, certificate=paths["certificate"], key=paths.get("key"))
    if "key" in paths:
        raise read.fail("frontend.tls.key", "only used with certificate")
    if not names and not per_site:
        raise read.fail("frontend.tls", "give domains (certificates from an ACME CA) or certificate (your own PEM)")
    if "email" not in fields:
        raise read.fail("frontend.tls", "missing key email: the ACME CA needs a contact address for the account "
                                        "(expiry warnings go there)")
    found["email"] = read.text(fields["email"], "frontend.tls.email", EMAIL, "an email address")
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
