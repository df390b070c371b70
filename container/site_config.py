"""What a site is in the bootstrap YAML, for `./bootstrap.sh site` (container/sites.py, docs/sites.md).

The entry under `sites` (pure: the data read from the file, checked as the agent checks it, before it is
written) and the repository it names: a local git repository or a GitHub URL, or a bare repository
`site add` creates, seeded with site_template/ and marked with the site's name so that `remove --purge`
deletes only what it made.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from container import host_settings, plan, proc, runtime
from container.bootstrap import parse_bootstrap
from container.errors import AgentError
from container.manifest import Manifest
from container.records import Application
from container.settings import SITE_NAME, Bootstrap, is_domain

GIT_SECONDS = 120  # a git command on a local repository: rev-parse, config, or seeding the small site_template/
MARK = "pequod.site"  # git config of a repository `site add` created: the site's name (--purge deletes only those)


class SiteError(AgentError):
    """A site command cannot do what was asked; the message is one line naming what is wrong."""


# -- the YAML data: pure -------------------------------------------------------------------------------
def sites_of(data: dict[str, Any], path: Path) -> list[dict[str, Any]]:
    sites: list[dict[str, Any]] | None = data.get("sites")
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


def checked(data: dict[str, Any], path: Path, manifest: Manifest | None, image: str) -> tuple[str, Bootstrap]:
    """The file's text for `data`, checked as the agent checks it: the YAML rules and, given the manifest of
    `image` (the agent's image, whose tag names its application), the sites' limits and the services the
    image requires."""
    text = host_settings.render(data, path)
    boot = parse_bootstrap(text, str(path))
    if manifest is not None:
        app = Application(image, *runtime.app_from_image(image), manifest)
        apps = plan.site_applications((app,), boot)
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
        # A bare repository itself, or the top of a work tree: not any directory inside one (that would mount
        # e.g. another tree's .git/objects or a part of this host's files into the instance).
        bare = proc.run(["git", "--git-dir", path, "rev-parse", "--is-bare-repository"], timeout=GIT_SECONDS,
                        check=False, error=SiteError)
        top = proc.run(["git", "-C", path, "rev-parse", "--show-toplevel"], timeout=GIT_SECONDS, check=False,
                       error=SiteError)
        if bare.returncode == 0 and bare.stdout.strip() == "true":
            return f"file://{path}", path
        if top.returncode == 0 and os.path.realpath(top.stdout.strip()) == path:
            return f"file://{path}", path
        raise SiteError(f"--repo {path}: not a bare git repository nor the top of a git work tree")
    if repo.startswith("https://github.com/"):
        return repo, None
    raise SiteError(f"--repo {repo}: use a local git repository path, or an https://github.com/… URL (the blog "
                    "image declares github.com:443 as its only external service)")


def instance_port(manifest: Manifest | None) -> int:
    """The port the image's instances serve on: the manifest's first provided service's."""
    return manifest.provides[0].local_port if manifest and manifest.provides else 8000


def repositories(boot: Bootstrap) -> set[str]:
    """The SITE_REPO of every configured site."""
    return {boot.site_env(site).get("SITE_REPO", "") for site in boot.sites}


# -- repositories ------------------------------------------------------------------------------------------
def git(*args: str) -> None:
    done = proc.run(["git", *args], timeout=GIT_SECONDS, check=False, error=SiteError)
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
    proc.run(["chmod", "-R", "a+rX", str(path)], timeout=GIT_SECONDS, error=SiteError)


def made_for(path: Path) -> str:
    """The site a repository was made for by `site add` ("" for any other)."""
    done = proc.run(["git", "--git-dir", str(path), "config", "--get", MARK], timeout=GIT_SECONDS, check=False,
                    error=SiteError)
    return done.stdout.strip() if done.returncode == 0 else ""


def unclaimed(data: dict[str, Any], repository: Path, name: str) -> None:
    """Refuses `repository`, the one `site add` makes for the site `name`, when another site publishes from
    it, or it exists and was made for another site or not by `site add` at all."""
    users = [site.get("name") for site in data.get("sites") or []
             if (site.get("environment") or {}).get("SITE_REPO") == f"file://{repository}"]
    if users:
        raise SiteError(f"{repository} is the repository of site {users[0]!r}; choose another name")
    maker = made_for(repository) if repository.exists() else name
    if maker != name:
        raise SiteError(f"{repository} was made for site {maker!r}; choose another name" if maker else
                        f"{repository} exists and was not made by site add; give it as --repo, or choose "
                        "another name")
