"""The agent under test: `pequod-agent --bootstrap` as a real process, with an IPv4-only "GitHub"."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import requests

from container.teardown import teardown
from tests.helpers import Process, SiteRepo, free_port, python_env, wait_for
from tests.netns import Ipv4Host


def agent_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "container", *args]


def bootstrap_yaml(subnet_id: int, github: str, frontend_port: int, extra_env: str = "", routes: str = "",
                   extra_frontend: str = "", client_limits: tuple[int, int] = (0, 0),
                   metrics_ports: tuple[int, int] | None = None, extra_services: str = "") -> str:
    """Per-client limits are off unless asked for: tests that hammer the frontend from ::1 are one client.
    Metrics listen on ports of their own (the defaults are for one agent per host)."""
    agent_port, haproxy_port = metrics_ports or (free_port(), free_port())
    prefix = f"fd00:5eed:{subnet_id:x}"
    return f"""\
external_services:
  - {{service_name: github-https, service_version: "1", external_host: "{github}", external_port: 443}}{extra_services}
networks:
  - ipv6_subnet_ip: "{prefix}::"
    ipv6_subnet_prefixlen: 64
    location_name: test
    ipv6_gateway: "{prefix}::1"
    ipv6_routes:
      - {{destination_ip: "fd99:69a4:fefb:64::", destination_prefixlen: 96, gateway: "{prefix}::1"}}{routes}
frontend:
  port: {frontend_port}
  max_connections_per_client: {client_limits[0]}
  max_requests_per_client: {client_limits[1]}{extra_frontend}
metrics:
  agent: "127.0.0.1:{agent_port}"
  haproxy: "127.0.0.1:{haproxy_port}"
environment:
  SITE_REPO: git://github.com:443/site.git
  POLL_INTERVAL: 1{extra_env}
"""


class AgentRun:
    """An agent against an IPv4-only "GitHub" (its own namespace) serving the site over git on port 443,
    reached by the IPv6-only instance through NAT64 as github.com:443; the frontend on a free port."""

    def __init__(self, tmp: Path, client: docker.DockerClient, repo: SiteRepo):
        self.tmp, self.client, self.repo = tmp, client, repo
        self.subnet_id = random.randrange(1, 0xFFFF)
        self.frontend_port = free_port()
        self.frontend = f"http://[::1]:{self.frontend_port}"
        self.metrics_ports = (free_port(), free_port())
        self.yaml = tmp / "pequod-bootstrap.yaml"
        self.state_dir = tmp / "state"
        self.processes: list[Process] = []
        self.agent: Process | None = None
        self.github = Ipv4Host(tmp, "gh")
        self.github.serve_git(repo.bare.parent, 443)
        self.write_yaml()

    def write_yaml(self, **kwargs) -> None:
        kwargs.setdefault("metrics_ports", self.metrics_ports)
        self.yaml.write_text(bootstrap_yaml(self.subnet_id, str(self.github.address), self.frontend_port, **kwargs))

    def start(self, images: tuple[str, ...] = ("srcco-de:1",)) -> Process:
        self.agent = Process(
            agent_cmd("--bootstrap", *images, str(self.yaml), "--state-dir", str(self.state_dir)),
            python_env(), self.tmp / f"agent-{len(self.processes)}.log",
        )
        self.processes.append(self.agent)
        return self.agent

    def instances(self) -> list[dict]:
        out = subprocess.run(agent_cmd("-i", "--json", "--state-dir", str(self.state_dir)), capture_output=True,
                             text=True, timeout=60, env=python_env())
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def wait_healthy(self, timeout: float = 60, not_name: str | None = None) -> dict:
        def healthy() -> dict | None:
            for row in self.instances():
                if row["instance_name"] == not_name:
                    continue
                response = requests.get(f"http://[{row['ipv6']}]:8000/_site/health", timeout=2)
                if response.status_code == 200:
                    return row
            return None

        return wait_for("a healthy instance", healthy, timeout, interval=0.5)

    def cleanup(self) -> None:
        for process in self.processes:
            process.stop()
        teardown(self.client, self.state_dir)
        self.github.remove()


@pytest.fixture
def agent_run(tmp_path: Path, docker_client, app_image, site_repo: SiteRepo) -> Iterator[AgentRun]:
    run = AgentRun(tmp_path, docker_client, site_repo)
    try:
        yield run
    finally:
        run.cleanup()


class Loop:
    """A client fetching the front page through the frontend, over and over, counting failures."""

    def __init__(self, url: str):
        self.url = url
        self.ok = 0
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                response = requests.get(self.url, timeout=10)
                if response.status_code == 200 and "A Pequod Blog" in response.text:
                    self.ok += 1
                else:
                    self.failed.append(f"{time.time():.2f} status {response.status_code}")
            except requests.RequestException as exc:
                self.failed.append(f"{time.time():.2f} {type(exc).__name__}")
            time.sleep(0.02)

    def __enter__(self) -> Loop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)
