"""The public site stays up: attacks and faults run for real against one agent, through its frontend.

One agent (module scope) runs the blog with a small persistent volume (64 MB) so that tests can fill it.
Attack traffic goes only to loopback: readers come from ::1, attackers from 127.0.0.x addresses (each a
client of its own for the frontend's per-client limits). Every test leaves the site healthy for the next.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import requests

from tests.agent_fixtures import AgentRun, agent_cmd
from tests.attacks import JunkFlood, Readers, Trickle
from tests.helpers import REPO_ROOT, SiteRepo, chromium, wait_for, wait_for_checks
from tests.netns import Ipv4Host

pytestmark = pytest.mark.system  # root, Docker, network namespaces, HAProxy

SECRET = "hook-secret-that-must-never-leak"
NOTIFY_SECRET = "notify-secret"
IMAGE = "srcco-de:guarded"
POST = "/posts/welcome/"
OWNER = {"Authorization": f"Bearer {SECRET}"}  # the deploy data is the owner's
BUILD_TIMEOUT = 20
LANDLOCK_FLOOR = 2  # Debian 12's kernel
MAX_FILE_MB = 20


class Site:
    def __init__(self, run: AgentRun, repo: SiteRepo):
        self.run, self.repo = run, repo
        self.base = run.frontend
        self.port = run.frontend_port
        self.notifications = Path()

    def get(self, path: str, **kwargs) -> requests.Response:
        return requests.get(self.base + path, timeout=10, **kwargs)

    def status(self) -> dict:
        return self.get("/_site/status", headers=OWNER).json()

    def instance(self) -> dict:
        rows = self.run.instances()
        assert len(rows) >= 1, rows
        return rows[0]

    def container(self):
        return self.run.client.containers.get(self.instance()["instance_name"])

    def builder(self):
        """The site's builder: where its builds run (container/builders.py)."""
        return self.run.client.containers.get(f"bootstrap-{self.instance()['application_name']}-builder")

    def live_release(self) -> str:
        response = self.get("/_site/health")
        assert response.status_code == 200, (response.status_code, response.text[:300])
        return response.json()["release"]

    def wait_live(self, commit: str, timeout: float = 90) -> None:
        def live() -> bool:
            current = self.status().get("current") or {}
            return current.get("commit") == commit
        wait_for(f"{commit[:12]} live through the frontend", live, timeout, interval=0.5)

    def wait_result(self, commit: str, timeout: float = 90) -> dict:
        def finished() -> dict | None:
            builds = self.status()["builds"]
            return builds[0] if builds and builds[0]["commit"] == commit else None
        try:
            return wait_for(f"the result of {commit[:12]}", finished, timeout, interval=0.5)
        except AssertionError as exc:
            status = self.status()
            raise AssertionError(f"{exc}; status: last_error {status['last_error']}, building "
                                 f"{status.get('building')}, builds {status['builds'][:1]}") from None

    restored: str | None = None  # the commit of the last restore()
    landlock = ""  # the build sandbox's Landlock: "Landlock ABI 2", "uncapped"

    def restore(self) -> str:
        """Back to the bundled site (a new commit), live."""
        for path in list((self.repo.work / "files").glob("*")) if (self.repo.work / "files").exists() else []:
            subprocess.run(["rm", "-rf", str(path)], check=True)
        (self.repo.work / "conf.py").write_text((REPO_ROOT / "site_template" / "conf.py").read_text())
        for leftover in ("big.bin", "huge.bin"):
            (self.repo.work / leftover).unlink(missing_ok=True)
        bundled = {path.name for path in (REPO_ROOT / "site_template" / "posts").iterdir()}
        for post in (self.repo.work / "posts").iterdir():
            if post.name not in bundled:  # a test's own post
                post.unlink()
        commit = self.repo.commit("Back to the bundled site")
        self.wait_live(commit)
        self.restored = commit
        return commit


@pytest.fixture(scope="module")
def site(tmp_path_factory, docker_client: docker.DockerClient, app_image: str) -> Iterator[Site]:
    with running_site(tmp_path_factory, docker_client, app_image, LANDLOCK_FLOOR) as running:
        yield running


@contextlib.contextmanager
def running_site(tmp_path_factory, docker_client: docker.DockerClient, app_image: str,
                 landlock_abi_max: int | None) -> Iterator[Site]:
    """The blog through a real agent (its builder, frontend, NAT64), with Landlock capped at `landlock_abi_max`
    (None: the kernel's)."""
    tmp = tmp_path_factory.mktemp("stays-up")
    docker_client.images.build(path=str(REPO_ROOT / "tests" / "guarded_image"), tag=IMAGE,
                               buildargs={"APP_IMAGE": app_image}, rm=True)
    repo = SiteRepo(tmp / "remote")
    run = AgentRun(tmp, docker_client, repo)
    hooks = Ipv4Host(tmp, "hk")  # an IPv4-only receiver of deploy notifications, reached over NAT64
    hooks.start("receiver", sys.executable, str(REPO_ROOT / "tests" / "notify_receiver.py"), "8080",
                str(tmp / "notifications.jsonl"))
    logs = ContainerLogs(docker_client, tmp / "container-logs")
    try:
        run.write_yaml(
            extra_env=f"\n  WEBHOOK_SECRET: {SECRET}\n  BUILD_TIMEOUT: {BUILD_TIMEOUT}\n  MAX_FILE_MB: {MAX_FILE_MB}"
                      f"\n  NOTIFY_URL: http://hooks.test:8080/pequod\n  NOTIFY_SECRET: {NOTIFY_SECRET}"
                      # LANDLOCK_FLOOR: the build sandbox of Debian 12's kernel (6.1), the oldest the README names.
                      + (f"\n  LANDLOCK_ABI_MAX: {landlock_abi_max}" if landlock_abi_max is not None else ""),
            client_limits=(60, 3000),
            extra_services=f'\n  - {{service_name: notify, service_version: "1", external_host: "{hooks.address}", '
                           'external_port: 8080}',
        )
        run.start((IMAGE,))
        run.wait_healthy(timeout=120)
        site = Site(run, repo)
        site.landlock = "uncapped" if landlock_abi_max is None else f"Landlock ABI {landlock_abi_max}"
        wait_for("the blog through the frontend", lambda: site.get(POST).status_code == 200, 60)
        site.notifications = tmp / "notifications.jsonl"
        yield site
    finally:
        logs.close()
        run.cleanup()
        hooks.remove()


class ContainerLogs:
    """The whole log of every container the agent starts, kept in `folder` also after the agent removed the
    container: a replaced instance's last lines say why a test failed."""

    def __init__(self, client: docker.DockerClient, folder: Path):
        self.client, self.folder = client, folder
        folder.mkdir()
        self.events = client.events(decode=True, filters={"type": "container", "event": "start"})
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        with contextlib.suppress(Exception):  # the stream ends when closed
            for event in self.events:
                name = event.get("Actor", {}).get("Attributes", {}).get("name", "")
                if name.startswith("bootstrap-"):
                    threading.Thread(target=self._follow, args=(event["id"], name), daemon=True).start()

    def _follow(self, container_id: str, name: str) -> None:
        with contextlib.suppress(Exception), open(self.folder / f"{name}.log", "ab") as out:
            for chunk in self.client.api.logs(container_id, stream=True, follow=True, timestamps=True):
                out.write(chunk)
                out.flush()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.events.close()


@pytest.fixture
def restores_site(site: Site) -> Iterator[Site]:
    """For a test that changes the site all tests share: back to the bundled site afterwards, also when the
    test failed, so one failure does not cascade into the tests after it (nothing to do when it ended so)."""
    yield site
    head = site.repo.clone.head.commit.hexsha
    live = (site.status().get("current") or {}).get("commit")
    if site.repo.clone.is_dirty(untracked_files=True) or not head == site.restored == live:
        site.restore()


# -- helpers ------------------------------------------------------------------------------------------
def raw_request(port: int, data: bytes, source: str = "127.0.0.2", timeout: float = 15) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0)) as sock:
        sock.sendall(data)
        return sock.recv(4096)


def processes(container) -> list[str]:
    # -ww: whole command lines (ps cuts them to the width of a terminal, and 5-digit PIDs leave less of it)
    return [" ".join(row[7:]) for row in container.top(ps_args="-ww -eo user,pid,ppid,c,stime,tty,time,args")
            ["Processes"]]


def anon_memory_mib(container) -> float:
    """Anonymous memory of the instance (its processes' heaps; not the page cache of its files)."""
    stat = container.exec_run(["sh", "-c", "cat /sys/fs/cgroup/memory.stat 2>/dev/null || "
                                           "cat /sys/fs/cgroup/memory/memory.stat"]).output.decode()
    fields = dict(line.split() for line in stat.splitlines() if len(line.split()) == 2)
    value = fields.get("anon") or fields.get("total_rss") or fields["rss"]
    return int(value) / (1 << 20)


# -- abusive clients ----------------------------------------------------------------------------------
def test_trickling_clients_hold_no_instance_thread(site: Site) -> None:
    """200 connections (10 client addresses) trickle request bodies or headers; readers stay fast."""
    with Trickle(site.port, count=200) as trickle, Readers(site.base + POST, "Welcome") as readers:
        time.sleep(8)
        # The frontend ends them (408) once `timeout http-request` (10 s) is over; the instance never saw them.
        trickle.socks[1].settimeout(10)
        ended = trickle.socks[1].recv(200)
    assert readers.failed == [], readers.failed[:5]
    assert len(readers.latencies) > 50
    assert readers.quantile(99) < 1.0, f"p99 {readers.quantile(99):.3f} s"
    assert b" 408 " in ended
    print(f"\nreaders beside 200 trickling connections: {len(readers.latencies)} requests, "
          f"p50 {readers.quantile(50) * 1000:.1f} ms, p99 {readers.quantile(99) * 1000:.1f} ms")


def test_bad_requests_are_refused_at_the_frontend(site: Site) -> None:
    assert raw_request(site.port, b"POST /_site/hook HTTP/1.1\r\nHost: b\r\nContent-Length: -5\r\n\r\n") \
        .startswith(b"HTTP/1.1 400")
    assert raw_request(site.port, b"GET / HTTP/1.1\r\nHost: b\r\nContent-Length: 5\r\n\r\nhello") \
        .startswith(b"HTTP/1.1 400")
    assert raw_request(site.port, b"POST /_site/hook HTTP/1.1\r\nHost: b\r\nContent-Length: 99999999\r\n\r\n") \
        .startswith(b"HTTP/1.1 413")
    assert raw_request(site.port, b"POST /x HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n") \
        .startswith(b"HTTP/1.1 411")
    long_url = b"/" + b"a" * 14000
    assert raw_request(site.port, b"GET " + long_url + b" HTTP/1.1\r\nHost: b\r\n\r\n").startswith(b"HTTP/1.1 414")
    assert site.get(POST).headers["Server"] == "pequod"


def test_a_flooding_client_gets_429_and_others_do_not(site: Site) -> None:
    flood = http.client.HTTPConnection("127.0.0.1", site.port, timeout=10, source_address=("127.0.0.99", 0))
    statuses = []
    for number in range(3300):
        flood.request("GET", f"/flood-{number}")
        response = flood.getresponse()
        response.read()
        statuses.append(response.status)
        if response.will_close:
            flood.close()
            flood = http.client.HTTPConnection("127.0.0.1", site.port, timeout=10, source_address=("127.0.0.99", 0))
    flood.close()
    assert statuses.count(429) >= 250 and statuses[:100].count(404) == 100
    assert site.get(POST).status_code == 200  # another client
    # Connections per client: beyond 60 at once, the frontend closes the others at once (an accepted one
    # waits for its request).
    held, refused = [], 0
    for _ in range(80):
        try:
            held.append(socket.create_connection(("127.0.0.1", site.port), timeout=5,
                                                 source_address=("127.0.0.98", 0)))
        except OSError:  # reset while connecting
            refused += 1
    time.sleep(1)
    for sock in held:
        sock.setblocking(False)
        try:
            refused += sock.recv(100) == b""
        except BlockingIOError:
            pass  # accepted, waiting for a request
        except OSError:
            refused += 1
        sock.close()
    agent_log = site.run.agent.log if site.run.agent else ""
    assert 15 <= refused <= 25, (refused, [line for line in agent_log.splitlines() if "frontend" in line][-5:])
    assert site.get(POST).status_code == 200


def test_hook_refusals_do_not_use_up_valid_deliveries(site: Site) -> None:
    for _ in range(30):
        response = requests.post(site.base + "/_site/hook", headers={"X-Hook-Token": "guess"}, timeout=10)
        assert response.status_code in (403, 429)
    assert response.status_code == 429
    # A genuine caller (another address: an IPv4 client of the frontend) is still accepted.
    answer = raw_request(site.port, f"POST /_site/hook HTTP/1.1\r\nHost: b\r\nX-Hook-Token: {SECRET}\r\n"
                                    "Content-Length: 0\r\n\r\n".encode(), source="127.0.0.77")
    assert answer.startswith(b"HTTP/1.1 202"), answer[:200]


def test_distinct_junk_paths_leave_memory_bounded(site: Site) -> None:
    container = site.container()
    before = anon_memory_mib(container)
    started = time.monotonic()
    with JunkFlood(site.port, count=100_000) as flood:
        flood.wait(600)
    assert flood.statuses == {404: 100_000}
    after = anon_memory_mib(container)
    print(f"\n100,000 junk paths in {time.monotonic() - started:.0f} s: instance anonymous memory "
          f"{before:.0f} → {after:.0f} MiB")
    assert after < 384 / 2, f"instance anonymous memory {before:.0f} → {after:.0f} MiB"
    front = site.get(POST)
    assert front.status_code == 200 and front.elapsed.total_seconds() < 1


# -- hostile content ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "target"), [
    ("files/env.txt", "/proc/self/environ"),
    ("files/d/index.html", "/etc/passwd"),
    ("files/up", "../.."),
])
@pytest.mark.usefixtures("restores_site")
def test_symlinks_out_of_the_site_fail_the_build(site: Site, name: str, target: str) -> None:
    live = site.live_release()
    link = site.repo.work / name
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    commit = site.repo.commit(f"A symlink to {target}")
    result = site.wait_result(commit)
    assert result["result"] == "failed"
    assert name in result["error"] and "outside the site" in result["error"]
    assert site.live_release() == live
    for path in ("/env.txt", "/d/", "/up/"):
        body = site.get(path).text
        assert SECRET not in body and "root:x:0" not in body


HOSTILE_CONF = '''
import os, subprocess

def _probe(action):
    try:
        action()
        return "allowed"
    except Exception as exc:
        return type(exc).__name__

_results = {
    "secret": "leaked" if any("SECRET_VALUE" in value for value in os.environ.values()) else "absent",
    "proc1": _probe(lambda: open("/proc/1/environ", "rb").read()),
    "status": _probe(lambda: open("/workdir/status.json", "a").close()),
    "hook": _probe(lambda: open("/workdir/source.git/hooks/post-checkout", "w").close()),
    "release": _probe(lambda: open("/workdir/releases/planted.html", "w").close()),
}
CONTENT_FOOTER = "PROBE " + " ".join(f"{key}={value}" for key, value in sorted(_results.items()))
# A daemon that leaves the build's session and would outlive it.
subprocess.Popen(["python3", "-c", "import os, time\\nif os.fork(): os._exit(0)\\nos.setsid()\\n"
                  "time.sleep(600)  # pequod-daemon-marker"], start_new_session=True)
'''


@pytest.mark.usefixtures("restores_site")
def test_a_hostile_conf_py_sees_no_secret_writes_nothing_outside_and_leaves_nothing(site: Site) -> None:
    conf = site.repo.work / "conf.py"
    conf.write_text(conf.read_text() + HOSTILE_CONF.replace("SECRET_VALUE", SECRET))
    commit = site.repo.commit("A conf.py that probes its sandbox")
    site.wait_live(commit)
    # (the frontend's cache may answer with the page before the swap for up to a second)
    footer = wait_for("the probe's footer", lambda: (re.search(r"PROBE [^<]*", site.get(POST).text) or [None])[0], 10)
    probes = dict(item.split("=") for item in footer.split()[1:])
    assert probes.pop("secret") == "absent" and set(probes) == {"hook", "proc1", "release", "status"}
    # In the builder the publisher's files are not there at all; what is there (/proc/1, the read-only root) is
    # refused.
    assert all(value in ("PermissionError", "FileNotFoundError", "OSError") for value in probes.values()), probes
    assert SECRET not in footer
    for container in (site.container(), site.builder()):
        assert not [p for p in processes(container) if "pequod-daemon-marker" in p]


@pytest.mark.usefixtures("restores_site")
def test_a_build_that_hangs_is_ended_with_everything_it_started(site: Site) -> None:
    conf = site.repo.work / "conf.py"
    hostile = HOSTILE_CONF.replace("SECRET_VALUE", SECRET)
    conf.write_text(conf.read_text() + hostile + "\nimport time\ntime.sleep(300)\n")
    live = site.live_release()
    commit = site.repo.commit("A conf.py that never finishes")
    result = site.wait_result(commit, timeout=BUILD_TIMEOUT + 60)
    assert result["result"] == "failed" and f"timed out after {BUILD_TIMEOUT} s" in result["error"]
    assert site.live_release() == live and site.get(POST).status_code == 200
    for container in (site.container(), site.builder()):
        assert not [p for p in processes(container) if "pequod-daemon-marker" in p]


# -- storage ---------------------------------------------------------------------------------------------
@pytest.mark.usefixtures("restores_site")
def test_a_push_larger_than_the_volume_is_refused_and_costs_nothing_later(site: Site) -> None:
    live = site.live_release()
    (site.repo.work / "huge.bin").write_bytes(os.urandom(80 << 20))  # the volume has 64 MB
    commit = site.repo.commit("80 MB that cannot fit")
    result = site.wait_result(commit, timeout=120)
    assert result["result"] == "failed" and "tried 3 times" in result["error"]
    assert "No space left" in result["error"] or "space" in result["error"].lower()
    assert site.live_release() == live and site.get(POST).status_code == 200
    used = site.container().exec_run(["df", "-m", "/workdir"]).output.decode().splitlines()[1].split()[2]
    detail = site.container().exec_run(["sh", "-c", "du -sm /workdir/* /workdir/.[a-z]* 2>/dev/null; "
                                                    "find /workdir -size +1M"]).output.decode()
    assert int(used) < 30, f"{used} MB left on the volume by a failed fetch: {detail}"
    # Removing it: the next (shallow) fetch never needs the big blob again.


@pytest.mark.usefixtures("restores_site")
def test_a_file_over_max_file_mb_is_refused_with_a_clear_error(site: Site) -> None:
    live = site.live_release()
    (site.repo.work / "big.bin").write_bytes(os.urandom((MAX_FILE_MB + 5) << 20))
    commit = site.repo.commit("A file over MAX_FILE_MB")
    result = site.wait_result(commit, timeout=120)
    assert result["result"] == "failed"
    assert f"big.bin is {MAX_FILE_MB + 5}.0 MB, larger than MAX_FILE_MB={MAX_FILE_MB}" in result["error"]
    assert site.live_release() == live
    used = site.container().exec_run(["df", "-m", "/workdir"]).output.decode().splitlines()[1].split()[2]
    assert int(used) < 30, f"{used} MB kept for a refused commit"


# -- faults -----------------------------------------------------------------------------------------------
def test_a_restarted_instance_serves_the_last_release_at_once(site: Site) -> None:
    release = site.live_release()
    builds = len(site.status()["builds"])
    first = site.instance()
    site.run.client.containers.get(first["instance_name"]).kill()
    killed = time.monotonic()
    second = site.run.wait_healthy(timeout=30, not_name=first["instance_name"])
    back = time.monotonic() - killed
    assert back < 15, f"healthy again after {back:.1f} s"
    print(f"\nkilled instance: a new one healthy (serving the kept release) after {back:.1f} s")
    wait_for("the frontend", lambda: site.get(POST).status_code == 200, 15)
    assert site.live_release() == release  # from the volume, not rebuilt
    assert len(site.status()["builds"]) == builds
    assert second["replacements"]["crash"] >= 1


def test_a_hung_instance_is_replaced_within_30_s(site: Site) -> None:
    first = site.instance()
    container = site.run.client.containers.get(first["instance_name"])
    for row in container.top()["Processes"]:
        os.kill(int(row[1]), signal.SIGSTOP)
    stopped = time.monotonic()
    second = site.run.wait_healthy(timeout=45, not_name=first["instance_name"])
    wait_for("the frontend answering again", lambda: site.get(POST).status_code == 200, 45, interval=0.2)
    back = time.monotonic() - stopped
    assert back < 30, f"the site was back {back:.1f} s after the instance hung"
    print(f"\nhung instance: the site was back after {back:.1f} s")
    assert second["replacements"]["unhealthy"] == 1
    table = subprocess.run(agent_cmd("-i", "--state-dir", str(site.run.state_dir)), capture_output=True, text=True,
                           timeout=60).stdout
    assert "srcco-de: replaced" in table and "1 after failing its health checks" in table
    wait_for("the hung instance to be removed",
             lambda: first["instance_name"] not in [r["instance_name"] for r in site.run.instances()], 60)



def instance_logs(site: Site) -> dict[str, str]:
    """The end of each instance's log, also of those replaced and removed, and of the agent's (what a failed
    test needs to say why)."""
    found = {path.stem: "".join(path.read_text(errors="replace").splitlines(True)[-60:])
             for path in sorted((site.run.tmp / "container-logs").glob("*.log"), key=lambda p: p.stat().st_mtime)}
    found["agent"] = "".join((site.run.tmp / "agent-0.log").read_text(errors="replace").splitlines(True)[-30:])
    (site.run.tmp / "instance-logs.txt").write_text("\n\n".join(f"== {name}\n{text}" for name, text in found.items()))
    return found


def watcher_pid(container) -> int:
    """The host PID of the instance's pipeline watcher."""
    return next(int(row[0]) for row in container.top(ps_args="-ww -eo pid,args")["Processes"]
                if "-m pipeline watch" in row[1])


def test_a_killed_watcher_ends_the_instance_and_the_next_push_is_published(site: Site) -> None:
    """The watcher dies (kill -9): run.sh ends the instance, the agent replaces it, and pushes are built again."""
    first = site.instance()
    with Readers(site.base + POST, "Welcome") as readers:
        os.kill(watcher_pid(site.run.client.containers.get(first["instance_name"])), signal.SIGKILL)
        killed = time.monotonic()
        site.run.wait_healthy(timeout=45, not_name=first["instance_name"])
        commit = site.repo.add_post("after-the-watcher-died", "Published after the watcher was killed")
        site.wait_live(commit, timeout=60)
        live = time.monotonic() - killed
        wait_for("the frontend", lambda: site.get(POST).status_code == 200, 15)
    print(f"\nkilled watcher: {len(readers.failed)} of {len(readers.failed) + len(readers.latencies)} reader "
          f"requests failed; a push after it was live {live:.1f} s after the kill")
    assert first["instance_name"] not in [row["instance_name"] for row in site.run.instances()]


def test_an_instance_whose_watcher_hangs_is_replaced_and_publishes_again(site: Site) -> None:
    """The watcher stops (SIGSTOP: alive, holding its lock, publishing nothing): its heartbeat goes stale, the
    health check fails, the agent starts a replacement, whose watcher waits for the lock and counts as alive
    meanwhile, so the replacement takes over; the next push is published."""
    first = site.instance()
    with Readers(site.base + POST, "Welcome") as readers:
        os.kill(watcher_pid(site.run.client.containers.get(first["instance_name"])), signal.SIGSTOP)
        stopped = time.monotonic()
        health = f"http://[{first['ipv6']}]:8000/_site/health"
        wait_for("the stale heartbeat to fail the health check",
                 lambda: requests.get(health, timeout=2).json().get("watcher") == "stale", 30, interval=0.5)
        second = site.run.wait_healthy(timeout=90, not_name=first["instance_name"])  # 3 failed checks, 10 s apart
        commit = site.repo.add_post("after-the-watcher-hung", "Published after the watcher hung")
        site.wait_live(commit, timeout=60)
        live = time.monotonic() - stopped
        wait_for("the frontend", lambda: site.get(POST).status_code == 200, 15)
    print(f"\nhung watcher: {len(readers.failed)} of {len(readers.failed) + len(readers.latencies)} reader "
          f"requests failed; a push after it was live {live:.1f} s after the watcher stopped")
    assert second["replacements"]["unhealthy"] >= 1
    # The frontend asks about serving only: the instance keeps its readers until the replacement is healthy.
    assert len(readers.failed) <= len(readers.latencies) // 100, (readers.failed[:5], instance_logs(site))
    wait_for("the hung instance to be removed",
             lambda: first["instance_name"] not in [r["instance_name"] for r in site.run.instances()], 60)


@pytest.mark.usefixtures("restores_site")
def test_a_commit_the_instance_dies_building_is_given_up_not_looped(site: Site) -> None:
    live = site.live_release()
    conf = site.repo.work / "conf.py"
    conf.write_text(conf.read_text() + "\nimport time\ntime.sleep(12)\n")
    commit = site.repo.commit("A build that takes the instance down (simulated by killing it)")
    for attempt in (1, 2):
        wait_for(f"build attempt {attempt}", lambda a=attempt: (site.status().get("building") or {}).get("attempts")
                 == a, 90, interval=0.3)
        victim = site.instance()["instance_name"]
        site.run.client.containers.get(victim).kill()
        site.run.wait_healthy(timeout=30, not_name=victim)
    result = site.wait_result(commit, timeout=60)
    assert result["result"] == "failed" and "stopped during 2 builds" in result["error"]
    assert site.live_release() == live and site.get(POST).status_code == 200


@pytest.mark.usefixtures("restores_site")
def test_a_killed_build_is_recorded_and_the_site_stays(site: Site) -> None:
    live = site.live_release()
    conf = site.repo.work / "conf.py"
    conf.write_text(conf.read_text() + "\nimport time\ntime.sleep(15)\n")
    commit = site.repo.commit("A slow build, killed with SIGKILL (as the OOM killer would)")
    wait_for("the build to start", lambda: (site.status().get("building") or {}).get("commit") == commit, 90,
             interval=0.3)
    container = site.builder()  # builds run there

    def build_process() -> int | None:
        rows = container.top(ps_args="-ww -eo pid,ppid,args")["Processes"]
        workers = {row[0] for row in rows if "pipeline.build.worker" in row[2]}
        children = [int(row[0]) for row in rows if row[1] in workers and "pipeline.build.worker" in row[2]]
        return children[0] if children else None

    os.kill(wait_for("the build process", build_process, 30, interval=0.2), signal.SIGKILL)
    result = site.wait_result(commit, timeout=60)
    assert result["result"] == "failed" and "killed (signal 9" in result["error"]
    assert site.live_release() == live and site.get(POST).status_code == 200
    status = wait_for_checks(site.status)  # whole checks after the failure, the head unchanged: not retried
    assert status["builds"][0]["commit"] == commit and len(
        [b for b in status["builds"] if b["commit"] == commit]) == 1


def test_tayga_runs_unprivileged(site: Site) -> None:
    pid = int((site.run.state_dir / "tayga" / "tayga.pid").read_text())
    uid = next(line.split()[1] for line in Path(f"/proc/{pid}/status").read_text().splitlines()
               if line.startswith("Uid:"))
    assert uid == "65534"


# -- seeing what happened -----------------------------------------------------------------------------
def metric(site: Site, line_start: str) -> float:
    text = site.get("/_site/metrics", headers=OWNER).text
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(line_start)))


@pytest.mark.usefixtures("restores_site")
def test_the_deploy_page_in_a_browser_and_the_metrics(site: Site, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    failed_before = metric(site, 'pequod_builds_total{result="failed"}')
    site.repo.write("posts/escaped.rst",
                    ".. title: Escaped\n.. slug: escaped\n.. date: 2026-11-30 10:00:00 UTC\n\nText.\n")
    good = site.repo.commit("<script>window.pwned=1</script> A subject with markup")
    site.wait_live(good)
    (site.repo.work / "conf.py").write_text("this is not python\n")
    bad = site.repo.commit("A conf.py that does not load")
    assert site.wait_result(bad)["result"] == "failed"
    assert metric(site, 'pequod_builds_total{result="failed"}') == failed_before + 1
    assert site.get("/_site/metrics").status_code == 401  # the metrics are the owner's too
    exposition = site.get("/_site/metrics", headers=OWNER).text
    check = subprocess.run(["promtool", "check", "metrics"], input=exposition, capture_output=True, text=True,
                           timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f'commit="{good}"' in exposition

    # Through the frontend, without the token: the live release, nothing of the owner's.
    public = site.get("/_site/status").json()
    assert set(public) == {"healthy", "current", "more"} and set(public["current"]) == {"release", "built_at"}
    assert public["current"]["release"] == site.status()["current"]["release"]
    for path in ("/_site/status", "/_site/"):
        text = site.get(path).text
        assert good not in text and "A subject with markup" not in text and "conf.py" not in text, path
        assert site.get(path, headers={"Authorization": "Bearer guess"}).status_code == 403
        assert "A subject with markup" in site.get(path, headers=OWNER).text

    driver = chromium(tmp_path)
    try:
        driver.get(site.base + "/_site/")
        body = driver.find_element(By.TAG_NAME, "body").text
        assert "Live:" in body and "A subject with markup" not in body and "Last error" not in body, body
        assert not driver.find_elements(By.CSS_SELECTOR, "form.rollback")
        driver.find_element(By.ID, "token").send_keys("a wrong token")
        driver.find_element(By.CSS_SELECTOR, "#unlock button").click()
        wait_for("the wrong token refused", lambda: "bad token" in driver.find_element(By.ID, "message").text, 10)
        assert "Last error" not in driver.find_element(By.TAG_NAME, "body").text
        field = driver.find_element(By.ID, "token")
        field.clear()
        field.send_keys(SECRET)
        driver.find_element(By.CSS_SELECTOR, "#unlock button").click()
        wait_for("the owner's part shown", lambda: "Last error" in driver.find_element(By.TAG_NAME, "body").text, 10)
        body = driver.find_element(By.TAG_NAME, "body").text
        assert driver.execute_script("return localStorage.length + sessionStorage.length") == 0
        assert "token" not in driver.execute_script("return document.cookie")
        assert good[:12] in body and "<script>window.pwned=1</script> A subject with markup" in body
        assert driver.execute_script("return window.pwned === undefined")
        assert "nikola build failed with status 1" in body and "Last error" in body
        failed_row = driver.find_elements(By.CSS_SELECTOR, "td.failed")[0].find_element(By.XPATH, "..")
        log = failed_row.find_element(By.TAG_NAME, "pre")
        assert not log.is_displayed()
        failed_row.find_element(By.TAG_NAME, "summary").click()
        assert log.is_displayed() and "conf.py" in log.text and "NameError" in log.text
        assert driver.find_elements(By.CSS_SELECTOR, "form.rollback button")  # WEBHOOK_SECRET is set
        artefacts = REPO_ROOT / "test-artifacts"
        artefacts.mkdir(exist_ok=True)
        assert driver.save_screenshot(str(artefacts / "deploy-page.png"))
    finally:
        driver.quit()


@pytest.mark.usefixtures("restores_site")
def test_rollback_needs_the_token(site: Site) -> None:
    status = site.status()
    live = status["current"]["release"]
    earlier = [release for release in status["releases"] if release != live][-1]
    url = site.base + "/_site/rollback"
    assert requests.post(url, data={"release": earlier}, timeout=10).status_code == 401
    assert requests.post(url, data={"release": earlier}, headers={"Authorization": "Bearer guess"},
                         timeout=10).status_code == 403
    assert site.live_release() == live
    answer = requests.post(url, data={"release": earlier}, headers={"Authorization": f"Bearer {SECRET}"}, timeout=10)
    assert answer.status_code == 200 and answer.json()["release"] == earlier
    wait_for("the earlier release through the frontend",
             lambda: site.get(POST).headers.get("X-Site-Release") == earlier, 10, interval=0.2)


def promtool_check(text: str, known: tuple[str, ...] = ()) -> None:
    """`promtool check metrics` finds no problem, other than `known` ones (lines starting so)."""
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    problems = [line for line in (check.stdout + check.stderr).splitlines() if line and not line.startswith(known)]
    assert problems == [] and (check.returncode == 0 or known), problems[:10]


def test_agent_and_haproxy_metrics_stay_on_the_host(site: Site) -> None:
    agent_port, haproxy_port = site.run.metrics_ports
    agent = requests.get(f"http://127.0.0.1:{agent_port}/metrics", timeout=10).text
    promtool_check(agent)
    assert 'pequod_agent_instances{application="srcco-de",state="serving"} 1.0' in agent
    for reason in ("crash", "unhealthy"):  # earlier tests killed and hung instances
        line = next(line for line in agent.splitlines()
                    if line.startswith(f'pequod_agent_replacements_total{{application="srcco-de",reason="{reason}"}}'))
        assert float(line.split()[-1]) >= 1
    memory = next(line for line in agent.splitlines() if line.startswith("pequod_agent_instance_memory_bytes{"))
    assert float(memory.split()[-1]) > 10 << 20
    assert "pequod_agent_instance_cpu_seconds_total{" in agent
    # Tayga's own record of its mappings (written at its periodic maintenance), as the metric says.
    dynamic_map = site.run.state_dir / "tayga" / "data" / "dynamic.map"
    recorded = sum(1 for line in dynamic_map.read_text().splitlines() if line.strip() and not line.startswith("#")) \
        if dynamic_map.exists() else 0
    assert f"pequod_agent_nat64_mappings {float(recorded)}" in agent
    assert 'pequod_agent_egress_rejected_packets_total{application="srcco-de"}' in agent
    haproxy = requests.get(f"http://127.0.0.1:{haproxy_port}/metrics", timeout=10).text
    # HAProxy 2.6's exporter names one counter without `_total`; that one is HAProxy's, not ours.
    promtool_check(haproxy, known=("haproxy_process_failed_resolutions counter",))
    assert 'haproxy_frontend_http_requests_total{proxy="srcco-de"}' in haproxy
    # Neither listens where an instance could reach it (the gateway, or any address but loopback).
    gateway = f"fd00:5eed:{site.run.subnet_id:x}::1"
    probe = ("import socket, sys\n"
             f"for port in ({agent_port}, {haproxy_port}):\n"
             "    try:\n"
             f"        socket.create_connection(('{gateway}', port), timeout=3); print('reached', port)\n"
             "    except OSError as exc: print('refused', port)\n")
    answer = site.container().exec_run(["python3", "-c", probe]).output.decode()
    assert "reached" not in answer and answer.count("refused") == 2, answer


def test_notifications_reach_their_target_over_nat64(site: Site) -> None:
    """NOTIFY_URL's host is let through (and only it): the receiver, IPv4-only, gets signed events."""
    commit = site.repo.add_post("notified", "A post that is announced")
    site.wait_live(commit)

    def received() -> dict | None:
        lines = site.notifications.read_text().splitlines() if site.notifications.exists() else []
        return next((json.loads(line) for line in lines if json.loads(line)["body"].get("commit") == commit), None)

    delivery = wait_for("the notification at the receiver", received, 60, interval=0.5)
    assert delivery["event"] == "deploy.succeeded"
    assert delivery["signature"] == "sha256=" + hmac.new(NOTIFY_SECRET.encode(), delivery["raw"].encode(),
                                                        hashlib.sha256).hexdigest()
    assert delivery["body"]["subject"] == "Add notified" and NOTIFY_SECRET not in delivery["raw"]
    hosts = site.container().exec_run(["cat", "/etc/hosts"]).output.decode()
    assert "\thooks.test\n" in hosts
