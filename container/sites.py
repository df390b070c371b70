"""`./bootstrap.sh site add|remove|list|token`: more sites on a host `./bootstrap.sh` set up (docs/sites.md).

    python -m container.sites [--yaml FILE] [--state-dir DIR] [--repos DIR] ... COMMAND
        add NAME --domain DOMAIN [--domain ...] [--repo URL_OR_PATH] [--email ADDR] [--memory MB] [--vmhz MHZ]
        remove NAME [--purge]
        list [--json] [--previews]
        token NAME
        key add SITE NAME [KEYFILE|-] | key list [SITE] [--json] | key remove SITE NAME

Each site is an entry of `sites` in the bootstrap YAML; the running agent applies a change to one site
without touching the others. `add` checks the new entry as the agent will (the YAML rules, the
manifest's limits), creates the site's repository (REPOS/NAME.git, seeded with site_template/) unless
--repo names one, gives the site its own WEBHOOK_SECRET, writes the file atomically and waits until the
site answers through the frontend. `remove` takes the entry out and waits until the agent has removed
the site's instance (after draining); with --purge it deletes the repository `add` made and the site's
volumes. `list` shows each site with its repository, the commit it serves and its state (asked of each
instance with the site's token); with --previews, each site's previews (branch, address, state) and their
password. `token` prints a site's token, its WEBHOOK_SECRET. `key` gives a person's
SSH key push access to one site's repository, and takes it away (container/push_keys.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import secrets
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from container import host_settings, push_keys, volume
from container.bootstrap import parse_bootstrap
from container.cli import DEFAULT_IMAGE
from container.errors import AgentError
from container.manifest import Manifest, load_manifest
from container.settings import SITE_NAME
from container.site_config import (
    SiteError,
    check_name,
    checked,
    create_repository,
    instance_port,
    made_for,
    normalise_domains,
    repositories,
    repository_url,
    site_entry,
    unclaimed,
    with_site,
    without_site,
)
from container.site_probe import (
    SITE_LABEL,
    AgentLog,
    agent_ready,
    docker_client,
    get_json,
    instance_url,
    served_probe,
    site_containers,
    wait,
)

SOURCE = Path(__file__).resolve().parent.parent  # the repository this runs from (bootstrap.sh's directory)
YAML = Path("/etc/pequod/pequod-bootstrap.yaml")
STATE = Path("/var/lib/pequod-agent")
REPOS = Path("/srv/pequod")  # the directory of the blog's repository, /srv/pequod/site.git
LOG = Path("/var/log/pequod-agent.log")
PID_FILE = Path("/run/pequod-agent.pid")


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
    keys: Path = push_keys.KEYS
    image: str = DEFAULT_IMAGE  # the agent's image: its tag names the application a site may not be named after

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
        repo_url, mount = repository_url(repo) if repo else (f"file://{repository}", str(repository))
        entry = site_entry(name, domains, repo_url, mount, secrets.token_hex(32), email, memory_mb, vmhz)
        new = with_site(data, paths.yaml, entry)
        if not repo:
            unclaimed(data, repository, name)
        text, boot = checked(new, paths.yaml, manifest, paths.image)
        agent_ready(checked(data, paths.yaml, None, paths.image)[1], paths.pid_file)
        created = provide_repository(repository, paths.template, name, repo_url if repo else None)
        log = AgentLog(paths.log)
        host_settings.write(paths.yaml, text)
    print(f"    written to {paths.yaml}")
    restore = restorer(paths.yaml, text, before, repository if created else None)
    port = boot.frontend.port
    url = f"http://{domains[0]}{'' if port == 80 else f':{port}'}/"
    print(f"    waiting for {url} through the frontend (the first build takes a while)", flush=True)
    wait(url, served_probe(client, boot, name, domains[0], instance_port(manifest)), log, on_refusal=restore)
    clone = repository if not repo else (mount or repo_url)
    print(f"""
The site {name} is live: {url}   (DNS of {', '.join(domains)} must point at this host)

Publish with git push:
    git clone {clone} {name} && cd {name}
    $EDITOR posts/my-post.md
    git add -A && git commit -m "A new post" && git push
Its deploys: http://{domains[0]}/_site/ with its token, its WEBHOOK_SECRET (the deploy data, rollbacks,
POST /_site/hook): ./bootstrap.sh site token {name}""")
    return 0


def provide_repository(repository: Path, template: Path, name: str, given: str | None) -> bool:
    """The site's repository: the one --repo gave (`given`, its SITE_REPO), the one a `site remove` without
    --purge kept, or a new one seeded with `template`; True when it was created here."""
    if given:
        print(f"    repository {given}")
        return False
    if repository.exists():
        print(f"    repository {repository}: kept from before (site remove without --purge), used as it is")
        return False
    create_repository(repository, template, name)
    print(f"    repository {repository}: created, seeded with site_template/")
    return True


def restorer(path: Path, text: str, before: str, created: Path | None) -> Callable[[str], None]:
    """What `add` does when the agent refuses the file it wrote (`text`): puts the previous file back unless
    it changed since, and deletes the repository it `created`."""
    def restore(_line: str) -> None:
        with host_settings.locked(path):
            if path.read_text() == text:
                host_settings.write(path, before)
                print(f"    {path} restored: the agent keeps the sites it runs", flush=True)
                if created is not None:
                    shutil.rmtree(created, ignore_errors=True)
    return restore


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
            text, boot = checked(without_site(data, paths.yaml, name), paths.yaml, manifest, paths.image)
            client = docker_client()
            agent_ready(checked(data, paths.yaml, None, paths.image)[1], paths.pid_file)
            log = AgentLog(paths.log)
            host_settings.write(paths.yaml, text)
            in_use = repositories(boot)
            drop_keys(paths, name, boot)
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


def rows(paths: Paths, client: Any | None) -> list[dict[str, Any]]:
    boot = parse_bootstrap(paths.yaml.read_text(), str(paths.yaml))
    manifest = paths.load_manifest()
    port = instance_port(manifest)
    running: dict[str, list[Any]] = {}
    for container in site_containers(client) if client is not None else []:
        running.setdefault((container.labels or {}).get(SITE_LABEL, ""), []).append(container)
    found = []
    for site in boot.sites:
        state, commit, instance = ("stopped" if client is not None else "unknown"), None, None
        previews: list[dict[str, Any]] = []
        newest_first = sorted(running.get(site.name, []), reverse=True,
                              key=lambda c: float((c.labels or {}).get("org.pequod.agent.started") or 0))
        for container in newest_first:
            status, body, _ = get_json(instance_url(container, port, "/_site/status"),
                                       token=boot.site_env(site).get("WEBHOOK_SECRET"))
            current = body.get("current") if status == 200 and isinstance(body, dict) else None
            if isinstance(current, dict):
                state, commit, instance = "serving", current.get("commit"), container.name
                previews = preview_rows(body.get("previews"))
                break
            state, instance = "starting", container.name
        found.append({"name": site.name, "domains": list(site.domains), "default": site.default,
                      "repository": boot.site_env(site).get("SITE_REPO", ""), "live_commit": commit,
                      "state": state, "instance": instance, "previews": previews,
                      "preview_address": f"http://BRANCH--{site.previews_host}/" if site.previews else None,
                      "preview_password": (boot.site_env(site).get("PREVIEWS_PASSWORD") if site.previews else None)})
    return found


def preview_rows(previews: Any) -> list[dict[str, Any]]:
    """A site's previews as its status tells them (branch, address, state, commit, error), by branch."""
    rows = [{"branch": item.get("branch"), "address": item.get("address"), "state": item.get("state"),
             "commit": item.get("commit"), "error": item.get("error")}
            for item in (previews or {}).values() if isinstance(item, dict)]
    return sorted(rows, key=lambda row: str(row["branch"]))


def list_sites(paths: Paths, as_json: bool, previews: bool = False) -> int:
    from container.tables import table

    found = rows(paths, docker_client())
    if as_json:
        print(json.dumps(found, indent=2))
        return 0
    if previews:
        print(table(("SITE", "BRANCH", "ADDRESS", "STATE", "COMMIT"), [
            (row["name"], str(item["branch"]), str(item["address"]), str(item["state"]), str(item["commit"])[:12])
            for row in found for item in row["previews"]]))
        for row in found:
            if row["preview_address"] is None:
                print(f"{row['name']}: no previews (previews.domain in the bootstrap YAML turns them on)")
            else:
                access = (f"user preview, password {row['preview_password']}" if row["preview_password"]
                          else "public (no password)")
                print(f"{row['name']}: previews at {row['preview_address']}: {access}")
        return 0
    print(table(("NAME", "DOMAINS", "REPOSITORY", "LIVE COMMIT", "STATE", "PREVIEWS"), [
        (row["name"], " ".join(row["domains"] + (["(default)"] if row["default"] else [])) or "-",
         row["repository"] or "-", (row["live_commit"] or "-")[:12], row["state"],
         str(len(row["previews"])) if row["preview_address"] else "-") for row in found]))
    return 0


def token(paths: Paths, name: str) -> int:
    """The site's token (its WEBHOOK_SECRET): the deploy data, rollbacks and the webhook need it."""
    boot = parse_bootstrap(paths.yaml.read_text(), str(paths.yaml))
    site = next((site for site in boot.sites if site.name == name), None)
    if site is None:
        raise AgentError(f"{paths.yaml}: no site {name!r} under sites (./bootstrap.sh site list shows them)")
    secret = boot.site_env(site).get("WEBHOOK_SECRET")
    if not secret:
        raise AgentError(f"{paths.yaml}: the site {name!r} has no WEBHOOK_SECRET in its environment; add one "
                         "(e.g. openssl rand -hex 32) and the agent applies it")
    print(secret)
    return 0


def drop_keys(paths: Paths, site: str, boot: Any) -> None:
    """A removed site's push keys go with it (its repository, kept without --purge, is reached by none)."""
    keys = push_keys.read_keys(paths.keys)
    kept = [key for key in keys if key.site != site]
    if len(kept) < len(keys):
        user = push_keys.git_user(create=False)
        if user is not None:
            push_keys.install(kept, boot, user)
        push_keys.write_keys(paths.keys, kept)
        print(f"    removed its {len(keys) - len(kept)} push key(s)")


def key_add(paths: Paths, site: str, name: str, source: str) -> int:
    """Give `name`'s key push and fetch access to the site's repository (over SSH, as the git user)."""
    if not push_keys.KEY_NAME.fullmatch(name):
        raise push_keys.KeyError_(f"{name!r} is not a key name: lowercase letters, digits, '.', '_' and '-', at "
                                  "most 40, starting with a letter or digit (e.g. the person's name)")
    shown = "standard input" if source == "-" else source
    if source == "-":
        text = sys.stdin.read(push_keys.MAX_KEY_BYTES + 1)
    else:
        with open(source, errors="replace") as handle:  # no more than a key's size read, whatever the file's
            text = handle.read(push_keys.MAX_KEY_BYTES + 1)
    if len(text) > push_keys.MAX_KEY_BYTES:
        raise push_keys.KeyError_(f"{shown}: larger than a public key ({push_keys.MAX_KEY_BYTES} bytes at most)")
    kind, blob = push_keys.parse_key(text, shown)
    with host_settings.locked(paths.yaml):
        boot = parse_bootstrap(paths.yaml.read_text(), str(paths.yaml))
        repository = push_keys.repository_of(boot, site)
        keys = push_keys.read_keys(paths.keys)
        for key in keys:
            if key.site == site and key.name == name:
                raise push_keys.KeyError_(f"site {site} has a key {name} already ({key.fingerprint}); "
                                          f"./bootstrap.sh site key remove {site} {name} first")
            if key.site == site and key.blob == blob:
                raise push_keys.KeyError_(f"this key is site {site}'s key {key.name} already")
        keys.append(push_keys.PushKey(site, name, kind, blob))
        user = push_keys.git_user(create=True)
        assert user is not None
        push_keys.install(keys, boot, user)  # first: the file lists only keys that work
        push_keys.write_keys(paths.keys, keys)
    added = keys[-1]
    print(f"""    {name} ({added.fingerprint}) may push to and fetch from {repository} over SSH:
    git clone {user.pw_name}@HOST:{site} {site}      (HOST: this machine's name or address)
    git remote set-url origin {user.pw_name}@HOST:{site}      (in an existing clone)""")
    if not push_keys.ssh_server_answers():
        print(f"    note: {push_keys.no_server_advice()}")
    return 0


def key_remove(paths: Paths, site: str, name: str) -> int:
    with host_settings.locked(paths.yaml):
        boot = parse_bootstrap(paths.yaml.read_text(), str(paths.yaml))
        keys = push_keys.read_keys(paths.keys)
        kept = [key for key in keys if not (key.site == site and key.name == name)]
        if len(kept) == len(keys):
            raise push_keys.KeyError_(f"site {site} has no key {name!r} (./bootstrap.sh site key list {site} "
                                      "shows its keys)")
        user = push_keys.git_user(create=False)
        if user is not None:
            push_keys.install(kept, boot, user)
        push_keys.write_keys(paths.keys, kept)
    print(f"    removed: {name} can no longer push to or fetch from site {site}")
    return 0


def key_list(paths: Paths, site: str | None, as_json: bool) -> int:
    from container.tables import table

    found = [row for row in push_keys.as_rows(push_keys.read_keys(paths.keys)) if site in (None, row["site"])]
    if as_json:
        print(json.dumps(found, indent=2))
    elif found:
        print(table(("SITE", "NAME", "TYPE", "FINGERPRINT"),
                    [(row["site"], row["name"], row["type"], row["fingerprint"]) for row in found]))
    else:
        print(f"no push keys{f' for site {site}' if site else ''} (./bootstrap.sh site key add SITE NAME KEYFILE)")
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="./bootstrap.sh site", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("--yaml", type=Path, default=YAML, help=f"the bootstrap YAML ({YAML})")
    top.add_argument("--state-dir", type=Path, default=STATE, help=f"the agent's state ({STATE})")
    top.add_argument("--repos", type=Path, default=REPOS, help=f"where site repositories are made ({REPOS})")
    top.add_argument("--template", type=Path, default=SOURCE / "site_template", help="what a new site starts with")
    top.add_argument("--manifest", type=Path, default=SOURCE / "pequod.xml", help="the image's manifest")
    top.add_argument("--image", default=DEFAULT_IMAGE, help=f"the image the agent runs ({DEFAULT_IMAGE})")
    top.add_argument("--log", type=Path, default=LOG, help=f"the agent's log ({LOG})")
    top.add_argument("--pid-file", type=Path, default=PID_FILE, help=f"the agent's pid file ({PID_FILE})")
    top.add_argument("--keys", type=Path, default=push_keys.KEYS, help=f"the push keys ({push_keys.KEYS})")
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
    show.add_argument("--previews", action="store_true", help="each site's previews, their addresses and password")
    secret = commands.add_parser("token", help="print the site's token (WEBHOOK_SECRET): its deploy data, "
                                               "rollbacks and webhook need it")
    secret.add_argument("name")
    key = commands.add_parser("key", help="push keys: who may git push to a site over SSH, as the git user")
    key_commands = key.add_subparsers(dest="key_command", required=True, metavar="add|list|remove")
    key_new = key_commands.add_parser("add", help="let a key push to and fetch from the site's repository")
    key_new.add_argument("site")
    key_new.add_argument("name", help="whose key (a name for the list)")
    key_new.add_argument("keyfile", nargs="?", default="-", help="the public key (e.g. id_ed25519.pub); - or "
                                                                   "nothing: standard input")
    key_show = key_commands.add_parser("list", help="the keys, per site")
    key_show.add_argument("site", nargs="?")
    key_show.add_argument("--json", action="store_true", help="JSON instead of a table")
    key_gone = key_commands.add_parser("remove", help="take a key's access away")
    key_gone.add_argument("site")
    key_gone.add_argument("name")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    paths = Paths(args.yaml, args.state_dir, args.repos, args.template, args.manifest, args.log, args.pid_file,
                  args.keys, args.image)
    try:
        if args.command == "add":
            return add(paths, args.name, args.domain, args.repo, args.email, args.memory, args.vmhz)
        if args.command == "remove":
            return remove(paths, args.name, args.purge)
        if args.command == "token":
            return token(paths, args.name)
        if args.command == "key":
            if args.key_command == "add":
                return key_add(paths, args.site, args.name, args.keyfile)
            if args.key_command == "remove":
                return key_remove(paths, args.site, args.name)
            return key_list(paths, args.site, args.json)
        return list_sites(paths, args.json, args.previews)
    except (AgentError, OSError, yaml.YAMLError) as exc:
        message = " ".join(str(exc).split())  # one line
        command = f"{args.command} {args.key_command}" if args.command == "key" else args.command
        print(f"site {command}: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
