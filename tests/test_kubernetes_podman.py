"""The Kubernetes export run for real: `podman kube play` starts the default export of the blog image, which
builds the site from a git remote on this host and serves it; limits and security context are checked on
the running container. (Podman is not a cluster: what it ignores is listed in the README.)"""

from __future__ import annotations

import base64
import json
import random
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
import yaml

from container.manifest import load_manifest
from tests.agent_fixtures import agent_cmd
from tests.helpers import REPO_ROOT, Process, SiteRepo, free_port, python_env, wait_for

pytestmark = pytest.mark.system  # root, Docker, podman

CONTAINERS_CONF = """\
[containers]
# Within this machine's hard limits (podman's defaults are refused: "error setting rlimit").
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
"""


class Podman:
    def __init__(self, tmp: Path):
        conf = tmp / "containers.conf"
        conf.write_text(CONTAINERS_CONF)
        self.env = python_env(CONTAINERS_CONF=str(conf))

    def __call__(self, *args: str, stdin: bytes | None = None, check: bool = True, timeout: float = 120) -> str:
        result = subprocess.run(["podman", *args], input=stdin, capture_output=True, timeout=timeout, env=self.env)
        if check and result.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)}: {result.stderr.decode(errors='replace')[-800:]}")
        return result.stdout.decode(errors="replace")


BOOTSTRAP = """\
external_services:
  - {{service_name: github-https, service_version: "1", external_host: "198.18.0.1", external_port: 443}}
environment:
  SITE_REPO: "git://{gateway}:{port}/{repo}"
  POLL_INTERVAL: 5
"""
DEFAULT_ENV = """\
  WEBHOOK_SECRET: not-in-the-pod-spec
  MIRROR_URL: "https://reader-token@git.example.org/blog.git"
"""
# Two sites of the one image, each with its own secret and limits (memory below the manifest's 640 MB).
SITES = """\
sites:
  - {name: blog, domains: [blog.example.org], memory_mb: 512, environment: {WEBHOOK_SECRET: blog-only}}
  - {name: docs, domains: [docs.example.org], memory_mb: 448, vmhz: 1500, environment: {WEBHOOK_SECRET: docs-only}}
"""


@contextmanager
def played(tmp_path: Path, app_image: str, site_repo: SiteRepo, extra: str,
           host_ports: bool = False) -> Iterator[tuple[Podman, str]]:
    """`podman kube play` of the export of `app_image` for BOOTSTRAP plus `extra`: the podman and the export.
    Podman 4.3 publishes each containerPort on the host as well (as if it were the hostPort): with
    `host_ports`, each workload gets a free hostPort instead, so that two sites' pods do not clash."""
    podman = Podman(tmp_path)
    third = random.randrange(100, 200)
    network, gateway = f"pqt-k8s-{third}", f"198.18.{third}.1"
    port = free_port()
    daemon = Process(["git", "daemon", "--reuseaddr", "--export-all", f"--base-path={site_repo.bare.parent}",
                      "--listen=0.0.0.0", f"--port={port}", str(site_repo.bare.parent)], python_env(),
                     tmp_path / "git-daemon.log")
    (tmp_path / "bootstrap.yaml").write_text(BOOTSTRAP.format(gateway=gateway, port=port,
                                                              repo=site_repo.bare.name) + extra)
    export = subprocess.run(agent_cmd("--export", "kubernetes", app_image, str(tmp_path / "bootstrap.yaml")),
                            capture_output=True, text=True, timeout=120, env=python_env())
    assert export.returncode == 0, export.stderr
    docs = list(yaml.safe_load_all(export.stdout))
    # Podman 4.3 stores a Secret document as YAML and then cannot read it back for envFrom (podman issue
    # 16269): the secrets are created the way podman reads them, and the rest of the export is played as it is.
    secrets = [d for d in docs if d["kind"] == "Secret"]
    for index, secret in enumerate(secrets):
        (tmp_path / f"secret-{index}.json").write_text(json.dumps(
            {key: base64.b64encode(value.encode()).decode() for key, value in secret["stringData"].items()}))
    for doc in (d for d in docs if host_ports and d["kind"] == "Deployment"):
        for published in doc["spec"]["template"]["spec"]["containers"][0]["ports"]:
            published["hostPort"] = free_port()
    (tmp_path / "play.yaml").write_text(yaml.safe_dump_all([d for d in docs if d["kind"] != "Secret"]))
    try:
        podman("load", "-q", stdin=subprocess.run(["docker", "save", app_image], capture_output=True,
                                                  timeout=300, check=True).stdout, timeout=300)
        podman("network", "create", "--subnet", f"198.18.{third}.0/24", network)
        for index, secret in enumerate(secrets):
            podman("secret", "create", secret["metadata"]["name"], str(tmp_path / f"secret-{index}.json"))
        podman("kube", "play", "--network", network, str(tmp_path / "play.yaml"))
        yield podman, export.stdout
    finally:
        podman("kube", "down", str(tmp_path / "play.yaml"), check=False)
        # Podman keeps an emptyDir as a named volume after `kube down`: the next play must start empty.
        for volume in {v["name"] for d in docs if d["kind"] in ("Deployment", "StatefulSet")
                       for v in d["spec"]["template"]["spec"].get("volumes", [])}:
            podman("volume", "rm", "-f", volume, check=False)
        for secret in secrets:
            podman("secret", "rm", secret["metadata"]["name"], check=False)
        podman("network", "rm", "-f", network, check=False)
        podman("rmi", "-f", f"localhost/{app_image}", check=False)
        daemon.stop()


def address_of(podman: Podman, container: str) -> str:
    return podman("inspect", container, "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}").strip()


@pytest.fixture
def podman_blog(tmp_path: Path, app_image: str, site_repo: SiteRepo) -> Iterator[tuple[Podman, str, str]]:
    with played(tmp_path, app_image, site_repo, DEFAULT_ENV) as (podman, exported):
        yield podman, "srcco-de-pod-0-srcco-de", exported


def test_the_default_export_runs_under_podman_kube_play(podman_blog: tuple[Podman, str, str]) -> None:
    podman, container, exported = podman_blog
    base = f"http://{address_of(podman, container)}:8000"
    wait_for("the blog built in the pod", lambda: requests.get(base + "/_site/health", timeout=2).status_code == 200,
             120, interval=0.5)
    assert "A Pequod Blog" in requests.get(base + "/posts/welcome/", timeout=5).text
    info = json.loads(podman("inspect", container))[0]
    host = info["HostConfig"]
    memory = load_manifest(str(REPO_ROOT / "pequod.xml")).resources.memory_mb * 1024 * 1024
    assert host["Memory"] == memory and host["ReadonlyRootfs"] is True
    assert info["Config"]["User"].split(":")[0] == "10001"
    assert info["EffectiveCaps"] in (None, []) and "no-new-privileges" in host["SecurityOpt"]
    status = podman("exec", container, "cat", "/proc/self/status")
    assert "CapEff:\t0000000000000000" in status and "NoNewPrivs:\t1" in status
    assert podman("exec", container, "sh", "-c", "touch /x 2>/dev/null && echo writable || echo read-only") \
        .strip() == "read-only"
    # What podman applies of the rest, and what it ignores (the README lists it).
    assert "github.com" in podman("exec", container, "cat", "/etc/hosts")  # hostAliases
    mounts = podman("exec", container, "cat", "/proc/mounts")
    assert " /tmp tmpfs " not in mounts  # emptyDir medium: Memory is not a tmpfs under podman
    assert "curl" in json.dumps(info["Config"].get("Healthcheck"))  # the liveness probe, as a health check
    deployment = next(d for d in yaml.safe_load_all(exported) if d["kind"] == "Deployment")
    assert "not-in-the-pod-spec" not in yaml.safe_dump(deployment)  # the secret is in the Secret only
    assert "reader-token" not in yaml.safe_dump(deployment)  # so is a URL's user-info...
    assert podman("exec", container, "printenv", "MIRROR_URL").strip() == \
        "https://reader-token@git.example.org/blog.git"  # ...which the pod gets from the Secret


def test_two_sites_run_under_podman_kube_play_each_with_its_secret_and_limits(
        tmp_path: Path, app_image: str, site_repo: SiteRepo) -> None:
    with played(tmp_path, app_image, site_repo, SITES, host_ports=True) as (podman, exported):
        for site, memory_mb, secret in (("blog", 512, "blog-only"), ("docs", 448, "docs-only")):
            container = f"{site}-pod-0-{site}"
            base = f"http://{address_of(podman, container)}:8000"
            wait_for(f"site {site} built in its pod",
                     lambda base=base: requests.get(base + "/_site/health", timeout=2).status_code == 200,
                     120, interval=0.5)
            assert "A Pequod Blog" in requests.get(base + "/posts/welcome/", timeout=5).text
            info = json.loads(podman("inspect", container))[0]
            assert info["HostConfig"]["Memory"] == memory_mb * 1024 * 1024
            assert podman("exec", container, "printenv", "WEBHOOK_SECRET").strip() == secret
        assert "-only" not in yaml.safe_dump([d for d in yaml.safe_load_all(exported) if d["kind"] != "Secret"])
