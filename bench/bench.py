"""Whole-run benchmarks on this machine, side by side in one run; see bench/run.sh and the README.

    python bench/bench.py [--quick] [--out bench/results]

1. serving: nginx, our frontend (HAProxy + CherryPy), CherryPy alone and a naive CherryPy
   staticdir server (like the seed's serve.py), all serving the same release; wrk with keep-alive,
   32 connections, an index page and a post page, three runs each with the servers taking turns (the
   median is reported); req/s, p50, p99, each as a ratio to nginx, and the CPU time each server spent
   per request; beside them HAProxy at its floor (the page from memory).
2. publish latency on a generated 200-post blog: pushes changing one post each, from `git push`
   returning to the new text being served through the frontend: by webhook, by polling, and for
   a local file:// remote (watched).
3. builds of that blog: full, one post changed, nothing changed; wall time and peak RSS, cold
   (a new process, as `nikola build`) and warm (the build worker).
4. idle: builds started and CPU seconds used by the instance over 60 s without pushes; its RSS.
5. under attack: legitimate readers' p50/p99 (4 clients fetching a post page through the frontend,
   with the default per-client limits on) with no attack, then beside 200 trickling connections, a
   flood of distinct junk URLs from 16 addresses, and one client flooding; as ratios to no attack.
6. HTTPS: the frontend over TLS (HAProxy, the agent's `frontend.tls` with a certificate of its own)
   and over plain HTTP, beside nginx serving the same release over TLS with the same certificate
   and key (and over plain HTTP); wrk as in 1; req/s and p99 as ratios to nginx TLS.
7. large blogs (200, 2,000, 5,000 posts, 20 tags): a cold `nikola build` of the commit on the host
   (full, one post changed; size 5 is the bundled site, with the 10 posts the pushes edit) beside the same
   blog through the agent with the default manifest: first
   publish, one-post pushes → live p50/p90, where their time went (the build records' phases), the
   instance's peak memory, the volume used.

    python bench/bench.py --only large [--sizes 200,2000,5000]   # one section only
    python bench/bench.py --only serving
    python bench/bench.py --only https
    python bench/bench.py --only idle

Results: bench/results/<time>.json and .md (the markdown table is also printed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import requests  # noqa: E402

from container import engine, metrics, runtime  # noqa: E402
from pipeline.publish.builds import NikolaBuilder  # noqa: E402
from tests.acme_server import make_certificate  # noqa: E402
from tests.agent_fixtures import AgentRun  # noqa: E402
from tests.attacks import JunkFlood, Readers, Trickle  # noqa: E402
from tests.helpers import Process, SiteRepo, python_env, wait_for  # noqa: E402

POSTS = 200
SECRET = "bench-secret"
OWNER = {"Authorization": f"Bearer {SECRET}"}  # the deploy data (/_site/status) is the owner's
TAGS = ["python", "ipv6", "docker", "nikola", "git", "haproxy", "nat64", "linux"]
PARAGRAPH = ("Static sites are fast because there is nothing to compute per request: the server "
             "reads a file and sends it. Everything interesting happens once, at build time. ")


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- the blog -------------------------------------------------------------------------------------
LARGE_TAGS = [f"topic-{k:02d}" for k in range(20)]
LARGE_SIZES = (200, 2000, 5000)


def post_text(number: int, revision: int = 0, tags_from: list[str] | None = None) -> str:
    pool = tags_from or TAGS
    tags = ", ".join(pool[(number + k) % len(pool)] for k in range(2))
    body = "\n\n".join(f"{PARAGRAPH * 3}(part {part} of post {number})" for part in range(6))
    return (f".. title: Post number {number}\n.. slug: post-{number:03d}\n"
            f".. date: 2025-{1 + number % 12:02d}-{1 + number % 28:02d} 10:{number % 60:02d}:00 UTC\n"
            f".. tags: {tags}\n\n{body}\n\nRevision marker: rev-{revision}-of-{number}\n")


def generate_blog(repo: SiteRepo, posts: int, tags_from: list[str] | None = None) -> None:
    for number in range(posts - 5):  # the template brings five
        repo.write(f"posts/post-{number:03d}.rst", post_text(number, tags_from=tags_from))
    repo.commit(f"{posts} posts")


# -- serving ----------------------------------------------------------------------------------------
_LAT = re.compile(r"^\s+(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s)\s*$", re.M)


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_of(pid: int | str) -> float | None:
    """CPU seconds (user + system, all threads) the process used so far; None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    except (OSError, IndexError, ValueError):
        return None


def children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def wrk(url: str, seconds: int, pids: list[int] | None = None) -> dict:
    """wrk's req/s, p50 and p99; with `pids`, also the CPU time the server's processes spent per request (µs),
    a steadier figure than req/s on a machine whose cores the server shares with wrk."""
    before = sum(cpu_of(pid) or 0.0 for pid in pids or [])
    out = subprocess.run(["wrk", "-t2", "-c32", f"-d{seconds}s", "--latency", url], capture_output=True,
                         text=True, timeout=seconds + 60).stdout
    used = sum(cpu_of(pid) or 0.0 for pid in pids or []) - before
    requests_done = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    latency = {f"p{p}": float(v) * scale[u] for p, v, u in _LAT.findall(out)}
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    return {"rps": rps, "p50_ms": latency.get("p50"), "p99_ms": latency.get("p99"),
            "errors": errors.group(0) if errors else "",
            "cpu_us_per_request": round(used * 1e6 / requests_done, 1)
            if pids and requests_done else None}


NGINX_CONF = """\
user root;
worker_processes auto;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 1024; }}
http {{
    include /etc/nginx/mime.types;
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    gzip_static on;
    server {{
        listen [::1]:{port};
        root {root};
        index index.html;
    }}
}}
"""

NGINX_TLS_SERVER = """\
    server {{
        listen [::1]:{port} ssl;
        ssl_certificate {pem};
        ssl_certificate_key {pem};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_tickets off;
        root {root};
        index index.html;
    }}
}}
"""

# HAProxy at its fastest: the page from memory, no rules, no cache, no log. What no configuration of the
# frontend can beat on this machine (the frontend's own rules and cache come on top).
HAPROXY_FLOOR = """\
global
    tune.bufsize 65536
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 60s
frontend floor
    bind [::1]:{port}
    http-request return status 200 content-type "text/html; charset=utf-8" file {page} if {{ path {path} }}
    http-request return status 404
"""

NAIVE_SERVER = """\
import sys, cherrypy
root, port = sys.argv[1], int(sys.argv[2])
cherrypy.config.update({"server.socket_host": "::1", "server.socket_port": port, "environment": "production",
                        "log.screen": False})
cherrypy.quickstart(None, "/", {"/": {"tools.staticdir.on": True, "tools.staticdir.dir": root,
                                      "tools.staticdir.index": "index.html"}})
"""


SERVING_ROUNDS = 3


def median_run(runs: list[dict]) -> dict:
    """Each figure of several wrk runs of one server: its median."""
    figures = {key: statistics.median(run[key] for run in runs) if runs[0][key] is not None else None
               for key in ("rps", "p50_ms", "p99_ms", "cpu_us_per_request")}
    return {**figures, "errors": "; ".join(run["errors"] for run in runs if run["errors"]), "runs": len(runs)}


def distinct_ports(count: int) -> list[int]:
    """Free ports, all different (each socket stays bound until all are chosen)."""
    sockets = [socket.create_server(("::1", 0), family=socket.AF_INET6) for _ in range(count)]
    try:
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def copy_release(run: AgentRun, tmp: Path) -> tuple[dict, Path]:
    """The live release, copied from the instance's volume, so the host's servers serve the same files."""
    row = next(r for r in run.instances() if r["application_name"] == "srcco-de")
    workdir = Path(f"/proc/{row['pid']}/root/workdir")  # the instance's volume, seen from the host
    live = os.readlink(workdir / "current")
    release = tmp / "served" / Path(live).name
    if not release.exists():
        shutil.copytree(workdir / live, release, symlinks=True)
    return row, release


def bench_https(run: AgentRun, tmp: Path, seconds: int) -> dict:
    """wrk over TLS: our frontend (HAProxy) against nginx with the same certificate, and both over plain HTTP."""
    _, release = copy_release(run, tmp)
    (tmp / "tls").mkdir(exist_ok=True)
    ca = make_certificate(tmp / "tls", "ca", ["bench CA"], None, ca=True)
    make_certificate(tmp / "tls", "site", ["blog.bench.test", "::1"], ca)
    pem = tmp / "tls" / "blog.pem"
    pem.write_bytes((tmp / "tls" / "site.pem").read_bytes() + (tmp / "tls" / "site.key").read_bytes())
    https_port, nginx_port, nginx_tls_port = distinct_ports(3)
    (tmp / "nginx-tls").mkdir(exist_ok=True)
    conf = NGINX_CONF.format(dir=tmp / "nginx-tls", port=nginx_port, root=release).rstrip().removesuffix("}")
    conf += NGINX_TLS_SERVER.format(port=nginx_tls_port, pem=pem, root=release)
    (tmp / "nginx-tls" / "nginx.conf").write_text(conf)
    nginx = Process(["nginx", "-c", str(tmp / "nginx-tls" / "nginx.conf"), "-g", "daemon off;"], python_env(),
                    tmp / "nginx-tls.log")
    ours = f"https://[::1]:{https_port}"
    # Plain HTTP first: with HTTPS on, the frontend redirects plain HTTP to it.
    phases = [{"nginx plain HTTP": f"http://[::1]:{nginx_port}", "frontend plain HTTP": run.frontend},
              {"nginx TLS": f"https://[::1]:{nginx_tls_port}", "frontend TLS (HAProxy + CherryPy)": ours}]
    results: dict = {}
    try:
        for number, targets in enumerate(phases):
            if number == 1:
                write_yaml(run, "local", poll=10, worker_idle=30,
                           tls=f"  tls: {{certificate: {pem}, port: {https_port}}}\n")
            for name, base in targets.items():
                wait_for(name, lambda base=base: requests.get(base + "/", verify=False, timeout=5).ok, 60)
            for name, base in targets.items():
                say(f"wrk {name}")
                results[name] = wrk(base + "/posts/post-100/", seconds)
    finally:
        nginx.stop()
        write_yaml(run, "local", poll=10, worker_idle=30)
    base = results["nginx TLS"]
    for figures in results.values():
        figures["rps_vs_nginx_tls"] = round(figures["rps"] / base["rps"], 2)
        figures["p99_vs_nginx_tls"] = round(figures["p99_ms"] / base["p99_ms"], 2) if base["p99_ms"] else None
    return results


def bench_serving(run: AgentRun, tmp: Path, seconds: int) -> dict:
    row, release = copy_release(run, tmp)
    say(f"serving: release {release.name}")
    nginx_port, naive_port, serve_port, floor_port = distinct_ports(4)
    (tmp / "nginx").mkdir()
    (tmp / "nginx" / "nginx.conf").write_text(NGINX_CONF.format(dir=tmp / "nginx", port=nginx_port, root=release))
    nginx = Process(["nginx", "-c", str(tmp / "nginx" / "nginx.conf"), "-g", "daemon off;"], python_env(),
                    tmp / "nginx.log")
    (tmp / "naive.py").write_text(NAIVE_SERVER)
    naive = Process([sys.executable, str(tmp / "naive.py"), str(release), str(naive_port)], python_env(),
                    tmp / "naive.log")
    ours = Process([sys.executable, str(REPO / "serve.py"), str(release), "--host", "::1", "--port", str(serve_port)],
                   python_env(), tmp / "serve.log")
    targets = {
        "nginx": f"http://[::1]:{nginx_port}",
        "frontend (HAProxy + CherryPy)": run.frontend,
        "CherryPy alone (serve.py, on the host)": f"http://[::1]:{serve_port}",
        "naive CherryPy staticdir (on the host)": f"http://[::1]:{naive_port}",
        "serve.py in the instance (its CPU limit)": f"http://[{row['ipv6']}]:8000",
    }
    pages = {"index": "/", "post": "/posts/post-100/"}
    floor = "HAProxy floor (the page from memory, nothing else)"
    frontend_pid = int((run.state_dir / "haproxy" / "haproxy.pid").read_text().split()[0])
    servers = {"nginx": lambda: children(nginx.proc.pid),
               "frontend (HAProxy + CherryPy)": lambda: children(frontend_pid),
               "CherryPy alone (serve.py, on the host)": lambda: [ours.proc.pid],
               "naive CherryPy staticdir (on the host)": lambda: [naive.proc.pid]}
    results: dict = {}
    try:
        for name, base in targets.items():
            wait_for(name, lambda base=base: requests.get(base + "/", timeout=5).status_code == 200, 30)
        for page, path in pages.items():
            (tmp / f"floor-{page}.cfg").write_text(HAPROXY_FLOOR.format(
                port=floor_port, page=release / path.strip("/") / "index.html", path=path))
            floor_server = Process(["haproxy", "-f", str(tmp / f"floor-{page}.cfg")], python_env(), tmp / "floor.log")
            servers[floor] = lambda pid=floor_server.proc.pid: [pid]
            try:
                page_targets = {**targets, floor: f"http://[::1]:{floor_port}"}
                for name, base in page_targets.items():
                    wait_for(name, lambda url=base + path: requests.get(url, timeout=5).ok, 30)
                runs: dict[str, list[dict]] = {}
                for round_ in range(SERVING_ROUNDS):  # alternating, so a slow spell of the machine hits all
                    for name, base in page_targets.items():
                        say(f"wrk {name} {page} ({round_ + 1}/{SERVING_ROUNDS})")
                        pids = servers[name]() if name in servers else None
                        runs.setdefault(name, []).append(wrk(base + path, seconds, pids))
                results[page] = {name: median_run(each) for name, each in runs.items()}
            finally:
                floor_server.stop()
    finally:
        ours.stop()
        naive.stop()
        nginx.stop()
    for page in results.values():
        base = page["nginx"]
        for figures in page.values():
            figures["rps_vs_nginx"] = round(figures["rps"] / base["rps"], 2)
            if figures["p99_ms"] and base["p99_ms"]:
                figures["p99_vs_nginx"] = round(figures["p99_ms"] / base["p99_ms"], 2)
        naive = page["naive CherryPy staticdir (on the host)"]
        ours_alone = page["CherryPy alone (serve.py, on the host)"]
        ours_alone["rps_vs_naive"] = round(ours_alone["rps"] / naive["rps"], 2)
    return results


# -- publish latency --------------------------------------------------------------------------------
def write_yaml(run: AgentRun, mode: str, poll: int, worker_idle: int | None = 600, client_limits: bool = False,
               tls: str = "") -> None:
    local = mode == "local"
    site_repo = f"file://{run.repo.bare}" if local else "git://github.com:443/site.git"
    mounts = f"mounts:\n  - {{source: \"{run.repo.bare}\", target: \"{run.repo.bare}\"}}\n" if local else ""
    run.yaml.write_text(f"""\
external_services:
  - {{service_name: github-https, service_version: "1", external_host: "{run.github.address}", external_port: 443}}
networks:
  - ipv6_subnet_ip: "fd00:5eed:{run.subnet_id:x}::"
    ipv6_subnet_prefixlen: 64
frontend:
  port: {run.frontend_port}
  max_connections_per_client: {100 if client_limits else 0}   # wrk is one client: off for throughput
  max_requests_per_client: {3000 if client_limits else 0}
{tls}{mounts}environment:
  SITE_REPO: "{site_repo}"
  POLL_INTERVAL: {poll}
  WEBHOOK_SECRET: {SECRET}
""" + ("" if worker_idle is None else f"  BUILD_WORKER_IDLE: {worker_idle}\n"))


def wait_mode(run: AgentRun, mode: str) -> None:
    """After a YAML change the agent replaces the instance; wait until the new one serves."""
    def ready() -> bool:
        status = requests.get(run.frontend + "/_site/status", headers=OWNER, timeout=5).json()
        remote = status.get("remote") or ""
        return bool(status.get("current")) and (remote.startswith("file://") == (mode == "local"))
    wait_for(f"the instance in mode {mode}", ready, 600, interval=1)


def publish_latency(run: AgentRun, mode: str, pushes: int, start_revision: int,
                    tags_from: list[str] | None = None, also: dict[str, str] | None = None) -> list[float]:
    """Push → the new text through the frontend, `pushes` times (one post changed, and the files in `also`)."""
    seconds = []
    for index in range(pushes):
        number, revision = 100 + index, start_revision + index
        run.repo.write(f"posts/post-{number:03d}.rst", post_text(number, revision, tags_from))
        for path, text in (also or {}).items():
            run.repo.write(path, f"{text} {revision}\n")
        run.repo.commit(f"Edit post {number}")  # returns when `git push` has returned
        pushed = time.monotonic()
        if mode == "webhook":
            requests.post(run.frontend + "/_site/hook", headers={"X-Hook-Token": SECRET}, timeout=5)
        marker = f"rev-{revision}-of-{number}"
        url = f"{run.frontend}/posts/post-{number:03d}/"
        wait_for(f"{marker} through the frontend",
                 lambda marker=marker, url=url: marker in requests.get(url, timeout=5).text, 300,
                 interval=0.05)
        seconds.append(round(time.monotonic() - pushed, 3))
        say(f"publish {mode}: {seconds[-1]:.2f} s")
        time.sleep(1)
    return seconds


def summary(values: list[float]) -> dict:
    ordered = sorted(values)
    return {"p50_s": round(statistics.median(ordered), 2),
            "p90_s": round(ordered[max(0, int(round(0.9 * len(ordered))) - 1)], 2), "all_s": values}


# -- large blogs ------------------------------------------------------------------------------------
def cgroup_memory(pid: int) -> dict[str, int]:
    """Memory of the cgroup the process is in: `anon` (what its processes hold; page cache of the files
    they wrote is not counted, the kernel reclaims it at the limit) and `usage` (both)."""
    found = metrics.memory_cgroup(pid)
    if found is None:
        return {}
    base, v2 = found
    with contextlib.suppress(OSError, ValueError, KeyError):
        stat = dict(item.split() for item in (base / "memory.stat").read_text().splitlines())
        if v2:
            return {"anon": int(stat["anon"]), "usage": int((base / "memory.current").read_text())}
        return {"anon": int(stat["total_rss"]), "usage": int((base / "memory.usage_in_bytes").read_text())}
    return {}


BUILDER = "bootstrap-srcco-de-builder"  # the blog's builder (container/builders.py)


def builder_pid(run: AgentRun) -> int:
    with contextlib.suppress(Exception):
        return int(run.client.containers.get(BUILDER).attrs["State"]["Pid"] or 0)
    return 0


class MemorySampler:
    """The site's peak anonymous memory (its instance and its builder together), sampled every 0.2 s while a
    phase runs; `builder_peak` the builder's alone."""

    def __init__(self, run: AgentRun):
        self.run, self.peak, self.builder_peak = run, 0, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        pid = builder = 0
        while not self.stop.wait(0.2):
            if not pid:
                with contextlib.suppress(Exception):
                    pid = next((r["pid"] for r in self.run.instances() if r["application_name"] == "srcco-de"), 0)
                continue
            memory = cgroup_memory(pid)
            if not memory:
                pid = 0  # replaced
                continue
            built = cgroup_memory(builder) if builder else {}
            if not built:
                builder = builder_pid(self.run)  # (re)started
            self.builder_peak = max(self.builder_peak, built.get("anon", 0))
            self.peak = max(self.peak, memory["anon"] + built.get("anon", 0))

    def __enter__(self) -> MemorySampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)


def timed_nikola(site: Path) -> dict:
    """A cold `nikola build` (Nikola's own command, a new process): wall time and peak RSS."""
    started = time.monotonic()
    out = subprocess.run(["/usr/bin/time", "-f", "%M", "nikola", "build"], capture_output=True, text=True, cwd=site,
                         timeout=3600, env=python_env(NIKOLA_MONO=1))
    if out.returncode != 0:
        return {"failed": out.stderr.strip().splitlines()[-2:]}
    return {"seconds": round(time.monotonic() - started, 2),
            "peak_rss_mib": round(int(out.stderr.strip().splitlines()[-1]) / 1024, 1)}


def first_publish(run: AgentRun) -> bool:
    """Whether the first release is live; AssertionError as soon as a build failed. Asked of the instance
    itself: the frontend has no healthy server before the first release."""
    for row in run.instances():
        status = requests.get(f"http://[{row['ipv6']}]:8000/_site/status", headers=OWNER, timeout=5).json()
        if status.get("current"):
            return True
        failed = [build for build in status.get("builds") or [] if build.get("result") == "failed"]
        if failed:
            raise AssertionError(f"the first build failed: {status.get('last_error')}")
    return False


def build_phases(run: AgentRun, builds: int) -> dict[str, float]:
    """Where the last `builds` builds' time went: the median of each phase of their records (docs/internals.md)."""
    status = requests.get(run.frontend + "/_site/status", headers=OWNER, timeout=5).json()
    records = [build.get("phases") or {} for build in (status.get("builds") or [])[:builds]]
    names = list(dict.fromkeys(name for phases in records for name in phases))
    return {name: round(statistics.median(phases.get(name, 0.0) for phases in records), 3) for name in names}


def bench_large(client, tmp: Path, sizes: tuple[int, ...], pushes: int) -> dict:
    """Per size: a cold `nikola build` of the commit (full, one post changed) on the host, then the same blog
    through the agent with the default manifest: first publish, one-post pushes → live, memory, storage."""
    results: dict = {}
    for posts in sizes:
        base = tmp / f"large-{posts}"
        repo = SiteRepo(base / "remote")
        say(f"large blog: generating {posts} posts")
        generate_blog(repo, posts, LARGE_TAGS)
        if posts <= 5:  # the bundled site: the posts the pushes edit are there before (fixing a typo, not adding)
            for number in range(100, 100 + pushes):
                repo.write(f"posts/post-{number:03d}.rst", post_text(number, tags_from=LARGE_TAGS))
            repo.commit(f"{pushes} posts to edit")
        row: dict = {"posts": posts}
        site = base / "cold"
        shutil.copytree(repo.work, site, ignore=shutil.ignore_patterns(".git"))
        say(f"large blog {posts}: cold nikola build (full)")
        row["nikola_full"] = timed_nikola(site)
        (site / "posts" / "post-100.rst").write_text(post_text(100, 1, LARGE_TAGS))
        say(f"large blog {posts}: cold nikola build (one post changed)")
        row["nikola_one_post"] = timed_nikola(site)
        shutil.rmtree(site, ignore_errors=True)
        run = AgentRun(base, client, repo)
        try:
            write_yaml(run, "local", poll=10, worker_idle=None)  # the default BUILD_WORKER_IDLE
            started = time.monotonic()
            run.start()
            say(f"large blog {posts}: first publish through the agent")
            with MemorySampler(run) as memory:
                try:
                    wait_for("the first publish", lambda run=run: first_publish(run), 1800, interval=1)
                    row["first_publish_s"] = round(time.monotonic() - started, 1)
                    row["publish"] = summary(publish_latency(run, "local", pushes, 5000, LARGE_TAGS))
                    row["phases"] = build_phases(run, pushes)
                    # A file outside the post folders changed too: the build loads the site afresh (as after
                    # a clean build, or once the worker ended after BUILD_WORKER_IDLE).
                    row["publish_fresh"] = summary(publish_latency(run, "local", 3, 6000, LARGE_TAGS,
                                                                   also={"files/bench-note.txt": "note"}))
                except AssertionError as exc:
                    row["failed"] = str(exc)
                    say(f"large blog {posts}: {row['failed']}")
            row["instance_memory_peak_mib"] = round(memory.peak / 2**20, 1)  # the instance and its builder
            row["builder_memory_peak_mib"] = round(memory.builder_peak / 2**20, 1)
            volume = next((run.state_dir / "volumes").glob("*-workdir"), None)
            if volume is not None:
                usage = shutil.disk_usage(volume)
                row["volume_used_mib"] = round(usage.used / 2**20, 1)
                row["volume_size_mib"] = round(usage.total / 2**20, 1)
        finally:
            run.cleanup()
            shutil.rmtree(base, ignore_errors=True)
        results[str(posts)] = row
        say(f"large blog {posts}: {row}")
    return results


# -- builds -----------------------------------------------------------------------------------------
def bench_builds(repo: SiteRepo, tmp: Path) -> dict:
    site = tmp / "build-site"
    shutil.copytree(repo.work, site, ignore=shutil.ignore_patterns(".git"))
    subprocess.run(["git", "init", "-q"], cwd=site, check=True)
    results: dict = {}

    def cold(label: str) -> None:
        started = time.monotonic()
        out = subprocess.run(["/usr/bin/time", "-f", "%M", sys.executable, "-m", "pipeline.build.runner", str(site)],
                             capture_output=True, text=True, cwd=REPO, timeout=900)
        results[label] = {"seconds": round(time.monotonic() - started, 2),
                          "peak_rss_mib": round(int(out.stderr.strip().splitlines()[-1]) / 1024, 1)}
        say(f"build {label}: {results[label]}")

    def warm(builder: NikolaBuilder, label: str) -> None:
        started = time.monotonic()
        builder.build("0" * 40, reason=None, log_path=tmp / "build.log", changes=[])
        results[label] = {"seconds": round(time.monotonic() - started, 2),
                          "peak_rss_mib": round(builder.last_max_rss_kb / 1024, 1),
                          "worker": "warm" if builder.last_warm else "cold"}
        say(f"build {label}: {results[label]}")

    def touch_post(revision: int) -> None:
        (site / "posts" / "post-050.rst").write_text(post_text(50, revision))

    cold("full (cold process)")
    touch_post(1)
    cold("one post changed (cold process)")
    cold("nothing changed (cold process)")
    work = tmp / "build-work"  # the worker makes its work tree from the site's files, as in the pipeline
    builder = NikolaBuilder(work / "source", timeout=900, tmp_dir=work / "tmp", export_dir=site)
    os.environ["PYTHONPATH"] = str(REPO)
    try:
        warm(builder, "nothing changed (worker starting)")
        touch_post(2)
        warm(builder, "one post changed (warm worker)")
        warm(builder, "nothing changed (warm worker)")
        for name in ("output", "cache"):
            shutil.rmtree(work / "source" / name, ignore_errors=True)
        for path in (work / "source").glob(".doit.db*"):
            path.unlink()
        warm(builder, "full (warm worker)")
    finally:
        builder.worker.stop()
    return results


# -- idle -------------------------------------------------------------------------------------------
def container_rss_mib(container) -> float:
    total = 0
    for process in container.top(ps_args="-eo pid")["Processes"] or []:  # none while it restarts
        try:
            status = Path(f"/proc/{process[0]}/status").read_text()
        except OSError:
            continue
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        total += int(match.group(1)) if match else 0
    return round(total / 1024, 1)


def process_cpu(container) -> dict[str, float]:
    """CPU seconds so far of each process of the container, by its command line."""
    found: dict[str, float] = {}
    for pid, args in (container.top(ps_args="-ww -eo pid,args")["Processes"] or []):
        used = cpu_of(pid)
        if used is not None:
            found[args[:40]] = found.get(args[:40], 0.0) + used
    return found


def bench_idle(run: AgentRun, seconds: int) -> dict:
    """An idle site: its instance and its builder (CPU, RSS at the start and at the end)."""
    row = next(r for r in run.instances() if r["application_name"] == "srcco-de")
    containers = [run.client.containers.get(row["instance_name"])]
    with contextlib.suppress(Exception):
        containers.append(run.client.containers.get(BUILDER))

    def cpu() -> list[float]:
        return [c.stats(stream=False)["cpu_stats"]["cpu_usage"]["total_usage"] / 1e9 for c in containers]

    builds_before = len(requests.get(run.frontend + "/_site/status", headers=OWNER, timeout=5).json()["builds"])
    cpu_before, processes_before = cpu(), process_cpu(containers[0])
    rss_start = [container_rss_mib(c) for c in containers]
    time.sleep(seconds)
    # A container's counter starts again when it does (the builder, once its worker ended): then all of it counts.
    cpu_after, processes_after = cpu(), process_cpu(containers[0])
    # The instance's long-lived processes; the rest of its CPU is what started and ended in between (the health
    # probe Docker starts every 10 s, a git the watcher ran).
    split = {name: round(used - processes_before[name], 3) for name, used in processes_after.items()
             if name in processes_before}
    split["short-lived processes"] = round(max(cpu_after[0] - cpu_before[0] - sum(split.values()), 0.0), 3)
    cpu_seconds = sum(after - before if after >= before else after
                      for before, after in zip(cpu_before, cpu_after, strict=True))
    builds_after = len(requests.get(run.frontend + "/_site/status", headers=OWNER, timeout=5).json()["builds"])
    rss_end = [container_rss_mib(c) for c in containers]
    return {"seconds": seconds, "builds_started": builds_after - builds_before,
            "cpu_seconds": round(cpu_seconds, 2), "cpu_percent_of_a_core": round(100 * cpu_seconds / seconds, 2),
            "instance_rss_mib_at_start": rss_start[0], "instance_rss_mib": rss_end[0],
            "builder_rss_mib_at_start": sum(rss_start[1:]), "builder_rss_mib": sum(rss_end[1:]),
            "site_rss_mib": round(sum(rss_end), 1), "instance_cpu_seconds_by_process": split}


# -- under attack -----------------------------------------------------------------------------------
def bench_under_attack(run: AgentRun, seconds: int) -> dict:
    write_yaml(run, "local", poll=10, worker_idle=30, client_limits=True)  # the defaults; HAProxy reloads
    time.sleep(3)
    url = run.frontend + "/posts/post-100/"
    phases = {
        "no attack": contextlib.nullcontext,
        "200 trickling connections (10 addresses)": lambda: Trickle(run.frontend_port, count=200),
        "junk-URL flood (16 addresses)": lambda: JunkFlood(run.frontend_port, count=10**7),
        "one client flooding": lambda: JunkFlood(run.frontend_port, count=10**7, workers=1, first_source="127.0.2."),
    }
    results: dict = {}
    for name, attack in phases.items():
        say(f"readers, {name}")
        with attack() as attacker, Readers(url, "Post number 100") as readers:
            time.sleep(seconds)
        results[name] = {"requests": len(readers.latencies), "failed": len(readers.failed),
                         "p50_ms": round(readers.quantile(50) * 1000, 2),
                         "p99_ms": round(readers.quantile(99) * 1000, 2),
                         "attack_answers": dict(getattr(attacker, "statuses", {}) or {})}
    base = results["no attack"]
    for figures in results.values():
        figures["p99_vs_no_attack"] = round(figures["p99_ms"] / base["p99_ms"], 2) if base["p99_ms"] else None
    return results


# -- report -----------------------------------------------------------------------------------------
def markdown(results: dict) -> str:
    lines = [f"Measured {results['when']} on {results['machine']}.", ""]
    for page, targets in results.get("serving", {}).items():
        rounds = next(iter(targets.values())).get("runs", 1)
        lines += [f"**Serving, {page} page** (wrk, 2 threads, 32 keep-alive connections, {results['wrk_seconds']} s; "
                  f"the median of {rounds} runs, the servers taking turns)",
                  "", "| server | req/s | × nginx | p50 ms | p99 ms | p99 × nginx | server CPU µs per request |",
                  "|---|---|---|---|---|---|---|"]
        for name, f in targets.items():
            versus = f" ({f['rps_vs_naive']:.1f} × naive)" if "rps_vs_naive" in f else ""
            cpu = f.get("cpu_us_per_request")
            lines.append(f"| {name} | {f['rps']:.0f}{versus} | {f['rps_vs_nginx']:.2f} | {f['p50_ms']:.2f} | "
                         f"{f['p99_ms']:.2f} | {f.get('p99_vs_nginx', 0):.2f} | {cpu if cpu is not None else '-'} |")
        lines.append("")
    if "publish" in results:
        lines += ["**Publish latency**, 200-post blog, one post changed per push, push → visible through the "
                  "frontend", "", "| trigger | pushes | p50 s | p90 s |", "|---|---|---|---|"]
        for mode, f in results["publish"].items():
            lines.append(f"| {mode} | {len(f['all_s'])} | {f['p50_s']:.2f} | {f['p90_s']:.2f} |")
    if "builds" in results:
        lines += ["", "**Builds**, 200-post blog, on the host", "", "| build | seconds | peak RSS MiB |",
                  "|---|---|---|"]
        for name, f in results["builds"].items():
            lines.append(f"| {name} | {f['seconds']:.2f} | {f['peak_rss_mib']:.1f} |")
    if "large" in results:
        lines += ["", "**Large blogs** (20 tags; cold `nikola build` on the host beside the same commit published "
                  "through the agent with the default manifest; one post changed per push)", "",
                  "| posts | nikola build full s (MiB) | nikola build one post s | first publish s | "
                  "push → live p50 s | p90 s | site loaded afresh: push → live p50 s | "
                  "site memory peak MiB (anon: instance + builder) | volume used MiB |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for posts, f in results["large"].items():
            full, one = f["nikola_full"], f["nikola_one_post"]
            publish = f.get("publish") or {}
            lines.append(f"| {posts} | {full.get('seconds', 'failed')} ({full.get('peak_rss_mib', '-')}) | "
                         f"{one.get('seconds', 'failed')} | {f.get('first_publish_s', 'failed')} | "
                         f"{publish.get('p50_s', '-')} | {publish.get('p90_s', '-')} | "
                         f"{(f.get('publish_fresh') or {}).get('p50_s', '-')} | "
                         f"{f.get('instance_memory_peak_mib', '-')} | {f.get('volume_used_mib', '-')} |")
            if f.get("failed"):
                lines.append(f"| | {f['failed'][:200]} | | | | | | | |")
        lines.append("")
        for posts, f in results["large"].items():
            if f.get("phases"):
                spent = ", ".join(f"{name} {value:g}" for name, value in f["phases"].items())
                lines += [f"Where a push's time went, {posts} posts (median of the pushes' build records, s; "
                          f"docs/internals.md): {spent}", ""]
    idle = results.get("idle")
    lines += [] if idle is None else [
              "", f"**Idle** ({idle['seconds']} s without pushes): {idle['builds_started']} builds started, "
              f"{idle['cpu_seconds']} CPU s ({idle['cpu_percent_of_a_core']} % of a core); "
              f"RSS (sum over its processes) of the instance {idle['instance_rss_mib_at_start']} MiB and of "
              f"the builder {idle.get('builder_rss_mib_at_start', 0)} MiB at the start (build worker still "
              f"loaded), {idle['instance_rss_mib']} + {idle.get('builder_rss_mib', 0)} = "
              f"{idle.get('site_rss_mib', idle['instance_rss_mib'])} MiB at the end (worker ended after "
              "BUILD_WORKER_IDLE=30 s). The instance's CPU seconds by process: "
              + ", ".join(f"`{name}` {used}" for name, used in idle.get("instance_cpu_seconds_by_process", {}).items())
              + ".", ""]
    if "https" in results:
        lines += [f"**HTTPS**, post page (wrk, 2 threads, 32 keep-alive connections, {results['wrk_seconds']} s; "
                  "TLS 1.3, same certificate)", "",
                  "| server | req/s | × nginx TLS | p50 ms | p99 ms | p99 × nginx TLS |", "|---|---|---|---|---|---|"]
        for name, f in results["https"].items():
            lines.append(f"| {name} | {f['rps']:.0f} | {f['rps_vs_nginx_tls']:.2f} | {f['p50_ms']:.2f} | "
                         f"{f['p99_ms']:.2f} | {f['p99_vs_nginx_tls'] or 0:.2f} |")
        lines.append("")
    if "attack" in results:
        lines += [f"**Readers under attack** (4 readers of a post page through the frontend, "
                  f"{results['wrk_seconds']} s a phase, default per-client limits)", "",
                  "| attack | reader requests | failed | p50 ms | p99 ms | p99 × no attack | attack answered |",
                  "|---|---|---|---|---|---|---|"]
        for name, f in results["attack"].items():
            answers = ", ".join(f"{status}: {count}" for status, count in sorted(f["attack_answers"].items()))
            lines.append(f"| {name} | {f['requests']} | {f['failed']} | {f['p50_ms']:.2f} | {f['p99_ms']:.2f} | "
                         f"{f['p99_vs_no_attack'] or 0:.2f} | {answers or '-'} |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short runs (3 s wrk, 3 pushes, 20 s idle)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--only", choices=("large", "serving", "https", "idle"), help="run one section only")
    parser.add_argument("--sizes", default=",".join(map(str, LARGE_SIZES)),
                        help="large blogs: post counts (default 200,2000,5000)")
    args = parser.parse_args()
    wrk_seconds, pushes, idle_seconds = (3, 3, 20) if args.quick else (10, 10, 60)
    tmp = Path(tempfile.mkdtemp(prefix="pequod-bench-"))
    results: dict = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                     "machine": f"{os.cpu_count()} CPUs, {os.uname().release}", "wrk_seconds": wrk_seconds}
    client = engine.ensure_engine(say)
    sizes = tuple(int(size) for size in args.sizes.split(","))
    if args.only == "large":
        results["large"] = bench_large(client, tmp, sizes, pushes)
        return write_results(args.out, results, tmp, client)
    repo = SiteRepo(tmp / "remote")
    if args.only in ("serving", "https", "idle"):
        generate_blog(repo, POSTS)
        run = AgentRun(tmp, client, repo)
        try:
            write_yaml(run, "local", poll=10, worker_idle=30)
            run.start()
            wait_mode(run, "local")
            if args.only == "serving":
                results["serving"] = bench_serving(run, tmp, wrk_seconds)
            elif args.only == "https":
                results["https"] = bench_https(run, tmp, wrk_seconds)
            else:
                results["idle"] = bench_idle(run, idle_seconds)
        finally:
            run.cleanup()
        return write_results(args.out, results, tmp, client)
    say(f"generating a {POSTS}-post blog")
    generate_blog(repo, POSTS)
    results["builds"] = bench_builds(repo, tmp)

    run = AgentRun(tmp, client, repo)
    try:
        write_yaml(run, "local", poll=10, worker_idle=30)
        run.start()
        say("waiting for the first (full) build of the blog in the instance")
        wait_mode(run, "local")
        results["idle"] = bench_idle(run, idle_seconds)
        say(f"idle: {results['idle']}")
        results["serving"] = bench_serving(run, tmp, wrk_seconds)
        results["attack"] = bench_under_attack(run, wrk_seconds)
        results["https"] = bench_https(run, tmp, wrk_seconds)
        write_yaml(run, "local", poll=10, worker_idle=30)
        publish = {}
        publish["local file:// remote (watched)"] = summary(publish_latency(run, "local", pushes, 1000))
        write_yaml(run, "webhook", poll=300)
        wait_mode(run, "webhook")
        publish["webhook (remote over NAT64)"] = summary(publish_latency(run, "webhook", pushes, 2000))
        write_yaml(run, "polling", poll=5)
        time.sleep(3)  # only POLL_INTERVAL changes: the instance is replaced
        wait_mode(run, "polling")
        publish["polling every 5 s (remote over NAT64)"] = summary(publish_latency(run, "polling", pushes, 3000))
        results["publish"] = publish
    finally:
        run.cleanup()
    results["large"] = bench_large(client, tmp, sizes, pushes)
    return write_results(args.out, results, tmp, client)


def write_results(out: Path, results: dict, tmp: Path, client) -> int:
    if not runtime.our_containers(client):
        shutil.rmtree(tmp, ignore_errors=True)
    args_out = out
    args_out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    (args_out / f"{stamp}.json").write_text(json.dumps(results, indent=2) + "\n")
    text = markdown(results)
    (args_out / f"{stamp}.md").write_text(text)
    print("\n" + text)
    say(f"results in {args_out}/{stamp}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
