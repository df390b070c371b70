"""The settings `bootstrap.sh` manages in the bootstrap YAML, merged into what is there already.

    python -m container.host_settings YAML --site-repo URL --port PORT [--mount PATH]
        [--domain NAME ... --email ADDRESS [--acme-directory URL] [--acme-ca-bundle FILE]]

The blog is the site `blog` in `sites` (docs/sites.md), the default site (it serves every Host no other
site names). Re-running `bootstrap.sh` sets the blog's repository and its read-only mount, the frontend
port and the GitHub service, gives the blog a WEBHOOK_SECRET when it has none (its token), and keeps
everything else: the other sites (`./bootstrap.sh site add`), what an administrator added (the blog's
WEBHOOK_SECRET, networks, NAT64 settings, frontend limits…). With --domain, the blog's `domains` are set
and `frontend.tls` gets certificates from the ACME CA (without, the blog's domains and an existing
`frontend.tls` are kept). Values are written by the YAML library, so no path or URL can break the file.
The result is checked like any bootstrap YAML before it replaces the old file; prints `unchanged` or
`written`.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from container.bootstrap import parse_bootstrap
from container.errors import AgentError
from container.files import replace_file

HEADER = "# Written by bootstrap.sh, which keeps what you add; the agent applies changes while it runs.\n"
GITHUB = {"service_name": "github-https", "service_version": "1", "external_host": "github.com",
          "external_port": 443}
BLOG = "blog"  # the site bootstrap.sh sets up


def _local_path(url: Any) -> str | None:
    return url.removeprefix("file://") if isinstance(url, str) and url.startswith("file://") else None


def merge(current: dict[str, Any], *, site_repo: str, port: int, mount: str | None,
          notify: dict[str, str] | None = None, tls: dict[str, Any] | None = None,
          domains: list[str] | None = None, secret: str | None = None) -> dict[str, Any]:
    """`current` with the managed settings set: a pure function of its inputs. `tls` (from --domain) holds
    the ACME settings and `domains` the blog's host names; `secret` becomes the blog's WEBHOOK_SECRET when
    it has none (its token for the deploy data, rollbacks and the webhook)."""
    data = dict(current)
    services = [s for s in data.get("external_services") or [] if s.get("service_name") != GITHUB["service_name"]]
    data["external_services"] = [GITHUB, *services]
    data["frontend"] = {**(data.get("frontend") or {}), "port": port}
    if tls:
        kept = {key: value for key, value in (data["frontend"].get("tls") or {}).items()
                if key not in ("domains", "certificate", "key", "email", "acme_directory", "acme_ca_bundle")}
        data["frontend"]["tls"] = {**tls, **kept}
    sites = [dict(site) for site in data.get("sites") or []]
    blog = next((site for site in sites if site.get("name") == BLOG), None)
    if blog is None:
        blog = {"name": BLOG}
        sites.insert(0, blog)
    if not any(site.get("default") for site in sites if site is not blog):
        blog["default"] = True
    if domains:
        for site in sites:
            owned = set(domains) & {str(d).lower().rstrip(".") for d in site.get("domains") or []}
            if site is not blog and owned:
                raise AgentError(f"--domain {min(owned)} belongs to site {site.get('name')!r}; a domain belongs to "
                                 "one site")
        blog["domains"] = list(domains)
    environment = dict(blog.get("environment") or {})
    previous_mount = _local_path(environment.get("SITE_REPO"))
    environment["SITE_REPO"] = site_repo
    environment.update(notify or {})  # NOTIFY_URL, NOTIFY_SECRET when given (kept otherwise)
    if secret:
        environment.setdefault("WEBHOOK_SECRET", secret)
    blog["environment"] = environment
    managed = {m for m in (mount, previous_mount) if m}
    blog_mounts = [m for m in blog.get("mounts") or [] if m.get("source") not in managed]
    if mount:
        blog_mounts.insert(0, {"source": mount, "target": mount})
    if blog_mounts:
        blog["mounts"] = blog_mounts
    else:
        blog.pop("mounts", None)
    top_mounts = [m for m in data.get("mounts") or [] if m.get("source") not in managed]
    if top_mounts:
        data["mounts"] = top_mounts
    else:
        data.pop("mounts", None)
    data["sites"] = sites
    shared = dict(data.get("environment") or {})
    shared.setdefault("POLL_INTERVAL", 5)
    data["environment"] = shared
    return {**{key: data[key] for key in ORDER if key in data}, **data}


ORDER = ("external_services", "networks", "nat64", "frontend", "metrics", "mounts", "environment", "sites")


# -- reading and writing the file: shared with `container.sites` ---------------------------------------
@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """One writer of the bootstrap YAML at a time (bootstrap.sh and `bootstrap.sh site …`): a lock file
    beside it, held while the file is read, changed and replaced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def read(path: Path) -> dict[str, Any]:
    """The file's data (empty when there is none yet)."""
    current = yaml.safe_load(path.read_text()) if path.exists() else {}
    current = current or {}
    if not isinstance(current, dict):
        raise AgentError(f"{path}: expected a mapping at the top level")
    return current


def render(data: dict[str, Any], path: Path) -> str:
    """The file's new text, checked as the agent checks it: never a file the agent would refuse."""
    text = HEADER + yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
    parse_bootstrap(text, str(path))
    return text


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_file(path, text, mode=0o600)  # it holds secrets (WEBHOOK_SECRET)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m container.host_settings", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("yaml", type=Path)
    parser.add_argument("--site-repo", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mount", help="a local site repository, mounted read-only into the instance")
    parser.add_argument("--notify-url", help="where deploy notifications go (NOTIFY_URL)")
    parser.add_argument("--notify-secret", help="their HMAC key (NOTIFY_SECRET)")
    parser.add_argument("--domain", action="append", default=[], help="HTTPS for this host name (repeatable)")
    parser.add_argument("--email", help="with --domain: the ACME account's contact address")
    parser.add_argument("--acme-directory", help="with --domain: the ACME CA's directory URL (Let's Encrypt)")
    parser.add_argument("--acme-ca-bundle", help="with --domain: CA bundle certifying the ACME server's HTTPS")
    args = parser.parse_args(argv)
    try:
        notify = {key: value for key, value in (("NOTIFY_URL", args.notify_url), ("NOTIFY_SECRET", args.notify_secret))
                  if value}
        tls: dict[str, Any] = {}
        if args.domain:
            if not args.email:
                raise AgentError("--domain needs --email: the ACME CA needs a contact address for the account")
            tls = {"email": args.email, **{key: value for key, value in (("acme_directory", args.acme_directory),
                                                                       ("acme_ca_bundle", args.acme_ca_bundle))
                                           if value}}
        elif args.email or args.acme_directory or args.acme_ca_bundle:
            raise AgentError("--email, --acme-directory and --acme-ca-bundle go with --domain")
        with locked(args.yaml):
            current = read(args.yaml)
            merged = merge(current, site_repo=args.site_repo, port=args.port, mount=args.mount, notify=notify,
                           tls=tls, domains=args.domain, secret=secrets.token_hex(32))
            new_text = render(merged, args.yaml)
            if merged == current:
                print("unchanged")
                return 0
            write(args.yaml, new_text)
        print("written")
        return 0
    except (AgentError, OSError, yaml.YAMLError) as exc:
        print(f"bootstrap YAML: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
