"""`./bootstrap.sh site add|remove|list` (container/sites.py, with site_config.py and site_probe.py) without
root: the YAML edits, the checks with their one-line messages, the repositories `add` makes and `remove
--purge` deletes, and `list`. Docker and the running agent are stand-ins here; tests/test_bootstrap_sh.py
runs the commands for real."""

from __future__ import annotations

import http.server
import json
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from container import host_settings, site_probe, sites
from container.bootstrap import load_bootstrap, parse_bootstrap
from tests.helpers import REPO_ROOT

BLOG_ARGS = ["--site-repo", "file:///srv/pequod/site.git", "--port", "80", "--mount", "/srv/pequod/site.git"]
WAIT = sites.wait  # the real one (the fixture puts a stand-in in its place)


class Container:
    def __init__(self, name: str, site: str, ipv6: str = "::1", started: float = 1.0):
        self.name = name
        self.labels = {sites.SITE_LABEL: site, "org.pequod.agent.ipv6": ipv6,
                       "org.pequod.agent.started": str(started)}


class Docker:
    """The part of docker.DockerClient the commands use: running containers, filtered by label."""

    def __init__(self, running: list[Container] | None = None, on_list: Any = None):
        self.running = running or []
        self.on_list = on_list
        self.containers = self

    def list(self, filters: dict[str, str], ignore_removed: bool = False) -> list[Container]:
        if self.on_list:
            self.on_list()
        key, _, value = filters["label"].partition("=")
        return [c for c in self.running if key in c.labels and (not value or c.labels[key] == value)]


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[sites.Paths]:
    """A host as bootstrap.sh leaves it (the blog is the site blog), with stand-ins for the agent and Docker."""
    paths = sites.Paths(yaml=tmp_path / "etc" / "pequod-bootstrap.yaml", state=tmp_path / "state",
                        repos=tmp_path / "srv", template=REPO_ROOT / "site_template",
                        manifest=REPO_ROOT / "pequod.xml", log=tmp_path / "agent.log", pid_file=tmp_path / "pid",
                        keys=tmp_path / "etc" / "push-keys.yaml")
    assert host_settings.main([str(paths.yaml), *BLOG_ARGS]) == 0
    docker = Docker()
    monkeypatch.setattr(sites, "agent_ready", lambda boot, pid_file: None)
    monkeypatch.setattr(sites, "docker_client", lambda: docker)
    monkeypatch.setattr(sites, "wait", lambda *args, **kwargs: None)
    yield paths


def run(paths: sites.Paths, *argv: str) -> int:
    return sites.main(["--yaml", str(paths.yaml), "--state-dir", str(paths.state), "--repos", str(paths.repos),
                       "--template", str(paths.template), "--manifest", str(paths.manifest), "--log", str(paths.log),
                       "--pid-file", str(paths.pid_file), "--keys", str(paths.keys), *argv])


def refused(paths: sites.Paths, capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """The one line a refused command prints; nothing was written or created."""
    before = paths.yaml.read_text()
    capsys.readouterr()
    assert run(paths, *argv) == 1
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1, captured.err
    assert paths.yaml.read_text() == before
    return captured.err.strip()


def test_add_writes_the_site_and_makes_its_repository(host: sites.Paths, capsys) -> None:
    text = host.yaml.read_text()
    data = yaml.safe_load(text)
    data["frontend"]["max_requests_per_client"] = 5000  # what an administrator added stays
    host.yaml.write_text(yaml.safe_dump(data))
    assert run(host, "add", "docs", "--domain", "Docs.Example.org", "--domain", "www.docs.example.org",
               "--memory", "256", "--vmhz", "500", "--email", "me@example.org") == 0
    out = capsys.readouterr().out
    repository = host.repos / "docs.git"
    assert f"git clone {repository} docs" in out and "WEBHOOK_SECRET" in out
    boot = load_bootstrap(str(host.yaml))
    assert boot.frontend.max_requests_per_client == 5000
    assert [site.name for site in boot.sites] == ["blog", "docs"]
    docs = boot.sites[1]
    assert docs.domains == ("docs.example.org", "www.docs.example.org") and not docs.default
    assert (docs.memory_mb, docs.vmhz, docs.email) == (256, 500, "me@example.org")
    env = dict(docs.environment)
    assert env["SITE_REPO"] == f"file://{repository}" and len(env["WEBHOOK_SECRET"]) == 64
    assert env["WEBHOOK_SECRET"] not in out  # said where it is, not printed
    assert [(m.source, m.target) for m in docs.mounts] == [(str(repository), str(repository))]
    assert host.yaml.stat().st_mode & 0o777 == 0o600
    # The repository: bare, seeded with site_template/ on main, readable by all, marked as made by add.
    files = subprocess.run(["git", "--git-dir", str(repository), "ls-tree", "-r", "--name-only", "main"],
                           capture_output=True, text=True, check=True).stdout.split()
    assert "conf.py" in files
    assert sites.made_for(repository) == "docs"
    assert (repository / "HEAD").stat().st_mode & 0o004
    # A re-run of bootstrap.sh keeps the site.
    assert host_settings.main([str(host.yaml), *BLOG_ARGS]) == 0
    assert [site.name for site in load_bootstrap(str(host.yaml)).sites] == ["blog", "docs"]


def test_add_with_repo_uses_it_and_makes_none(host: sites.Paths, tmp_path: Path) -> None:
    mine = tmp_path / "mine.git"
    subprocess.run(["git", "init", "-q", "--bare", str(mine)], check=True)
    assert run(host, "add", "mine", "--domain", "mine.example.org", "--repo", str(mine)) == 0
    assert run(host, "add", "gh", "--domain", "gh.example.org", "--repo", "https://github.com/me/gh.git") == 0
    boot = load_bootstrap(str(host.yaml))
    assert dict(boot.sites[1].environment)["SITE_REPO"] == f"file://{mine}"
    assert [m.source for m in boot.sites[1].mounts] == [str(mine)]
    assert dict(boot.sites[2].environment)["SITE_REPO"] == "https://github.com/me/gh.git" and not boot.sites[2].mounts
    assert not host.repos.exists()


@pytest.mark.parametrize(("argv", "message"), [
    (["add", "Docs", "--domain", "d.example.org"], "site add: 'Docs' is not a site name"),
    (["add", "1docs", "--domain", "d.example.org"], "site add: '1docs' is not a site name"),
    (["add", "docs-", "--domain", "d.example.org"], "site add: 'docs-' is not a site name"),
    (["add", "d" * 41, "--domain", "d.example.org"], f"site add: '{'d' * 41}' is not a site name"),
    (["add", "blog", "--domain", "d.example.org"], "site add: a site named 'blog' exists already"),
    (["add", "docs", "--domain", "localhost"], "site add: --domain 'localhost' is not a host name"),
    (["add", "docs", "--domain", "https://d.example.org"], "is not a host name"),
    (["add", "docs", "--domain", "d.example.org", "--memory", "4096"],
     "sites[1].memory_mb: 4096 is more than the manifest's <resources mb> (640)"),
    (["add", "docs", "--domain", "d.example.org", "--vmhz", "9999"], "sites[1].vmhz: 9999 is more than"),
    (["add", "docs", "--domain", "d.example.org", "--email", "nobody"], "sites[1].email: 'nobody' is not an email"),
    (["add", "docs", "--domain", "d.example.org", "--repo", "/nonexistent/repo.git"],
     "site add: --repo /nonexistent/repo.git: use a local git repository path"),
    (["add", "site", "--domain", "d.example.org"], "is the repository of site 'blog'; choose another name"),
    (["add", "docs", "--domain", "d.example.org", "--email", "a@b.org/../../x"], "sites[1].email: "),
    (["add", "docs", "--domain", "d.example.org", "--repo", str(REPO_ROOT / "container")],
     ": not a bare git repository nor the top of a git work tree"),
    (["add", "docs", "--domain", "d.example.org", "--repo", str(REPO_ROOT / ".git" / "objects")],
     ": not a bare git repository nor the top of a git work tree"),
    (["add", "srcco-de", "--domain", "d.example.org"], "'srcco-de' is the image's own application name"),
    (["remove", "nosuch"], "site remove: no site named 'nosuch' (the sites: blog)"),
    (["remove", "blog"], "site remove: site 'blog' is the blog ./bootstrap.sh sets up"),
])
def test_bad_requests_are_refused_with_one_line(host: sites.Paths, capsys, argv: list[str], message: str) -> None:
    # The blog's repository in the repositories' directory, as bootstrap.sh makes it.
    host.repos.mkdir()
    subprocess.run(["git", "init", "-q", "--bare", str(host.repos / "site.git")], check=True)
    data = yaml.safe_load(host.yaml.read_text())
    data["sites"][0]["environment"]["SITE_REPO"] = f"file://{host.repos / 'site.git'}"
    data["sites"][0]["mounts"] = []
    host.yaml.write_text(yaml.safe_dump(data))
    assert message in refused(host, capsys, *argv)
    assert sorted(p.name for p in host.repos.iterdir()) == ["site.git"]


def test_a_domain_of_another_site_is_refused(host: sites.Paths, capsys) -> None:
    assert run(host, "add", "docs", "--domain", "docs.example.org") == 0
    message = refused(host, capsys, "add", "wiki", "--domain", "wiki.example.org", "--domain", "DOCS.example.org.")
    assert message == ("site add: docs.example.org belongs to site 'docs' already; a domain belongs to one site")
    assert not (host.repos / "wiki.git").exists()


def test_a_file_without_sites_needs_bootstrap_sh_first(host: sites.Paths, capsys) -> None:
    host.yaml.write_text("frontend: {port: 80}\n")
    assert "has no sites yet: run ./bootstrap.sh once" in refused(host, capsys, "add", "docs", "--domain",
                                                                   "docs.example.org")
    assert host_settings.main([str(host.yaml), *BLOG_ARGS]) == 0  # what bootstrap.sh runs: the blog is a site
    assert run(host, "add", "docs", "--domain", "docs.example.org") == 0
    boot = load_bootstrap(str(host.yaml))
    assert [(site.name, site.domains, site.default) for site in boot.sites] == [("blog", (), True),
                                                                                 ("docs", ("docs.example.org",), False)]


def test_remove_takes_out_only_that_site_and_keeps_its_data_unless_purged(host: sites.Paths, capsys) -> None:
    for name in ("docs", "wiki"):
        assert run(host, "add", name, "--domain", f"{name}.example.org") == 0
    volumes = host.state / "volumes"
    volumes.mkdir(parents=True)
    for name in ("docs", "wiki"):
        for volume in ("workdir", "workdir-build"):
            (volumes / f"{name}-{volume}.ext4").write_bytes(b"")
    capsys.readouterr()
    assert run(host, "remove", "docs") == 0
    out = capsys.readouterr().out
    assert [site.name for site in load_bootstrap(str(host.yaml)).sites] == ["blog", "wiki"]
    assert "kept" in out and str(host.repos / "docs.git") in out and "docs-workdir.ext4" in out
    assert (host.repos / "docs.git").is_dir() and (volumes / "docs-workdir.ext4").exists()
    # Removed before without --purge: --purge deletes what it left, nothing of another site.
    assert run(host, "remove", "docs", "--purge") == 0
    assert not (host.repos / "docs.git").exists()
    assert sorted(p.name for p in volumes.iterdir()) == ["wiki-workdir-build.ext4", "wiki-workdir.ext4"]
    # A configured site with --purge: entry, repository and volumes.
    assert run(host, "remove", "wiki", "--purge") == 0
    assert [site.name for site in load_bootstrap(str(host.yaml)).sites] == ["blog"]
    assert not (host.repos / "wiki.git").exists() and list(volumes.iterdir()) == []
    assert "no site named 'docs'" in refused(host, capsys, "remove", "docs", "--purge")


def test_purge_deletes_no_repository_add_did_not_make(host: sites.Paths, tmp_path: Path) -> None:
    mine = host.repos / "mine.git"
    subprocess.run(["git", "init", "-q", "--bare", str(mine)], check=True)
    assert run(host, "add", "mine", "--domain", "mine.example.org", "--repo", str(mine)) == 0
    assert run(host, "remove", "mine", "--purge") == 0
    assert (mine / "HEAD").exists()


def test_add_waits_and_restores_the_file_when_the_agent_refuses_it(host: sites.Paths, monkeypatch, capsys) -> None:
    """The agent ignores a file it cannot apply (here: a stand-in log line): add fails with the agent's
    reason and puts the old file back, so later changes are not refused too."""
    before = host.yaml.read_text()
    host.log.write_text("2026-01-01 pequod-agent INFO an old line\n")

    def agent_refuses() -> None:
        with open(host.log, "a") as log:
            log.write("2026-01-01 pequod-agent ERROR ignoring the changed bootstrap YAML: site docs: does not fit; "
                      "the running configuration stays\n")

    monkeypatch.setattr(sites, "docker_client", lambda: Docker(on_list=agent_refuses))
    monkeypatch.setattr(sites, "wait", WAIT)
    capsys.readouterr()
    assert run(host, "add", "docs", "--domain", "docs.example.org") == 1
    captured = capsys.readouterr()
    assert captured.err == ("site add: the agent did not apply the change: site docs: does not fit; the running "
                            "configuration stays\n")
    assert host.yaml.read_text() == before and "restored" in captured.out
    assert not (host.repos / "docs.git").exists()  # the repository it made is gone again


class Answering:
    """An HTTP server on [::1]:port answering every GET with `body`: an instance's /_site/status, the agent's
    metrics."""

    def __init__(self, body: bytes):
        self.authorizations: list[str | None] = []
        seen = self.authorizations

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                seen.append(self.headers.get("Authorization"))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            address_family = socket.AF_INET6

        self.server = Server(("::1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_list_shows_each_site_with_repository_live_commit_and_state(host: sites.Paths, tmp_path: Path,
                                                                    monkeypatch, capsys) -> None:
    assert run(host, "add", "docs", "--domain", "docs.example.org") == 0
    assert run(host, "add", "wiki", "--domain", "wiki.example.org") == 0
    live = Answering(json.dumps({"current": {"commit": "0123456789abcdef0123", "release": "r1"}}).encode())
    manifest = tmp_path / "pequod.xml"  # the instances' port: the stand-in's
    text = (REPO_ROOT / "pequod.xml").read_text()
    manifest.write_text(text.replace('local-port="8000"', f'local-port="{live.port}"'))
    host.manifest = manifest
    docker = Docker([Container("blog-1", "blog", started=1.0), Container("docs-1", "docs", ipv6="::ffff:127.0.0.2")])
    monkeypatch.setattr(sites, "docker_client", lambda: docker)
    capsys.readouterr()
    assert run(host, "list", "--json") == 0
    found = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert found["blog"] == {"name": "blog", "domains": [], "default": True, "repository": "file:///srv/pequod/site.git",
                             "live_commit": "0123456789abcdef0123", "state": "serving", "instance": "blog-1",
                             "previews": [], "preview_address": None, "preview_password": None}
    assert (found["docs"]["state"], found["docs"]["live_commit"]) == ("starting", None)  # nothing answers there
    assert (found["wiki"]["state"], found["wiki"]["instance"]) == ("stopped", None)
    blog_token = dict(load_bootstrap(str(host.yaml)).sites[0].environment)["WEBHOOK_SECRET"]
    assert live.authorizations == [f"Bearer {blog_token}"]  # asked as the site's owner (the deploy data)
    assert found["docs"]["repository"] == f"file://{host.repos / 'docs.git'}"
    assert run(host, "list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "DOMAINS", "REPOSITORY", "LIVE", "COMMIT", "STATE", "PREVIEWS"]
    assert lines[1].split() == ["blog", "(default)", "file:///srv/pequod/site.git", "0123456789ab", "serving", "-"]
    assert lines[2].split()[0:2] == ["docs", "docs.example.org"] and lines[2].split()[-3:] == ["-", "starting", "-"]
    assert run(host, "list", "--previews") == 0
    said = capsys.readouterr().out
    assert "blog: no previews (previews.domain in the bootstrap YAML turns them on)" in said, said
    live.server.shutdown()


def test_token_prints_the_sites_webhook_secret(host: sites.Paths, capsys) -> None:
    assert run(host, "add", "docs", "--domain", "docs.example.org") == 0
    capsys.readouterr()
    assert run(host, "token", "docs") == 0
    docs = load_bootstrap(str(host.yaml)).sites[1]
    assert capsys.readouterr().out.strip() == dict(docs.environment)["WEBHOOK_SECRET"]
    assert "no site 'nope'" in refused(host, capsys, "token", "nope")


def test_changes_wait_for_the_agent_to_watch_the_file(monkeypatch) -> None:
    """Written while the agent starts, before it watches the file, a change would wait for the next one:
    the commands wait until its metrics count a round of its loop (with its metrics off: it runs)."""
    monkeypatch.setattr(site_probe, "agent_running", lambda pid_file: True)
    starting = Answering(b"pequod_agent_loop_rounds_total 0.0\n")
    looping = Answering(b"other_metric 1\npequod_agent_loop_rounds_total 2.0\n")
    for server, ready in ((starting, False), (looping, True)):
        boot = load_bootstrap_text(f"metrics: {{agent: '[::1]:{server.port}'}}\n")
        if ready:
            site_probe.agent_ready(boot, Path("/nonexistent"), timeout=5)
        else:
            with pytest.raises(sites.SiteError, match="has not finished a round of its loop within 1 s"):
                site_probe.agent_ready(boot, Path("/nonexistent"), timeout=1)
        server.server.shutdown()
    site_probe.agent_ready(load_bootstrap_text("metrics: {agent: 'off'}\n"), Path("/nonexistent"), timeout=0)
    monkeypatch.setattr(site_probe, "agent_running", lambda pid_file: False)
    with pytest.raises(sites.SiteError, match="the agent is not running: start it with ./bootstrap.sh"):
        site_probe.agent_ready(load_bootstrap_text(""), Path("/nonexistent"))


def load_bootstrap_text(text: str):
    return parse_bootstrap(text, "pequod-bootstrap.yaml")
