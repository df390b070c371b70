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
import os
import pwd
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pequod_agent.daemon import Daemon
from pequod_agent.errors import AgentError

log = logging.getLogger(__name__)

# Against slow clients: a request must arrive whole within 10 s, idle keep-alive connections close after
# 10 s, a client that stops reading is dropped after 30 s.
DEFAULTS = """\
defaults
    mode http
    option httplog
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

# Hot pages come from memory. An entry lives at most 1 s (and no longer than the instance's own
# Cache-Control allows: HTML says s-maxage=1), so a new release is served everywhere within ~1 s
# of going live; responses that vary by Accept-Encoding are cached per encoding.
cache pages
    total-max-size 64
    max-object-size 2097152
    max-age 1
    process-vary on
"""


class FrontendError(AgentError):
    """HAProxy refused a configuration or cannot run."""


@dataclass(frozen=True)
class Server:
    name: str
    address: ipaddress.IPv6Address
    port: int


@dataclass(frozen=True)
class Service:
    """A provided service, published on bind:port (port 0: not published), and on `local_binds` (gateway
    address and port) for instances that require it; served by `servers` (instances that passed a check)."""
    name: str
    bind: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int
    health_path: str
    servers: tuple[Server, ...] = ()
    local_binds: tuple[tuple[ipaddress.IPv6Address, int], ...] = ()


def _bind(address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> str:
    if address.version == 4:
        return f"{address}:{port}"
    return f"[{address}]:{port}" + (" v4v6" if address == ipaddress.IPv6Address("::") else "")


def render_haproxy_conf(services: tuple[Service, ...], run_dir: Path, user: str | None = None) -> str:
    """HAProxy's configuration: a pure function of the services and their servers."""
    lines = [
        "# Written by pequod-agent; changes are overwritten.",
        "global",
        "    master-worker",
        f"    stats socket {run_dir / 'admin.sock'} mode 600 level admin expose-fd listeners",
        "    maxconn 8192",
        "    log stderr format short local0 notice",
    ]
    if user:
        lines += [f"    user {user}", f"    group {user}"]
    lines += ["", DEFAULTS.rstrip("\n"), ""]
    for service in services:
        binds = ([_bind(service.bind, service.port)] if service.port else []) + [
            _bind(address, port) for address, port in service.local_binds]
        if not binds:
            continue
        lines += [f"frontend {service.name}", *(f"    bind {bind}" for bind in binds),
                  f"    default_backend {service.name}", ""]
        lines += [
            f"backend {service.name}",
            f"    option httpchk GET {service.health_path}",
            "    http-check expect status 200",
            "    default-server check inter 2s fastinter 500ms downinter 1s fall 2 rise 1",
            "    http-request cache-use pages",
            "    http-response cache-store pages",
        ]
        lines += [f"    server {s.name} [{s.address}]:{s.port}" for s in service.servers]
        lines.append("")
    return "\n".join(lines)


def run_user() -> str | None:
    """Workers drop root to the `haproxy` user where the package created it."""
    try:
        pwd.getpwnam("haproxy")
        return "haproxy"
    except KeyError:
        return None


def check_config(text: str) -> None:
    with tempfile.NamedTemporaryFile("w", prefix="pequod-haproxy-", suffix=".cfg") as handle:
        handle.write(text)
        handle.flush()
        try:
            result = subprocess.run(["haproxy", "-c", "-f", handle.name], capture_output=True, text=True,
                                    timeout=30)
        except FileNotFoundError:
            raise FrontendError("haproxy is not installed (apt-get install haproxy)") from None
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

    def render(self, services: tuple[Service, ...]) -> str:
        return render_haproxy_conf(services, self.dir, run_user())

    def apply(self, services: tuple[Service, ...]) -> bool:
        """Make HAProxy run with this configuration; True when something changed (started or reloaded)."""
        text = self.render(services)
        current = self.conf.read_text() if self.conf.exists() else None
        running = self.daemon.pid() is not None
        if text == current and running:
            return False
        if text != current:
            check_config(text)
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = self.conf.with_name(".haproxy.cfg.tmp")
            tmp.write_text(text)
            os.replace(tmp, self.conf)
        if running:
            self.daemon.signal(signal.SIGUSR2)  # seamless reload: listeners pass to the new worker
            log.info("frontend reloaded: %s", ", ".join(f"{s.name} → {len(s.servers)} instance(s)" for s in services))
        else:
            self.daemon.start()
        return True

    def ensure(self) -> bool:
        """Restart HAProxy if it died (with the configuration last applied)."""
        return self.conf.exists() and self.daemon.ensure()

    def stop(self) -> bool:
        return self.daemon.stop()
