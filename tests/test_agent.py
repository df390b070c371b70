"""pequod-agent --bootstrap through the real Docker engine and real netlink (pyroute2)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest
import requests
from pyroute2 import IPRoute

from container import network, runtime, volume
from container.capacity import host_capacity, nano_cpus
from container.cli import main
from container.manifest import load_manifest
from container.teardown import teardown
from tests.agent_fixtures import AgentRun, agent_cmd, bootstrap_yaml
from tests.helpers import REPO_ROOT, free_port, wait_for

pytestmark = pytest.mark.system  # root, Docker, network namespaces, iptables, HAProxy


def test_instance_is_ipv6_only_limited_and_hardened(agent_run: AgentRun) -> None:
    agent_run.start()
    row = agent_run.wait_healthy()
    prefix = f"fd00:5eed:{agent_run.subnet_id:x}:0:aacc:"
    assert row["ipv6"].startswith(prefix) and row["zone"] == "bootstrap"
    assert row["instance_name"].startswith("bootstrap--srcco-de-1-") and len(row["instance_name"]) == 26
    assert "A Pequod Blog" in requests.get(f"http://[{row['ipv6']}]:8000/", timeout=5).text

    pid = row["pid"]
    assert network.instance_addresses(pid) == [row["ipv6"]]  # one global IPv6 address, no IPv4
    nsenter = subprocess.run(["nsenter", "--net", "-t", str(pid), "ip", "-o", "addr", "show", "scope", "global"],
                             capture_output=True, text=True, timeout=30)
    assert nsenter.returncode == 0 and f"inet6 {row['ipv6']}/64" in nsenter.stdout
    assert " inet " not in nsenter.stdout
    with IPRoute(netns=f"/proc/{pid}/ns/net", flags=0) as ns:
        assert [r for r in ns.get_routes(family=socket.AF_INET) if r.get("RTA_DST") != "127.0.0.1"
                and r.get("table") == 254] == []
        v6 = {(r.get("RTA_DST") or "::", r["dst_len"]): r.get("RTA_GATEWAY")
              for r in ns.get_routes(family=socket.AF_INET6) if r.get("table") == 254}
    gateway = f"fd00:5eed:{agent_run.subnet_id:x}::1"
    assert v6[("::", 0)] == gateway
    assert v6[("fd99:69a4:fefb:64::", 96)] == gateway

    container = agent_run.client.containers.get(row["instance_name"])
    host = container.attrs["HostConfig"]
    assert host["NetworkMode"] == "none"
    manifest = load_manifest(str(REPO_ROOT / "pequod.xml"))
    limit = manifest.resources.memory_mb * 1024 * 1024
    assert host["Memory"] == limit and host["MemorySwap"] == limit
    assert host["NanoCpus"] == nano_cpus(manifest.resources, host_capacity()) and host["PidsLimit"] == 256
    assert host["Ulimits"] == [{"Name": "nofile", "Soft": 4096, "Hard": 4096}]
    assert host["Tmpfs"]["/tmp"].startswith("size=64m")
    volume_dir = agent_run.state_dir / "volumes" / "srcco-de-workdir"
    assert f"{volume_dir}:/workdir:rw" in host["Binds"]
    # The agent checks the instance's health (every 5 s), not Docker: no process is started in it every 10 s.
    assert container.attrs["Config"]["Healthcheck"]["Test"] == ["NONE"]
    assert "Health" not in container.attrs["State"]
    # The image's own probe, for `docker run` without the agent: it passes on the instance's port, and fails on
    # a port where nothing answers.
    probe = agent_run.client.images.get(container.attrs["Config"]["Image"]).attrs["Config"]["Healthcheck"]["Test"]
    assert probe[0] == "CMD"
    assert container.exec_run(probe[1:]).exit_code == 0
    assert container.exec_run(probe[1:], environment={"PORT": "9"}).exit_code != 0
    assert host["ReadonlyRootfs"] is True and host["CapDrop"] == ["ALL"]
    assert host["SecurityOpt"] == ["no-new-privileges"]

    def inside(*cmd: str) -> str:
        return container.exec_run(list(cmd)).output.decode()

    assert inside("id", "-u").strip() == "10001"
    assert "Max open files            4096                 4096" in inside("cat", "/proc/self/limits")
    status = inside("cat", "/proc/self/status")
    assert "CapEff:\t0000000000000000" in status and "NoNewPrivs:\t1" in status
    mounts = inside("cat", "/proc/mounts").splitlines()
    assert "size=65536k" in next(line for line in mounts if " /tmp " in line)
    workdir = next(line for line in mounts if " /workdir " in line)  # the volume: ext4 of its own size
    assert workdir.split()[2] == "ext4" and "nosuid" in workdir and "nodev" in workdir
    size_kib = int(inside("df", "-k", "/workdir").splitlines()[1].split()[1])
    assert 900 * 1024 < size_kib <= 1024 * 1024
    inodes = int(inside("df", "-i", "/workdir").splitlines()[1].split()[1])
    assert inodes >= size_kib // 4 * 0.9  # one per 4 KiB: a large blog is many small files
    memory = inside("sh", "-c", "cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null")
    assert str(limit) in memory
    pids = inside("sh", "-c", "cat /sys/fs/cgroup/pids.max /sys/fs/cgroup/pids/pids.max 2>/dev/null")
    assert "256" in pids
    assert container.exec_run(["touch", "/x"]).exit_code != 0
    cpu = inside("sh", "-c", "cat /sys/fs/cgroup/cpu.max 2>/dev/null || "
                 "echo $(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us) $(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us)")
    quota, period = cpu.split()[:2]
    assert abs(int(quota) / int(period) - host["NanoCpus"] / 1e9) < 0.01

    services = subprocess.run(agent_cmd("-i", "services"), capture_output=True, text=True, timeout=60).stdout
    lines = services.splitlines()
    assert lines[0].split() == ["Instance", "Name", "Repo", "Application", "Name", "Ver", "Type", "Service", "Ver",
                                "Local", "Hostname", "Local", "Port"]
    assert lines[1].split() == [row["instance_name"], "srcco-de", "1", "provide", "srcco-de", "1", row["ipv6"], "8000"]
    assert lines[2].split() == [row["instance_name"], "srcco-de", "1", "require", "github-https", "1", "github.com",
                                "443"]
    table = subprocess.run(agent_cmd("-i"), capture_output=True, text=True, timeout=60).stdout.splitlines()
    assert table[0].split()[-3:] == ["PID", "IPv6", "Started"]
    assert table[1].split()[:6] == [row["instance_name"], "srcco-de", "1", "bootstrap", str(pid), row["ipv6"]]
    assert table[1].endswith("ago")

    # Teardown keeps the volume (the releases) unless purged.
    assert agent_run.agent is not None
    agent_run.agent.stop()
    removed = teardown(agent_run.client, agent_run.state_dir)
    image = agent_run.state_dir / "volumes" / "srcco-de-workdir.ext4"
    assert f"volume mount {volume_dir}" in removed and image.is_file() and not volume.mounted(volume_dir)
    assert f"volume {image}" in teardown(agent_run.client, agent_run.state_dir, purge=True)
    assert not image.exists()


def test_dead_instance_is_replaced_and_agent_restart_re_adopts(agent_run: AgentRun) -> None:
    agent = agent_run.start()
    first = agent_run.wait_healthy()
    agent_run.client.containers.get(first["instance_name"]).kill()
    second = agent_run.wait_healthy(timeout=15, not_name=first["instance_name"])
    assert second["instance_name"] != first["instance_name"]
    assert json.loads((agent_run.state_dir / "state.json").read_text())["restarts"] == 1

    agent.stop(signal.SIGKILL)
    # As if the agent had been killed while wiring it: the address is there, the routes are not yet.
    with IPRoute(netns=f"/proc/{second['pid']}/ns/net", flags=0) as ns:
        ns.route("del", dst="fd99:69a4:fefb:64::", dst_len=96, family=socket.AF_INET6)
        ns.route("del", dst="::", dst_len=0, family=socket.AF_INET6)
    agent_run.start()
    wait_for("re-adoption", lambda: "re-adopted running instance" in agent_run.agent.log, 30)
    assert "it lacked the default route, the route to fd99:69a4:fefb:64::/96" in agent_run.agent.log
    with IPRoute(netns=f"/proc/{second['pid']}/ns/net", flags=0) as ns:
        routes = {(r.get("RTA_DST") or "::", r["dst_len"]) for r in ns.get_routes(family=socket.AF_INET6)}
    assert {("::", 0), ("fd99:69a4:fefb:64::", 96)} <= routes
    rows = agent_run.instances()
    assert [r["instance_name"] for r in rows] == [second["instance_name"]]
    assert rows[0]["pid"] == second["pid"]
    assert requests.get(f"http://[{second['ipv6']}]:8000/_site/health", timeout=5).status_code == 200

    agent_run.agent.stop(signal.SIGTERM)
    assert agent_run.agent.proc.returncode == 0
    assert len(agent_run.instances()) == 1  # instances outlive the agent; -i still works


def test_bootstrap_yaml_changes_are_applied_or_refused(agent_run: AgentRun) -> None:
    agent_run.start()
    first = agent_run.wait_healthy()
    container = agent_run.client.containers.get(first["instance_name"])

    gateway = f"fd00:5eed:{agent_run.subnet_id:x}::1"
    route = f'\n      - {{destination_ip: "fd42::", destination_prefixlen: 64, gateway: "{gateway}"}}'
    agent_run.write_yaml(routes=route)

    def has_route() -> bool:
        with IPRoute(netns=f"/proc/{first['pid']}/ns/net", flags=0) as ns:
            return any(r.get("RTA_DST") == "fd42::" for r in ns.get_routes(family=socket.AF_INET6))

    wait_for("the new route inside the running instance", has_route, 20)
    assert [r["instance_name"] for r in agent_run.instances()] == [first["instance_name"]]  # not restarted

    agent_run.yaml.write_text("networks: [this is: not valid\n")
    wait_for("the invalid change to be reported",
             lambda: "ignoring the changed bootstrap YAML" in agent_run.agent.log, 20)
    container.reload()
    assert container.status == "running"
    assert requests.get(f"http://[{first['ipv6']}]:8000/_site/health", timeout=5).status_code == 200

    agent_run.write_yaml(extra_env="\n  GREETING: hello")
    second = agent_run.wait_healthy(timeout=30, not_name=first["instance_name"])
    env = agent_run.client.containers.get(second["instance_name"]).attrs["Config"]["Env"]
    assert "GREETING=hello" in env
    assert agent_run.agent.proc.poll() is None  # the agent itself was never restarted


def test_teardown_leaves_nothing_of_ours(agent_run: AgentRun) -> None:
    agent_run.start()
    agent_run.wait_healthy()
    agent_run.agent.stop()
    result = subprocess.run(agent_cmd("--teardown", "--state-dir", str(agent_run.state_dir)),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "removed container bootstrap--srcco-de-1-" in result.stdout
    assert runtime.our_containers(agent_run.client) == []
    with IPRoute() as ipr:
        names = [link.get("IFLA_IFNAME") for link in ipr.get_links()]
    assert network.BRIDGE not in names
    assert not [name for name in names if name.startswith(network.VETH_PREFIX)]
    assert not (agent_run.state_dir / "state.json").exists()


GOOD = bootstrap_yaml(0x77, "198.18.0.2", 8080)
BAD_BOOTSTRAP = [
    ("not YAML", "networks: [unclosed", "not valid YAML"),
    ("top level list", "- a\n- b\n", "top level: expected a mapping, got a list"),
    ("unknown top key", GOOD + "extra: 1\n", "top level.extra: unknown key"),
    ("services not a list", "external_services: github\n", "external_services: expected a list, got a string"),
    ("service missing host", "external_services:\n  - {service_name: a, service_version: '1', external_port: 1}\n",
     "external_services[0]: missing key external_host"),
    ("port not a number", GOOD.replace("external_port: 443", "external_port: https"),
     "external_services[0].external_port: expected a port number (1-65535), got a string"),
    ("port out of range", GOOD.replace("external_port: 443", "external_port: 99999"), "99999 is out of range"),
    ("bad service name", GOOD.replace("service_name: github-https", "service_name: GitHub HTTPS"),
     "is not a service name"),
    ("duplicate service", GOOD.replace("external_services:\n", "external_services:\n  - {service_name: github-https, "
                                       "service_version: '1', external_host: a.example, external_port: 1}\n"),
     "service 'github-https' is defined twice"),
    ("invalid subnet", GOOD.replace('"fd00:5eed:77::"', '"fd00:zz::"'), "'fd00:zz::' is not an IPv6 address"),
    ("IPv4 subnet", GOOD.replace('"fd00:5eed:77::"', '"198.18.0.0"'), "'198.18.0.0' is not an IPv6 address"),
    ("prefix too long", GOOD.replace("ipv6_subnet_prefixlen: 64", "ipv6_subnet_prefixlen: 96"),
     "96 is out of range: expected a prefix length"),
    ("prefix not a number", GOOD.replace("ipv6_subnet_prefixlen: 64", "ipv6_subnet_prefixlen: sixty-four"),
     "ipv6_subnet_prefixlen: expected a prefix length"),
    ("host bits set", GOOD.replace('"fd00:5eed:77::"', '"fd00:5eed:77::5"'), "has host bits set for /64"),
    ("gateway outside", GOOD.replace('ipv6_gateway: "fd00:5eed:77::1"', 'ipv6_gateway: "fd00:1::1"'),
     "fd00:1::1 is not inside fd00:5eed:77::/64"),
    ("route without gateway", GOOD.replace(', gateway: "fd00:5eed:77::1"}', "}"),
     "ipv6_routes[0]: missing key gateway"),
    ("unknown network key", GOOD.replace("location_name: test", "location_name: test\n    vlan: 5"),
     "networks[0].vlan: unknown key"),
    ("environment not a mapping", GOOD.split("environment:")[0] + "environment: [A, B]\n",
     "environment: expected a mapping, got a list"),
    ("environment value nested", GOOD + "  NESTED: {a: 1}\n", "environment.NESTED: expected a string, got a mapping"),
    ("require not defined", GOOD.split("networks:")[0].replace("github-https", "gitlab-https") + "networks:"
     + GOOD.split("networks:")[1], '<require service-name="github-https"> is not defined in'),
    ("NAT64 prefix not /96", GOOD + "nat64: {prefix: 'fd99::/64'}\n", "nat64.prefix: fd99::/64 must be a /96"),
    ("mount not absolute", GOOD + "mounts: [{source: srv, target: /srv}]\n",
     "mounts[0].source: 'srv' is not an absolute path without '..'"),
    ("mount source missing", GOOD + "mounts: [{source: /nonexistent/site.git, target: /srv/site.git}]\n",
     "mounts[0].source: /nonexistent/site.git does not exist on the host"),
    ("mount over /etc/hosts", GOOD + "mounts: [{source: /tmp, target: /etc/hosts}]\n",
     "mounts[0].target: /etc/hosts is managed by the agent or the manifest"),
    ("mount target twice", GOOD + "mounts: [{source: /tmp, target: /x}, {source: /var, target: /x}]\n",
     "mounts: target /x is mounted twice"),
    ("frontend port not a number", GOOD.replace("port: 8080", "port: http"),
     "frontend.port: expected a port number (1-65535), got a string 'http'"),
]


@pytest.mark.parametrize(("name", "text", "message"), BAD_BOOTSTRAP, ids=[c[0] for c in BAD_BOOTSTRAP])
def test_bad_bootstrap_yaml_starts_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], docker_client, app_image, name: str, text: str, message: str,
) -> None:
    path = tmp_path / "pequod-bootstrap.yaml"
    path.write_text(text)
    before = {c.id for c in runtime.our_containers(docker_client)}
    assert main(["--bootstrap", app_image, str(path), "--state-dir", str(tmp_path / "state")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pequod-agent: ") and message in err[0], err
    assert {c.id for c in runtime.our_containers(docker_client)} == before
    assert not (tmp_path / "state").exists()


def test_frontend_port_in_use_starts_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str], docker_client,
                                             app_image) -> None:
    port = free_port()
    path = tmp_path / "pequod-bootstrap.yaml"
    path.write_text(bootstrap_yaml(0x77, "198.18.0.2", port))
    with socket.create_server(("::", port), family=socket.AF_INET6, dualstack_ipv6=True):
        assert main(["--bootstrap", app_image, str(path), "--state-dir", str(tmp_path / "state")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"pequod-agent: cannot publish srcco-de on [::]:{port}: Address already in use"), err
    assert "frontend.port" in err and not (tmp_path / "state").exists()


def test_image_without_manifest_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], docker_client,
                                          app_image) -> None:
    path = tmp_path / "pequod-bootstrap.yaml"
    path.write_text(GOOD)
    assert main(["--bootstrap", "pequod/base:bookworm", str(path), "--state-dir", str(tmp_path / "s")]) == 1
    assert capsys.readouterr().err.strip() == (
        "pequod-agent: pequod/base:bookworm: the image has no /pequod.xml; every application needs a manifest"
    )



def test_an_agent_killed_while_it_replaces_an_instance_lets_the_replacement_finish_starting(
        agent_run: AgentRun) -> None:
    """kill -9 of the agent right after it started a replacement that takes a while to become healthy (no release
    yet: its first build is slow): the next agent re-adopts it still starting, with the rest of its start period
    (health-check-timeout-seconds), instead of replacing it after 10 s of liveness checks."""
    conf = agent_run.repo.work / "conf.py"
    conf.write_text(conf.read_text() + "\nimport time\ntime.sleep(20)  # a slow first build\n")
    agent_run.repo.commit("A site whose builds take 20 s")
    agent = agent_run.start()
    instances = runtime.our_containers

    first = wait_for("the first instance", lambda: next((c.name for c in instances(agent_run.client)
                                                        if c.status == "running"), None), 60, interval=0.05)
    agent_run.client.containers.get(first).kill()  # before its first release
    name = wait_for("the replacement to run", lambda: next((c.name for c in instances(agent_run.client)
                                                            if c.name != first and c.status == "running"), None),
                    30, interval=0.02)
    os.kill(agent.proc.pid, signal.SIGKILL)  # the agent only (its process group holds HAProxy and Tayga)
    agent.proc.wait()
    again = agent_run.start()
    wait_for("the agent to put an instance into the frontend (or to replace one)",
             lambda: "is healthy and in the frontend" in again.log or "has not answered" in again.log, 120,
             interval=0.5)
    assert f"re-adopted running instance {name} " in again.log and "still starting" in again.log, again.log
    assert f"{name} is healthy and in the frontend" in again.log, again.log
    assert "has not answered its health check" not in again.log, again.log
    assert [row["instance_name"] for row in agent_run.instances()] == [name]
    wait_for("the replacement's first release, through the frontend",
             lambda: requests.get(agent_run.frontend + "/_site/health", timeout=5).status_code == 200, 30,
             interval=0.5)
