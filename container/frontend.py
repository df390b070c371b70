"""The HAProxy frontend: publishes what the instances provide on the host.

One HAProxy in master-worker mode, started and kept alive by the agent. Its configuration is a pure
function of the provided services and the healthy instances; a new configuration is checked with
`haproxy -c` before it replaces the old one, and applied by a seamless reload (the master hands the
listening sockets to the new worker, the old worker finishes its requests), so reconfiguring drops
no connection.
"""

from __future__ import annotations

import ipaddress
import logging
import pwd
import re
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path

from container import proc
from container.daemon import Daemon
from container.errors import FrontendError
from container.files import replace_file
from container.records import Server as Server
from container.records import Service
from container.records import Tls as Tls
from container.settings import Listen

log = logging.getLogger(__name__)

# Requests: HAProxy takes each request whole (headers and body, within `timeout http-request`) before
# an instance sees it, so a client trickling bytes holds no instance thread; bodies are bounded by
# MAX_BODY (which the buffer must hold whole), URLs by MAX_URL.
MAX_BODY = 48 * 1024
MAX_URL = 4096
BUFFER_SIZE = 64 * 1024
# Against slow clients: a request must arrive whole within 10 s, idle keep-alive connections close after
# 10 s, a client that stops reading is dropped after 30 s. Requests are not logged (the log's level,
# notice, keeps instances going up and down and HAProxy's own notices): `dontlog-normal` spares the
# line HAProxy would otherwise build for each request only to drop it (~1 µs of the ~15 µs of CPU a cached
# page costs it, docs/benchmarks.md).
DEFAULTS = """\
defaults
    mode http
    option httplog
    option dontlog-normal
    option idle-close-on-response
    option redispatch
    retries 3
    retry-on conn-failure empty-response
    timeout connect 2s
    timeout client 30s
    timeout client-fin 5s
    timeout http-request 10s
    timeout http-keep-alive 10s
    timeout queue 10s
    timeout server 60s
    timeout tunnel 1h
    option forwardfor
    log global
"""

# Hot pages come from memory; responses that vary by Accept-Encoding are cached per encoding. A backend
# whose instance names its release link (container/swaps.py) uses `released`: the agent tells the frontend
# of each swap, from which on the cache looks only for what it stored since, so between swaps an entry may
# live RELEASED_LIFE s. The others use `pages`, whose entries live at most 1 s (the instance's HTML says
# s-maxage=1), so a new release is served everywhere within ~1 s of going live. The longer life spares the
# stampede of a hot page's expiry: while the instance is asked for it again, every connection wanting it
# waits on the instance, once a second with `pages`, once per RELEASED_LIFE with `released` (the frontend's
# p99 on a hot page a third lower, docs/benchmarks.md). It stays bounded: when the agent is down at a swap, the
# page before is served for up to RELEASED_LIFE s.
RELEASED_LIFE = 10
CACHE = """\
cache {name}
    total-max-size 64
    max-object-size 2097152
    max-age {life}
    process-vary on
"""
# In `released`, the instance's HTML lifetime is lengthened for the cache alone: stored with a marked
# Cache-Control, given back to clients as the instance said it (on a miss, a hit and a 304 alike).
HTML_CACHE_CONTROL = "public, s-maxage=1"  # what serve.py says of HTML (pipeline/serve/static_files.py)
RELEASED_CACHE_CONTROL = f"public, s-maxage={RELEASED_LIFE}, pequod-released"




# TLS as Mozilla's "intermediate" profile: TLS 1.2 with forward-secret AEAD ciphers, and TLS 1.3.
TLS_GLOBAL = """\
    ssl-default-bind-ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:\
ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305
    ssl-default-bind-ciphersuites TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256
    ssl-default-bind-options ssl-min-ver TLSv1.2 no-tls-tickets"""
HSTS_MAX_AGE = 63072000  # two years
CHALLENGE_PREFIX = "/.well-known/acme-challenge/"


def request_rules(service: Service) -> list[str]:
    """A frontend's checks of each request, before anything reaches an instance."""
    lines = []
    if service.max_connections_per_client or service.max_requests_per_client:
        # One entry per client, forgotten after 60 s idle: an IPv4 address, or an IPv6 /64 (one host or
        # network commonly holds a whole /64, so counting /128s would give an attacker 2^64 budgets);
        # instances reaching a service over the gateway, all in one /64, count one by one.
        local = " ".join(sorted({str(address) for address, _ in service.local_binds}))
        lines += ["    stick-table type ipv6 size 200k expire 60s store conn_cur,http_req_rate(10s)"]
        lines += [f"    tcp-request connection track-sc0 src if {{ dst {local} }}",
                  f"    tcp-request connection track-sc0 src,ipmask(32,64) if !{{ dst {local} }}"] if local else [
                  "    tcp-request connection track-sc0 src,ipmask(32,64)"]
    connections, requests = service.max_connections_per_client, service.max_requests_per_client
    if connections:
        lines.append(f"    tcp-request connection reject if {{ sc_conn_cur(0) gt {connections} }}")
    if requests:
        lines.append(f"    http-request deny deny_status 429 if {{ sc_http_req_rate(0) gt {requests} }}")
    return lines + [
        '    http-request return status 414 content-type text/plain string "URI too long\\n" '
        f"if {{ url_len gt {MAX_URL} }}",
        *host_rules(),
        # No Accept-Encoding means any coding to HAProxy's cache (RFC 9110), which then answers a client
        # that sent none (curl, scripts) with the gzip variant a browser stored: ask for identity instead.
        "    http-request set-header accept-encoding identity if !{ req.hdr(accept-encoding) -m found }",
        # Spellings of one file share one cache entry (the cache keys on the URI): `/posts//x/` is `/posts/x/`.
        "    http-request set-path %[path,regsub(//+,/,g)] if { path -m sub // }",
        '    http-request return status 411 content-type text/plain string "Content-Length required\\n" '
        "if { req.hdr(transfer-encoding) -m found }",
        "    http-request deny deny_status 400 if METH_GET { req.hdr_val(content-length) gt 0 }",
        f"    http-request deny deny_status 413 if {{ req.hdr_val(content-length) gt {MAX_BODY} }}",
        # Service worker scripts are refused (serve.py says why); here too, as the cache would answer one
        # from a plain GET of the same file without asking the instance.
        "    http-request deny deny_status 403 if { req.hdr(service-worker) -m found }",
        "    http-request wait-for-body time 10s",
        # HTTP/2 needs no Content-Length: a GET or HEAD with DATA frames is seen by the body itself.
        "    http-request deny deny_status 400 if METH_GET { req.body_len gt 0 }",
    ] + (site_rules(service) if service.sites else tls_rules(service))


# A Host (HTTP/2's :authority arrives as Host) is a host name or an IP literal with an optional port, and
# nothing else: no `/`, `@`, `\\`, `%`, space, control character or empty label. Each spelling of one host
# becomes its canonical form (lower case, no port, no root's trailing dot) before routing, redirects and
# the cache see it: HAProxy 2.6 keys its cache on the Host value and the path (an absolute URL: the URL,
# whose authority `set-header host` rewrites too), so `Host: docs.example/posts` with path `/` would
# otherwise meet `Host: docs.example` with path `/posts/`.
HOST_NAME = r"^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?([.][a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*[.]?(:[0-9]{1,5})?$"
HOST_ADDRESS = r"^\[[0-9a-f:.]+\](:[0-9]{1,5})?$"


def host_rules() -> list[str]:
    """One Host, well formed, made canonical (`txn.host` and the Host header the instance and the cache see)."""
    return [
        # Exactly one Host: `req.hdr` takes the last of comma-separated values where the cache keys on the
        # first, so "Host: a, b" would store b's page as a's; and without one, an absolute URL
        # (`GET http://docs.example/ HTTP/1.1`, whose URL alone is the cache key) would reach the default
        # site and be stored as docs' page. HTTP/2's :authority arrives as Host.
        "    http-request deny deny_status 400 unless { req.hdr_cnt(host) eq 1 }",
        "    http-request deny deny_status 400 "
        f"unless {{ req.fhdr(host) -m reg -i '{HOST_NAME}' }} or {{ req.fhdr(host) -m reg -i '{HOST_ADDRESS}' }}",
        "    http-request set-var(txn.host) req.fhdr(host),lower,regsub(:[0-9]+$,),regsub([.]$,)",
        "    http-request set-header host %[var(txn.host)]",
    ]


NO_SITE = "pequod-nosite"


def site_backend(service: Service, site: str) -> str:
    return f"{service.name}.{site}"


def site_rules(service: Service) -> list[str]:
    """Requests to the site that owns their Host; a Host no site owns goes to the default site, or gets
    the frontend's own 404. Plain HTTP for a site with a certificate is redirected to HTTPS on the host
    the client named, which is one of the site's domains (the ACL matched it), never anything else; a
    request for no site's host is redirected only to the default site's first domain."""
    tls = service.tls
    lines = [f"    acl site_{site.name} var(txn.host) -m str {' '.join(site.domains)}"
             for site in service.sites if site.domains]
    # A site's previews: LABEL--SITE.DOMAIN (the label checked by the instance, after the password), never
    # redirected (no certificate names them) and never in the cache.
    previews = sorted((site for site in service.sites if site.previews), key=lambda site: -len(site.previews or ""))
    for site in previews:
        lines += [f"    acl preview_{site.name} var(txn.host) -m end -- --{site.previews}",
                  f"    http-request set-var(txn.preview) bool(true) if preview_{site.name}"]
    if tls is not None:
        lines += ["    http-request set-header X-Forwarded-Proto https if { ssl_fc }",
                  "    http-request set-header X-Forwarded-Proto http if !{ ssl_fc }",
                  f"    acl acme_challenge path_beg {CHALLENGE_PREFIX}"]
        port = "" if tls.port == 443 else f":{tls.port}"
        local = "".join(f" !{{ dst {address} }}" for address in sorted({str(a) for a, _ in service.local_binds}))
        plain = f"!{{ ssl_fc }} {{ dst_port {service.port} }}{local} !acme_challenge"
        owned = " ".join([*(f"!site_{site.name}" for site in service.sites if site.domains),
                          *(f"!preview_{site.name}" for site in previews)])
        for site in previews:
            if site.preview_pem is not None and service.port:
                lines.append(f"    http-request redirect location https://%[var(txn.host)]{port}%[capture.req.uri] "
                             f"code 301 if {plain} preview_{site.name}")
        for site in service.sites:
            if site.pem is None or not site.domains or not service.port:
                continue
            lines.append(f"    http-request redirect location https://%[var(txn.host)]{port}%[capture.req.uri] "
                         f"code 301 if {plain} site_{site.name}")
            if site.default:
                lines.append(f"    http-request redirect location https://{site.domains[0]}{port}"
                             f"%[capture.req.uri] code 301 if {plain} {owned}".rstrip())
        if any(site.pem or site.preview_pem for site in service.sites):
            lines.append(f'    http-after-response set-header Strict-Transport-Security "max-age={HSTS_MAX_AGE}" '
                         "if { ssl_fc }")
        if tls.challenge_port is not None:
            lines.append("    use_backend pequod-acme if acme_challenge")
    lines += [f"    use_backend {site_backend(service, site.name)} if preview_{site.name}" for site in previews]
    lines += [f"    use_backend {site_backend(service, site.name)} if site_{site.name}"
              for site in service.sites if site.domains]
    return lines


def default_backend(service: Service) -> str:
    if not service.sites:
        return service.name
    default = next((site for site in service.sites if site.default), None)
    return site_backend(service, default.name) if default else NO_SITE


def tls_rules(service: Service) -> list[str]:
    """HTTPS: the instance learns the scheme from X-Forwarded-Proto (set here, never taken from the client);
    once a certificate is served, plain HTTP on the public port is redirected (301) except for ACME
    challenges, and HTTPS answers carry Strict-Transport-Security.

    The redirect names a configured domain, never what the client sent as Host (that would make the
    frontend redirect anywhere, e.g. for a cache or a phishing link): a Host that is one of the domains
    keeps its name, any other Host (an IP address, an old name, none) goes to the first domain."""
    tls = service.tls
    if tls is None:
        return []
    lines = ["    http-request set-header X-Forwarded-Proto https if { ssl_fc }",
             "    http-request set-header X-Forwarded-Proto http if !{ ssl_fc }",
             f"    acl acme_challenge path_beg {CHALLENGE_PREFIX}"]
    if tls.pem is not None and service.port:
        local = "".join(f" !{{ dst {address} }}" for address in sorted({str(a) for a, _ in service.local_binds}))
        port = "" if tls.port == 443 else f":{tls.port}"
        plain = f"!{{ ssl_fc }} {{ dst_port {service.port} }}{local} !acme_challenge"
        for domain in (*tls.domains[1:], *tls.domains[:1]):  # the first domain last: it takes every other Host
            host = f" {{ var(txn.host) -m str {domain} }}" if domain != tls.domains[0] else ""
            lines.append(f"    http-request redirect location https://{domain}{port}%[capture.req.uri] code 301 "
                         f"if {plain}{host}")
        lines.append(f'    http-after-response set-header Strict-Transport-Security "max-age={HSTS_MAX_AGE}" '
                     "if { ssl_fc }")
    if tls.challenge_port is not None:
        lines.append("    use_backend pequod-acme if acme_challenge")
    return lines


def _bind(address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> str:
    if address.version == 4:
        return f"{address}:{port}"
    return f"[{address}]:{port}" + (" v4v6" if address == ipaddress.IPv6Address("::") else "")


def render_haproxy_conf(services: tuple[Service, ...], run_dir: Path, user: str | None = None,
                        exporter: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int] | None = None) -> str:
    """HAProxy's configuration: a pure function of the services and their servers."""
    lines = [
        "# Written by pequod-agent; changes are overwritten.",
        "global",
        "    master-worker",
        f"    stats socket {run_dir / 'admin.sock'} mode 600 level admin expose-fd listeners",
        "    maxconn 8192",
        f"    tune.bufsize {BUFFER_SIZE}",
        "    log stderr format short local0 notice",
    ]
    if user:
        lines += [f"    user {user}", f"    group {user}"]
    if any(service.tls for service in services):
        lines.append(TLS_GLOBAL)
    lines += ["", DEFAULTS.rstrip("\n"), ""]
    caches = len(lines)  # the caches the backends use go here
    for service in services:
        binds = ([_bind(service.bind, service.port)] if service.port else []) + [
            _bind(address, port) for address, port in service.local_binds]
        pems = [str(service.tls.pem)] if service.tls is not None and service.tls.pem is not None else []
        pems += [str(site.pem) for site in service.sites if site.pem is not None]
        pems += [str(site.preview_pem) for site in service.sites if site.preview_pem is not None]
        if service.tls is not None and pems:  # by SNI; the first is for clients that name no host
            crts = " ".join(f"crt {pem}" for pem in dict.fromkeys(pems))
            binds.append(f"{_bind(service.bind, service.tls.port)} ssl {crts} alpn h2,http/1.1")
        if not binds:
            continue
        lines += [f"frontend {service.name}", *(f"    bind {bind}" for bind in binds), *request_rules(service),
                  f"    default_backend {default_backend(service)}", ""]
        if service.sites:
            for site in service.sites:
                lines += backend(site_backend(service, site.name), service.health_path, site.servers,
                                 previews=bool(site.previews), swaps=run_dir / SWAPS if site.swaps else None)
        else:
            lines += backend(service.name, service.health_path, service.servers,
                             swaps=run_dir / SWAPS if service.swaps else None)
    if any(service.sites and not any(site.default for site in service.sites) for service in services):
        lines += [f"backend {NO_SITE}", '    http-request return status 404 content-type text/plain '
                  'string "No site is served at this address.\\n"', ""]
    challenge = next((s.tls.challenge_port for s in services if s.tls and s.tls.challenge_port), None)
    if challenge is not None:  # the ACME client's HTTP-01 answers, while it runs
        lines += ["backend pequod-acme", f"    server acme 127.0.0.1:{challenge}", ""]
    if exporter is not None:  # HAProxy's own Prometheus exporter, on a host-only address
        lines += ["frontend pequod-metrics", f"    bind {_bind(*exporter)}", "    no log",
                  "    http-request use-service prometheus-exporter if { path /metrics }",
                  "    http-request deny deny_status 404", ""]
    lines[caches:caches] = [CACHE.format(name=name, life=life)
                            for name, life in (("pages", 1), ("released", RELEASED_LIFE))
                            if any(line.startswith(f"    http-request cache-use {name}") for line in lines)]
    return "\n".join(lines)


SWAPS = "swaps.map"  # backend → when its instance last swapped a release (ms since the epoch): container/swaps.py


def swaps_with(backends: list[str], known: dict[str, int]) -> dict[str, int]:
    """The swaps map's content for these backends (0: no swap seen)."""
    return {name: known.get(name, 0) for name in backends}


def backend_names(services: tuple[Service, ...]) -> list[str]:
    """The backends whose cache forgets at a swap (the keys of the swaps map)."""
    return [site_backend(service, site.name) for service in services for site in service.sites if site.swaps] + [
        service.name for service in services if not service.sites and service.swaps]


def backend(name: str, health_path: str, servers: tuple[Server, ...], previews: bool = False,
            swaps: Path | None = None) -> list[str]:
    """One backend: its instances, checked, behind the cache (whose key is the Host and the URI, so sites
    sharing a frontend never share entries; a preview's answers are never stored nor answered from it). With
    `swaps` (the swaps map), the key also holds the time of the instance's last swap of a release: from the
    swap on, the cache looks only for what it stored since, so no reader gets a page of the release before,
    and hot pages come from the cache again at once (container/swaps.py). The key is made with the Host the
    cache-use rule sees; the instance gets the canonical Host back."""
    unless = " unless { var(txn.preview) -m bool }" if previews else ""
    return [
        f"backend {name}",
        # The frontend asks whether the instance serves (`?serving`): one whose watcher stopped publishing
        # keeps its readers until the agent's replacement (which asks the plain path) is healthy.
        f"    option httpchk GET {health_path}{'&' if '?' in health_path else '?'}serving",
        "    http-check expect status 200",
        "    default-server check inter 5s fastinter 500ms downinter 1s fall 2 rise 1",
        *([f"    http-request set-var(txn.swapped) str({name}),map_str_int({swaps},0)",
           "    http-request set-header host %[var(txn.host)].swap%[var(txn.swapped)]",
           f"    http-request cache-use released{unless}",
           "    http-request set-header host %[var(txn.host)]",
           f'    http-response set-header cache-control "{RELEASED_CACHE_CONTROL}" '
           f'if {{ res.fhdr(cache-control) -m str "{HTML_CACHE_CONTROL}" }}',
           f"    http-response cache-store released{unless}",
           f'    http-after-response set-header cache-control "{HTML_CACHE_CONTROL}" '
           f'if {{ res.fhdr(cache-control) -m str "{RELEASED_CACHE_CONTROL}" }}']
          if swaps else [f"    http-request cache-use pages{unless}", f"    http-response cache-store pages{unless}"]),
        *(f"    server {s.name} [{s.address}]:{s.port}" for s in servers),
        "",
    ]


def haproxy_user() -> str | None:
    """Workers drop root to the `haproxy` user where the package created it."""
    try:
        pwd.getpwnam("haproxy")
        return "haproxy"
    except KeyError:
        return None


def cli(socket_path: Path, command: str, timeout: float = 10.0) -> str:
    """One command on an HAProxy CLI socket (the workers' admin socket or the master's); its answer.
    The request side is shut after sending: the master's CLI closes the connection only then.
    Raises OSError."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(timeout)
        connection.connect(str(socket_path))
        connection.sendall(command.encode())
        connection.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def check_config(text: str) -> None:
    with tempfile.NamedTemporaryFile("w", prefix="pequod-haproxy-", suffix=".cfg") as handle:
        handle.write(text)
        handle.flush()
        result = proc.run(["haproxy", "-c", "-f", handle.name], timeout=30, check=False, error=FrontendError)
    if result.returncode != 0:
        detail = " | ".join(line for line in (result.stdout + result.stderr).splitlines()
                            if line.strip() and "[NOTICE]" not in line)
        raise FrontendError(f"haproxy -c refused the frontend configuration: {detail}")


class Frontend:
    def __init__(self, state_dir: Path):
        self.dir = state_dir / "haproxy"
        self.conf = self.dir / "haproxy.cfg"
        self.daemon = Daemon("haproxy", ["haproxy", "-W", "-f", str(self.conf), "-S", str(self.dir / "master.sock")],
                             self.dir / "haproxy.pid", self.dir / "haproxy.log", str(self.conf))
        self.swaps: dict[str, int] = {}  # backend → its instance's last swap (ms): the swaps map's content
        self._swaps_lock = threading.Lock()
        self._swaps_written: str | None = None
        self._failing: set[str] = set()  # backends whose last swap could not be told (said once)

    def render(self, services: tuple[Service, ...], exporter: Listen | None = None) -> str:
        """The configuration for these services; the swaps map it names exists (haproxy -c opens it)."""
        if backend_names(services) and not (self.dir / SWAPS).exists():
            with self._swaps_lock:
                self._write_swaps()
        return render_haproxy_conf(services, self.dir, haproxy_user(), exporter)

    def _write_swaps(self) -> None:
        text = "".join(f"{name} {when}\n" for name, when in sorted(self.swaps.items()))
        path = self.dir / SWAPS
        if text != self._swaps_written or not path.exists():
            self.dir.mkdir(parents=True, exist_ok=True)
            replace_file(path, text)
            self._swaps_written = text

    def forget(self, name: str) -> bool:
        """The instance behind backend `name` swapped a release: its cached answers are not used from now on
        (HAProxy's runtime API sets the swaps map; the file keeps it for the next reload). False when HAProxy
        could not be told (the caller tries again); a failure is said once until one succeeds."""
        when = int(time.time() * 1000)
        with self._swaps_lock:
            self.swaps[name] = when
            self._write_swaps()
            told = self._set_swap(name, when)
        if told:
            self._failing.discard(name)
        elif name not in self._failing:
            self._failing.add(name)
            log.warning("could not tell the frontend that %s swapped a release: its cache may keep the old pages "
                        "for up to %d s; trying again each round", name, RELEASED_LIFE)
        return told

    def _set_swap(self, name: str, when: int) -> bool:
        try:
            answer = cli(self.dir / "admin.sock", f"set map {self.dir / SWAPS} {name} {when}\n", timeout=2)
            if answer.strip():  # not in the running map yet (a backend the next reload adds)
                answer = cli(self.dir / "admin.sock", f"add map {self.dir / SWAPS} {name} {when}\n", timeout=2)
        except OSError as exc:
            log.debug("set map %s: %s", name, exc)
            return False
        if answer.strip():
            log.debug("set map %s: %s", name, answer.strip())
        return not answer.strip()

    def _resend_swaps(self) -> None:
        """After a reload: the new worker read the swaps map's file when it started; a swap told meanwhile may
        have reached the worker before it, so each backend's time is set again."""
        with self._swaps_lock:
            for name, when in sorted(self.swaps.items()):
                if when and not self._set_swap(name, when):
                    log.warning("could not tell the reloaded frontend when %s last swapped a release", name)

    def apply(self, services: tuple[Service, ...], exporter: Listen | None = None) -> bool:
        """Make HAProxy run with this configuration; True when something changed (started or reloaded)."""
        with self._swaps_lock:
            self.swaps = swaps_with(backend_names(services), self.swaps)
            self._write_swaps()  # before the check: the configuration names it
        text = self.render(services, exporter)
        current = self.conf.read_text() if self.conf.exists() else None
        running = self.daemon.pid() is not None
        if text == current and running:
            return False
        if text != current:
            check_config(text)
            self.dir.mkdir(parents=True, exist_ok=True)
            replace_file(self.conf, text)
        if running:
            self.reload()
            log.info("frontend reloaded: %s", ", ".join(
                f"{s.name} → {len(s.servers)} instance(s)" if not s.sites else
                f"{s.name} → {len(s.sites)} site(s), {sum(len(x.servers) for x in s.sites)} instance(s)"
                for s in services))
        else:
            self.daemon.start()
        return True

    def reloads(self) -> tuple[int, int, int] | None:
        """(reloads, failed reloads, current worker's PID) from the master's CLI; None when it does not
        answer."""
        try:
            answer = cli(self.dir / "master.sock", "show proc\n", timeout=2)
        except OSError:
            return None
        found = re.search(r"^\d+\s+master\s+(\d+)\s+\[failed: (\d+)\]", answer, re.M)
        worker = re.search(r"^# workers\n(\d+)\s+worker", answer, re.M)
        if not found:
            return None
        return int(found.group(1)), int(found.group(2)), int(worker.group(1)) if worker else 0

    def reload(self, timeout: float = 10.0) -> None:
        """A seamless reload (the listeners pass to the new worker, the old one finishes its requests),
        one at a time: while the master re-executes itself its CLI is closed and a second SIGUSR2 is lost,
        and with it the newer configuration. So: wait until the master answers, signal, and wait until
        it runs a new worker (or says the reload failed)."""
        deadline = time.monotonic() + timeout
        before = self.reloads()
        while before is None and time.monotonic() < deadline:
            time.sleep(0.05)
            before = self.reloads()
        self.daemon.signal(signal.SIGUSR2)
        if before is None:
            log.warning("HAProxy's master CLI does not answer; reloaded without confirmation")
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = self.reloads()
            if now is not None and now[1] > before[1]:
                raise FrontendError(f"HAProxy refused to reload (see {self.daemon.log_file}); the previous "
                                    "configuration stays")
            if now is not None and now[0] > before[0] and now[2] not in (0, before[2]):
                self._resend_swaps()
                return
            time.sleep(0.05)
        log.warning("HAProxy did not confirm the reload within %.0f s", timeout)

    def ensure(self) -> bool:
        """Restart HAProxy if it died (with the configuration last applied)."""
        return self.conf.exists() and self.daemon.ensure()

    def stop(self) -> bool:
        return self.daemon.stop()
