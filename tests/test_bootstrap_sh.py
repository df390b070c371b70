"""./bootstrap.sh end to end on this machine: set up, publish by git push, run again, agent killed and
restarted, a second site added, published, listed and removed (`./bootstrap.sh site …`), HTTPS,
teardown. Uses the real default paths and port 80, so it refuses to run where a host bootstrap is
already installed."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import requests
import yaml
from pyroute2 import IPRoute

from container import runtime, volume
from container.bootstrap import load_bootstrap
from container.daemon import running_cmdline
from container.files import replace_file
from tests.acme_server import AcmeServer
from tests.agent_fixtures import Loop
from tests.helpers import REPO_ROOT, wait_for, wait_for_agent_rounds
from tests.ssh_server import SshServer, make_key

pytestmark = pytest.mark.system  # root, Docker, port 80, the host bootstrap

SITE_REPO = Path("/srv/pequod/site.git")
DOCS_REPO = Path("/srv/pequod/docs.git")  # made by `./bootstrap.sh site add docs`
DOCS = "docs.example.test"
PREVIEWS = "preview.example.test"  # docs' previews: BRANCH--docs.preview.example.test
PID_FILE = Path("/run/pequod-agent.pid")
LOG = Path("/var/log/pequod-agent.log")
URL = "http://localhost/"


def host_env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PEQUOD_")}
    env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # not the test venv
    return env


def bootstrap(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(REPO_ROOT / "bootstrap.sh"), *args], capture_output=True, text=True, timeout=1200,
                            env=host_env())
    assert result.returncode == 0, f"bootstrap.sh {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr}"
    return result


def bootstrap_refused(*args: str) -> str:
    """The one line `./bootstrap.sh site …` prints when it refuses (exit status 1, nothing changed)."""
    result = subprocess.run([str(REPO_ROOT / "bootstrap.sh"), *args], capture_output=True, text=True, timeout=120,
                            env=host_env())
    assert result.returncode == 1 and result.stderr.count("\n") == 1, (result.returncode, result.stdout, result.stderr)
    return result.stderr


def get(host: str, path: str = "") -> requests.Response:
    """A page through the frontend on port 80 for the site of `host`."""
    return requests.get(URL + path, headers={"Host": host}, timeout=5, allow_redirects=False)


def push_post(repository: Path, work: Path, slug: str, text: str) -> str:
    """Clone, add a post, commit and push; returns the commit pushed."""
    subprocess.run(["git", "clone", "-q", str(repository), str(work)], check=True)
    return commit_post(work, slug, text)


def commit_post(work: Path, slug: str, text: str, env: dict[str, str] | None = None) -> str:
    """Add a post to the clone `work`, commit and push it (with `env`: over SSH); returns the commit."""
    (work / "posts" / f"{slug}.md").write_text(
        f"<!--\n.. title: {text}\n.. slug: {slug}\n.. date: 2026-11-28 10:00:00 UTC\n-->\n\n{text}\n")
    git = ["git", "-C", str(work), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", text], check=True)
    subprocess.run([*git, "push", "-q"], check=True, env=env)
    return subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()


def push_by_key(tmp_path: Path) -> str:
    """`site key add|list|remove` with a real sshd and ssh: alice's key pushes to docs as the git user, and the
    post is live as fast as a local push; it reaches nothing else (blog, a shell, a command, a forward), nor do an
    unknown key and, once removed, hers."""
    keys = tmp_path / "keys"
    keys.mkdir()
    alice, bob, carol = (make_key(keys, name) for name in ("alice", "bob", "carol"))
    added = bootstrap("site", "key", "add", "docs", "alice", f"{alice}.pub")
    assert f"may push to and fetch from {DOCS_REPO} over SSH" in added.stdout, added.stdout
    assert "git clone git@HOST:docs docs" in added.stdout
    subprocess.run(["./bootstrap.sh", "site", "key", "add", "blog", "bob"], input=Path(f"{bob}.pub").read_text(),
                   cwd=REPO_ROOT, env=host_env(), check=True, capture_output=True, text=True)  # from standard input
    assert "has a key alice already" in bootstrap_refused("site", "key", "add", "docs", "alice", f"{bob}.pub")
    assert "this is a private key" in bootstrap_refused("site", "key", "add", "docs", "eve", str(alice))
    listed = bootstrap("site", "key", "list").stdout.splitlines()
    assert [line.split()[:3] for line in listed[1:]] == [["blog", "bob", "ssh-ed25519"],
                                                         ["docs", "alice", "ssh-ed25519"]]
    with SshServer(tmp_path / "sshd", "git") as sshd:
        clone = tmp_path / "docs-by-key"
        cloned = subprocess.run(["git", "clone", "-q", "git@127.0.0.1:docs", str(clone)], env=sshd.git_env(alice),
                                capture_output=True, text=True, timeout=60)
        assert cloned.returncode == 0, (cloned.stderr, sshd.process.log[-2000:])
        started = time.monotonic()
        commit_post(clone, "by-key", "Pushed by key.", env=sshd.git_env(alice))
        wait_for("the post pushed by key", lambda: "Pushed by key." in get(DOCS, "posts/by-key/").text, 60,
                 interval=0.1)
        by_key = time.monotonic() - started
        local = tmp_path / "docs-local"  # root's local push keeps the repository the git user's to write
        subprocess.run(["git", "clone", "-q", str(DOCS_REPO), str(local)], check=True)
        started = time.monotonic()
        commit_post(local, "by-root", "Pushed locally.")
        wait_for("the post pushed locally", lambda: "Pushed locally." in get(DOCS, "posts/by-root/").text, 60,
                 interval=0.1)
        by_root = time.monotonic() - started
        print(f"\nFIGURES push -> live over SSH {by_key:.2f} s, local {by_root:.2f} s")
        subprocess.run(["git", "-C", str(clone), "pull", "-q", "--rebase"], env=sshd.git_env(alice), check=True)
        last = commit_post(clone, "by-key-again", "Pushed by key again.", env=sshd.git_env(alice))
        wait_for("the second post pushed by key", lambda: "again" in get(DOCS, "posts/by-key-again/").text, 60,
                 interval=0.2)
        preview_by_key(clone, sshd.git_env(alice), by_key)

        def refused(key: Path, *command: str) -> str:
            done = subprocess.run([*sshd.ssh(key), "git@127.0.0.1", *command], capture_output=True, text=True,
                                  timeout=30, stdin=subprocess.DEVNULL)
            assert done.returncode != 0, (command, done.stdout)
            return done.stderr
        assert "no access to 'blog'" in refused(alice, "git-upload-pack 'blog'")
        assert "no access to '/srv/pequod/site.git'" in refused(alice, "git-receive-pack '/srv/pequod/site.git'")
        assert "no shell" in refused(alice)
        assert "no shell" in refused(alice, "cat /etc/passwd")
        forward = subprocess.run([*sshd.ssh(alice), "-W", "127.0.0.1:80", "git@127.0.0.1"], capture_output=True,
                                 text=True, timeout=30, input="GET / HTTP/1.0\r\n\r\n")
        assert forward.returncode != 0 and "HTTP/" not in forward.stdout, forward
        assert "Permission denied" in refused(carol, "git-upload-pack 'docs'")  # a key no site gave
        assert "no access to 'docs'" in refused(bob, "git-upload-pack 'docs'")
        assert bootstrap("site", "key", "remove", "docs", "alice").returncode == 0
        assert "Permission denied" in refused(alice, "git-upload-pack 'docs'")
        assert "site docs has no key 'alice'" in bootstrap_refused("site", "key", "remove", "docs", "alice")
        assert "'Eve' is not a key name" in bootstrap_refused("site", "key", "add", "docs", "Eve", f"{carol}.pub")
        assert "no site 'wiki'" in bootstrap_refused("site", "key", "add", "wiki", "carol", f"{carol}.pub")
    return last


def preview_by_key(clone: Path, env: dict[str, str], site_seconds: float) -> None:
    """The administrator gives docs previews in the bootstrap YAML; a branch alice pushes over SSH is a preview
    behind the password `site list --previews` shows, the site unchanged; deleting the branch removes it."""
    yaml_path = Path("/etc/pequod/pequod-bootstrap.yaml")
    data = yaml.safe_load(yaml_path.read_text())
    next(site for site in data["sites"] if site["name"] == "docs")["previews"] = {"domain": PREVIEWS}
    replace_file(yaml_path, yaml.safe_dump(data, sort_keys=False), mode=0o600)
    password = wait_for("site list --previews to give docs' password", lambda: re.search(
        r"docs: previews at http://BRANCH--docs\.preview\.example\.test/: user preview, password (\S+)",
        bootstrap("site", "list", "--previews").stdout), 60, 1).group(1)
    host = f"new-look--docs.{PREVIEWS}"

    def preview(path: str = "", auth: tuple[str, str] | None = ("preview", password)) -> requests.Response:
        return requests.get(URL + path, headers={"Host": host}, auth=auth, timeout=5, allow_redirects=False)

    wait_for("docs' instance with previews", lambda: preview().status_code == 404, 120, 0.5)  # none yet
    site_page = get(DOCS, "posts/by-key/").content
    git = ["git", "-C", str(clone), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    branch = subprocess.run([*git, "rev-parse", "--abbrev-ref", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()
    subprocess.run([*git, "checkout", "-q", "-b", "New-Look"], check=True)
    (clone / "posts" / "new-look.md").write_text(
        "<!--\n.. title: A new look\n.. slug: new-look\n.. date: 2026-11-28 10:00:00 UTC\n-->\n\nA new look.\n")
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "A new look"], check=True)
    started = time.monotonic()
    subprocess.run([*git, "push", "-q", "origin", "New-Look"], check=True, env=env)
    wait_for("the branch's preview", lambda: "A new look." in preview("posts/new-look/").text, 120, 0.1)
    seconds = time.monotonic() - started
    print(f"\nFIGURES push -> preview live over SSH {seconds:.2f} s (push -> site live {site_seconds:.2f} s)")
    assert preview("posts/new-look/", None).status_code == 401
    assert preview("posts/new-look/").headers["X-Robots-Tag"].startswith("noindex")
    assert get(DOCS, "posts/new-look/").status_code == 404 and get(DOCS, "posts/by-key/").content == site_page
    listed = bootstrap("site", "list", "--previews").stdout
    assert "New-Look" in listed and f"http://{host}/" in listed and "live" in listed, listed
    subprocess.run([*git, "push", "-q", "origin", "--delete", "New-Look"], check=True, env=env)
    wait_for("the deleted branch's preview gone", lambda: preview().status_code == 404
             and "A new look." not in preview("posts/new-look/").text, 60, 0.5)
    subprocess.run([*git, "checkout", "-q", branch], check=True)


def site_instances(client: docker.DockerClient, site: str) -> list[str]:
    return [c.name for c in client.containers.list(all=True, filters={"label": f"org.pequod.agent.site={site}"},
                                                   ignore_removed=True)]


def _port_80_free() -> bool:
    with socket.socket(socket.AF_INET6) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("::", 80))
            return True
        except OSError:
            return False


@pytest.fixture
def clean_host(docker_client: docker.DockerClient, app_image: str) -> Iterator[None]:
    if Path("/etc/pequod").exists() or PID_FILE.exists() or SITE_REPO.exists():
        pytest.fail("a host bootstrap is installed on this machine (/etc/pequod, /srv/pequod or the pid file "
                    "exist): run ./bootstrap.sh teardown --purge first; this test needs a host without one")
    if not _port_80_free():
        pytest.fail("port 80 is taken on this machine; the host bootstrap test publishes the blog there")
    try:
        yield
    finally:
        bootstrap("teardown", "--purge")


def site_release() -> str | None:
    """The live release, asked through the frontend (the health answer is never cached)."""
    try:
        response = requests.get(URL + "_site/health", timeout=5)
    except requests.RequestException:
        return None
    return response.json()["release"] if response.status_code == 200 else None


def our_rules() -> list[str]:
    return [line for command in ("iptables-save", "ip6tables-save")
            for line in subprocess.run([command], capture_output=True, text=True).stdout.splitlines()
            if "PEQUOD" in line and not line.startswith("#")]


def agent_metrics(yaml_path: Path) -> str:
    """The agent's metrics endpoint as the host's bootstrap YAML sets it (127.0.0.1:9464 unless changed)."""
    listen = load_bootstrap(str(yaml_path)).metrics.agent
    assert listen is not None, f"the agent's metrics are off in {yaml_path}: its rounds cannot be counted"
    address, port = listen
    return f"http://{f'[{address}]' if address.version == 6 else address}:{port}/metrics"


def agent_child(supervisor: int) -> int | None:
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    return int(children[0]) if children else None


def test_bootstrap_publish_rerun_restart_teardown(clean_host: None, docker_client: docker.DockerClient,
                                                  tmp_path: Path) -> None:
    first = bootstrap()
    assert "The blog is live: http://localhost/" in first.stdout
    assert "git clone /srv/pequod/site.git" in first.stdout
    for step in ("installing host packages", "the site repository /srv/pequod/site.git", "waiting for the blog"):
        assert f"==> {step}" in first.stdout
    assert first.stdout.count("done in ") >= 8
    assert "A Pequod Blog" in requests.get(URL, timeout=5).text

    # Publish with git push.
    pushed = push_post(SITE_REPO, tmp_path / "blog", "pushed", "Written, committed, pushed.")
    wait_for("the pushed post at http://localhost/", lambda: "Written, committed, pushed." in
             requests.get(URL + "posts/pushed/", timeout=5).text, 30, interval=0.5)
    release = site_release()
    # The deploy data is the owner's: the blog's token (made by bootstrap.sh) shows the push's history.
    token = bootstrap("site", "token", "blog").stdout.strip()
    assert len(token) == 64 and "(its token: ./bootstrap.sh site token blog)" in first.stdout
    assert "builds" not in requests.get(URL + "_site/status", timeout=5).json()
    owner = wait_for("the push's record (it follows the swap)", lambda: (lambda status: status if status["builds"]
                     and status["builds"][0]["commit"] == pushed else None)(requests.get(
                         URL + "_site/status", headers={"Authorization": f"Bearer {token}"}, timeout=5).json()),
                     30, interval=0.5)
    assert (owner["builds"][0]["commit"], owner["builds"][0]["subject"]) == (pushed, "Written, committed, pushed.")
    instance = [c.name for c in runtime.our_containers(docker_client)]
    rules = our_rules()
    # What an administrator adds to the YAML survives a re-run (a frontend setting: HAProxy reloads).
    yaml_path = Path("/etc/pequod/pequod-bootstrap.yaml")
    assert yaml_path.stat().st_mode & 0o777 == 0o600
    yaml_path.write_text(yaml_path.read_text().replace("  port: 80\n", "  port: 80\n  max_requests_per_client: 5000\n"))
    wait_for("the agent to apply the edit", lambda: "frontend settings" in LOG.read_text(), 30)
    yaml_stat = yaml_path.stat()
    supervisor = int(PID_FILE.read_text())

    # Running it again changes nothing, and the site stays up meanwhile.
    with Loop(URL) as loop:
        again = bootstrap()
    assert loop.failed == [] and loop.ok > 0
    for unchanged in ("up to date", "kept as it is", "unchanged", f"running (supervisor pid {supervisor})"):
        assert unchanged in again.stdout
    assert site_release() == release and [c.name for c in runtime.our_containers(docker_client)] == instance
    assert our_rules() == rules and yaml_path.stat().st_mtime == yaml_stat.st_mtime
    assert "max_requests_per_client: 5000" in yaml_path.read_text()

    # The agent killed midway comes back and re-adopts what runs.
    agent = agent_child(supervisor)
    assert agent is not None
    os.kill(agent, signal.SIGKILL)
    wait_for("a new agent", lambda: agent_child(supervisor) not in (None, agent), 30)
    wait_for("re-adoption", lambda: LOG.read_text().count("re-adopted running instance") >= 1, 30)
    assert [c.name for c in runtime.our_containers(docker_client)] == instance and site_release() == release

    # A host-level restart of the agent: stopped, then started by bootstrap.sh; nothing is rebuilt.
    os.kill(supervisor, signal.SIGTERM)
    wait_for("the supervisor to stop", lambda: not running_cmdline(supervisor), 30)
    assert not PID_FILE.exists()
    assert site_release() == release  # instance and frontend outlive the agent
    bootstrap()
    assert int(PID_FILE.read_text()) != supervisor
    wait_for("re-adoption", lambda: LOG.read_text().count("re-adopted running instance") >= 2, 30)
    wait_for_agent_rounds(agent_metrics(yaml_path), 3)  # rounds that would replace the instance or rebuild
    assert [c.name for c in runtime.our_containers(docker_client)] == instance
    assert site_release() == release  # the same release: the site was not rebuilt

    # Many sites: one more, with its own repository, served only on its own domain; the blog stays the default.
    added = bootstrap("site", "add", "docs", "--domain", DOCS)
    assert f"The site docs is live: http://{DOCS}/" in added.stdout, added.stdout
    assert f"git clone {DOCS_REPO} docs" in added.stdout and (DOCS_REPO / "HEAD").is_file()
    docs_commit = push_post(DOCS_REPO, tmp_path / "docs", "docs-only", "Only on the docs site.")
    wait_for("the docs post on its domain", lambda: "Only on the docs site." in get(DOCS, "posts/docs-only/").text, 60,
             interval=0.5)
    assert get("localhost", "posts/docs-only/").status_code == 404  # not the blog's
    docs_commit = push_by_key(tmp_path)
    assert get(DOCS, "posts/pushed/").status_code == 404 and get("localhost", "posts/pushed/").status_code == 200
    listed = {row["name"]: row for row in json.loads(bootstrap("site", "list", "--json").stdout)}
    assert listed["docs"]["domains"] == [DOCS] and listed["docs"]["repository"] == f"file://{DOCS_REPO}"
    assert (listed["docs"]["state"], listed["docs"]["live_commit"]) == ("serving", docs_commit)
    assert listed["blog"]["default"] and listed["blog"]["state"] == "serving"
    table = bootstrap("site", "list").stdout.splitlines()
    assert table[0].split() == ["NAME", "DOMAINS", "REPOSITORY", "LIVE", "COMMIT", "STATE", "PREVIEWS"]
    assert [line.split()[0] for line in table[1:]] == ["blog", "docs"] and docs_commit[:12] in table[2]
    # Refused with one line, nothing changed: a bad name, a domain another site owns.
    assert "'Bad_Name' is not a site name" in bootstrap_refused("site", "add", "Bad_Name", "--domain", "b.example.test")
    assert f"{DOCS} belongs to site 'docs' already" in bootstrap_refused("site", "add", "wiki", "--domain", DOCS)
    # A re-run keeps both sites and changes nothing.
    instances = {name: site_instances(docker_client, name) for name in ("blog", "docs")}
    again = bootstrap()
    assert "unchanged" in again.stdout and [s.name for s in load_bootstrap(str(yaml_path)).sites] == ["blog", "docs"]
    assert {name: site_instances(docker_client, name) for name in ("blog", "docs")} == instances
    # Removed with --purge while four clients read the blog: not one of their requests fails.
    with contextlib.ExitStack() as readers:
        loops = [readers.enter_context(Loop(URL)) for _ in range(4)]
        removed = bootstrap("site", "remove", "docs", "--purge")
    assert [loop.failed for loop in loops] == [[]] * 4 and all(loop.ok > 0 for loop in loops)
    assert "The site docs is removed." in removed.stdout
    assert site_instances(docker_client, "docs") == [] and not DOCS_REPO.exists()
    assert list(Path("/var/lib/pequod-agent/volumes").glob("docs-*")) == []
    assert "A Pequod Blog" in get(DOCS).text  # a host no site owns: the default site, the blog
    assert site_release() == release

    # HTTPS with one more run: --domain and --email, against an offline ACME CA (its DNS says 127.0.0.1).
    acme = AcmeServer(tmp_path / "acme", 80)
    try:
        https = bootstrap("--domain", "blog.pequod.test", "--email", "admin@pequod.test",
                          "--acme-directory", acme.directory_url, "--acme-ca-bundle", str(acme.ca_pem))
        assert "The blog is live: https://blog.pequod.test/" in https.stdout, https.stdout
        assert "==> HTTPS certificate for blog.pequod.test" in https.stdout
        page = subprocess.run(["curl", "-sS", "--resolve", "blog.pequod.test:443:127.0.0.1", "--cacert",
                               str(acme.root_pem), "https://blog.pequod.test/"], capture_output=True, text=True,
                              timeout=30)
        assert "A Pequod Blog" in page.stdout, page.stderr
        redirect = requests.get(URL, headers={"Host": "blog.pequod.test"}, allow_redirects=False, timeout=5)
        assert redirect.status_code == 301 and redirect.headers["Location"] == "https://blog.pequod.test/"
    finally:
        acme.cleanup()

    # Teardown leaves no agent, container, link or rule; the site repository stays.
    supervisor = int(PID_FILE.read_text())
    bootstrap("teardown")
    assert not running_cmdline(supervisor) and not PID_FILE.exists()
    assert runtime.our_containers(docker_client) == []
    with IPRoute() as ipr:
        names = [link.get("IFLA_IFNAME") for link in ipr.get_links()]
    assert not [name for name in names if name.startswith(("pequod", "pq-"))]
    assert our_rules() == []
    assert site_release() is None
    assert (SITE_REPO / "HEAD").exists() and not Path("/etc/pequod").exists()
    assert subprocess.run(["id", "git"], capture_output=True).returncode != 0  # the git user for pushes is gone
    objects = (SITE_REPO / "objects").stat()  # ... and its group's access to the blog's repository (bob's key)
    assert objects.st_gid == 0 and not objects.st_mode & 0o020
    # The blog's volume (its releases) stays too, unmounted, until --purge.
    volumes = Path("/var/lib/pequod-agent/volumes")
    assert (volumes / "blog-workdir.ext4").is_file() and not volume.mounted(volumes / "blog-workdir")
