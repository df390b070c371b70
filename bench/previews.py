"""Previews through one real agent (Docker, the builder, HAProxy, NAT64, an IPv4-only "GitHub" serving the
site over git), with the live site as the baseline measured in the same run.

    python bench/previews.py [--previews 10] [--pushes 5] [--out bench/results]

(Run it under the test lock, as root: `flock /tmp/pequod-tests.lock .venv/bin/python bench/previews.py`.)

One site, the blog, with previews on (max 10, behind the password derived from its token), BUILD_WORKER_IDLE
10 s so that the builder's worker ends while the bench watches.

1. push -> live: `--pushes` one-post pushes to the live branch, each until the frontend serves the new post,
   beside as many to one branch until its preview serves it (with the password): p50 and p90 of each, and
   their ratio. Pushes alternate (site, preview, site, …), each triggered by the webhook, as GitHub would.
2. idle memory: the instance's and the builder's cgroups (memory.current) once idle (the builder's worker
   ended, the builder waiting lean) with no branch but the live one, then again with `--previews` idle
   previews, each built and read once through the frontend; the difference per preview.

Results: bench/results/previews-<time>.json and .md (the markdown is also printed). Everything the run
started is removed on exit, also on failure or SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]
sys.path.insert(0, str(REPO))

import docker  # noqa: E402
import requests  # noqa: E402

from bench.sites import builder, builder_waits, cgroup_figures, steady  # noqa: E402
from container.settings import preview_password  # noqa: E402
from tests.agent_fixtures import AgentRun  # noqa: E402
from tests.helpers import SiteRepo, wait_for  # noqa: E402

BLOG = "blog.example.test"
DOMAIN = "preview.example.test"
SECRET = "bench-secret-of-blog"
PASSWORD = preview_password(SECRET)
WORKER_IDLE = 10


def say(message: str) -> None:
    print(f"[previews] {message}", flush=True)


def get(run: AgentRun, host: str, path: str, auth: tuple[str, str] | None = None) -> requests.Response:
    return requests.get(f"{run.frontend}{path}", headers={"Host": host}, auth=auth, timeout=10)


def hook(run: AgentRun) -> None:
    requests.post(f"{run.frontend}/_site/hook", headers={"Host": BLOG, "Authorization": f"Bearer {SECRET}"},
                  timeout=10)


def commit_to(repo: SiteRepo, branch: str, slug: str, title: str) -> None:
    """A commit with one post on `branch` (made from the live branch when it does not exist yet), pushed."""
    repo.clone.git.checkout("-q", "-B", branch, f"origin/{branch}" if branch_exists(repo, branch)
                            else f"origin/{repo.branch}")
    repo.write(f"posts/{slug}.rst", f".. title: {title}\n.. slug: {slug}\n.. date: 2024-01-01 12:00:00 UTC\n\n"
                                    f"{title}.\n")
    repo.clone.git.add("-A")
    repo.clone.git.commit("-q", "-m", title)
    repo.clone.git.push("-q", "origin", f"HEAD:refs/heads/{branch}")
    repo.clone.git.fetch("-q", "origin")
    repo.clone.git.checkout("-q", repo.branch)


def branch_exists(repo: SiteRepo, branch: str) -> bool:
    return bool(repo.clone.git.ls_remote("--heads", "origin", branch).strip())


def timed_push(run: AgentRun, repo: SiteRepo, branch: str, number: int) -> float:
    slug, title = f"bench-{branch.lower()}-{number}", f"Bench post {number} on {branch}"
    if branch == repo.branch:
        host, auth = BLOG, None
    else:
        host, auth = f"{branch.lower()}--blog.{DOMAIN}", ("preview", PASSWORD)
    started = time.monotonic()
    commit_to(repo, branch, slug, title)
    hook(run)
    wait_for(f"{title} live", lambda: title in get(run, host, f"/posts/{slug}/", auth).text, 120, 0.02)
    return round(time.monotonic() - started, 3)


def idle_memory(run: AgentRun) -> dict:
    """The instance's and the builder's memory.current once the builder waits lean, median of 5 samples."""
    instance = run.client.containers.get(next(row["instance_name"] for row in run.instances()
                                              if row.get("site") == "blog"))
    built = builder(run, "blog")
    wait_for("the builder to wait lean", lambda: built is not None and builder_waits(built), WORKER_IDLE + 120, 1)
    samples = []
    for _ in range(5):
        steady(instance)
        instance.reload()
        built.reload()
        samples.append((cgroup_figures(instance.attrs["State"]["Pid"]), cgroup_figures(built.attrs["State"]["Pid"])))
        time.sleep(1)

    def median(index: int, key: str) -> float:
        return round(statistics.median(sample[index].get(key, 0.0) for sample in samples), 1)

    own, builder_mib = median(0, "memory_current_mib"), median(1, "memory_current_mib")
    processes = {args.split()[min(2, len(args.split()) - 1)][:40]: rss for args, rss in rss_by_process(instance)}
    return {"instance_mib": own, "builder_mib": builder_mib, "total_mib": round(own + builder_mib, 1),
            "instance_anon_mib": median(0, "anon_mib"), "instance_file_mib": median(0, "file_mib"),
            "instance_kernel_mib": median(0, "kernel_mib"), "rss_mib_by_process": processes}


def rss_by_process(container) -> list[tuple[str, float]]:
    """(command line, RSS MiB) of each process of the container, from the host's /proc."""
    found = []
    for row in container.top(ps_args="-ww -eo pid,args")["Processes"] or []:
        try:
            status = Path(f"/proc/{row[0]}/status").read_text()
        except OSError:
            continue
        rss = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
        found.append((row[1] if len(row) > 1 else "", round(rss / 1024, 1)))
    return found


def spread(values: list[float]) -> dict:
    ordered = sorted(values)
    return {"p50": round(statistics.median(ordered), 3),
            "p90": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 3), "all": values}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--previews", type=int, default=10)
    parser.add_argument("--pushes", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results: dict = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "previews": args.previews,
                     "pushes": args.pushes}
    run: AgentRun | None = None
    with tempfile.TemporaryDirectory(prefix="pequod-bench-previews-") as name:
        tmp = Path(name)
        try:
            repo = SiteRepo(tmp / "remote")
            run = AgentRun(tmp, docker.from_env(), repo)
            run.write_yaml(extra_env=f"\n  BUILD_WORKER_IDLE: {WORKER_IDLE}")
            run.yaml.write_text(run.yaml.read_text().rstrip("\n") + f"""
previews: {{domain: {DOMAIN}, max: {max(args.previews, 1)}}}
sites:
  - name: blog
    domains: [{BLOG}]
    default: true
    environment: {{WEBHOOK_SECRET: {SECRET}}}
""")
            say("starting the agent")
            run.start()
            wait_for("the blog through the frontend", lambda: "A Pequod Blog" in get(run, BLOG, "/").text, 300, 0.5)
            say("idle memory without previews")
            results["memory_without"] = idle_memory(run)
            say(f"{args.previews} previews, each built and read once")
            for number in range(args.previews):
                timed_push(run, repo, f"branch{number}", 0)
            results["memory_with"] = idle_memory(run)
            results["memory_per_preview_mib"] = round(
                (results["memory_with"]["total_mib"] - results["memory_without"]["total_mib"]) / max(args.previews, 1),
                2)
            say("push -> live, site and preview alternating")
            site, preview = [], []
            for number in range(1, args.pushes + 1):
                site.append(timed_push(run, repo, repo.branch, number))
                preview.append(timed_push(run, repo, "branch0", number))
            results["push_to_site_live_s"] = spread(site)
            results["push_to_preview_live_s"] = spread(preview)
            results["preview_vs_site_p50"] = round(results["push_to_preview_live_s"]["p50"]
                                                   / results["push_to_site_live_s"]["p50"], 2)
        finally:
            if run is not None:
                say("cleanup: agent, instances, namespaces")
                run.cleanup()
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"previews-{time.strftime('%Y%m%dT%H%M%S')}"
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    without, with_previews = results["memory_without"], results["memory_with"]
    text = "\n".join([
        f"# Previews ({results['date']})", "",
        "| | p50 | p90 |", "|---|---|---|",
        f"| push -> site live | {results['push_to_site_live_s']['p50']} s | "
        f"{results['push_to_site_live_s']['p90']} s |",
        f"| push -> preview live | {results['push_to_preview_live_s']['p50']} s | "
        f"{results['push_to_preview_live_s']['p90']} s |",
        f"| ratio preview / site (p50) | {results['preview_vs_site_p50']} | |", "",
        "| idle | instance | builder | total |", "|---|---|---|---|",
        f"| no previews | {without['instance_mib']} MiB | {without['builder_mib']} MiB | {without['total_mib']} MiB |",
        f"| {args.previews} previews | {with_previews['instance_mib']} MiB | {with_previews['builder_mib']} MiB | "
        f"{with_previews['total_mib']} MiB |",
        f"| per preview | | | {results['memory_per_preview_mib']} MiB |", "",
        f"The instance's anonymous / page cache / kernel memory: {without['instance_anon_mib']} / "
        f"{without['instance_file_mib']} / {without['instance_kernel_mib']} MiB without previews, "
        f"{with_previews['instance_anon_mib']} / {with_previews['instance_file_mib']} / "
        f"{with_previews['instance_kernel_mib']} MiB with them; RSS by process without "
        f"{without['rss_mib_by_process']}, with {with_previews['rss_mib_by_process']}.", ""])
    stem.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
