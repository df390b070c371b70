"""HTTPS certificates for the frontend: obtained and renewed by `lego` (ACME), installed into HAProxy.

Everything lives in STATE_DIR/tls (0700): `lego/` is lego's own store (account key, certificates),
`site.pem` the chain and key HAProxy serves (0600), `status.json` what the last attempt did, and
`settings.json` the TLS settings of the running agent, so that `pequod-agent --renew` and `-i
certificates` work against it without the bootstrap YAML. One lock file keeps the agent and `--renew`
from running lego at once.

HTTP-01 challenges: lego answers on 127.0.0.1:challenge_port while it runs; the frontend sends
`/.well-known/acme-challenge/` on the public HTTP port there. A renewed certificate replaces the served
one through HAProxy's runtime API (`set ssl cert` + `commit ssl cert`): no reload, no dropped connection.
"""

from __future__ import annotations

import dataclasses
import datetime
import fcntl
import glob
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from container import frontend, proc
from container.errors import CertificateError
from container.files import replace_file
from container.settings import TlsSettings, is_domain

log = logging.getLogger(__name__)

CHALLENGE_PATH = "/.well-known/acme-challenge/"
CHECK_INTERVAL = 12 * 3600.0  # how often the agent looks whether a renewal is due (at least daily)
FIRST_RETRY, MAX_RETRY = 60.0, 6 * 3600.0  # back-off after a failed attempt
LEGO_TIMEOUT = 300


@dataclass(frozen=True)
class Certificate:
    """What the frontend serves, read from a PEM."""
    serial: str  # hexadecimal, upper case, as HAProxy shows it
    not_after: float  # Unix time
    issuer: str
    domains: tuple[str, ...]

    def days_left(self, now: float) -> float:
        return (self.not_after - now) / 86400


def read_certificate(data: bytes, source: str) -> Certificate:
    """The first (leaf) certificate of a PEM; CertificateError naming `source` when there is none."""
    try:
        leaf = x509.load_pem_x509_certificates(data)[0]
    except (ValueError, IndexError):
        raise CertificateError(f"{source}: no PEM certificate in it") from None
    try:
        names = tuple(leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                      .get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = tuple(str(a.value) for a in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME))
    issuer = leaf.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    return Certificate(f"{leaf.serial_number:X}".lstrip("0"), leaf.not_valid_after_utc.timestamp(),
                       str(issuer[0].value) if issuer else leaf.issuer.rfc4514_string(), names)


def redirect_domains(pem: Path) -> tuple[str, ...]:
    """For the administrator's own certificate without `domains`: the host names it is for, in its order
    (wildcards left out: a redirect needs one name); () when it cannot be read (no redirect then)."""
    try:
        names = read_certificate(pem.read_bytes(), str(pem)).domains
    except (OSError, CertificateError):
        return ()
    return tuple(dict.fromkeys(n.lower().rstrip(".") for n in names if is_domain(n.lower().rstrip("."))))


def served_pem(chain: bytes, key: bytes, source: str) -> bytes:
    """Chain and key as one PEM for HAProxy, after checking that the key belongs to the certificate."""
    try:
        leaf = x509.load_pem_x509_certificates(chain)[0]
    except (ValueError, IndexError):
        raise CertificateError(f"{source}: no PEM certificate in it") from None
    try:
        private = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError):
        raise CertificateError(f"{source}: no unencrypted PEM private key found (HAProxy needs the key "
                               "without a passphrase)") from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if (private.public_key().public_bytes(serialization.Encoding.PEM, public)
            != leaf.public_key().public_bytes(serialization.Encoding.PEM, public)):
        raise CertificateError(f"{source}: the private key does not belong to the certificate")
    return chain.rstrip(b"\n") + b"\n" + key.rstrip(b"\n") + b"\n"


def administrator_pem(settings: TlsSettings) -> bytes:
    """The administrator's certificate (and key) as HAProxy serves it; clear errors for unreadable files."""
    assert settings.certificate is not None
    files = [settings.certificate] + ([settings.key] if settings.key else [])
    contents = []
    for path in files:
        try:
            contents.append(Path(path).read_bytes())
        except OSError as exc:
            raise CertificateError(f"frontend.tls: cannot read {path}: {exc.strerror}") from None
    chain = contents[0]
    key = contents[1] if len(contents) > 1 else contents[0]
    return served_pem(chain, key, " and ".join(files))


def due(current: Certificate | None, settings: TlsSettings, now: float, force: bool = False) -> str | None:
    """Why a new certificate is needed now, or None."""
    if current is None:
        return "no certificate yet"
    if force:
        return "renewal forced"
    missing = sorted(set(settings.domains) - set(current.domains))
    if missing:
        return f"not valid for {', '.join(missing)}"
    extra = sorted(set(current.domains) - set(settings.domains))
    if extra and settings.acme:  # a name taken from the site: its certificate must not keep it
        return f"also for {', '.join(extra)}, no longer configured"
    if current.days_left(now) < settings.renew_days:
        return f"expires in {current.days_left(now):.0f} days"
    return None


def retry_delay(failures: int) -> float:
    delay: float = min(MAX_RETRY, FIRST_RETRY * 2 ** max(0, failures - 1))
    return delay


class Store:
    """STATE_DIR/tls: lego's store, the served PEM, the status and the running agent's settings. With sites,
    each site's PEM, status and settings are in STATE_DIR/tls/sites/SITE; lego's store (one ACME account)
    and the lock (one ACME client at a time, on one challenge port) are shared."""

    def __init__(self, state_dir: Path, site: str = ""):
        self.root = state_dir / "tls"
        self.site = site
        self.dir = self.root / "sites" / site if site else self.root
        self.lego = self.root / "lego"
        self.pem = self.dir / "site.pem"
        self.status_file = self.dir / "status.json"
        self.settings_file = self.dir / "settings.json"

    def ensure(self) -> None:
        for path in (self.root, self.dir):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(path, 0o700)

    @contextmanager
    def lock(self) -> Iterator[None]:
        self.ensure()
        with open(self.root / "lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def remove(self) -> None:
        """A removed site's certificate, status and settings, and lego's copy of its certificate (a later
        site with the same first domain starts afresh; lego's account stays)."""
        if not self.site:
            return
        try:
            first = self.settings().domains[0]
        except (CertificateError, IndexError):
            first = ""
        if first:
            for path in (self.lego / "certificates").glob(f"{glob.escape(lego_name(first))}.*"):
                path.unlink(missing_ok=True)
        shutil.rmtree(self.dir, ignore_errors=True)


    def current(self) -> Certificate | None:
        try:
            return read_certificate(self.pem.read_bytes(), str(self.pem))
        except (OSError, CertificateError):
            return None

    def status(self) -> dict[str, Any]:
        try:
            status: dict[str, Any] = json.loads(self.status_file.read_text())
            return status
        except (OSError, ValueError):
            return {}

    def save_status(self, status: dict[str, Any]) -> None:
        self.ensure()
        replace_file(self.status_file, json.dumps(status, indent=2, sort_keys=True) + "\n", mode=0o600)

    def save_settings(self, settings: TlsSettings) -> None:
        self.ensure()
        replace_file(self.settings_file, json.dumps(dataclasses.asdict(settings), indent=2) + "\n", mode=0o600)

    def settings(self) -> TlsSettings:
        try:
            data = json.loads(self.settings_file.read_text())
        except (OSError, ValueError):
            raise CertificateError(f"{self.settings_file}: no HTTPS settings here: the agent using this state dir "
                                   "runs without frontend.tls (or has never run)") from None
        data["domains"] = tuple(data.get("domains") or ())
        data["dns_resolvers"] = tuple(data.get("dns_resolvers") or ())
        data["dns_environment"] = tuple(tuple(pair) for pair in data.get("dns_environment") or ())
        return TlsSettings(**data)

    def install(self, pem: bytes) -> None:
        replace_file(self.pem, pem.decode(), mode=0o600)


def stores(state_dir: Path) -> list[Store]:
    """Every certificate store under the state dir: the host's (without sites), then each site's."""
    found = [Store(state_dir)] if (state_dir / "tls" / "settings.json").exists() or \
        (state_dir / "tls" / "site.pem").exists() else []
    sites = state_dir / "tls" / "sites"
    return found + [Store(state_dir, path.name) for path in sorted(sites.iterdir())] if sites.is_dir() else found


def _lego_error(output: str) -> str:
    """The line of lego's output that says what went wrong."""
    lines = [re.sub(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d ", "", line.strip()) for line in output.splitlines()
             if line.strip()]
    for line in reversed(lines):
        if "error" in line.lower() or "urn:ietf:params:acme:error" in line:
            return line.split("] ", 1)[-1][:500]
    return (lines[-1] if lines else "lego failed without output")[:500]


def lego_name(domain: str) -> str:
    """The name lego gives a certificate's files (a wildcard's `*` is `_`)."""
    return domain.replace("*", "_")


def lego_command(settings: TlsSettings, store: Store, renew: bool) -> list[str]:
    command = ["lego", "--accept-tos", "--email", settings.email, "--server", settings.acme_directory,
               "--path", str(store.lego)]
    if settings.dns_provider:  # DNS-01 (a wildcard): the provider sets the TXT record; lego checks it
        command += ["--dns", settings.dns_provider]
        for resolver in settings.dns_resolvers:
            command += ["--dns.resolvers", resolver]
        if settings.dns_resolvers:  # those resolvers are the ones that count (a split horizon, a test's DNS)
            command += ["--dns.disable-cp"]
    else:
        command += ["--http", "--http.port", f"127.0.0.1:{settings.challenge_port}"]
    for domain in settings.domains:
        command += ["--domains", domain]
    # renew: lego renews when fewer than --days are left; we decided already, so any number above the
    # certificate's lifetime makes it renew now.
    return command + (["renew", "--days", "100000", "--no-random-sleep"] if renew else ["run"])


def obtain(settings: TlsSettings, store: Store, force: bool = False, now: float | None = None) -> str | None:
    """Get a certificate from the ACME CA when one is due (or `force`); write it to the served PEM.
    Returns why it was obtained (None: nothing was due). Raises CertificateError with lego's reason;
    the served certificate stays as it was. Every attempt is recorded in status.json."""
    with store.lock():
        now = time.time() if now is None else now
        reason = due(store.current(), settings, now, force)
        if reason is None:
            return None
        status = store.status()
        status["last_attempt"] = now
        lego_cert = store.lego / "certificates" / f"{lego_name(settings.domains[0])}.crt"
        # lego's renew asks for the names the old certificate had too: only for exactly the same names.
        renew = lego_cert.exists() and set(settings.domains) == set(
            read_certificate(lego_cert.read_bytes(), str(lego_cert)).domains)
        environment = {**dict(settings.dns_environment), "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                       "HOME": str(store.dir)}
        if settings.acme_ca_bundle:
            environment["LEGO_CA_CERTIFICATES"] = settings.acme_ca_bundle
        log.info("certificate for %s: %s; asking %s", ", ".join(settings.domains), reason, settings.acme_directory)
        if shutil.which("lego") is None:
            raise CertificateError("lego is not installed: apt-get install lego")
        try:
            result = proc.run(lego_command(settings, store, renew), timeout=LEGO_TIMEOUT, check=False,
                              env=environment, error=CertificateError)
            if result.returncode != 0:
                raise CertificateError(f"the ACME CA at {settings.acme_directory} refused or failed: "
                                       f"{_lego_error(result.stdout + result.stderr)}")
            base = store.lego / "certificates" / lego_name(settings.domains[0])
            pem = served_pem(Path(f"{base}.crt").read_bytes(), Path(f"{base}.key").read_bytes(), str(base))
        except (CertificateError, OSError) as exc:
            message = str(exc) if isinstance(exc, CertificateError) else f"lego's certificate: {exc}"
            status.update(last_error=message, failures=int(status.get("failures", 0)) + 1)
            store.save_status(status)
            raise CertificateError(message) from None
        finally:
            for path in store.lego.rglob("*") if store.lego.exists() else ():  # lego writes some files 0644
                os.chmod(path, 0o700 if path.is_dir() else 0o600)
        store.install(pem)
        served = read_certificate(pem, str(store.pem))
        status.update(last_error=None, failures=0, last_success=now, serial=served.serial)
        store.save_status(status)
        log.info("certificate for %s obtained: serial %s, valid until %s", ", ".join(served.domains), served.serial,
                 _date(served.not_after))
        return reason


def _date(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


# -- HAProxy's runtime API ---------------------------------------------------------------------------

def _runtime(socket_path: Path, command: str) -> str:
    """One command on HAProxy's admin socket; its answer."""
    try:
        return frontend.cli(socket_path, command)
    except OSError as exc:
        raise CertificateError(f"HAProxy's runtime API at {socket_path}: {exc.strerror or exc}") from None


def served_serial(socket_path: Path, pem_path: Path) -> str | None:
    """The serial HAProxy serves for the certificate loaded from `pem_path` (None: not loaded)."""
    answer = _runtime(socket_path, f"show ssl cert {pem_path}\n")
    for line in answer.splitlines():
        if line.startswith("Serial:"):
            return line.split(":", 1)[1].strip().upper().lstrip("0")
    return None


def update_frontend(socket_path: Path, pem_path: Path, pem: bytes) -> None:
    """Replace the certificate HAProxy serves for `pem_path` in memory: new connections get it at once,
    open ones are not touched."""
    payload = pem.decode().strip("\n")
    answer = _runtime(socket_path, f"set ssl cert {pem_path} <<\n{payload}\n\n")
    if "Transaction created" not in answer and "Transaction updated" not in answer:
        raise CertificateError(f"HAProxy refused the new certificate: {answer.strip()[:300]}")
    answer = _runtime(socket_path, f"commit ssl cert {pem_path}\n")
    if "Success" in answer:
        return
    # The agent's keeper and `--renew` may both serve a new certificate at once: one commit takes the other's
    # transaction too. What counts is that HAProxy serves this certificate now.
    if "No ongoing transaction" in answer and served_serial(socket_path, pem_path) == read_certificate(
            pem, str(pem_path)).serial:
        return
    raise CertificateError(f"HAProxy did not commit the new certificate: {answer.strip()[:300]}")


def challenge_route_ready(port: int, timeout: float = 10.0) -> bool:
    """Whether the frontend already sends ACME challenges to the client's port (answering 503 while none
    listens, where the instance would answer 404): a reload that added the route takes a moment."""
    import http.client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            connection.request("GET", CHALLENGE_PATH + "pequod-probe")
            if connection.getresponse().status == 503:
                return True
        except OSError:
            pass
        finally:
            connection.close()
        time.sleep(0.2)
    return False


def sync_frontend(store: Store, socket_path: Path) -> bool:
    """Make HAProxy serve the PEM on disk if it serves another one; True when it serves it now (changed here, or
    already: the agent's keeper may have been first)."""
    current = store.current()
    if current is None or not socket_path.exists():
        return False
    serial = served_serial(socket_path, store.pem)
    if serial is None:
        return False
    if serial == current.serial:
        return True
    update_frontend(socket_path, store.pem, store.pem.read_bytes())
    log.info("frontend now serves certificate %s (was %s), without a reload", current.serial, serial)
    return True


# -- what `-i certificates` shows --------------------------------------------------------------------

def rows(store: Store, socket_path: Path | None = None) -> list[dict[str, Any]]:
    """The certificate (one per host) with its status; `served`: whether HAProxy (admin socket
    `socket_path`) serves it now."""
    current = store.current()
    status = store.status()
    try:
        settings: TlsSettings | None = store.settings()
    except CertificateError:
        settings = None
    if current is None and not status and settings is None:
        return []
    domains = current.domains if current else (settings.domains if settings else ())
    return [{
        "site": store.site or None,
        "domains": list(domains),
        "issuer": current.issuer if current else None,
        "serial": current.serial if current else None,
        "not_after": current.not_after if current else None,
        "source": ("acme " + settings.acme_directory if settings.acme else "file " + str(settings.certificate))
        if settings else None,
        "last_attempt": status.get("last_attempt"),
        "last_success": status.get("last_success"),
        "last_error": status.get("last_error"),
        "served": bool(current and socket_path and socket_path.exists() and _serves(socket_path, store.pem,
                                                                                     current.serial)),
    }]


def _serves(socket_path: Path, pem: Path, serial: str) -> bool:
    try:
        return served_serial(socket_path, pem) == serial
    except CertificateError:
        return False


def table(found: list[dict[str, Any]]) -> str:
    if not found:
        return "no certificates (the frontend serves plain HTTP; see frontend.tls)"
    sites = any(row.get("site") for row in found)
    lines = [("Site".ljust(17) if sites else "")
             + f"{'Domains':<32} {'Issuer':<28} {'Not After':<21} {'Served':<7} {'Last Attempt':<21} Error"]
    for row in found:
        lines.append((f"{row.get('site') or '-':<16} " if sites else "")
                     + f"{', '.join(row['domains']):<32} {(row['issuer'] or '-')[:28]:<28} "
                     f"{_date(row['not_after']) if row['not_after'] else '-':<21} "
                     f"{'yes' if row['served'] else 'no':<7} "
                     f"{_date(row['last_attempt']) if row['last_attempt'] else '-':<21} {row['last_error'] or '-'}")
    return "\n".join(lines)
