"""The blog image through the real Docker engine: hardened, read-only, non-root, serving."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.docker_fixtures import exec_http, wait_exec_http
from tests.helpers import SiteRepo

pytestmark = pytest.mark.system  # Docker

HARDENED = {
    "read_only": True,
    "tmpfs": {"/workdir": "size=64m"},
    "cap_drop": ["ALL"],
    "security_opt": ["no-new-privileges"],
    "network_mode": "none",
    "sysctls": {"net.ipv6.conf.all.disable_ipv6": "0"},
    "mem_limit": "384m",
    "pids_limit": 256,
}


def test_image_serves_the_site_hardened(docker_client, app_image, containers, site_repo: SiteRepo) -> None:
    container = docker_client.containers.run(
        app_image, detach=True, **HARDENED,
        environment={"SITE_REPO": "file:///srv/site.git", "POLL_INTERVAL": "1"},
        volumes={str(site_repo.bare): {"bind": "/srv/site.git", "mode": "ro"}},
    )
    containers.append(container)
    health = wait_exec_http(container, "http://[::1]:8000/_site/health", "200", timeout=120)
    assert '"healthy": true' in health
    assert "A Pequod Blog" in exec_http(container, "http://[::1]:8000/")
    assert exec_http(container, "http://[::1]:8000/posts/welcome/").startswith("200")

    commit = site_repo.add_post("from-the-container-test", "Published through the image")
    wait_exec_http(container, "http://[::1]:8000/posts/from-the-container-test/", "200", timeout=60)
    assert commit in exec_http(container, "http://[::1]:8000/_site/status")

    # Read back what is in force, from Docker and from inside.
    container.reload()
    config, host = container.attrs["Config"], container.attrs["HostConfig"]
    assert config["User"] == "10001"  # from the image: nothing passed user=
    assert host["ReadonlyRootfs"] is True and host["CapDrop"] == ["ALL"]
    assert host["SecurityOpt"] == ["no-new-privileges"]
    uid = container.exec_run(["id", "-u"]).output.decode().strip()
    assert uid == "10001"
    status = container.exec_run(["cat", "/proc/self/status"]).output.decode()
    assert "NoNewPrivs:\t1" in status and "CapEff:\t0000000000000000" in status
    assert container.exec_run(["touch", "/root-is-writable"]).exit_code != 0
    mounts = container.exec_run(["cat", "/proc/mounts"]).output.decode()
    workdir = next(line for line in mounts.splitlines() if " /workdir " in line)
    assert workdir.startswith("tmpfs") and "size=65536k" in workdir
    assert "ro," in next(line for line in mounts.splitlines() if line.split()[1] == "/")


def test_check_reads_the_manifest_from_the_image(app_image) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "container", "--check", "pequod.xml", app_image],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert f"{app_image}:/pequod.xml: ok" in result.stdout
    assert "requires: github-https 1 as github.com:443" in result.stdout
    no_manifest = subprocess.run(
        [sys.executable, "-m", "container", "--check", "pequod/base:bookworm"],
        capture_output=True, text=True, timeout=120,
    )
    assert no_manifest.returncode == 1
    assert no_manifest.stderr.strip() == (
        "error: pequod/base:bookworm: the image has no /pequod.xml; every application needs a manifest"
    )


def test_image_holds_the_blog_and_not_the_agent(docker_client, app_image) -> None:
    """The image installs pyproject.toml's `blog` extra only (docs/deployables.md): the agent runs on the host."""
    probe = (
        "import importlib.util, shutil\n"
        "names = ['nikola', 'cherrypy', 'git', 'pipeline', 'serve', 'docker', 'pyroute2', 'cryptography', 'yaml',"
        " 'container']\n"
        "print(' '.join(name for name in names if importlib.util.find_spec(name)), shutil.which('pequod-agent'))\n"
    )
    output = docker_client.containers.run(
        app_image, ["python3", "-c", probe], remove=True, network_mode="none", working_dir="/tmp",
    ).decode()
    assert output.split() == ["nikola", "cherrypy", "git", "pipeline", "serve", "None"], output
