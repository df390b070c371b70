"""NAT64, the egress allowlist and the HAProxy frontend, end to end: real Tayga, iptables, HAProxy,
Docker and git, with IPv4-only hosts in their own network namespaces."""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from pyroute2 import IPRoute

from container import firewall, nat64, network
from container.bootstrap import Nat64
from container.daemon import running_cmdline
from tests.agent_fixtures import AgentRun, Loop, agent_cmd
from tests.docker_fixtures import exec_http, wait_exec_http
from tests.helpers import free_port, wait_for, wait_for_agent_rounds
from tests.netns import Ipv4Host


def rejected_counts() -> dict[str, int]:
    """Packets the firewall rejected or dropped so far, by chain and reason (e.g. 'ip6tables PEQUOD-FORWARD egress
    not declared'): the counters of its commented REJECT and DROP rules."""
    counts: dict[str, int] = {}
    for command in ("ip6tables", "iptables"):
        saved = subprocess.run([f"{command}-save", "-c", "-t", "filter"], stdin=subprocess.DEVNULL,
                               capture_output=True, text=True, timeout=60).stdout
        for line in saved.splitlines():
            match = firewall.COUNTED.match(line)
            if match:
                counts[f"{command} {match.group(3)} {match.group(4)}"] = int(match.group(1))
    return counts

pytestmark = pytest.mark.system  # root, Docker, network namespaces, Tayga, HAProxy


def synthesised(address: ipaddress.IPv4Address) -> str:
    """The address under which instances reach `address` (the tests' YAML routes the default prefix)."""
    return str(nat64.synthesise(Nat64(), address))


def frontend_text(run: AgentRun, path: str = "/") -> str | None:
    try:
        response = requests.get(run.frontend + path, timeout=5)
    except requests.RequestException:
        return None
    return response.text if response.status_code == 200 else None


def connect_from(container, host: str, port: int) -> str:
    """Open a TCP connection from inside the instance: 'ok' or the error."""
    script = (
        "import socket\n"
        "try:\n"
        f"    socket.create_connection(({host!r}, {port}), timeout=3).close(); print('ok')\n"
        "except Exception as e: print(type(e).__name__, e)\n"
    )
    return container.exec_run(["python3", "-c", script]).output.decode(errors="replace").strip()


@pytest.fixture
def other_host(tmp_path: Path) -> Iterator[Ipv4Host]:
    """A second IPv4-only host the instance did not declare, serving HTTP on 443 and 8080."""
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "index.html").write_text("undeclared")
    host = Ipv4Host(tmp_path, "other")
    try:
        host.serve_http(tmp_path / "www", 443)
        host.serve_http(tmp_path / "www", 8080)
        yield host
    finally:
        host.remove()


def test_blog_clones_through_nat64_and_is_served_by_the_frontend(agent_run: AgentRun) -> None:
    agent_run.write_yaml(extra_env="\n  WEBHOOK_SECRET: frontend-hook")
    agent_run.start()
    wait_for("the blog through the frontend", lambda: frontend_text(agent_run), 120)
    assert "A Pequod Blog" in frontend_text(agent_run)
    v4 = requests.get(f"http://127.0.0.1:{agent_run.frontend_port}/", timeout=5)  # IPv4 too
    assert v4.status_code == 200 and "A Pequod Blog" in v4.text
    row = agent_run.instances()[0]
    container = agent_run.client.containers.get(row["instance_name"])

    # github.com resolves inside the instance to the NAT64 address of the IPv4-only host.
    hosts = container.exec_run(["cat", "/etc/hosts"]).output.decode()
    assert f"{synthesised(agent_run.github.address)}\tgithub.com" in hosts
    assert network.instance_addresses(row["pid"]) == [row["ipv6"]]  # still no IPv4 in the instance

    # A push reaches the instance over NAT64 and shows through the frontend.
    agent_run.repo.add_post("over-nat64", "Fetched over NAT64")
    wait_for("the pushed post through the frontend",
             lambda: "Fetched over NAT64" in (frontend_text(agent_run, "/posts/over-nat64/") or ""), 60)

    services = subprocess.run(agent_cmd("-i", "services"), capture_output=True, text=True, timeout=60).stdout
    assert [row["instance_name"], "srcco-de", "1", "require", "github-https", "1", "github.com", "443"] in [
        line.split() for line in services.splitlines()]

    # The webhook is reachable through the frontend (and never cached there).
    hook = agent_run.frontend + "/_site/hook"
    assert requests.post(hook, headers={"X-Hook-Token": "guess"}, timeout=5).status_code == 403
    for _ in range(2):
        assert requests.post(hook, headers={"X-Hook-Token": "frontend-hook"}, timeout=5).status_code == 202


def test_instance_reaches_only_what_it_declared(agent_run: AgentRun, other_host: Ipv4Host) -> None:
    agent_run.github.serve_http(agent_run.tmp, 8080)  # the declared host, but a port not declared
    host_port = free_port()
    listener = socket.create_server(("::", host_port), family=socket.AF_INET6, dualstack_ipv6=True)
    try:
        agent_run.start()
        row = agent_run.wait_healthy(timeout=120)
        container = agent_run.client.containers.get(row["instance_name"])
        gateway = f"fd00:5eed:{agent_run.subnet_id:x}::1"
        before = rejected_counts()

        assert connect_from(container, "github.com", 443) == "ok"
        assert connect_from(container, synthesised(agent_run.github.address), 443) == "ok"
        refused = {
            "undeclared host, declared port": (synthesised(other_host.address), 443),
            "undeclared host, other port": (synthesised(other_host.address), 8080),
            "declared host, undeclared port": (synthesised(agent_run.github.address), 8080),
            "the host itself": (gateway, host_port),
            "other IPv6": ("fd00:dead:beef::1", 443),
        }
        for what, (host, port) in refused.items():
            result = connect_from(container, host, port)
            assert result != "ok", what
        # The undeclared host itself is up: the host (not an instance) reaches it.
        assert requests.get(f"http://{other_host.address}:8080/", timeout=5).text == "undeclared"
        after = rejected_counts()
        key = "ip6tables PEQUOD-FORWARD egress not declared: srcco-de"  # the application's own reject rule
        assert after[key] - before.get(key, 0) >= 4
        assert firewall.rejected_by_application()["srcco-de"][0] >= 4
        key = "ip6tables PEQUOD-INPUT host not declared"
        assert after[key] - before.get(key, 0) >= 1
        assert "undeclared" not in exec_http(container, f"http://[{synthesised(other_host.address)}]:8080/")
    finally:
        listener.close()


def _pid(path: Path) -> int:
    return int(path.read_text().split()[0])


def test_frontend_rides_out_failures_and_reconfiguration(agent_run: AgentRun) -> None:
    agent_run.start()
    wait_for("the blog through the frontend", lambda: frontend_text(agent_run), 120)
    first = agent_run.instances()[0]

    # The instance dies: the frontend serves again by itself once the replacement is healthy.
    with Loop(agent_run.frontend + "/") as loop:
        wait_for("the looping client served", lambda: loop.ok >= 5, 30)
        agent_run.client.containers.get(first["instance_name"]).kill()
        wait_for("a replacement", lambda: [r for r in agent_run.instances()
                                           if r["instance_name"] != first["instance_name"]], 30)
        wait_for("the frontend to serve again", lambda: frontend_text(agent_run), 60)
        ok = loop.ok
        wait_for("the looping client to be served again", lambda: loop.ok > ok, 30)
        failed, ok = len(loop.failed), loop.ok
        wait_for("50 more requests served", lambda: loop.ok > ok + 50, 30)
        assert len(loop.failed) == failed  # back for good
    second = agent_run.instances()[0]

    # A configuration change replaces the instance: the new one joins, the old one leaves; no request fails.
    with Loop(agent_run.frontend + "/") as loop:
        wait_for("the looping client served", lambda: loop.ok >= 5, 30)
        agent_run.write_yaml(extra_env="\n  GREETING: hello")
        wait_for("the old instance to be removed",
                 lambda: [r["instance_name"] for r in agent_run.instances()] not in ([], [second["instance_name"]]),
                 120, interval=0.5)
        ok = loop.ok
        wait_for("requests served after the old instance left", lambda: loop.ok > ok + 20, 30)
    assert loop.failed == [] and loop.ok > 20, (loop.failed[:5], loop.ok)

    # Tayga and HAProxy killed: the agent starts them again; NAT64 and the frontend work again.
    tayga_pid = _pid(agent_run.state_dir / "tayga" / "tayga.pid")
    haproxy_pid = _pid(agent_run.state_dir / "haproxy" / "haproxy.pid")
    os.kill(tayga_pid, signal.SIGKILL)
    os.kill(haproxy_pid, signal.SIGKILL)
    wait_for("tayga restarted", lambda: _pid(agent_run.state_dir / "tayga" / "tayga.pid") != tayga_pid, 20)
    wait_for("the frontend back", lambda: frontend_text(agent_run), 20)
    assert _pid(agent_run.state_dir / "haproxy" / "haproxy.pid") != haproxy_pid
    agent_run.repo.add_post("after-restart", "Tayga came back")
    wait_for("a post fetched through the restarted NAT64",
             lambda: "Tayga came back" in (frontend_text(agent_run, "/posts/after-restart/") or ""), 60)


def _our_rules() -> list[str]:
    rules = []
    for command in ("iptables-save", "ip6tables-save"):
        rules += [line for line in subprocess.run([command], capture_output=True, text=True).stdout.splitlines()
                  if "PEQUOD" in line]
    return rules


def test_agent_restart_adopts_everything_and_teardown_removes_it(agent_run: AgentRun) -> None:
    agent_run.start()
    wait_for("the blog through the frontend", lambda: frontend_text(agent_run), 120)
    rules = _our_rules()
    pids = (_pid(agent_run.state_dir / "tayga" / "tayga.pid"), _pid(agent_run.state_dir / "haproxy" / "haproxy.pid"))
    instance = agent_run.instances()[0]["instance_name"]

    agent_run.agent.stop(signal.SIGKILL)
    agent_run.start()  # a second start creates nothing twice
    wait_for("re-adoption", lambda: "re-adopted running instance" in agent_run.agent.log, 30)
    metrics = f"http://127.0.0.1:{agent_run.metrics_ports[0]}/metrics"
    wait_for_agent_rounds(metrics, 3)  # rounds that would restart Tayga or HAProxy, or add rules twice
    assert _our_rules() == rules
    assert [line for line in rules if line.startswith("-A FORWARD")] == ["-A FORWARD -j PEQUOD-FORWARD"] * 2
    assert (_pid(agent_run.state_dir / "tayga" / "tayga.pid"),
            _pid(agent_run.state_dir / "haproxy" / "haproxy.pid")) == pids
    assert [r["instance_name"] for r in agent_run.instances()] == [instance]
    assert frontend_text(agent_run)

    # The adopted HAProxy is reloaded (a replacement instance joins): still the same master, no second one.
    agent_run.write_yaml(extra_env="\n  GREETING: adopted")
    wait_for("the replacement", lambda: [r["instance_name"] for r in agent_run.instances()] not in (
        [], [instance]) and len(agent_run.instances()) == 1, 90, interval=0.5)
    wait_for_agent_rounds(metrics, 3)  # rounds that check HAProxy after its reload (and would restart it)
    assert _pid(agent_run.state_dir / "haproxy" / "haproxy.pid") == pids[1]
    assert "had stopped" not in agent_run.agent.log
    # Someone removes a jump into our chains: the agent notices and puts the same rules back. (Should the
    # instance be replaced meanwhile, its address changes the rules: that round does not count; retried.)
    for _round in range(3):
        names = [r["instance_name"] for r in agent_run.instances()]
        rules = _our_rules()  # the current instance's address is in them
        subprocess.run(["ip6tables", "-w", "-D", "FORWARD", "-j", "PEQUOD-FORWARD"], check=True)
        assert _our_rules() != rules
        wait_for("the agent to restore its rules", lambda rules=rules, names=names: _our_rules() == rules or names != [
            r["instance_name"] for r in agent_run.instances()], 30, interval=0.5)
        if names == [r["instance_name"] for r in agent_run.instances()]:
            break
    assert _our_rules() == rules

    agent_run.agent.stop()
    result = subprocess.run(agent_cmd("--teardown", "--state-dir", str(agent_run.state_dir)),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "removed tayga (NAT64)" in result.stdout and "removed haproxy (frontend)" in result.stdout
    assert _our_rules() == []
    with IPRoute() as ipr:
        assert not ipr.link_lookup(ifname=nat64.TUN)
    for pid in pids:
        assert not running_cmdline(pid)  # gone (or a zombie waiting for its parent)
    assert frontend_text(agent_run) is None


def test_service_provided_by_another_instance_is_reached_through_the_frontend(agent_run: AgentRun,
                                                                             reader_image: str) -> None:
    agent_run.write_yaml(extra_frontend="\n  ports: {reader: 0}")  # the reader is not published
    agent_run.start(images=("srcco-de:1", reader_image))
    wait_for("the blog through the frontend", lambda: frontend_text(agent_run), 120)
    rows = {row["application_name"]: row for row in agent_run.instances()}
    reader = agent_run.client.containers.get(rows["pequod-reader"]["instance_name"])
    blog = agent_run.client.containers.get(rows["srcco-de"]["instance_name"])
    gateway = f"fd00:5eed:{agent_run.subnet_id:x}::1"

    # The reader reaches the blog by the name and port of its <require>, through the frontend.
    assert f"{gateway}\tblog.internal" in reader.exec_run(["cat", "/etc/hosts"]).output.decode()
    answer = wait_exec_http(reader, "http://blog.internal/", "200", timeout=30)
    assert "A Pequod Blog" in answer
    # Each instance gets only what its own manifest declares.
    assert connect_from(reader, "github.com", 443) != "ok"
    assert connect_from(blog, gateway, 80) != "ok"
    assert connect_from(blog, "github.com", 443) == "ok"

    services = [line.split() for line in subprocess.run(agent_cmd("-i", "services"), capture_output=True,
                                                        text=True, timeout=60).stdout.splitlines()]
    assert [reader.name, "pequod-reader", "1", "require", "srcco-de", "1", "blog.internal", "80"] in services
    assert [reader.name, "pequod-reader", "1", "provide", "reader", "1", rows["pequod-reader"]["ipv6"],
            "8080"] in services


def test_frontend_cache_serves_no_old_release_beyond_one_second(agent_run: AgentRun) -> None:
    agent_run.start()
    wait_for("the blog through the frontend", lambda: frontend_text(agent_run), 120)
    row = agent_run.instances()[0]
    direct = f"http://[{row['ipv6']}]:8000/"
    old = requests.get(direct, timeout=5).headers["X-Site-Release"]
    served: list[tuple[float, str, bool]] = []  # (answered at, release, from the cache)
    live_at: list[float] = []
    stop = threading.Event()

    def through_frontend() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                response = session.get(agent_run.frontend + "/", timeout=10)
                served.append((time.monotonic(), response.headers["X-Site-Release"], "Age" in response.headers))

    def watch_instance() -> None:
        while not stop.is_set() and not live_at:
            asked = time.monotonic()
            if requests.get(direct, timeout=5).headers["X-Site-Release"] != old:
                live_at.append(asked)  # the swap happened before this request started
            time.sleep(0.01)

    threads = [threading.Thread(target=through_frontend), threading.Thread(target=watch_instance)]
    for thread in threads:
        thread.start()
    try:
        agent_run.repo.add_post("cache-bound", "A new release")
        wait_for("the new release at the instance", lambda: live_at, 60)
        # Proof the window was watched: answers through the frontend from well past one second after the swap.
        wait_for("answers 2.5 s after the swap", lambda: served and served[-1][0] > live_at[0] + 2.5, 30,
                 interval=0.1)
    finally:
        stop.set()
        for thread in threads:
            thread.join(15)
    stale = [at - live_at[0] for at, release, _cached in served if release == old and at > live_at[0] + 1.0]
    assert stale == [], f"old release served {stale[:3]} s after the new one went live"
    assert any(release != old for _at, release, _cached in served)
    assert sum(cached for _at, _release, cached in served) > len(served) / 2  # hot pages come from the cache
