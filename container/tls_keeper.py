"""Certificates kept current: one `Keeper` per certificate (the host's, or each site's), tended by the
agent's loop. The ACME client (lego) runs in a thread of its own, one at a time for the whole host (one
challenge port, and the CA's rate limits count per account), with back-off after failures; a new
certificate is served without a reload (HAProxy's runtime API) once the frontend loads its file."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from container import certificates
from container.errors import AgentError
from container.settings import DnsChallenge, TlsSettings

log = logging.getLogger("container")


@dataclass
class Keeper:
    """One certificate: its store and settings, the thread obtaining it and the state of its attempts."""
    store: certificates.Store
    settings: TlsSettings
    thread: threading.Thread | None = None
    outcome: str | None = None  # the error of the attempt that just ended, "" for success
    next_check: float = 0.0
    failures: int = 0
    synced: float | None = None  # mtime of the PEM last made sure to be served
    label: str = field(default="certificate")

    def update(self, settings: TlsSettings) -> None:
        """New settings (other domains, another CA): checked again at once, the back-off forgotten."""
        if settings != self.settings:
            self.settings, self.next_check, self.failures = settings, 0.0, 0
            self.store.save_settings(settings)

    def busy(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def tend(self, now: float, may_start: bool, http_port: int) -> None:
        """Obtain or renew when due (in a thread, if `may_start`: no other keeper's runs); the
        administrator's own file is served within 10 s of a change."""
        tls = self.settings
        if not tls.acme:
            if now >= self.next_check:
                self.next_check = now + 10
                pem = certificates.administrator_pem(tls)
                if not self.store.pem.exists() or self.store.pem.read_bytes() != pem:
                    self.store.ensure()
                    self.store.install(pem)
                    log.info("serving the certificate from %s", tls.certificate)
        elif self.thread is not None and not self.thread.is_alive():
            self.thread = None
            if self.outcome:
                self.failures += 1
                delay = certificates.retry_delay(self.failures)
                self.next_check = now + delay
                log.error("%s: %s; the current certificate stays; trying again in %.0f s", self.label,
                          self.outcome, delay)
            else:
                self.failures, self.next_check = 0, now + certificates.CHECK_INTERVAL
        elif self.thread is None and may_start and now >= self.next_check and tls.domains:
            self.next_check = now + certificates.CHECK_INTERVAL
            if certificates.due(self.store.current(), tls, time.time()) is not None:
                self.thread = threading.Thread(target=self._obtain, args=(tls, http_port), name="acme", daemon=True)
                self.thread.start()

    def changed(self) -> bool:
        """Whether the PEM on disk is new since the last call (then the frontend must serve it)."""
        if not self.store.pem.exists():
            return False
        mtime = self.store.pem.stat().st_mtime
        if mtime == self.synced:
            return False
        self.synced = mtime
        return True

    def _obtain(self, tls: TlsSettings, http_port: int) -> None:
        try:
            if http_port and not tls.dns_provider and not certificates.challenge_route_ready(http_port):
                log.warning("the frontend does not route ACME challenges on port %d yet; asking the CA anyway",
                            http_port)
            certificates.obtain(tls, self.store)
            self.outcome = ""
        except AgentError as exc:
            self.outcome = str(exc)


class Keepers:
    """The host's certificates: without sites one (the host's store), with sites one per site that has
    domains (the administrator's own certificate: one for all)."""

    def __init__(self, state_dir: Path):
        self.state_dir = state_dir
        self.by_site: dict[str, Keeper] = {}

    def configure(self, tls: TlsSettings | None, sites: dict[str, tuple[tuple[str, ...], str]],
                  previews: dict[str, tuple[str, DnsChallenge]] | None = None) -> None:
        """`sites`: site → (domains, email); empty without sites. `previews`: the previews' wildcard certificates
        (name → domain, how DNS-01 is answered). Keepers of sites gone are dropped (their store removed), new
        ones made, changed ones updated."""
        wanted: dict[str, TlsSettings] = {}
        if tls is not None:
            if not sites or not tls.acme:
                wanted[""] = tls
            else:
                wanted = {site: dataclasses.replace(tls, domains=domains, email=email or tls.email)
                          for site, (domains, email) in sites.items() if domains}
            if tls.acme:
                wanted.update({name: dataclasses.replace(
                    tls, domains=(f"*.{domain}",), dns_provider=dns.provider, dns_environment=dns.environment,
                    dns_resolvers=dns.resolvers) for name, (domain, dns) in (previews or {}).items()})
        for site in list(self.by_site):
            if site not in wanted:
                keeper = self.by_site.pop(site)
                if site:
                    keeper.store.remove()
        for site, settings in wanted.items():
            if site in self.by_site:
                self.by_site[site].update(settings)
            else:
                store = certificates.Store(self.state_dir, site)
                store.save_settings(settings)
                self.by_site[site] = Keeper(store, settings, label=f"certificate of {site}" if site else "certificate")

    def pems(self, sites: tuple[str, ...]) -> tuple[Path | None, dict[str, Path]]:
        """The PEMs to serve: the host's (None: none yet) and each site's."""
        host = self.by_site.get("")
        pem = host.store.pem if host is not None and host.store.pem.exists() else None
        if not sites:
            return pem, {}
        if pem is not None:  # the administrator's certificate serves every site
            return None, {site: pem for site in sites}
        return None, {site: k.store.pem for site, k in self.by_site.items() if site and k.store.pem.exists()}

    def pem_of(self, name: str) -> Path | None:
        """The PEM of one certificate (a previews' one), None until it exists."""
        keeper = self.by_site.get(name)
        return keeper.store.pem if keeper is not None and keeper.store.pem.exists() else None

    def tend(self, http_port: int) -> list[Keeper]:
        """One round: each keeper tended; those whose PEM changed are returned (to be served)."""
        now = time.monotonic()
        busy = any(keeper.busy() for keeper in self.by_site.values())
        for keeper in list(self.by_site.values()):
            keeper.tend(now, not busy, http_port)
            busy = busy or keeper.busy()
        return [keeper for keeper in self.by_site.values() if keeper.changed()]

    def busy(self) -> bool:
        """Whether an ACME client runs now (it holds the challenge port)."""
        return any(keeper.busy() for keeper in self.by_site.values())

    def snapshot(self) -> dict[str, tuple[certificates.Certificate | None, int]]:
        return {site: (keeper.store.current(), keeper.failures) for site, keeper in self.by_site.items()}
