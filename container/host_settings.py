"""The settings `bootstrap.sh` manages in the bootstrap YAML, merged into what is there already.

    python -m container.host_settings YAML --site-repo URL --port PORT [--mount PATH]
        [--domain NAME ... --email ADDRESS [--acme-directory URL] [--acme-ca-bundle FILE]]

Re-running `bootstrap.sh` sets the site repository, its read-only mount, the frontend port and the
GitHub service, and keeps everything else an administrator added (a WEBHOOK_SECRET in `environment`,
networks, NAT64 settings, frontend limits…). With --domain, `frontend.tls` is set to get certificates
for those names from the ACME CA (without, an existing `frontend.tls` is kept). Values are written by
the YAML library, so no path or URL can break the file. The result is checked like any bootstrap YAML
before it replaces the old file; prints `unchanged` or `written`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from container.bootstrap import parse_bootstrap
from container.errors import AgentError
from pipeline.files import replace_file

HEADER = "# Written by bootstrap.sh, which keeps what you add; the agent applies changes while it runs.\n"
GITHUB = {"service_name": "github-https", "service_version": "1", "external_host": "github.com",
          "external_port": 443}


def merge(current: dict[str, Any], *, site_repo: str, port: int, mount: str | None,
          previous_mount: str | None = None, notify: dict[str, str] | None = None,
          tls: dict[str, Any] | None = None) -> dict[str, Any]:
    """`current` with the managed settings set: a pure function of its inputs."""
    data = dict(current)
    services = [s for s in data.get("external_services") or [] if s.get("service_name") != GITHUB["service_name"]]
    data["external_services"] = [GITHUB, *services]
    data["frontend"] = {**(data.get("frontend") or {}), "port": port}
    if tls:
        data["frontend"]["tls"] = tls
    managed = {m for m in (mount, previous_mount) if m}
    mounts = [m for m in data.get("mounts") or [] if m.get("source") not in managed]
    if mount:
        mounts.insert(0, {"source": mount, "target": mount})
    if mounts:
        data["mounts"] = mounts
    else:
        data.pop("mounts", None)
    environment = dict(data.get("environment") or {})
    environment["SITE_REPO"] = site_repo
    environment.setdefault("POLL_INTERVAL", 5)
    environment.update(notify or {})  # NOTIFY_URL, NOTIFY_SECRET when given (kept otherwise)
    data["environment"] = environment
    return data


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
        text = args.yaml.read_text() if args.yaml.exists() else ""
        current = yaml.safe_load(text) or {}
        if not isinstance(current, dict):
            raise AgentError(f"{args.yaml}: expected a mapping at the top level")
        previous = (current.get("environment") or {}).get("SITE_REPO", "")
        previous_mount = previous.removeprefix("file://") if str(previous).startswith("file://") else None
        notify = {key: value for key, value in (("NOTIFY_URL", args.notify_url), ("NOTIFY_SECRET", args.notify_secret))
                  if value}
        tls: dict[str, Any] = {}
        if args.domain:
            tls = {"domains": args.domain, "email": args.email}
            if not args.email:
                raise AgentError("--domain needs --email: the ACME CA needs a contact address for the account")
            tls.update({key: value for key, value in (("acme_directory", args.acme_directory),
                                                      ("acme_ca_bundle", args.acme_ca_bundle)) if value})
        elif args.email or args.acme_directory or args.acme_ca_bundle:
            raise AgentError("--email, --acme-directory and --acme-ca-bundle go with --domain")
        merged = merge(current, site_repo=args.site_repo, port=args.port, mount=args.mount,
                       previous_mount=previous_mount, notify=notify, tls=tls)
        new_text = HEADER + yaml.safe_dump(merged, sort_keys=False, default_flow_style=False)
        parse_bootstrap(new_text, str(args.yaml))  # never write a file the agent would refuse
        if merged == current:
            print("unchanged")
            return 0
        args.yaml.parent.mkdir(parents=True, exist_ok=True)
        replace_file(args.yaml, new_text, mode=0o600)  # it may hold secrets (WEBHOOK_SECRET)
        print("written")
        return 0
    except (AgentError, OSError, yaml.YAMLError) as exc:
        print(f"bootstrap YAML: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
