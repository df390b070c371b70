"""`./bootstrap.sh site add|remove|list`: more sites on a host `./bootstrap.sh` set up (docs/sites.md).

    python -m container.sites [--yaml FILE] [--state-dir DIR] [--repos DIR] ... COMMAND
        add NAME --domain DOMAIN [--domain ...] [--repo URL_OR_PATH] [--email ADDR] [--memory MB] [--vmhz MHZ]
        remove NAME [--purge]
        list [--json]

Each site is an entry of `sites` in the bootstrap YAML; the running agent applies a change to one site
without touching the others. `add` checks the new entry as the agent will (the YAML rules, the
manifest's limits), creates the site's repository (REPOS/NAME.git, seeded with site_template/) unless
--repo names one, gives the site its own WEBHOOK_SECRET, writes the file atomically and waits until the
site answers through the frontend. `remove` takes the entry out and waits until the agent has removed
the site's instance (after draining); with --purge it deletes the repository `add` made and the site's
volumes. `list` shows each site with its repository, the commit it serves and its state.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from container import host_settings, plan, volume
from container.bootstrap import SITE_NAME, Bootstrap, is_domain, parse_bootstrap
from container.errors import AgentError
from container.manifest import Manifest, load_manifest
from container.records import Application

SOURCE = Path(__file__).resolve().parent.parent  # the repository this runs from (bootstrap.sh's directory)
YAML = Path("/etc/pequod/pequod-bootstrap.yaml")
STATE = Path("/var/lib/pequod-agent")
REPOS = Path("/srv/pequod")  # the directory of the blog's repository, /srv/pequod/site.git
LOG = Path("/var/log/pequod-agent.log")
PID_FILE = Path("/run/pequod-agent.pid")
IMAGE = "srcco-de:1"
SITE_LABEL = "org.pequod.agent.site"  # runtime.LABEL + ".site": the label of a site's instances
MARK = "pequod.site"  # git config of a repository `site add` created: the site's name (--purge deletes only those)
WAIT_SECONDS = 600
PROGRESS_SECONDS = 10
REFUSED = "ignoring the changed bootstrap YAML"  # the agent's log line for a file it does not apply
ROUNDS = "pequod_agent_loop_rounds_total "  # the agent's metric: rounds of its loop (it watches the YAML then)


class SiteError(AgentError):
    """A site command cannot do what was asked; the message is one line naming what is wrong."""


# -- the YAML data: pure -------------------------------------------------------------------------------
def sites_of(data: dict[str, Any], path: Path) -> list[dict[str, Any]]:
    sites = data.get("sites")
    if not sites:
        raise SiteError(f"{path} has no sites yet: run ./bootstrap.sh once (it makes the blog the site "
                        f"{host_settings.BLOG!r}), then add more")
    return sites


def check_name(name: str) -> None:
    if not SITE_NAME.fullmatch(name):
        raise SiteError(f"{name!r} is not a site name: lowercase letters, digits and '-', at most 40, starting "
                        "with a letter and not ending with '-'")


def normalise_domains(domains: list[str]) -> list[str]:
    names = []
    for domain in domains:
        name = domain.strip().lower().rstrip(".")
        if not is_domain(name):
            raise SiteError(f"--domain {domain!r} is not a host name such as docs.example.org (no IP address, "
                            "no wildcard, no port, no scheme)")
        if name not in names:
            names.append(name)
    return names


def with_site(data: dict[str, Any], path: Path, entry: dict[str, Any]) -> dict[str, Any]:
    """`data` with the site `entry` appended; the one-line error names a bad or duplicate name and a domain
    another site owns. The agent's own rules (parse_bootstrap) are applied by `checked`."""
    sites = sites_of(data, path)
    name = entry["name"]
    check_name(name)
    if any(site.get("name") == name for site in sites):
        raise SiteError(f"a site named {name!r} exists already (./bootstrap.sh site list shows them)")
    for domain in entry.get("domains") or []:
        for site in sites:
            if domain in [str(d).lower().rstrip(".") for d in site.get("domains") or []]:
                raise SiteError(f"{domain} belongs to site {site.get('name')!r} already; a domain belongs to one site")
    return {**data, "sites": [*sites, entry]}


def without_site(data: dict[str, Any], path: Path, name: str) -> dict[str, Any]:
    sites = sites_of(data, path)
    if not any(site.get("name") == name for site in sites):
        known = ", ".join(str(site.get("name")) for site in sites)
        raise SiteError(f"no site named {name!r} (the sites: {known})")
    if name == host_settings.BLOG:
        raise SiteError(f"site {name!r} is the blog ./bootstrap.sh sets up (a re-run would add it again); "
                        "./bootstrap.sh teardown removes it")
    return {**data, "sites": [site for site in sites if site.get("name") != name]}


def checked(data: dict[str, Any], path: Path, manifest: Manifest | None) -> tuple[str, Bootstrap]:
    """The file's text for `data`, checked as the agent checks it: the YAML rules and, given the manifest,
    the sites' limits and the services the image requires."""
    text = host_settings.render(data, path)
    boot = parse_bootstrap(text, str(path))
    if manifest is not None:
        image = Application(IMAGE, "srcco-de", "1", manifest)
        apps = plan.site_applications((image,), boot)
        plan.check_services(apps, boot)
    return text, boot


def site_entry(name: str, domains: list[str], repo_url: str, mount: str | None, secret: str, email: str | None,
               memory_mb: int | None, vmhz: int | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "domains": domains}
    if email:
        entry["email"] = email
    if memory_mb is not None:
        entry["memory_mb"] = memory_mb
    if vmhz is not None:
        entry["vmhz"] = vmhz
    entry["environment"] = {"SITE_REPO": repo_url, "WEBHOOK_SECRET": secret}
    if mount:
        entry["mounts"] = [{"source": mount, "target": mount}]
    return entry


def repository_url(repo: str) -> tuple[str, str | None]:
    """--repo as (SITE_REPO, the path to mount): a local git repository, or a GitHub URL (reached over NAT64:
    the blog image declares github.com:443 as its only external service)."""
    if os.path.isdir(repo):
        path = os.path.realpath(repo)
        for probe in (["git", "--git-dir", path, "rev-parse", "--git-dir"], ["git", "-C", path, "rev-parse"]):
            if subprocess.run(probe, capture_output=True).returncode == 0:
                return f"file://{path}", path
        raise SiteError(f"--repo {path} is a directory but not a git repository")
    if repo.startswith("https://github.com/"):
        return repo, None
    raise SiteError(f"--repo {repo}: use a local git repository path, or an https://github.com/… URL (the blog "
                    "image declares github.com:443 as its only external service)")


# -- repositories ------------------------------------------------------------------------------------------
def git(*args: str) -> None:
    done = subprocess.run(["git", *args], capture_output=True, text=True)
    if done.returncode:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise SiteError(f"git {' '.join(args)}: {lines[-1] if lines else f'exit status {done.returncode}'}")


def create_repository(path: Path, template: Path, name: str) -> None:
    """A bare repository seeded with `template` on main, as bootstrap.sh seeds the blog's, marked as made
    for the site `name`, readable by the instance's unprivileged user."""
    if not template.is_dir():
        raise SiteError(f"{template}: the site template is missing (run from a clone of pequod)")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        git("init", "-q", "--bare", "-b", "main", str(path))
        with tempfile.TemporaryDirectory() as seed:
            shutil.copytree(template, seed, dirs_exist_ok=True)
            git("-C", seed, "init", "-q", "-b", "main")
            git("-C", seed, "add", "-A")
            git("-C", seed, "-c", "user.name=pequod", "-c", "user.email=pequod@localhost", "commit", "-q",
                "-m", "The bundled blog")
            git("-C", seed, "push", "-q", str(path), "main")
        git("--git-dir", str(path), "config", MARK, name)
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    subprocess.run(["chmod", "-R", "a+rX", str(path)], check=True)


def made_for(path: Path) -> str:
    """The site a repository was made for by `site add` ("" for any other)."""
    done = subprocess.run(["git", "--git-dir", str(path), "config", "--get", MARK], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else ""


# -- the running agent and its instances -------------------------------------------------------------------
def agent_running(pid_file: Path) -> bool:
    """The agent runs under systemd, or as bootstrap.sh's supervised daemon."""
    if (shutil.which("systemctl") and Path("/run/systemd/system").is_dir()
            and subprocess.run(["systemctl", "is-active", "-q", "pequod-agent.service"]).returncode == 0):
        return True
    try:
        pid = int(pid_file.read_text().strip())
        return "--supervise" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except (OSError, ValueError):
        return False


def agent_ready(boot: Bootstrap, pid_file: Path, timeout: float = 60) -> None:
    """The agent runs and watches the YAML: a change written while it starts (before it watches the file)
    would wait for the next one, so with its metrics on, this waits until its loop has done a round."""
    if not agent_running(pid_file):
        raise SiteError("the agent is not running: start it with ./bootstrap.sh, then try again")
    if boot.metrics.agent is None:
        return
    address, port = boot.metrics.agent
    url = f"http://{f'[{address}]' if address.version == 6 else address}:{port}/metrics"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=3) as response:
                text = response.read().decode(errors="replace")
            if any(line.startswith(ROUNDS) and float(line.split()[1]) >= 1 for line in text.splitlines()):
                return
        except (OSError, ValueError, IndexError):
            pass
        time.sleep(0.5)
    raise SiteError(f"the agent runs but has not finished a round of its loop within {timeout:.0f} s ({url}); "
                    "its log says why")


def docker_client() -> Any:
    from container import engine

    client = engine.connect(timeout=30)
    if client is None:
        raise SiteError("no Docker engine answers (is this host set up? ./bootstrap.sh)")
    return client


def site_containers(client: Any, name: str | None = None) -> list[Any]:
    """The running instances of one site (or of every site)."""
    label = f"{SITE_LABEL}={name}" if name else SITE_LABEL
    return client.containers.list(filters={"label": label})


def instance_url(container: Any, port: int, path: str) -> str:
    return f"http://[{(container.labels or {}).get('org.pequod.agent.ipv6', '::')}]:{port}{path}"


def get_json(url: str, host: str | None = None, timeout: float = 3) -> tuple[int, Any, dict[str, str]]:
    """(status, JSON body or None, headers) of a GET that follows no redirect; status 0: no answer."""
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.build_opener(NoRedirect).open(request, timeout=timeout) as response:
            status, body, headers = response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        status, body, headers = exc.code, exc.read(), dict(exc.headers)
    except (OSError, ValueError):
        return 0, None, {}
    try:
        return status, json.loads(body), headers
    except ValueError:
        return status, None, headers


def frontend_address(boot: Bootstrap) -> str:
    bind = str(boot.frontend.bind)
    host = {"::": "::1", "0.0.0.0": "127.0.0.1"}.get(bind, bind)
    return f"[{host}]" if ":" in host else host


class AgentLog:
    """What the agent logs from now on: its log file, or the journal under systemd."""

    def __init__(self, path: Path):
        self.path = path
        self.since = time.time()
        self.offset = path.stat().st_size if path.is_file() else 0
        self.lines: list[str] = []

    def new_lines(self) -> list[str]:
        if self.path.is_file():
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
            self.offset += len(data)
            fresh = data.decode(errors="replace").splitlines()
        elif shutil.which("journalctl"):
            done = subprocess.run(["journalctl", "-q", "-u", "pequod-agent.service", "-o", "cat", "--since",
                                   f"@{int(self.since)}"], capture_output=True, text=True)
            fresh = done.stdout.splitlines()[len(self.lines):]
        else:
            fresh = []
        self.lines += fresh
        return fresh

    def refusal(self) -> str | None:
        """The agent's one line when it did not apply the file (it keeps the running configuration)."""
        self.new_lines()
        return next((line for line in self.lines if REFUSED in line), None)

    def last(self) -> str:
        return self.lines[-1][:160] if self.lines else ""


def wait(what: str, probe: Callable[[], tuple[bool, str]], log: AgentLog, timeout: float = WAIT_SECONDS,
         on_refusal: Callable[[str], None] | None = None) -> None:
    """Poll `probe` (done, how it looks) until done; progress every PROGRESS_SECONDS with the agent's last log
    line; fails at once when the agent refused the file, and after `timeout`."""
    deadline, shown, state = time.monotonic() + timeout, time.monotonic(), ""
    while time.monotonic() < deadline:
        done, state = probe()
        if done:
            return
        refused = log.refusal()
        if refused is not None:
            if on_refusal is not None:
                on_refusal(refused)
            raise SiteError(f"the agent did not apply the change: {refused.split(REFUSED, 1)[-1].lstrip(': ')}")
        if time.monotonic() - shown >= PROGRESS_SECONDS:
            shown = time.monotonic()
            print(f"    still waiting for {what} ({state}) {log.last()}".rstrip(), flush=True)
        time.sleep(0.5)
    raise SiteError(f"{what}: not within {timeout / 60:.0f} minutes (last: {state}); the agent's log "
                    f"({log.path if log.path.is_file() else 'journalctl -u pequod-agent'}) says why")


def served_probe(client: Any, boot: Bootstrap, name: str, domain: str,
                 instance_port: int) -> Callable[[], tuple[bool, str]]:
    """Done when the frontend answers for `domain` from the site's own instance: its health answer names
    the release that instance serves (a Host the frontend does not know yet would get the default site),
    or, with HTTPS, plain HTTP is redirected to https://DOMAIN."""
    port = boot.frontend.port
    frontend = f"http://{frontend_address(boot)}:{port}/_site/health"

    def probe() -> tuple[bool, str]:
        releases = set()
        for container in site_containers(client, name):
            status, body, _ = get_json(instance_url(container, instance_port, "/_site/health?serving"))
            if status == 200 and isinstance(body, dict):
                releases.add(body.get("release"))
        if not releases:
            return False, "its instance is starting" if site_containers(client, name) else "no instance yet"
        status, body, headers = get_json(frontend, domain)
        if status == 200 and isinstance(body, dict) and body.get("release") in releases:
            return True, "served"
        if status == 301 and headers.get("Location", "").startswith(f"https://{domain}"):
            return True, "served (HTTPS)"
        return False, f"frontend: HTTP {status}" if status else "frontend: no answer"
    return probe


# -- the commands ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Paths:
    yaml: Path = YAML
    state: Path = STATE
    repos: Path = REPOS
    template: Path = SOURCE / "site_template"
    manifest: Path = SOURCE / "pequod.xml"
    log: Path = LOG
    pid_file: Path = PID_FILE

    def load_manifest(self) -> Manifest | None:
        return load_manifest(str(self.manifest)) if self.manifest.is_file() else None


def add(paths: Paths, name: str, domains: list[str], repo: str | None, email: str | None, memory_mb: int | None,
        vmhz: int | None) -> int:
    check_name(name)
    domains = normalise_domains(domains)
    if not domains:
        raise SiteError("site add needs --domain: the host names the site serves")
    manifest = paths.load_manifest()
    repository = paths.repos / f"{name}.git"
    client = docker_client()
    with host_settings.locked(paths.yaml):
        before = paths.yaml.read_text() if paths.yaml.exists() else ""
        data = host_settings.read(paths.yaml)
        if repo:
            repo_url, mount = repository_url(repo)
        else:
            repo_url, mount = f"file://{repository}", str(repository)
        entry = site_entry(name, domains, repo_url, mount, secrets.token_hex(32), email, memory_mb, vmhz)
        new = with_site(data, paths.yaml, entry)
        users = [site.get("name") for site in data.get("sites") or []
                 if (site.get("environment") or {}).get("SITE_REPO") == repo_url]
        if not repo and users:
            raise SiteError(f"{repository} is the repository of site {users[0]!r}; choose another name")
        maker = made_for(repository) if not repo and repository.exists() else name
        if maker != name:
            raise SiteError(f"{repository} was made for site {maker!r}; choose another name" if maker else
                            f"{repository} exists and was not made by site add; give it as --repo, or choose "
                            "another name")
        text, boot = checked(new, paths.yaml, manifest)
        agent_ready(checked(data, paths.yaml, None)[1], paths.pid_file)
        created = not repo and not repository.exists()
        if repo:
            print(f"    repository {repo_url}")
        elif not created:
            print(f"    repository {repository}: kept from before (site remove without --purge), used as it is")
        else:
            create_repository(repository, paths.template, name)
            print(f"    repository {repository}: created, seeded with site_template/")
        log = AgentLog(paths.log)
        host_settings.write(paths.yaml, text)
    print(f"    written to {paths.yaml}")

    def restore(_line: str) -> None:
        with host_settings.locked(paths.yaml):
            if paths.yaml.read_text() == text:
                host_settings.write(paths.yaml, before)
                print(f"    {paths.yaml} restored: the agent keeps the sites it runs", flush=True)
                if created:
                    shutil.rmtree(repository, ignore_errors=True)

    instance_port = manifest.provides[0].local_port if manifest and manifest.provides else 8000
    port = boot.frontend.port
    url = f"http://{domains[0]}{'' if port == 80 else f':{port}'}/"
    print(f"    waiting for {url} through the frontend (the first build takes a while)", flush=True)
    wait(url, served_probe(client, boot, name, domains[0], instance_port), log, on_refusal=restore)
    clone = repository if not repo else (mount or repo_url)
    print(f"""
The site {name} is live: {url}   (DNS of {', '.join(domains)} must point at this host)

Publish with git push:
    git clone {clone} {name} && cd {name}
    $EDITOR posts/my-post.md
    git add -A && git commit -m "A new post" && git push
Its webhook secret (POST /_site/hook, rollbacks on http://{domains[0]}/_site/): WEBHOOK_SECRET of the site {name}
under sites in {paths.yaml}""")
    return 0


def leftovers(paths: Paths, name: str, manifest: Manifest | None) -> list[Path]:
    """What a site keeps on the host once removed: the repository `site add` made and its volumes."""
    found = [paths.repos / f"{name}.git"] if made_for(paths.repos / f"{name}.git") == name else []
    for fs in manifest.volumes if manifest else ():
        image, _directory = volume.paths(paths.state, name, fs)
        if image.exists():
            found.append(image)
    return found


def purge(paths: Paths, name: str, manifest: Manifest | None, in_use: set[str]) -> list[str]:
    done = []
    for fs in manifest.volumes if manifest else ():
        _image, directory = volume.paths(paths.state, name, fs)
        for _ in range(120):  # the agent unmounts it once the instance is gone; a minute at most
            if not (directory.is_dir() and volume.mounted(directory)):
                break
            time.sleep(0.5)
        done += volume.release(paths.state, name, fs, purge=True)
    repository = paths.repos / f"{name}.git"
    if repository.is_dir() and made_for(repository) == name and f"file://{repository}" not in in_use:
        shutil.rmtree(repository)
        done.append(f"repository {repository}")
    return done


def remove(paths: Paths, name: str, purge_data: bool) -> int:
    manifest = paths.load_manifest()
    with host_settings.locked(paths.yaml):
        data = host_settings.read(paths.yaml)
        configured = any(site.get("name") == name for site in data.get("sites") or [])
        if not configured and purge_data and SITE_NAME.fullmatch(name) and leftovers(paths, name, manifest):
            print(f"    site {name} is not configured (removed before without --purge): deleting what it left")
            in_use = repositories(parse_bootstrap(host_settings.render(data, paths.yaml), str(paths.yaml)))
        else:
            text, boot = checked(without_site(data, paths.yaml, name), paths.yaml, manifest)
            client = docker_client()
            agent_ready(checked(data, paths.yaml, None)[1], paths.pid_file)
            log = AgentLog(paths.log)
            host_settings.write(paths.yaml, text)
            in_use = repositories(boot)
    if configured:
        print(f"    removed from {paths.yaml}; the agent takes it out of the frontend, then removes its instance")
        wait(f"the instance of site {name} to be removed",
             lambda: (not site_containers(client, name), f"{len(site_containers(client, name))} running"), log)
        print(f"    site {name}: its instance is removed")
    if purge_data:
        for item in purge(paths, name, manifest, in_use):
            print(f"    deleted {item}")
    else:
        kept = leftovers(paths, name, manifest)
        if kept:
            print(f"    kept {', '.join(map(str, kept))} (./bootstrap.sh site remove {name} --purge deletes them; "
                  f"site add {name} uses the repository again)")
    print(f"\nThe site {name} is removed.")
    return 0


def repositories(boot: Bootstrap) -> set[str]:
    """The SITE_REPO of every configured site."""
    return {boot.site_env(site).get("SITE_REPO", "") for site in boot.sites}


def rows(paths: Paths, client: Any | None) -> list[dict[str, Any]]:
    boot = parse_bootstrap(paths.yaml.read_text(), str(paths.yaml))
    manifest = paths.load_manifest()
    port = manifest.provides[0].local_port if manifest and manifest.provides else 8000
    running: dict[str, list[Any]] = {}
    for container in site_containers(client) if client is not None else []:
        running.setdefault((container.labels or {}).get(SITE_LABEL, ""), []).append(container)
    found = []
    for site in boot.sites:
        state, commit, instance = ("stopped" if client is not None else "unknown"), None, None
        newest_first = sorted(running.get(site.name, []), reverse=True,
                              key=lambda c: float((c.labels or {}).get("org.pequod.agent.started") or 0))
        for container in newest_first:
            status, body, _ = get_json(instance_url(container, port, "/_site/status"))
            current = body.get("current") if status == 200 and isinstance(body, dict) else None
            if isinstance(current, dict):
                state, commit, instance = "serving", current.get("commit"), container.name
                break
            state, instance = "starting", container.name
        found.append({"name": site.name, "domains": list(site.domains), "default": site.default,
                      "repository": boot.site_env(site).get("SITE_REPO", ""), "live_commit": commit,
                      "state": state, "instance": instance})
    return found


def list_sites(paths: Paths, as_json: bool) -> int:
    from container.tables import table

    found = rows(paths, docker_client())
    if as_json:
        print(json.dumps(found, indent=2))
        return 0
    print(table(("NAME", "DOMAINS", "REPOSITORY", "LIVE COMMIT", "STATE"), [
        (row["name"], " ".join(row["domains"] + (["(default)"] if row["default"] else [])) or "-",
         row["repository"] or "-", (row["live_commit"] or "-")[:12], row["state"]) for row in found]))
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="./bootstrap.sh site", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("--yaml", type=Path, default=YAML, help=f"the bootstrap YAML ({YAML})")
    top.add_argument("--state-dir", type=Path, default=STATE, help=f"the agent's state ({STATE})")
    top.add_argument("--repos", type=Path, default=REPOS, help=f"where site repositories are made ({REPOS})")
    top.add_argument("--template", type=Path, default=SOURCE / "site_template", help="what a new site starts with")
    top.add_argument("--manifest", type=Path, default=SOURCE / "pequod.xml", help="the image's manifest")
    top.add_argument("--log", type=Path, default=LOG, help=f"the agent's log ({LOG})")
    top.add_argument("--pid-file", type=Path, default=PID_FILE, help=f"the agent's pid file ({PID_FILE})")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    new = commands.add_parser("add", help="add a site and wait until it answers")
    new.add_argument("name")
    new.add_argument("--domain", action="append", default=[], required=True,
                     help="a host name the site serves (repeatable)")
    new.add_argument("--repo", metavar="URL_OR_PATH",
                     help="publish from this local git repository or https://github.com/… URL instead")
    new.add_argument("--email", help="the ACME contact for the site's certificate (else frontend.tls.email)")
    new.add_argument("--memory", type=int, metavar="MB", help="memory limit, at most the manifest's")
    new.add_argument("--vmhz", type=int, metavar="MHZ", help="CPU in virtual MHz, at most the manifest's")
    gone = commands.add_parser("remove", help="remove a site and wait until its instance is gone")
    gone.add_argument("name")
    gone.add_argument("--purge", action="store_true", help="delete its repository (made by add) and its volumes")
    show = commands.add_parser("list", help="the sites, their repositories, live commits and states")
    show.add_argument("--json", action="store_true", help="JSON instead of a table")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    paths = Paths(args.yaml, args.state_dir, args.repos, args.template, args.manifest, args.log, args.pid_file)
    try:
        if args.command == "add":
            return add(paths, args.name, args.domain, args.repo, args.email, args.memory, args.vmhz)
        if args.command == "remove":
            return remove(paths, args.name, args.purge)
        return list_sites(paths, args.json)
    except (AgentError, OSError, yaml.YAMLError) as exc:
        message = " ".join(str(exc).split())  # one line
        print(f"site {args.command}: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
