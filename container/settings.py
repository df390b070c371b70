"""The bootstrap YAML's settings as frozen, typed records (parsed by `bootstrap.py`): what every other
module of the agent reads, and nothing else."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
from dataclasses import dataclass, field
from typing import TypeVar

from container import yaml_keys

MAX_BYTES = 256 * 1024
IPNetwork = TypeVar("IPNetwork", ipaddress.IPv4Network, ipaddress.IPv6Network)
ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
ABS_PATH = re.compile(r"/(?!.*(^|/)\.\.(/|\Z))[^\0\n]*")


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


DEFAULT_NAT64_PREFIX: ipaddress.IPv6Network = yaml_keys.default("nat64.prefix")
DEFAULT_NAT64_POOL: ipaddress.IPv4Network = yaml_keys.default("nat64.ipv4_pool")


@dataclass(frozen=True)
class Nat64:
    """Tayga's NAT64 prefix (/96) and its IPv4 pool (/16 to /28): the pool's first address is Tayga's
    own, the second the host's end of the tunnel, the upper half is mapped to instance addresses."""
    prefix: ipaddress.IPv6Network = DEFAULT_NAT64_PREFIX
    ipv4_pool: ipaddress.IPv4Network = DEFAULT_NAT64_POOL


LETS_ENCRYPT: str = yaml_keys.default("frontend.tls.acme_directory")
# A DNS host name (no IP address, no wildcard: HTTP-01 cannot prove those), at least two labels.
DOMAIN = re.compile(r"(?=.{1,253}\Z)(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*"
                    r"\.[a-z]([a-z0-9-]{0,61}[a-z0-9])?")
# An address lego can use as a file name too (it names the account's directory after it): no '/' or space.
EMAIL = re.compile(r"[A-Za-z0-9._%+-]{1,64}@(?=.{1,253}\Z)[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,63}")
SITE_NAME = re.compile(r"[a-z](?:[a-z0-9-]{0,38}[a-z0-9])?")


def is_domain(name: str) -> bool:
    """A host name `frontend.tls.domains` accepts (lower case, no trailing dot)."""
    return bool(DOMAIN.fullmatch(name))


@dataclass(frozen=True)
class TlsSettings:
    """HTTPS at the frontend: certificates for `domains` from the ACME CA at `acme_directory`, or the
    administrator's own PEM (`certificate`, chain and key; `key` when the key is a file of its own)."""
    port: int = yaml_keys.default("frontend.tls.port")
    domains: tuple[str, ...] = yaml_keys.default("frontend.tls.domains")
    email: str = yaml_keys.default("frontend.tls.email")
    acme_directory: str = LETS_ENCRYPT
    acme_ca_bundle: str | None = yaml_keys.default("frontend.tls.acme_ca_bundle")
    certificate: str | None = yaml_keys.default("frontend.tls.certificate")
    key: str | None = yaml_keys.default("frontend.tls.key")
    challenge_port: int = yaml_keys.default("frontend.tls.challenge_port")  # loopback: the ACME client answers HTTP-01
    renew_days: int = yaml_keys.default("frontend.tls.renew_days")  # renew when fewer days than this are left
    # DNS-01 instead of HTTP-01 (the previews' wildcard certificate): lego's DNS provider, its settings (its
    # credentials: kept in STATE_DIR/tls, 0600) and the resolvers lego checks the record with.
    dns_provider: str | None = None
    dns_environment: tuple[tuple[str, str], ...] = ()
    dns_resolvers: tuple[str, ...] = ()

    @property
    def acme(self) -> bool:
        return self.certificate is None


@dataclass(frozen=True)
class FrontendSettings:
    bind: ipaddress.IPv4Address | ipaddress.IPv6Address = yaml_keys.default("frontend.bind")
    port: int = yaml_keys.default("frontend.port")
    ports: tuple[tuple[str, int], ...] = yaml_keys.default("frontend.ports")
    # Per client address (0: no limit): connections open at once, and requests in any 10 s.
    max_connections_per_client: int = yaml_keys.default("frontend.max_connections_per_client")
    max_requests_per_client: int = yaml_keys.default("frontend.max_requests_per_client")
    tls: TlsSettings | None = yaml_keys.default("frontend.tls")

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
    agent: Listen | None = yaml_keys.default("metrics.agent")
    haproxy: Listen | None = yaml_keys.default("metrics.haproxy")


@dataclass(frozen=True)
class DnsChallenge:
    """How the ACME CA's DNS-01 challenge is answered: one of lego's DNS providers (`lego dnshelp`), with its
    settings (API tokens) and, optionally, the resolvers lego checks the TXT record with (host:port)."""
    provider: str
    environment: tuple[tuple[str, str], ...] = ()
    resolvers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Previews:
    """Previews of a site's other branches at BRANCH--SITE.`domain` (pipeline.publish.previews): at most `most`, behind
    HTTP Basic (user `preview`, `password`; none set: one derived from the site's token) unless `public`;
    over HTTPS with a wildcard certificate for *.`domain` when `certificate` says how to answer DNS-01."""
    domain: str
    most: int = yaml_keys.default("previews.max")
    password: str | None = yaml_keys.default("previews.password")
    public: bool = yaml_keys.default("previews.public")
    certificate: DnsChallenge | None = yaml_keys.default("previews.certificate")

    @property
    def certificate_key(self) -> str:
        """The wildcard certificate's name among the host's (a site's name never has a dot)."""
        return f"previews.{self.domain}"


def preview_password(token: str) -> str:
    """A site's preview password when none is set: derived from its token (WEBHOOK_SECRET), which it does not
    reveal; `./bootstrap.sh site list --previews` shows it."""
    digest = hmac.new(token.encode(), b"pequod preview password", hashlib.sha256).digest()
    return base64.b32encode(digest).decode().lower()[:24]


def previews_env(site: Site, env: dict[str, str]) -> dict[str, str]:
    """What an instance of `site` is told of its previews (pipeline.config.previews); nothing without them."""
    previews = site.previews
    if previews is None:
        return {}
    password = previews.password or preview_password(env.get("WEBHOOK_SECRET", ""))
    return {"PREVIEWS_HOST": f"{site.name}.{previews.domain}", "PREVIEWS_MAX": str(previews.most),
            "PREVIEWS_PUBLIC": "1" if previews.public else "0",
            "PREVIEWS_PASSWORD": "" if previews.public else password,
            "PREVIEWS_HTTPS": "1" if previews.certificate is not None else "0"}


@dataclass(frozen=True)
class Site:
    """One site of a host that serves several: an instance of the image with its own repository
    (environment), domains, certificate, volume and limits (None: the manifest's)."""
    name: str
    domains: tuple[str, ...] = yaml_keys.default("sites[].domains")
    default: bool = yaml_keys.default("sites[].default")
    email: str = yaml_keys.default("sites[].email")
    memory_mb: int | None = yaml_keys.default("sites[].memory_mb")
    vmhz: int | None = yaml_keys.default("sites[].vmhz")
    environment: tuple[tuple[str, str], ...] = yaml_keys.default("sites[].environment")
    mounts: tuple[Mount, ...] = yaml_keys.default("sites[].mounts")
    previews: Previews | None = None  # None: none; the top-level previews are merged in by the reader

    @property
    def previews_host(self) -> str | None:
        """SITE.DOMAIN: a branch's preview answers at LABEL--SITE.DOMAIN."""
        return f"{self.name}.{self.previews.domain}" if self.previews is not None else None


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
    sites: tuple[Site, ...] = ()  # none: one instance per image (the environment and mounts above are its)

    @property
    def env(self) -> dict[str, str]:
        return dict(self.environment)

    def site_env(self, site: Site | None) -> dict[str, str]:
        """What an instance of `site` gets: the top-level environment with the site's own over it."""
        env = {**dict(self.environment), **dict(site.environment if site else ())}
        return {**env, **previews_env(site, env)} if site is not None else env

    def site_mounts(self, site: Site | None) -> tuple[Mount, ...]:
        return self.mounts + (site.mounts if site else ())
