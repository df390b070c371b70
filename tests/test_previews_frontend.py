"""Previews through the real agent, builder and frontend (HAProxy), the site's repository on a remote
"GitHub" reached over NAT64: a branch pushed is a preview at BRANCH--SITE.DOMAIN behind its password, never
indexed and never answered from the frontend's cache; the live site stays byte for byte; a failing branch
shows on the deploy page and in `site list --previews`, never on the site; a deleted branch's address
answers 404 within a minute. The preview rules themselves: tests/test_previews.py."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time

import pytest
import requests

from container.settings import preview_password
from tests.acme_server import AcmeServer, https_get
from tests.agent_fixtures import AgentRun, agent_cmd
from tests.helpers import REPO_ROOT, SiteRepo, free_port, python_env, wait_for
from tests.host_attacks import http1, http2
from tests.test_previews import push_branch

pytestmark = pytest.mark.system  # root, Docker, network namespaces

BLOG = "blog.example.test"
DOMAIN = "preview.example.test"
SECRET = "secret-of-blog"
PASSWORD = preview_password(SECRET)


def get(run: AgentRun, host: str, path: str = "/", auth: tuple[str, str] | None = None,
        token: str | None = None) -> requests.Response:
    headers = {"Host": host, **({"Authorization": f"Bearer {token}"} if token else {})}
    return requests.get(f"{run.frontend}{path}", headers=headers, auth=auth, timeout=10, allow_redirects=False)


def preview(run: AgentRun, label: str, path: str = "/", password: str | None = PASSWORD) -> requests.Response:
    return get(run, f"{label}--blog.{DOMAIN}", path, auth=("preview", password) if password else None)


def owner_status(run: AgentRun) -> dict:
    """The blog's status with its token, from its instance (the frontend may redirect plain HTTP to HTTPS)."""
    address = next(row["ipv6"] for row in run.instances() if row.get("site") == "blog")
    return requests.get(f"http://[{address}]:8000/_site/status", headers={"Authorization": f"Bearer {SECRET}"},
                        timeout=10).json()


def preview_item(run: AgentRun, branch: str) -> dict | None:
    items = (owner_status(run).get("previews") or {}).values()
    return next((item for item in items if item.get("branch") == branch), None)


def wait_state(run: AgentRun, branch: str, commit: str, state: str) -> dict:
    return wait_for(f"the preview of {branch} at {commit[:12]} {state}", lambda: (
        lambda item: item if item and item.get("commit") == commit and item.get("state") == state else None)(
            preview_item(run, branch)), 180, 0.5)


def live_pages(run: AgentRun) -> dict[str, bytes]:
    return {path: get(run, BLOG, path).content for path in ("/", "/posts/welcome/", "/archive.html", "/rss.xml")}


def site_list(run: AgentRun, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "container.sites", "--yaml", str(run.yaml), "--state-dir",
                           str(run.state_dir), "--manifest", str(REPO_ROOT / "pequod.xml"), "list", *args],
                          capture_output=True, text=True, timeout=120, env=python_env(), cwd=REPO_ROOT)


def with_previews(run: AgentRun, previews: str) -> None:
    """The run's bootstrap YAML with the blog as its one site and `previews` (the section's YAML)."""
    run.yaml.write_text(run.yaml.read_text().rstrip("\n") + f"""
previews:{previews}
sites:
  - name: blog
    domains: [{BLOG}]
    default: true
    environment: {{WEBHOOK_SECRET: {SECRET}}}
""")


def test_branches_become_password_protected_previews_and_the_site_stays(agent_run: AgentRun) -> None:
    run = agent_run
    repo: SiteRepo = run.repo
    with_previews(run, f" {{domain: {DOMAIN}, max: 3}}")
    run.start()
    wait_for("the blog through the frontend", lambda: "A Pequod Blog" in get(run, BLOG).text, 180, 0.5)
    live_commit = repo.clone.head.commit.hexsha
    wait_for("the first build recorded", lambda: owner_status(run)["builds"], 60, 0.5)
    before = live_pages(run)
    instance = run.instances()[0]
    env = run.client.containers.get(instance["instance_name"]).attrs["Config"]["Env"]
    assert f"PREVIEWS_HOST=blog.{DOMAIN}" in env and f"PREVIEWS_PASSWORD={PASSWORD}" in env

    pushed = time.monotonic()
    theme = push_branch(repo, "New_Theme", "theme-post", "Theme branch post")
    wait_state(run, "New_Theme", theme, "live")
    print(f"push → preview live through the frontend: {time.monotonic() - pushed:.2f} s")
    # Its password first; then the branch's pages, not indexed, never stored by the frontend's cache.
    assert preview(run, "new-theme", "/posts/theme-post/", None).status_code == 401
    assert preview(run, "new-theme", "/posts/theme-post/", "wrong password").status_code == 401
    page = preview(run, "new-theme", "/posts/theme-post/")
    assert page.status_code == 200 and "Theme branch post" in page.text
    assert page.headers["X-Robots-Tag"].startswith("noindex")
    for _ in range(3):  # what a reader with the password got is not what the next one without it gets
        assert preview(run, "new-theme", "/posts/theme-post/", None).status_code == 401
    # Other spellings of the preview's host reach it; raw HTTP/1.1 and HTTP/2 alike.
    basic = "Basic " + base64.b64encode(f"preview:{PASSWORD}".encode()).decode()
    for host in (f"NEW-THEME--Blog.{DOMAIN}.", f"new-theme--blog.{DOMAIN}:{run.frontend_port}"):
        answer = http1(run.frontend_port, host, "/posts/theme-post/", extra=f"Authorization: {basic}\r\n")
        assert answer.status == 200 and "Theme branch post" in answer.body, (host, answer.status)
    assert http2(run.frontend_port, f"new-theme--blog.{DOMAIN}", "/posts/theme-post/").status == 401
    # The live site: byte for byte, no preview's page, no preview's build in its history.
    assert live_pages(run) == before
    assert get(run, BLOG, "/posts/theme-post/").status_code == 404
    assert [build["commit"] for build in owner_status(run)["builds"]] == [live_commit]

    # A failing branch: on the deploy page and in site list, never on the site or the other preview.
    repo.clone.git.checkout("-q", "-B", "broken", f"origin/{repo.branch}")
    repo.write("conf.py", (repo.work / "conf.py").read_text() + "\nraise SystemExit('broken conf')\n")
    repo.clone.git.commit("-qam", "Break the configuration")
    repo.clone.git.push("-q", "origin", "HEAD:refs/heads/broken")
    repo.clone.git.checkout("-q", repo.branch)
    wait_state(run, "broken", repo.clone.git.rev_parse("broken"), "failed")
    assert live_pages(run) == before and owner_status(run)["last_error"] is None
    assert "Theme branch post" in preview(run, "new-theme", "/posts/theme-post/").text
    page = get(run, BLOG, "/_site/", token=SECRET).text
    assert "Previews" in page and "broken" in page and f"http://new-theme--blog.{DOMAIN}/" in page
    assert "New_Theme" not in get(run, BLOG, "/_site/").text  # the previews are the owner's
    listed = site_list(run, "--previews")
    assert listed.returncode == 0, listed.stderr
    assert "New_Theme" in listed.stdout and "broken" in listed.stdout and PASSWORD in listed.stdout, listed.stdout
    rows = json.loads(site_list(run, "--json").stdout)
    assert {item["branch"]: item["state"] for item in rows[0]["previews"]} == {"New_Theme": "live", "broken": "failed"}

    # A push to the live branch publishes the site; the preview stays as it was.
    news = repo.add_post("blog-news", "Blog news")
    wait_for("the news live", lambda: get(run, BLOG, "/posts/blog-news/").status_code == 200, 120, 0.2)
    assert preview(run, "new-theme", "/posts/blog-news/").status_code == 404
    assert preview_item(run, "New_Theme")["commit"] == theme and news != theme

    # A deleted branch: its address answers 404 within a minute.
    front = preview(run, "new-theme")
    assert front.status_code == 200, (front.status_code, front.text[:300], preview_item(run, "New_Theme"))
    repo.clone.git.push("-q", "origin", "--delete", "New_Theme")
    deleted = time.monotonic()
    wait_for("the deleted branch's preview gone", lambda: preview(run, "new-theme").status_code == 404, 60, 0.5)
    print(f"branch deleted → preview 404: {time.monotonic() - deleted:.2f} s")
    assert preview_item(run, "New_Theme") is None


def test_previews_get_https_by_a_wildcard_certificate_over_dns01(agent_run: AgentRun) -> None:
    """HTTPS from an ACME CA (Pebble): the site's certificate by HTTP-01, the previews' one wildcard for
    *.DOMAIN by DNS-01 (lego's `exec` provider setting the TXT record in Pebble's DNS); a preview is served
    with it by SNI, plain HTTP to a preview is redirected to HTTPS, its address says https."""
    run = agent_run
    repo: SiteRepo = run.repo
    acme = AcmeServer(run.tmp / "acme", run.frontend_port)
    https_port = free_port()
    hook = acme.dns_hook(run.tmp / "dns-hook.sh")
    try:
        run.write_yaml(extra_frontend=(
            f"\n  tls:\n    email: admin@pequod.test\n    acme_directory: {acme.directory_url}\n"
            f"    acme_ca_bundle: {acme.ca_pem}\n    port: {https_port}\n    challenge_port: {free_port()}"))
        with_previews(run, f"""
  domain: {DOMAIN}
  certificate:
    dns: exec
    environment: {{EXEC_PATH: "{hook}", EXEC_PROPAGATION_TIMEOUT: "30", EXEC_POLLING_INTERVAL: "1"}}
    resolvers: ["{acme.dns_resolver}"]""")
        run.start()

        def certificates() -> dict[str, dict]:
            out = subprocess.run(agent_cmd("-i", "certificates", "--json", "--state-dir", str(run.state_dir)),
                                 capture_output=True, text=True, timeout=60, env=python_env())
            return {row["site"]: row for row in json.loads(out.stdout) if row.get("served")}

        served = wait_for("the site's and the previews' certificates, served",
                          lambda: len(certificates()) == 2 and certificates(), 240, 1)
        assert served[f"previews.{DOMAIN}"]["domains"] == [f"*.{DOMAIN}"]
        assert served["blog"]["domains"] == [BLOG]

        theme = push_branch(repo, "new-theme", "theme-post", "Theme branch post")
        item = wait_state(run, "new-theme", theme, "live")
        host = f"new-theme--blog.{DOMAIN}"
        assert item["address"] == f"https://{host}/"

        def https(path: str, password: str | None) -> tuple[int, str, list[str]]:
            auth = ("Authorization: Basic " + base64.b64encode(f"preview:{password}".encode()).decode() + "\r\n"
                    if password else "")
            return https_get(https_port, host, path, acme.root_pem, auth)

        status, body, names = wait_for("the preview over HTTPS", lambda: (
            lambda answer: answer if answer[0] == 200 else None)(https("/posts/theme-post/", PASSWORD)), 60, 0.5)
        assert "Theme branch post" in body and names == [f"*.{DOMAIN}"]
        assert "strict-transport-security" in body.lower()
        assert https("/posts/theme-post/", None)[0] == 401
        plain = preview(run, "new-theme", "/posts/theme-post/?x=1")
        assert plain.status_code == 301
        assert plain.headers["Location"] == f"https://{host}:{https_port}/posts/theme-post/?x=1"
        assert get(run, BLOG).status_code == 301  # the site's own redirect, as before
    finally:
        acme.cleanup()
