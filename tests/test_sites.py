"""Many sites on one host, end to end through a real agent: sites added and removed by editing the
bootstrap YAML while the others are read (no failed request, no restart), each served only on its own
domains, isolated from each other inside the instances, and refused when the host cannot fit them."""

from __future__ import annotations

import json
import ssl
import subprocess

import docker
import pytest
import requests

from container.capacity import host_capacity
from tests.acme_server import AcmeServer, https_get
from tests.agent_fixtures import AgentRun, agent_cmd
from tests.attacks import Readers
from tests.helpers import SiteRepo, free_port, python_env, wait_for
from tests.host_attacks import BAD_HOSTS, RESET, http1, http2

pytestmark = pytest.mark.system  # root, Docker, network namespaces

BLOG, DOCS = "blog.example.test", "docs.example.test"
DOCS_MARKER = "Docs site marker"
EMBARGO = "Embargo: Initech deal (do not leak)"  # a commit subject: the owner's


def sites_yaml(*sites: str) -> str:
    return "\nsites:\n" + "".join(sites)


def site(name: str, domains: list[str], *, default: bool = False, repo: str = "", secret: str = "",
         vmhz: int = 1000, memory_mb: int = 400) -> str:
    env = {"WEBHOOK_SECRET": secret or f"secret-of-{name}", **({"SITE_REPO": repo} if repo else {})}
    return (f"  - name: {name}\n    domains: [{', '.join(domains)}]\n    default: {str(default).lower()}\n"
            f"    vmhz: {vmhz}\n    memory_mb: {memory_mb}\n"
            f"    environment: {{{', '.join(f'{k}: {v!r}' for k, v in env.items())}}}\n")


def get(run: AgentRun, host: str, path: str = "/", token: str | None = None) -> requests.Response:
    """GET through the frontend for `host`; with `token`, as the site's owner."""
    headers = {"Host": host, **({"Authorization": f"Bearer {token}"} if token else {})}
    return requests.get(f"{run.frontend}{path}", headers=headers, timeout=10, allow_redirects=False)


def readers(run: AgentRun, host: str) -> Readers:
    """4 clients reading one site through the frontend; another site's page counts as a failure."""
    return Readers(f"{run.frontend}/", "A Pequod Blog", threads=4, pause=0.01, headers={"Host": host},
                   absent=DOCS_MARKER)


def instances_by_site(run: AgentRun) -> dict[str, dict]:
    return {row["site"]: row for row in run.instances() if row.get("site")}


def serving(run: AgentRun, host: str, text: str) -> bool:
    response = get(run, host)
    return response.status_code == 200 and text in response.text


def in_instance(client: docker.DockerClient, name: str, code: str) -> str:
    """Python run inside the instance (as its user): what it prints."""
    result = client.containers.get(name).exec_run(["python3", "-c", code])
    return result.output.decode(errors="replace").strip()


CONNECT = """
import socket, sys
s = socket.socket(socket.AF_INET6); s.settimeout(3)
try:
    s.connect(({address!r}, {port})); print("connected")
except OSError as exc:
    print("refused", type(exc).__name__)
"""


def check_one_canonical_host(port: int, docs: str, tls: ssl.SSLContext | None = None) -> None:
    """Raw HTTP/1.1 and HTTP/2 requests between two sites (docs and another, the default one when there
    is one): a Host or :authority that is not a host name is refused, so no spelling stores another
    site's page as docs' in the frontend's cache; odd spellings of docs' host reach docs."""
    page = "/posts/docs-marker/"
    on = {"tls": tls, "server_name": docs} if tls else {}

    def docs_page_is_docs() -> None:
        for answer in (http1(port, docs, page, **on), http2(port, docs, page, **on)):
            assert answer.status == 200 and DOCS_MARKER in answer.body, (answer.status, answer.body[:300])

    docs_page_is_docs()
    for _ in range(3):
        # The attack: `Host: docs/posts/docs-marker` with path `/` was routed to the default site and
        # cached under the same key as docs' /posts/docs-marker/, whose readers then got the blog.
        assert http1(port, docs + page.rstrip("/"), "/", **on).status == 400
        assert http2(port, docs + page.rstrip("/"), "/", **on).status in (400, RESET)
        # Without a Host, an absolute URL (the cache's key then) reached the default site just as well.
        assert http1(port, None, f"{'https' if tls else 'http'}://{docs}{page}", **on).status == 400
        docs_page_is_docs()
    for bad in BAD_HOSTS:
        host = bad.format(host=docs)
        assert http1(port, host, **on).status == 400, repr(host)
        if host:  # HTTP/2 without an authority is a request without a host: the default site's
            assert http2(port, host, **on).status in (400, RESET), repr(host)
    assert http1(port, docs + "\x01", **on).status == 400
    assert http1(port, docs + ":", **on).status == 400
    assert http1(port, docs, extra="Host: blog.example.test\r\n", **on).status == 400  # two Host lines
    for spelling in (docs.upper() + ".", f"{docs}.:{port}", f"Docs{docs[4:]}:{port}"):
        for answer in (http1(port, spelling, page, **on), http2(port, spelling, page, **on)):
            assert answer.status == 200 and DOCS_MARKER in answer.body, (spelling, answer.status)
    # HTTP/2 with a Host beside :authority: the :authority is the host (RFC 9113 8.3.1), never both.
    answer = http2(port, docs, page, host="blog.example.test", **on)
    assert answer.status == 200 and DOCS_MARKER in answer.body, answer.status
    docs_page_is_docs()


def test_sites_added_routed_isolated_and_removed(agent_run: AgentRun, tmp_path) -> None:
    run = agent_run
    docs = SiteRepo(run.repo.bare.parent / "docs")  # served by the same "GitHub" as docs/site.git
    docs.add_post("docs-marker", DOCS_MARKER)
    blog_only = sites_yaml(site("blog", [BLOG], default=True))
    run.yaml.write_text(run.yaml.read_text().rstrip("\n") + "\n" + blog_only)
    run.start()
    wait_for("the blog site through the frontend", lambda: serving(run, BLOG, "A Pequod Blog"), 180, 0.5)
    blog_instance = instances_by_site(run)["blog"]["instance_name"]
    assert serving(run, "unknown.example.test", "A Pequod Blog"), "the default site serves hosts no site owns"

    # Adding a site: the blog's readers see no failure, its instance is not replaced.
    with readers(run, BLOG) as reading:
        text = run.yaml.read_text()
        run.yaml.write_text(text + site("docs", [DOCS], repo="git://github.com:443/docs/site.git"))
        wait_for("the docs site through the frontend", lambda: serving(run, DOCS, DOCS_MARKER), 180, 0.5)
    assert reading.failed == [] and len(reading.latencies) > 50, (len(reading.latencies), reading.failed[:5])
    rows = instances_by_site(run)
    assert rows["blog"]["instance_name"] == blog_instance, "adding a site restarted the blog"
    assert DOCS_MARKER not in get(run, BLOG).text, "each host gets its own site (and cache entries)"
    assert DOCS_MARKER in get(run, DOCS, "/").text
    assert DOCS_MARKER in get(run, "Docs.Example.Test.:80").text  # any case, a port, the root's dot
    # Two hosts in one (routing took the last, HAProxy's cache keys on the first): refused, so no
    # request stores one site's page as another's.
    for _ in range(5):
        assert get(run, f"{DOCS}, {BLOG}").status_code == 400
        assert DOCS_MARKER in get(run, DOCS).text

    check_one_canonical_host(run.frontend_port, DOCS)

    # Each site publishes its own pushes, on its own domains only.
    run.repo.add_post("blog-news", "Blog news")
    docs.write("posts/docs-news.rst", ".. title: Docs news\n.. slug: docs-news\n.. date: 2026-04-01 10:00:00 UTC\n\n.")
    docs.commit(EMBARGO)
    for host, own, other in ((BLOG, "/posts/blog-news/", "/posts/docs-news/"),
                             (DOCS, "/posts/docs-news/", "/posts/blog-news/")):
        wait_for(f"{own} live on {host}", lambda host=host, own=own: get(run, host, own).status_code == 200, 120, 0.2)
        assert get(run, host, other).status_code == 404, f"{other} must not be served on {host}"

    # Each site's deploy data is its owner's: the live release for anyone, the rest for its token only.
    for path in ("/_site/status", "/_site/"):
        public = get(run, DOCS, path)
        assert public.status_code == 200 and EMBARGO not in public.text, path
        for token, status in (("secret-of-blog", 403), ("guess", 403)):
            answer = get(run, DOCS, path, token)
            assert answer.status_code == status and EMBARGO not in answer.text, (path, token)
        owner = get(run, DOCS, path, "secret-of-docs")
        assert owner.status_code == 200 and EMBARGO in owner.text, path
    assert set(get(run, DOCS, "/_site/status").json()) == {"healthy", "current", "more"}
    assert EMBARGO not in get(run, DOCS, "/_site/status").text  # the owner's answer was not cached for others

    # Isolation from inside the docs instance: the blog instance is unreachable (the host reaches it),
    # its own address answers; no volume or secret of the blog is there.
    blog_address, docs_name = rows["blog"]["ipv6"], rows["docs"]["instance_name"]
    assert requests.get(f"http://[{blog_address}]:8000/_site/health", timeout=5).status_code == 200
    assert in_instance(run.client, docs_name, CONNECT.format(address=rows["docs"]["ipv6"], port=8000)) == "connected"
    assert in_instance(run.client, docs_name, CONNECT.format(address=blog_address, port=8000)).startswith("refused")
    attrs = run.client.containers.get(docs_name).attrs
    assert not any("blog-" in (mount.get("Source") or "") for mount in attrs["Mounts"]), attrs["Mounts"]
    users = {run.client.containers.get(rows[name]["instance_name"]).attrs["Config"]["User"] for name in rows}
    assert len(users) == 2 and not users & {"", "0", "root"}, users  # a user of its own per site
    env = attrs["Config"]["Env"]
    assert "WEBHOOK_SECRET=secret-of-docs" in env and not any("secret-of-blog" in item for item in env)
    out = subprocess.run(agent_cmd("-i", "--state-dir", str(run.state_dir)), capture_output=True, text=True,
                         timeout=60, env=python_env())
    assert "Site" in out.stdout and " docs " in out.stdout and " blog " in out.stdout, out.stdout

    # A site the host cannot fit is refused with a line naming what is short; the others keep running.
    capacity = host_capacity()
    if capacity.vmhz >= 6000:
        pytest.fail(f"this test needs a host under 6000 VMHz to overbook (this one has {capacity.vmhz})")
    before = run.yaml.read_text()
    big = before.replace("vmhz: 1000", "vmhz: 2000")
    run.yaml.write_text(big + site("big", ["big.example.test"], vmhz=2000))
    log = run.tmp / "agent-0.log"
    wait_for("the agent refusing the site that does not fit",
             lambda: "VMHz" in log.read_text() and "ignoring the changed bootstrap YAML" in log.read_text(), 30)
    assert "big" not in instances_by_site(run)
    run.yaml.write_text(before)

    # Removing a site while the other is read: no failed request; the removed site's host goes to the
    # default site, its instance is removed after draining.
    with readers(run, BLOG) as reading:
        run.yaml.write_text(before.split("  - name: docs")[0])
        wait_for("the docs host served by the default site", lambda: serving(run, DOCS, "A Pequod Blog")
                 and DOCS_MARKER not in get(run, DOCS).text, 60, 0.2)
        wait_for("the docs instance removed", lambda: "docs" not in instances_by_site(run), 60, 0.5)
    assert reading.failed == [] and len(reading.latencies) > 20, (len(reading.latencies), reading.failed[:5])
    assert instances_by_site(run)["blog"]["instance_name"] == blog_instance, "removing a site restarted the blog"


def test_each_site_gets_its_own_certificate_and_unknown_hosts_a_404(agent_run: AgentRun) -> None:
    """Two sites with HTTPS from an ACME CA (Pebble): a certificate per site chosen by SNI, plain HTTP
    redirected to the host asked for when a site owns it, and a host no site owns (there is no default)
    gets the frontend's 404, never a redirect."""
    run = agent_run
    docs = SiteRepo(run.repo.bare.parent / "docs")
    docs.add_post("docs-marker", DOCS_MARKER)
    acme = AcmeServer(run.tmp / "acme", run.frontend_port)
    https_port = free_port()
    try:
        run.write_yaml(extra_frontend=(
            f"\n  tls:\n    email: admin@pequod.test\n    acme_directory: {acme.directory_url}\n"
            f"    acme_ca_bundle: {acme.ca_pem}\n    port: {https_port}\n    challenge_port: {free_port()}"))
        run.yaml.write_text(run.yaml.read_text() + sites_yaml(
            site("blog", ["blog.pequod.test", "www.blog.pequod.test"]),
            site("docs", ["docs.pequod.test"], repo="git://github.com:443/docs/site.git")))
        run.start()

        def certificates() -> dict[str, dict]:
            out = subprocess.run(agent_cmd("-i", "certificates", "--json", "--state-dir", str(run.state_dir)),
                                 capture_output=True, text=True, timeout=60, env=python_env())
            return {row["site"]: row for row in json.loads(out.stdout) if row.get("served")}

        served = wait_for("a certificate for each site, served", lambda: len(certificates()) == 2 and certificates(),
                          240, 1)
        assert served["blog"]["domains"] == ["blog.pequod.test", "www.blog.pequod.test"]
        assert served["docs"]["domains"] == ["docs.pequod.test"]
        assert served["blog"]["serial"] != served["docs"]["serial"]

        def https(host: str) -> tuple[int, str, list[str]]:
            return https_get(https_port, host, "/", acme.root_pem)

        wait_for("both sites over HTTPS", lambda: https("docs.pequod.test")[0] == 200
                 and https("blog.pequod.test")[0] == 200, 120, 0.5)
        status, body, names = https("docs.pequod.test")
        assert DOCS_MARKER in body and names == ["docs.pequod.test"]
        status, body, names = https("www.blog.pequod.test")
        assert status == 200 and "A Pequod Blog" in body and DOCS_MARKER not in body
        assert "www.blog.pequod.test" in names
        check_one_canonical_host(https_port, "docs.pequod.test", ssl.create_default_context(cafile=str(acme.root_pem)))
        for host in ("docs.pequod.test", "www.blog.pequod.test"):
            response = get(run, host, "/posts/?x=1")
            assert response.status_code == 301
            assert response.headers["Location"] == f"https://{host}:{https_port}/posts/?x=1"
        for host in ("unknown.pequod.test", "127.0.0.1", "evil.example"):
            response = get(run, host)
            assert response.status_code == 404 and "Location" not in response.headers, (host, response.headers)
            assert "No site" in response.text
    finally:
        acme.cleanup()


def test_a_host_without_sites_becomes_one_without_a_failed_request(agent_run: AgentRun) -> None:
    """The one blog of a host from before sites keeps serving until the site `blog` (the default) that
    replaces it is healthy; then it is removed. 4 readers see no failure."""
    run = agent_run
    run.start()
    before = run.wait_healthy(timeout=120)["instance_name"]
    wait_for("the blog through the frontend", lambda: serving(run, "localhost", "A Pequod Blog"), 60, 0.2)
    with readers(run, "localhost") as reading:
        run.yaml.write_text(run.yaml.read_text() + sites_yaml(site("blog", [BLOG], default=True)))
        wait_for("the site blog serving and the instance from before removed",
                 lambda: (rows := run.instances()) and [row["site"] for row in rows] == ["blog"], 180, 0.5)
        wait_for("a few more requests", lambda: len(reading.latencies) > 200, 30, 0.1)
    assert reading.failed == [], reading.failed[:5]
    assert before not in {row["instance_name"] for row in run.instances()}
