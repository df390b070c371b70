"""Many sites on one host, one real agent, with ratios against a baseline measured in the same run.

    python bench/sites.py [--sites 10] [--rounds N] [--reader-seconds 15] [--big-posts 2000] [--out bench/results]
    python -m bench.sites

(Run it under the test lock, as root: `flock /tmp/pequod-tests.lock .venv/bin/python bench/sites.py`.)

One agent (real Docker, HAProxy, NAT64, an IPv4-only "GitHub" serving each site's repository over git on
port 443) runs ten sites of the image, s1 … s10, each on its own domain (sN.example.test) with its own
repository (git://github.com:443/sN/site.git), triggered by the webhook. Site s2 is the big builder
(2000 VMHz, 640 MB), the nine others get 350 VMHz and 256 MB each: 5,150 VMHz and 2,944 MB in all, inside
this 2-core host (container.capacity.host_capacity(), no overbooking). BUILD_WORKER_IDLE is short (10 s)
so that build workers end while the bench watches.

1. first publish: from the agent's start until each site serves its own page through the frontend
   (requests carry the site's Host).
2. density: once all ten serve and their build workers have ended (no `pipeline.build.worker` left in any
   instance), each idle instance's memory: the container's cgroup (memory.current, as the agent's
   metrics report it, and its anonymous, page cache and kernel parts), the RSS summed over its processes,
   and per process RSS, USS and anonymous memory; the max, and the sizing rule "N sites per GB" =
   1024 / max idle MiB, rounded down. Target: <= 50 MiB per idle instance.
3. push -> live per site: a one-post change pushed to each site in turn (webhook through the frontend with
   the site's Host), until the new text is served through the frontend with that Host: first after idle
   (the build worker starts and loads the site), then once more right away (warm worker).
4. idle CPU: with every site idle (after 2.), the host's busy CPU time over --idle-seconds (/proc/stat:
   everything, Docker's daemons, the health checks' processes and the agent included) minus the same host's
   over the same time before the agent started (the baseline, measured in the same run); and where it goes:
   each site's instance and builder (their cgroups' CPU time, probes included), the agent, HAProxy, Tayga,
   dockerd and containerd (their processes' CPU time). Target: 10 idle sites together under 3 % of a core.
5. isolation: readers of site s1 through the frontend (keep-alive Python clients, Host s1.example.test;
   one reader of the index page the frontend's cache answers, one of `/?n=<i>`, a new URI each request,
   which HAProxy's cache does not answer: its key is the Host and the whole URI; checked with HAProxy's
   own cache counters) for --reader-seconds with s2 idle (the baseline), then the same readers from the
   push of a 2,000-post blog to s2 until s2 serves it; p50/p99 and p99(s2 building) / p99(s2 idle).

When a site's first build fails, the run stops at once and reports the build's error, the instance's log
and how many tasks the instances' user has on the host (a build's RLIMIT_NPROC counts them all).

Results: bench/results/sites-<time>.json and .md (the markdown is also printed). Everything the run
started (agent, instances, namespaces) is removed on exit, also on failure or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Run as a script, bench/ is first on sys.path and would make `bench` mean bench/bench.py.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]
sys.path.insert(0, str(REPO))

import docker  # noqa: E402
import requests  # noqa: E402

from bench.bench import container_rss_mib, post_text, summary  # noqa: E402
from container import engine, metrics, runtime  # noqa: E402
from container.capacity import host_capacity  # noqa: E402
from pipeline.publish.builds import BuildLimits  # noqa: E402
from tests.agent_fixtures import AgentRun  # noqa: E402
from tests.attacks import Readers  # noqa: E402
from tests.helpers import SiteRepo, wait_for  # noqa: E402

SITES = [f"s{n}" for n in range(1, 11)]  # --sites N keeps the first N
BIG = "s2"
READ = "s1"
LIMITS = {name: (2000, 640) if name == BIG else (350, 256) for name in SITES}  # (vmhz, memory_mb)
WORKER_IDLE = 10
POLL = 300  # the webhook triggers; polling is only the fallback
TARGET_IDLE_MIB = 50
TARGET_IDLE_CORE_PERCENT = 3.0  # 10 idle sites together, everything they cause counted


def say(message: str) -> None:
    print(f"[sites {time.strftime('%H:%M:%S')}] {message}", flush=True)


def domain(name: str) -> str:
    return f"{name}.example.test"


def secret(name: str) -> str:
    return f"bench-secret-{name}"


def home_marker(name: str) -> str:
    return f"Home of site {name} here"  # not a prefix of another site's


# -- the agent --------------------------------------------------------------------------------------------
def write_yaml(run: AgentRun) -> None:
    """The fixture's bootstrap YAML (network, NAT64 route, metrics) with webhook triggering, a short
    BUILD_WORKER_IDLE and the ten sites."""
    run.write_yaml(extra_env=f"\n  BUILD_WORKER_IDLE: {WORKER_IDLE}")
    text = run.yaml.read_text()
    assert "  POLL_INTERVAL: 1\n" in text, "the fixture's YAML changed: POLL_INTERVAL not found"
    text = text.replace("  POLL_INTERVAL: 1\n", f"  POLL_INTERVAL: {POLL}\n")
    sites = "".join(
        f"  - name: {name}\n    domains: [{domain(name)}]\n    vmhz: {LIMITS[name][0]}\n"
        f"    memory_mb: {LIMITS[name][1]}\n    environment: {{SITE_REPO: 'git://github.com:443/{name}/site.git', "
        f"WEBHOOK_SECRET: '{secret(name)}'}}\n" for name in SITES)
    run.yaml.write_text(text.rstrip("\n") + "\nsites:\n" + sites)


def get(run: AgentRun, name: str, path: str = "/", session: requests.Session | None = None) -> requests.Response:
    return (session or requests).get(f"{run.frontend}{path}", headers={"Host": domain(name)}, timeout=10,
                                     allow_redirects=False)


def hook(run: AgentRun, name: str) -> None:
    response = requests.post(f"{run.frontend}/_site/hook", headers={"Host": domain(name), "X-Hook-Token": secret(name)},
                             timeout=10)
    if response.status_code != 202:
        say(f"webhook of {name}: {response.status_code} {response.text.strip()[:100]}")


def serves(run: AgentRun, name: str, path: str, text: str) -> bool:
    response = get(run, name, path)
    return response.status_code == 200 and text in response.text


def instances_by_site(run: AgentRun) -> dict[str, dict]:
    return {row["site"]: row for row in run.instances() if row.get("site")}


def build_failures(run: AgentRun) -> dict[str, dict]:
    """Sites whose instance has no release yet and a failed build: its status' error, the instance's log."""
    found = {}
    for name, row in instances_by_site(run).items():
        with contextlib.suppress(requests.RequestException, ValueError):
            status = requests.get(f"http://[{row['ipv6']}]:8000/_site/status", timeout=5,
                                  headers={"Authorization": f"Bearer {secret(name)}"}).json()
            failed = [build for build in status.get("builds") or [] if build.get("result") == "failed"]
            if failed and not status.get("current"):
                found[name] = {"last_error": status.get("last_error"), "instance_log": instance_log_tail(run, name, 14)}
    return found


def instance_user_tasks(run: AgentRun) -> dict:
    """Tasks (processes and threads) of the instances' user on the whole host: RLIMIT_NPROC, which a build
    runs under (pipeline.publish.builds.BuildLimits.processes), counts them for the user, not per instance."""
    rows = list(instances_by_site(run).values())
    uid = None
    with contextlib.suppress(OSError, IndexError, AttributeError):
        uid = int(re.search(r"^Uid:\s+(\d+)", Path(f"/proc/{rows[0]['pid']}/status").read_text(), re.M).group(1))
    if uid is None:
        return {}
    total = 0
    for path in Path("/proc").glob("[0-9]*/status"):
        with contextlib.suppress(OSError, AttributeError):
            text = path.read_text()
            if int(re.search(r"^Uid:\s+(\d+)", text, re.M).group(1)) == uid:
                total += int(re.search(r"^Threads:\s+(\d+)", text, re.M).group(1))
    return {"uid": uid, "tasks_on_host": total, "instances": len(rows),
            "build_rlimit_nproc": BuildLimits().processes}


def agent_log_tail(run: AgentRun, lines: int = 40) -> list[str]:
    log = run.tmp / "agent-0.log"
    return log.read_text(errors="replace").splitlines()[-lines:] if log.exists() else []


def instance_log_tail(run: AgentRun, name: str, lines: int = 20) -> list[str]:
    with contextlib.suppress(Exception):
        row = instances_by_site(run)[name]
        out = run.client.containers.get(row["instance_name"]).logs(tail=lines)
        return out.decode(errors="replace").splitlines()
    return []


# -- first publish ----------------------------------------------------------------------------------------
def first_publish(run: AgentRun, started: float, results: dict, timeout: float = 900) -> dict[str, float]:
    """Seconds from the agent's start until each site serves its own home page through the frontend; fails
    early when a site's first build failed (its instance then never becomes healthy)."""
    live: dict[str, float] = {}
    deadline, last_report, last_check = time.monotonic() + timeout, 0.0, time.monotonic()
    while len(live) < len(SITES):
        for name in SITES:
            if name not in live:
                with contextlib.suppress(requests.RequestException):
                    if serves(run, name, "/", home_marker(name)):
                        live[name] = round(time.monotonic() - started, 1)
                        say(f"first publish: {name} serves after {live[name]} s ({len(live)}/{len(SITES)})")
        if time.monotonic() > deadline:
            missing = [name for name in SITES if name not in live]
            raise AssertionError(f"after {timeout} s these sites do not serve through the frontend: {missing}")
        if time.monotonic() - last_check > 10 and len(live) < len(SITES):
            last_check = time.monotonic()
            failures = build_failures(run)
            if failures:
                results["first_publish"] = live
                results["build_failures"] = failures
                results["instance_user_tasks"] = instance_user_tasks(run)
                first = next(iter(failures.values()))["last_error"]
                raise AssertionError(f"the first build failed in {sorted(failures)}: {first}; instances' user "
                                     f"tasks on the host: {results['instance_user_tasks']}")
        if time.monotonic() - last_report > 30:
            last_report = time.monotonic()
            say(f"first publish: {len(live)}/{len(SITES)} serving after {time.monotonic() - started:.0f} s")
        time.sleep(0.5)
    return live


# -- density ----------------------------------------------------------------------------------------------
def processes(container) -> list[tuple[int, str]]:
    rows = container.top(ps_args="-ww -eo pid,args")["Processes"] or []
    return [(int(row[0]), row[1] if len(row) > 1 else "") for row in rows]


def builder(run: AgentRun, site: str):
    """The site's builder container (container/builders.py), or None."""
    with contextlib.suppress(Exception):
        return run.client.containers.get(f"bootstrap-{site}-builder")
    return None


def builder_waits(built) -> bool:
    """Whether the builder waits lean: its door alone (pipeline.build.door), or, with an image from before the
    door, a lone worker that has not imported Nikola. Not while Docker restarts it (its worker just ended)."""
    try:
        found = processes(built)
    except docker.errors.APIError:  # 409: the container is restarting
        return False
    return len(found) == 1 and ("pipeline.build.door" in found[0][1] or container_rss_mib(built) <= 30)


def workers_left(run: AgentRun) -> list[str]:
    """Sites whose build worker still holds Nikola: in the instance (no builder), or in a builder that does not
    wait lean yet (the site holder, a worker that imported Nikola, a restart under way)."""
    left = []
    for name, row in instances_by_site(run).items():
        container = run.client.containers.get(row["instance_name"])
        built = builder(run, name)
        if any("pipeline.build.worker" in args for _, args in processes(container)) or \
                (built is not None and not builder_waits(built)):
            left.append(name)
    return left


def cgroup_figures(pid: int) -> dict[str, float]:
    """memory.current of the container's cgroup (what the agent's metrics report), its anon, file (page cache)
    and kernel parts."""
    found = metrics.memory_cgroup(pid)
    if found is None:
        return {}
    base, v2 = found
    with contextlib.suppress(OSError, ValueError, KeyError):
        stat = dict(item.split() for item in (base / "memory.stat").read_text().splitlines())
        if v2:
            current, anon, file = int((base / "memory.current").read_text()), int(stat["anon"]), int(stat["file"])
            kernel = int(stat.get("kernel", 0))
        else:
            current = int((base / "memory.usage_in_bytes").read_text())
            anon, file = int(stat["total_rss"]), int(stat["total_cache"])
            kmem = base / "memory.kmem.usage_in_bytes"
            kernel = int(kmem.read_text()) if kmem.exists() else 0
        return {"memory_current_mib": round(current / 2**20, 1), "anon_mib": round(anon / 2**20, 1),
                "file_mib": round(file / 2**20, 1), "kernel_mib": round(kernel / 2**20, 1),
                "memory_current_bytes": current, "anon_bytes": anon}
    return {}


def process_memory(container) -> list[dict]:
    """Per process of the instance: threads, RSS, USS (pages no other process maps) and anonymous memory, MiB."""
    found = []
    for pid, args in processes(container):
        with contextlib.suppress(OSError, AttributeError, ValueError):
            rollup = dict(re.findall(r"^(\w+):\s+(\d+) kB", Path(f"/proc/{pid}/smaps_rollup").read_text(), re.M))
            threads = int(re.search(r"^Threads:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.M).group(1))
            uss = int(rollup.get("Private_Clean", 0)) + int(rollup.get("Private_Dirty", 0))
            found.append({"process": args[:60], "threads": threads, "rss_mib": round(int(rollup["Rss"]) / 1024, 1),
                          "uss_mib": round(uss / 1024, 1), "anon_mib": round(int(rollup["Anonymous"]) / 1024, 1)})
    return found


def cgroup_paths(pid: int) -> dict[str, str]:
    """{controller: the process's cgroup path under it} ("": cgroup v2's unified hierarchy)."""
    paths = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path.lstrip("/")
    return paths


def cpu_throttling(pid: int) -> dict[str, float]:
    """The CPU limit's throttling counters of the process's cgroup (v1: the cpu controller's cpu.stat, v2: cpu.stat)."""
    with contextlib.suppress(OSError, ValueError, KeyError):
        paths = cgroup_paths(pid)
        candidates = [metrics.CGROUP / mount / paths["cpu"] for mount in ("cpu", "cpu,cpuacct") if "cpu" in paths]
        candidates += [metrics.CGROUP / paths[""]] if "" in paths else []
        for directory in candidates:
            if not (directory / "cpu.stat").exists():
                continue
            stat = dict(line.split() for line in (directory / "cpu.stat").read_text().splitlines())
            if "nr_throttled" in stat:
                throttled = (int(stat["throttled_usec"]) / 1e6 if "throttled_usec" in stat
                             else int(stat["throttled_time"]) / 1e9)
                return {"periods": int(stat["nr_periods"]), "throttled_periods": int(stat["nr_throttled"]),
                        "throttled_s": throttled}
    return {}


def throttling_delta(before: dict, after: dict) -> dict:
    if not before or not after:
        return {}
    return {"periods": after["periods"] - before["periods"],
            "throttled_periods": after["throttled_periods"] - before["throttled_periods"],
            "throttled_s": round(after["throttled_s"] - before["throttled_s"], 2)}


IDLE_PROCESSES = ("/run.sh", "serve.py", "pipeline watch")


def steady(container) -> None:
    """Wait (up to 3 s) until the instance runs only what it runs when idle: a health probe (the image's
    HEALTHCHECK, every 10 s for a few ms) or a `docker exec` is not idle memory."""
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and not all(any(name in args for name in IDLE_PROCESSES)
                                                  for _, args in processes(container)):
        time.sleep(0.05)


def density(run: AgentRun) -> dict:
    say(f"density: waiting for the build workers to end (BUILD_WORKER_IDLE={WORKER_IDLE} s)")
    started = time.monotonic()
    left = SITES
    while time.monotonic() - started < WORKER_IDLE + 120:
        left = workers_left(run)
        if not left:
            break
        time.sleep(2)
    waited = round(time.monotonic() - started, 1)
    say(f"density: workers gone after {waited} s (still running in: {left or 'none'}); settling 5 s")
    time.sleep(5)
    tasks = instance_user_tasks(run)
    say(f"density: the instances' user has {tasks.get('tasks_on_host')} tasks on the host")
    per_site: dict[str, dict] = {}
    for name, row in sorted(instances_by_site(run).items(), key=lambda item: SITES.index(item[0])):
        container = run.client.containers.get(row["instance_name"])
        steady(container)
        figures = {**cgroup_figures(row["pid"]), "rss_mib": container_rss_mib(container),
                   "processes": process_memory(container)}
        built = builder(run, name)
        if built is not None:  # the site is its instance and its builder: both counted
            pid = int(built.attrs["State"]["Pid"] or 0)
            extra = {**cgroup_figures(pid), "rss_mib": container_rss_mib(built)} if pid else {}
            figures["builder"] = {**extra, "processes": process_memory(built)}
            for key in ("memory_current_mib", "anon_mib", "rss_mib"):
                if key in figures and key in extra:
                    figures[key] = round(figures[key] + extra[key], 1)
        per_site[name] = figures
        say(f"density: {name} {({k: v for k, v in figures.items() if k != 'processes'})}")
        for process in figures["processes"]:
            say(f"density:   {name} {process}")
    current = [f["memory_current_mib"] for f in per_site.values() if "memory_current_mib" in f]
    anon = [f["anon_mib"] for f in per_site.values() if "anon_mib" in f]
    rss = [f["rss_mib"] for f in per_site.values()]
    worst = max(current) if current else max(rss)
    return {"waited_for_workers_s": waited, "workers_left": left, "per_site": per_site, "user_tasks": tasks,
            "max_memory_current_mib": max(current) if current else None,
            "mean_memory_current_mib": round(statistics.mean(current), 1) if current else None,
            "max_anon_mib": max(anon) if anon else None, "max_rss_mib": max(rss),
            "sites_per_gb": math.floor(1024 / worst),
            "sites_per_gb_by_anon": math.floor(1024 / max(anon)) if anon else None,
            "target_mib": TARGET_IDLE_MIB, "meets_target": worst <= TARGET_IDLE_MIB}


# -- idle CPU ---------------------------------------------------------------------------------------------
def host_busy_seconds() -> float:
    """CPU time the whole host spent busy since boot (/proc/stat's first line: all but idle and iowait)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = sum(fields) - fields[3] - fields[4]  # idle, iowait
    busy -= sum(fields[8:10]) if len(fields) > 9 else 0  # guest time is already counted in user time
    return busy / os.sysconf("SC_CLK_TCK")


def cgroup_cpu_seconds(pid: int) -> float | None:
    """CPU time of the process's cgroup (v2: cpu.stat usage_usec, v1: cpuacct.usage): its processes, also those
    that ended (a health probe)."""
    with contextlib.suppress(OSError, ValueError, KeyError):
        paths = cgroup_paths(pid)
        if "" in paths and (metrics.CGROUP / paths[""] / "cpu.stat").exists():
            stat = dict(line.split() for line in (metrics.CGROUP / paths[""] / "cpu.stat").read_text().splitlines())
            return int(stat["usage_usec"]) / 1e6
        for mount in ("cpuacct", "cpu,cpuacct"):
            usage = metrics.CGROUP / mount / paths.get("cpuacct", "") / "cpuacct.usage"
            if "cpuacct" in paths and usage.exists():
                return int(usage.read_text()) / 1e9
    return None


def process_cpu_seconds() -> dict[int, tuple[str, float]]:
    """{pid: (command line, CPU seconds)} of every process on the host."""
    found = {}
    ticks = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            args = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            found[int(entry.name)] = (args, (int(fields[11]) + int(fields[12])) / ticks)
    return found


HOST_PARTS = {  # where the host's share of idle sites goes: a process's command line → its part
    "agent": ("-m container",), "haproxy": ("haproxy",), "tayga": ("tayga",), "dockerd": ("dockerd",),
    "containerd": ("containerd",),
}


def host_parts(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    parts = dict.fromkeys(HOST_PARTS, 0.0)
    for pid, (args, seconds) in after.items():
        part = next((name for name, marks in HOST_PARTS.items() if any(mark in args for mark in marks)), None)
        if part is not None:
            parts[part] += seconds - (before[pid][1] if pid in before and before[pid][0] == args else 0.0)
    return parts


def baseline_busy(seconds: float) -> float:
    """The host's busy CPU, as a fraction of a core, before the agent starts (Docker up, nothing of ours)."""
    say(f"idle CPU: the baseline, {seconds:.0f} s before the agent starts")
    started, busy = time.monotonic(), host_busy_seconds()
    time.sleep(seconds)
    return (host_busy_seconds() - busy) / (time.monotonic() - started)


def idle_cpu(run: AgentRun, seconds: float, baseline: float) -> dict:
    say(f"idle CPU: {len(SITES)} idle sites for {seconds:.0f} s")
    pids = {}
    for name, row in instances_by_site(run).items():
        built = builder(run, name)
        pids[name] = (row["pid"], int(built.attrs["State"]["Pid"] or 0) if built is not None else 0)
    def sites_cpu() -> dict[str, float]:
        return {name: sum(cgroup_cpu_seconds(pid) or 0.0 for pid in pair if pid) for name, pair in pids.items()}
    first = SITES[0]  # its processes one by one: where a site's share goes
    inside = [pid for pid, _ in processes(run.client.containers.get(instances_by_site(run)[first]["instance_name"]))]
    built = builder(run, first)
    inside += [pid for pid, _ in processes(built)] if built is not None else []
    sites_before, procs_before, busy_before = sites_cpu(), process_cpu_seconds(), host_busy_seconds()
    started = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    busy = (host_busy_seconds() - busy_before) / elapsed
    per_site = {name: round(100 * (value - sites_before[name]) / elapsed, 3) for name, value in sites_cpu().items()}
    procs_after = process_cpu_seconds()
    parts = {name: round(100 * value / elapsed, 3) for name, value in host_parts(procs_before, procs_after).items()}
    first_processes = {procs_after[pid][0][:60]: round(100 * (procs_after[pid][1] - procs_before[pid][1]) / elapsed, 3)
                       for pid in inside if pid in procs_before and pid in procs_after}
    total = round(100 * (busy - baseline), 2)
    found = {"seconds": round(elapsed, 1), "baseline_core_percent": round(100 * baseline, 2),
             "host_busy_core_percent": round(100 * busy, 2), "sites_core_percent": total,
             "per_site_core_percent": round(total / len(SITES), 3), "containers_core_percent": per_site,
             "host_processes_core_percent": parts, f"{first}_processes_core_percent": first_processes,
             "target_core_percent": TARGET_IDLE_CORE_PERCENT,
             "meets_target": total < TARGET_IDLE_CORE_PERCENT}
    say(f"idle CPU: {total} % of a core for {len(SITES)} sites (host {found['host_busy_core_percent']} %, "
        f"baseline {found['baseline_core_percent']} %); containers {per_site}; host processes {parts}; "
        f"{first}'s processes {first_processes}")
    return found


# -- push -> live -----------------------------------------------------------------------------------------
def push_live(run: AgentRun, repos: dict[str, SiteRepo], name: str, revision: int) -> float:
    """One post changed (pushed), the webhook sent with the site's Host; seconds until the new text is
    served through the frontend with that Host."""
    marker = f"Live marker rev-{revision} of {name}"
    repos[name].write("posts/live-check.rst", f".. title: Live check of {name}\n.. slug: live-check\n"
                      f".. date: 2026-04-02 10:00:00 UTC\n.. tags: bench\n\n{marker}\n")
    repos[name].commit(f"Live check {revision}")  # returns when `git push` has returned
    pushed = time.monotonic()
    hook(run, name)
    wait_for(f"{marker!r} through the frontend", lambda: serves(run, name, "/posts/live-check/", marker), 600,
             interval=0.05)
    return round(time.monotonic() - pushed, 3)


def worker_running(run: AgentRun, name: str) -> bool:
    """Whether the site's build worker still holds Nikola (see workers_left)."""
    return name in workers_left(run) if name in SITES else False


def publish(run: AgentRun, repos: dict[str, SiteRepo], rounds: int) -> dict:
    """Per round, each site in turn: once its build worker has ended, a push (the worker starts and loads
    the site), then right away another (warm worker)."""
    per_site: dict[str, dict] = {name: {"after_idle_s": [], "warm_s": []} for name in SITES}
    for number in range(rounds):
        for name in SITES:
            wait_for(f"{name}'s build worker to end", lambda name=name: not worker_running(run, name),
                     WORKER_IDLE + 120, interval=1)
            after_idle = push_live(run, repos, name, 2 * number + 1)
            time.sleep(1)
            warm = push_live(run, repos, name, 2 * number + 2)
            per_site[name]["after_idle_s"].append(after_idle)
            per_site[name]["warm_s"].append(warm)
            say(f"push -> live {name} (round {number + 1}/{rounds}): {after_idle:.2f} s after idle (worker "
                f"starting), {warm:.2f} s warm")
    for figures in per_site.values():
        figures["after_idle"] = summary(figures["after_idle_s"])
        figures["warm"] = summary(figures["warm_s"])
    return {"rounds": rounds, "per_site": per_site,
            "after_idle": summary([v for f in per_site.values() for v in f["after_idle_s"]]),
            "warm": summary([v for f in per_site.values() for v in f["warm_s"]])}


# -- isolation --------------------------------------------------------------------------------------------
class SiteReader(Readers):
    """`threads` keep-alive clients reading `path` of a site through the frontend (a new query string each
    request with `fresh`), until stopped; latencies (s) and failures."""

    def __init__(self, run: AgentRun, name: str, path: str, expect: str, *, fresh: bool = False,
                 threads: int = 2, pause: float = 0.02):
        super().__init__(f"{run.frontend}{path}", expect, threads, pause, headers={"Host": domain(name)},
                         fresh=fresh)

    def figures(self, seconds: float) -> dict:
        values = sorted(self.latencies)
        cuts = statistics.quantiles(values, n=100) if len(values) > 1 else [0.0] * 99
        return {"seconds": round(seconds, 1), "requests": len(values), "failed": len(self.failed),
                "failures": sorted(set(self.failed))[:5],
                "p50_ms": round(cuts[49] * 1000, 2), "p90_ms": round(cuts[89] * 1000, 2),
                "p99_ms": round(cuts[98] * 1000, 2), "max_ms": round(values[-1] * 1000, 2) if values else 0.0}


_CACHE_LINE = re.compile(r'^haproxy_backend_http_cache_(hits|lookups)_total\{[^}]*proxy="([^"]+)"[^}]*\}\s+(\S+)',
                         re.M)


def cache_counters(run: AgentRun, name: str) -> dict[str, int] | None:
    """HAProxy's cache lookups and hits of the site's backend (its own Prometheus exporter)."""
    try:
        text = requests.get(f"http://127.0.0.1:{run.metrics_ports[1]}/metrics", timeout=5).text
    except requests.RequestException:
        return None
    found: dict[str, int] = {}
    for kind, proxy, value in _CACHE_LINE.findall(text):
        if proxy.endswith(f".{name}") or proxy == name:
            found[kind] = found.get(kind, 0) + int(float(value))
    return found or None


def cache_check(run: AgentRun, requests_count: int = 100) -> dict:
    """Whether HAProxy's cache answers the readers' two paths: its counters over `requests_count` requests."""
    results = {}
    session = requests.Session()
    for label, fresh in (("/", False), ("/?n=<i>", True)):
        before = cache_counters(run, READ)
        for index in range(requests_count):
            get(run, READ, f"/?n=check-{index}" if fresh else "/", session)
            time.sleep(0.005)
        after = cache_counters(run, READ)
        if before is None or after is None:
            results[label] = {"known": False}
            continue
        lookups = after.get("lookups", 0) - before.get("lookups", 0)
        hits = after.get("hits", 0) - before.get("hits", 0)
        results[label] = {"known": True, "requests": requests_count, "cache_lookups": lookups, "cache_hits": hits,
                          "hit_ratio": round(hits / lookups, 2) if lookups else None}
    say(f"cache check: {results}")
    return results


def peak_memory(run: AgentRun, name: str, stop: threading.Event, out: dict) -> None:
    pid = 0
    while not stop.wait(0.5):
        with contextlib.suppress(Exception):
            pid = pid or instances_by_site(run)[name]["pid"]
            figures = cgroup_figures(pid)
            if not figures:
                pid = 0
                continue
            out["anon_mib"] = max(out.get("anon_mib", 0.0), figures["anon_mib"])
            out["memory_current_mib"] = max(out.get("memory_current_mib", 0.0), figures["memory_current_mib"])


def isolation(run: AgentRun, repos: dict[str, SiteRepo], seconds: float, big_posts: int) -> dict:
    results: dict = {"reader": f"{READ} through the frontend, 2 keep-alive clients per path, 20 ms pause",
                     "big_posts": big_posts}
    results["cache_check"] = cache_check(run)
    say(f"isolation: writing a {big_posts}-post blog into {BIG}'s checkout (not pushed yet)")
    for number in range(big_posts - 5):  # the template brings five
        repos[BIG].write(f"posts/post-{number:03d}.rst", post_text(number))
    expect = home_marker(READ)

    def readers() -> tuple[SiteReader, SiteReader]:
        return (SiteReader(run, READ, "/", expect), SiteReader(run, READ, "/", expect, fresh=True))

    read_pid = instances_by_site(run)[READ]["pid"]
    say(f"isolation: baseline, {READ} read for {seconds:.0f} s with {BIG} idle")
    cached, fresh = readers()
    with cached, fresh:
        started, throttled = time.monotonic(), cpu_throttling(read_pid)
        time.sleep(seconds)
    elapsed = time.monotonic() - started
    results["idle"] = {"cached": cached.figures(elapsed), "uncached": fresh.figures(elapsed),
                       f"{READ}_cpu_throttling": throttling_delta(throttled, cpu_throttling(read_pid))}
    say(f"isolation: {BIG} idle: {results['idle']}")

    say(f"isolation: pushing {big_posts} posts to {BIG}")
    repos[BIG].commit(f"{big_posts} posts")
    pushed = time.monotonic()
    memory: dict = {}
    stop = threading.Event()
    sampler = threading.Thread(target=peak_memory, args=(run, BIG, stop, memory), daemon=True)
    cached, fresh = readers()
    with cached, fresh:
        sampler.start()
        hook(run, BIG)
        started, throttled = time.monotonic(), cpu_throttling(read_pid)
        last = started
        marker, page = f"Post number {big_posts // 2}", f"/posts/post-{big_posts // 2:03d}/"
        try:
            while not serves(run, BIG, page, marker):
                if time.monotonic() - started > 1800:
                    raise AssertionError(f"{BIG} did not serve its {big_posts}-post blog within 1800 s")
                if time.monotonic() - last > 15:
                    last = time.monotonic()
                    say(f"isolation: {BIG} building for {last - pushed:.0f} s; {READ} readers: "
                        f"{len(cached.latencies)} cached, {len(fresh.latencies)} uncached requests so far")
                time.sleep(0.25)
        finally:
            stop.set()
    elapsed = time.monotonic() - started
    sampler.join(5)
    results["big_push_to_live_s"] = round(time.monotonic() - pushed, 1)
    results["big_memory_peak"] = memory
    results["building"] = {"cached": cached.figures(elapsed), "uncached": fresh.figures(elapsed),
                           f"{READ}_cpu_throttling": throttling_delta(throttled, cpu_throttling(read_pid))}
    say(f"isolation: {BIG} building ({results['big_push_to_live_s']} s): {results['building']}")
    for path in ("cached", "uncached"):
        idle, busy = results["idle"][path]["p99_ms"], results["building"][path]["p99_ms"]
        results[f"p99_ratio_{path}"] = round(busy / idle, 2) if idle else None
    return results


# -- report -----------------------------------------------------------------------------------------------
def _values(values: list[float] | None) -> str:
    if not values:
        return "-"
    if len(values) < 3:
        return ", ".join(f"{value:.2f}" for value in values)
    figures = summary(values)
    return f"{figures['p50_s']:.2f} / {figures['p90_s']:.2f}"


def markdown(results: dict) -> str:
    lines = [f"Measured {results['when']} on {results['machine']} (host capacity {results['capacity']}); "
             f"{len(results['limits'])} sites; bench run {results.get('run_seconds', '?')} s.", ""]
    if results.get("failed"):
        lines += [f"**Failed**: {results['failed']}", ""]
        for name, failure in (results.get("build_failures") or {}).items():
            lines += [f"Site {name}: {failure['last_error']}", "", "```", *failure["instance_log"], "```", ""]
        lines += ["Agent log (tail):", "", "```", *results.get("agent_log_tail", [])[-15:], "```", ""]
    first, dens, pub = results.get("first_publish", {}), results.get("density"), results.get("publish")
    if dens:
        lines += [f"**{len(SITES)} sites on one host** (idle: build workers ended; push → live through the frontend "
                  "with the site's Host, one post changed, webhook)", "",
                  "| site | vmhz | memory_mb | first publish s | idle memory.current MiB | anon MiB | RSS MiB | "
                  "push → live after idle s | warm s |", "|---|---|---|---|---|---|---|---|---|"]
        if pub and pub.get("rounds", 0) >= 3:
            lines[-2] = lines[-2].replace("after idle s | warm s |", "after idle p50 / p90 s | warm p50 / p90 s |")
        for name in SITES:
            d = dens["per_site"].get(name, {})
            p = (pub or {}).get("per_site", {}).get(name, {})
            lines.append(f"| {name} | {LIMITS[name][0]} | {LIMITS[name][1]} | {first.get(name, '-')} | "
                         f"{d.get('memory_current_mib', '-')} | {d.get('anon_mib', '-')} | {d.get('rss_mib', '-')} | "
                         f"{_values(p.get('after_idle_s'))} | {_values(p.get('warm_s'))} |")
        lines += ["", f"**Density**: max idle instance {dens['max_memory_current_mib']} MiB (cgroup memory.current; "
                  f"mean {dens['mean_memory_current_mib']}, max anon {dens['max_anon_mib']}, max RSS "
                  f"{dens['max_rss_mib']}); target ≤ {TARGET_IDLE_MIB} MiB: "
                  f"{'met' if dens['meets_target'] else 'not met'}. Sizing rule: **{dens['sites_per_gb']} sites per "
                  f"GB** (1024 / max idle MiB, rounded down; {dens['sites_per_gb_by_anon']} by anonymous memory).", ""]
        worst = max(dens["per_site"], key=lambda name: dens["per_site"][name].get("memory_current_mib", 0))
        d = dens["per_site"][worst]
        lines += [f"Where {worst}'s idle {d.get('memory_current_mib')} MiB go: anonymous {d.get('anon_mib')}, page "
                  f"cache {d.get('file_mib')}, kernel {d.get('kernel_mib')} (cgroup); per process (MiB):", "",
                  "| process | threads | RSS | USS | anon |", "|---|---|---|---|---|"]
        lines += [f"| `{p['process']}` | {p['threads']} | {p['rss_mib']} | {p['uss_mib']} | {p['anon_mib']} |"
                  for p in d.get("processes", []) if isinstance(p, dict)] + [""]
    idle = results.get("idle_cpu")
    if idle:
        parts = ", ".join(f"{name} {value}" for name, value in idle["host_processes_core_percent"].items())
        busiest = sorted(idle["containers_core_percent"].items(), key=lambda item: -item[1])[:3]
        lines += [f"**Idle CPU** ({idle['seconds']} s, all sites idle): **{idle['sites_core_percent']} % of a core** "
                  f"for {len(idle['containers_core_percent'])} sites ({idle['per_site_core_percent']} % each): the "
                  f"host busy {idle['host_busy_core_percent']} % minus its baseline {idle['baseline_core_percent']} % "
                  f"before the agent started; target under {idle['target_core_percent']} %: "
                  f"{'met' if idle['meets_target'] else 'not met'}. Where it goes (% of a core): instances and "
                  f"builders (cgroups) {round(sum(idle['containers_core_percent'].values()), 2)} (busiest: "
                  f"{', '.join(f'{n} {v}' for n, v in busiest)}); {parts}.", ""]
    if pub:
        lines += [f"**Push → live** ({len(pub['after_idle']['all_s'])} pushes of each kind): after idle p50 "
                  f"{pub['after_idle']['p50_s']} s, p90 {pub['after_idle']['p90_s']} "
                  f"s; warm worker p50 {pub['warm']['p50_s']} s, p90 {pub['warm']['p90_s']} s.", ""]
    iso = results.get("isolation")
    if iso and "building" in iso:
        lines += [f"**Isolation**: readers of {READ} ({iso['reader']}) with {BIG} idle "
                  f"({iso['idle']['cached']['seconds']} s), then while {BIG} builds a {iso['big_posts']}-post blog "
                  f"(push → live "
                  f"{iso['big_push_to_live_s']} s, peak {iso['big_memory_peak']})", "",
                  "| path | s2 | requests | failed | p50 ms | p90 ms | p99 ms | max ms | p99 × idle |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for path, label in (("cached", "`/` (cache)"), ("uncached", "`/?n=<i>` (instance)")):
            for phase in ("idle", "building"):
                f = iso[phase][path]
                ratio = 1.0 if phase == "idle" else iso[f"p99_ratio_{path}"]
                lines.append(f"| {label} | {phase} | {f['requests']} | {f['failed']} | {f['p50_ms']} | {f['p90_ms']} | "
                             f"{f['p99_ms']} | {f['max_ms']} | {ratio} |")
        lines += ["", f"{READ}'s CPU limit throttled it (periods of 100 ms throttled / s throttled): {BIG} idle "
                  f"{iso['idle'].get(f'{READ}_cpu_throttling')}, {BIG} building "
                  f"{iso['building'].get(f'{READ}_cpu_throttling')}.", "",
                  f"HAProxy cache counters over 100 requests each: {iso['cache_check']}", ""]
    return "\n".join(lines)


def write_results(out: Path, results: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    (out / f"sites-{stamp}.json").write_text(json.dumps(results, indent=2) + "\n")
    text = markdown(results)
    (out / f"sites-{stamp}.md").write_text(text + "\n")
    print("\n" + text)
    say(f"results in {out}/sites-{stamp}.json and .md")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--reader-seconds", type=float, default=15, help="the baseline reader's duration")
    parser.add_argument("--big-posts", type=int, default=2000, help="posts of the blog s2 builds during isolation")
    parser.add_argument("--sites", type=int, default=10, choices=range(2, 11), metavar="2..10",
                        help="run the first N sites only (default 10)")
    parser.add_argument("--idle-seconds", type=float, default=60, help="how long idle CPU is measured")
    parser.add_argument("--only-idle", action="store_true",
                        help="first publish, density and idle CPU only (no pushes, no isolation)")
    parser.add_argument("--rounds", type=int, default=0,
                        help="push -> live rounds over all sites (default: 10 pushes of each kind in all)")
    args = parser.parse_args()
    del SITES[args.sites:]
    for name in [name for name in LIMITS if name not in SITES]:
        del LIMITS[name]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the cleanup below runs
    began = time.monotonic()
    capacity = host_capacity()
    vmhz, memory_mb = sum(v for v, _ in LIMITS.values()), sum(m for _, m in LIMITS.values())
    results: dict = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                     "machine": f"{os.cpu_count()} CPUs, {os.uname().release}",
                     "capacity": f"{capacity.vmhz} VMHz, {capacity.memory_mb} MB",
                     "limits": {name: {"vmhz": v, "memory_mb": m} for name, (v, m) in LIMITS.items()},
                     "limits_sum": {"vmhz": vmhz, "memory_mb": memory_mb}, "build_worker_idle_s": WORKER_IDLE}
    if vmhz > capacity.vmhz or memory_mb > capacity.memory_mb:
        say(f"the sites need {vmhz} VMHz and {memory_mb} MB, the host offers {capacity.vmhz} and {capacity.memory_mb}")
        return 1
    say(f"limits: {vmhz} of {capacity.vmhz} VMHz, {memory_mb} of {capacity.memory_mb} MB")
    tmp = Path(tempfile.mkdtemp(prefix="pequod-sites-"))
    client = engine.ensure_engine(say)
    run: AgentRun | None = None
    code = 0
    try:
        base = SiteRepo(tmp / "remote")  # git://github.com:443/site.git: the daemon's base path, unused
        repos: dict[str, SiteRepo] = {}
        for name in SITES:
            repos[name] = SiteRepo(base.bare.parent / name)
            repos[name].add_post("home-marker", home_marker(name))
        run = AgentRun(tmp, client, base)
        write_yaml(run)
        baseline = baseline_busy(args.idle_seconds / 2)
        say(f"starting the agent with {len(SITES)} sites")
        started = time.monotonic()
        run.start()
        results["first_publish"] = first_publish(run, started, results)
        slow = [name for name, seconds in results["first_publish"].items() if seconds > 30]
        if slow:  # the instance's log says why (the run's directory is removed at the end)
            results["slow_first_publish_logs"] = {name: instance_log_tail(run, name, 30) for name in slow}
        results["density"] = density(run)
        results["idle_cpu"] = idle_cpu(run, args.idle_seconds, baseline)
        if not args.only_idle:
            results["publish"] = publish(run, repos, args.rounds or max(1, 10 // len(SITES)))
            results["isolation"] = isolation(run, repos, args.reader_seconds, args.big_posts)
    except Exception as exc:
        code = 1
        results["failed"] = f"{type(exc).__name__}: {exc}"
        say(f"FAILED: {results['failed']}")
        if run is not None:
            results["agent_log_tail"] = agent_log_tail(run)
            results["instance_logs"] = {name: instance_log_tail(run, name) for name in SITES}
            for line in results["agent_log_tail"]:
                print(f"  agent| {line}")
    finally:
        if run is not None:
            say("cleanup: agent, instances, namespaces")
            run.cleanup()
        if not runtime.our_containers(client):
            shutil.rmtree(tmp, ignore_errors=True)
        results["run_seconds"] = round(time.monotonic() - began)
        write_results(args.out, results)
    return code


if __name__ == "__main__":
    sys.exit(main())
