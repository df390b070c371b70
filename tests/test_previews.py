"""Previews of a site's other branches: names, order and password (pure), and the whole path through run.sh
(real git, real Nikola builds, real CherryPy): two branches, two previews at their addresses behind the
password and never indexed, the live site unchanged byte for byte, a push to a branch updates only its
preview, a failing branch leaves the site and the other previews alone, a deleted branch's address answers
404, the least recently pushed preview retires first. Through the real agent and frontend: test_sites.py."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from pathlib import Path

import pytest
import requests

from pipeline import config, preview_hosts
from pipeline.errors import ConfigError
from tests.helpers import SiteRepo, wait_for

HOST = "blog.preview.example.test"
PASSWORD = "correct horse battery"
AUTH = ("preview", PASSWORD)


# ---- names, order, password (pure) ----

def test_branch_names_become_dns_labels_as_cloudflare_makes_them() -> None:
    named = preview_hosts.labels(["feature/New_Theme", "fix--typo", "-odd-", "UPPER.case", "ü"], "blog")
    assert named["feature/New_Theme"] == "feature-new-theme"
    assert named["fix--typo"] == "fix-typo"  # `--` only ever separates the label from the site
    assert named["-odd-"] == "odd"
    assert named["UPPER.case"] == "upper-case"
    assert named["ü"] == hashlib.sha256("ü".encode()).hexdigest()[:6]  # empty: a short hash
    long = preview_hosts.labels(["x" * 100], "blog")["x" * 100]
    assert len(f"{long}--blog") == 63
    for label in named.values():
        assert preview_hosts.LABEL.fullmatch(label) and "--" not in label


def test_colliding_branch_names_get_a_short_hash_each() -> None:
    named = preview_hosts.labels(["New-Theme", "new_theme", "new/theme", "other"], "blog")
    assert named["other"] == "other"
    assert len(set(named.values())) == 4
    for branch in ("New-Theme", "new_theme", "new/theme"):
        assert named[branch] == "new-theme-" + hashlib.sha256(branch.encode()).hexdigest()[:6]


def test_branch_names_made_to_take_another_branchs_hashed_label_cannot() -> None:
    digest = hashlib.sha256(b"foo").hexdigest()
    crafted = ["foo", "FOO", f"foo-{digest[:6]}", f"foo-{digest[:16]}", digest[:40], f"foo-{digest[:6]}-x"]
    named = preview_hosts.labels(crafted, "blog")
    assert len(set(named.values())) == len(crafted), named
    assert named == preview_hosts.labels(list(reversed(crafted)), "blog")  # a function of the names alone
    for label in named.values():
        assert preview_hosts.LABEL.fullmatch(label) and len(label) <= preview_hosts.room("blog")


def test_a_host_names_a_preview_only_with_the_sites_suffix_and_a_clean_label() -> None:
    assert preview_hosts.label_of(f"new-theme--{HOST}", HOST) == "new-theme"
    for host in (HOST, f"--{HOST}", f"a--b--{HOST}", f"-a--{HOST}", f"a-{HOST}",
                 "new-theme--docs.preview.example.test",
                 f"{'x' * 62}--{HOST}", f"a_b--{HOST}"):
        assert preview_hosts.label_of(host, HOST) is None, host


def test_the_most_recently_pushed_branches_get_previews_the_live_one_never() -> None:
    seen = {"old": {"commit": "a", "pushed": 100.0}, "mid": {"commit": "b", "pushed": 200.0},
            "moved": {"commit": "c", "pushed": 50.0}}
    known, wanted = preview_hosts.choose({"main": "m", "old": "a", "mid": "b", "moved": "d", "new": "e"}, seen,
                                         "main", 3, now=300.0)
    assert "main" not in known
    assert known["old"]["pushed"] == 100.0 and known["moved"]["pushed"] == 300.0  # a new commit: pushed now
    assert wanted == ["moved", "new", "mid"]  # the newest first; `old` retires


def test_only_the_preview_user_with_a_basic_password_is_read() -> None:
    def basic(text: str) -> str:
        return "Basic " + base64.b64encode(text.encode()).decode()

    assert preview_hosts.basic_password(basic(f"preview:{PASSWORD}")) == PASSWORD
    assert preview_hosts.basic_password(basic("preview:a:b")) == "a:b"
    for bad in (basic(f"admin:{PASSWORD}"), basic("preview"), "Bearer x", "Basic !!!", "Basic " + "A" * 2000):
        assert preview_hosts.basic_password(bad) is None, bad


def test_preview_settings_are_checked_in_one_line() -> None:
    base = {"SITE_REPO": "/srv/site.git"}
    assert config.settings_from_env({**base, "PREVIEWS_HOST": HOST, "PREVIEWS_PUBLIC": "1"}).previews_max == 10
    for env, said in (({"PREVIEWS_HOST": HOST}, "PREVIEWS_PASSWORD is not set"),
                      ({"PREVIEWS_HOST": "a--b.example.test", "PREVIEWS_PUBLIC": "1"}, "PREVIEWS_HOST="),
                      ({"PREVIEWS_HOST": HOST, "PREVIEWS_PUBLIC": "1", "PREVIEWS_MAX": "0"}, "PREVIEWS_MAX=")):
        with pytest.raises(ConfigError, match=said):
            config.settings_from_env({**base, **env})


# ---- through run.sh ----

def preview_get(site, label: str, path: str = "/", auth: tuple[str, str] | None = AUTH) -> requests.Response:
    return site.get(path, headers={"Host": f"{label}--{HOST}"}, auth=auth, allow_redirects=False)


def push_branch(repo: SiteRepo, branch: str, slug: str, title: str) -> str:
    """A commit with one post more on `branch` (made from the live branch's head)."""
    repo.clone.git.checkout("-q", "-B", branch, f"origin/{repo.branch}")
    repo.write(f"posts/{slug}.rst", f".. title: {title}\n.. slug: {slug}\n.. date: 2024-01-01 12:00:00 UTC\n\n"
                                    f"{title} text.\n")
    repo.clone.git.add("-A")
    repo.clone.git.commit("-q", "-m", f"{title} on {branch}")
    repo.clone.git.push("-q", "--force", "origin", f"HEAD:refs/heads/{branch}")
    repo.clone.git.checkout("-q", repo.branch)
    return repo.clone.git.rev_parse(branch)


def preview_of(site, branch: str) -> dict | None:
    return next((item for item in (site.status().get("previews") or {}).values() if item.get("branch") == branch),
                None)


def wait_preview(site, branch: str, commit: str, state: str = "live", timeout: float = 90) -> dict:
    return wait_for(f"the preview of {branch} at {commit[:12]} to be {state}",
                    lambda: (lambda item: item if item and item.get("commit") == commit and item.get("state") == state
                             else None)(preview_of(site, branch)), timeout)


def live_bytes(site) -> dict[str, bytes]:
    return {path: site.get(path).content for path in ("/", "/posts/welcome/", "/rss.xml", "/archive.html")}


@pytest.mark.system
def test_previews_of_two_branches_behind_their_password_and_the_live_site_untouched(site_repo: SiteRepo,
                                                                                    start_site) -> None:
    site = start_site(site_repo.url, PREVIEWS_HOST=HOST, PREVIEWS_PASSWORD=PASSWORD, PREVIEWS_MAX=2)
    live_commit = site_repo.clone.head.commit.hexsha
    site.wait_live(live_commit)
    before = live_bytes(site)

    theme = push_branch(site_repo, "new-theme", "theme-post", "Theme branch post")
    typo = push_branch(site_repo, "Fix/Typo", "typo-post", "Typo branch post")
    wait_preview(site, "new-theme", theme)
    typo_item = wait_preview(site, "Fix/Typo", typo)
    assert typo_item["address"] == f"http://fix-typo--{HOST}/"

    # The password first, for every path and for a preview that does not exist: nothing is told before.
    for label, path in (("new-theme", "/"), ("new-theme", "/posts/theme-post/"), ("no-such", "/")):
        for auth in (None, ("preview", "wrong"), ("admin", PASSWORD)):
            answer = preview_get(site, label, path, auth)
            assert answer.status_code == 401, (label, path, auth, answer.status_code)
            assert answer.headers["WWW-Authenticate"].startswith('Basic realm="preview"')
            assert "Theme branch post" not in answer.text
    page = preview_get(site, "new-theme", "/posts/theme-post/")
    assert page.status_code == 200 and "Theme branch post" in page.text
    assert page.headers["X-Robots-Tag"].startswith("noindex")
    assert page.headers["Cache-Control"] == "private, no-store"
    assert "Typo branch post" not in preview_get(site, "new-theme").text  # each branch its own
    assert "Typo branch post" in preview_get(site, "fix-typo").text
    assert preview_get(site, "new-theme", "/_site/status").status_code == 404  # never the deploy data
    assert preview_get(site, "no-such").status_code == 404

    # The live site: byte for byte as before, its history without a preview's build.
    assert live_bytes(site) == before
    assert site.get("/posts/theme-post/").status_code == 404
    status = site.status()
    assert [build["commit"] for build in status["builds"]] == [live_commit]
    assert status["current"]["commit"] == live_commit

    # A push to one branch updates its preview only.
    fixed = push_branch(site_repo, "Fix/Typo", "typo-post-2", "Second typo post")
    wait_preview(site, "Fix/Typo", fixed)
    assert "Second typo post" in preview_get(site, "fix-typo").text
    assert preview_of(site, "new-theme")["commit"] == theme
    assert "Second typo post" not in preview_get(site, "new-theme").text

    # A failing branch: its preview says why; the site and the other preview stay as they were.
    site_repo.clone.git.checkout("-q", "-B", "broken", f"origin/{site_repo.branch}")
    site_repo.write("conf.py", (site_repo.work / "conf.py").read_text() + "\nraise SystemExit('broken conf')\n")
    site_repo.clone.git.commit("-qam", "break it")
    site_repo.clone.git.push("-q", "origin", "HEAD:refs/heads/broken")
    site_repo.clone.git.checkout("-q", site_repo.branch)
    broken = wait_preview(site, "broken", site_repo.clone.git.rev_parse("broken"), state="failed")
    assert broken["error"]
    assert live_bytes(site) == before and site.status()["last_error"] is None
    assert preview_get(site, "broken").status_code == 404

    # PREVIEWS_MAX=2: three branches, the least recently pushed (new-theme) retired, its address a 404.
    wait_for("new-theme's preview to retire", lambda: preview_of(site, "new-theme") is None, 30)
    assert preview_get(site, "new-theme").status_code == 404
    assert not (site.data_dir / "previews" / "new-theme").exists()

    # A deleted branch: its preview goes, its address answers 404.
    site_repo.clone.git.push("-q", "origin", "--delete", "Fix/Typo")
    started = time.monotonic()
    wait_for("fix-typo's preview to go", lambda: preview_get(site, "fix-typo").status_code == 404, 60)
    assert time.monotonic() - started < 60
    wait_preview(site, "new-theme", theme)  # a place was freed: it comes back
    assert "Theme branch post" in preview_get(site, "new-theme").text
    assert live_bytes(site) == before

    # Another branch with the deleted one's label (fix_typo: fix-typo) that does not build: the address never
    # shows the deleted branch's pages again.
    site_repo.clone.git.checkout("-q", "-B", "fix_typo", "broken")
    site_repo.clone.git.push("-q", "origin", "HEAD:refs/heads/fix_typo")
    site_repo.clone.git.checkout("-q", site_repo.branch)
    wait_preview(site, "fix_typo", site_repo.clone.git.rev_parse("fix_typo"), state="failed")
    assert preview_of(site, "fix_typo")["address"] == f"http://fix-typo--{HOST}/"
    assert preview_get(site, "fix-typo").status_code == 404

    # A tree git could not check out or clean again (paths beyond 1,024 bytes) is refused before its checkout;
    # the site publishes on.
    site_repo.clone.git.checkout("-q", "-B", "long-paths", f"origin/{site_repo.branch}")
    site_repo.write("/".join(["d" * 220] * 5) + "/page.txt", "deep\n")
    site_repo.clone.git.add("-A")
    site_repo.clone.git.commit("-qm", "Long paths")
    site_repo.clone.git.push("-q", "origin", "HEAD:refs/heads/long-paths")
    site_repo.clone.git.checkout("-q", site_repo.branch)
    long_paths = wait_preview(site, "long-paths", site_repo.clone.git.rev_parse("long-paths"), state="failed")
    assert "has a path of 1113 bytes, more than the 1024 a site may use" in long_paths["error"], long_paths
    news = site_repo.add_post("after-branches", "Published after all the branches")
    site.wait_live(news)


def test_a_site_without_previews_serves_no_preview_and_keeps_none(tmp_path: Path) -> None:
    from pipeline.publish import previews
    from pipeline.status import StatusStore

    settings = config.settings_from_env({"SITE_REPO": "/srv/site.git", "DATA_DIR": str(tmp_path)})
    (tmp_path / "previews" / "old" / "releases" / "r1").mkdir(parents=True)
    (tmp_path / "previews" / "old" / "current").symlink_to("releases/r1")
    store = StatusStore(tmp_path / "status.json")
    with store.edit() as status:
        status.set_previews({"old": {"commit": "c0ffee", "pushed": 1.0}})
        status.set_preview("old", {"branch": "old"})
    previews.remove_all(settings, store)
    assert not (tmp_path / "previews" / "old").exists()
    written = json.loads((tmp_path / "status.json").read_text())
    assert "previews" not in written and "preview_branches" not in written


# ---- the agent's side (pure, and haproxy -c) ----

PREVIEWS_YAML = """
frontend:
  tls: {email: admin@example.test, acme_directory: "https://ca.example.test/dir"}
previews: {domain: preview.example.test, max: 4}
sites:
  - {name: blog, default: true, environment: {WEBHOOK_SECRET: token-of-blog}}
  - name: docs
    domains: [docs.example.test]
    previews:
      public: true
      certificate: {dns: exec, environment: {EXEC_PATH: /usr/local/bin/dns-hook}, resolvers: ["127.0.0.1:5353"]}
"""


def test_the_bootstrap_yaml_gives_each_site_its_previews_settings() -> None:
    from container.bootstrap import parse_bootstrap
    from container.settings import preview_password

    boot = parse_bootstrap(PREVIEWS_YAML, "pequod-bootstrap.yaml")
    blog, docs = boot.sites
    env = boot.site_env(blog)
    assert env["PREVIEWS_HOST"] == "blog.preview.example.test" and env["PREVIEWS_MAX"] == "4"
    assert env["PREVIEWS_PASSWORD"] == preview_password("token-of-blog") != preview_password("token-of-docs")
    assert len(env["PREVIEWS_PASSWORD"]) == 24 and "token-of-blog" not in env["PREVIEWS_PASSWORD"]
    assert (env["PREVIEWS_HTTPS"], env["PREVIEWS_PUBLIC"]) == ("0", "0")  # every key said, none left to guess
    docs_env = boot.site_env(docs)
    assert docs_env["PREVIEWS_PUBLIC"] == "1" and docs_env["PREVIEWS_PASSWORD"] == ""
    assert docs_env["PREVIEWS_HTTPS"] == "1" and docs.previews.certificate.provider == "exec"
    assert config.settings_from_env({"SITE_REPO": "/srv/x.git", **env}).previews_password == env["PREVIEWS_PASSWORD"]


@pytest.mark.parametrize(("yaml", "said"), [
    ("previews: {domain: p.example.test}\n", "previews: previews are per site"),
    ("previews: {domain: p.example.test}\nsites: [{name: blog, default: true}]\n",
     "sites[0].previews: previews ask for a password"),
    ("sites: [{name: blog, default: true, previews: {public: true}}]\n", "sites[0].previews: missing key domain"),
    ("previews: {domain: '*.p.example.test', public: true}\nsites: [{name: blog, default: true}]\n",
     "previews.domain: '*.p.example.test' is not a host name"),
    ("previews: {domain: p.example.test, public: true, max: 101}\nsites: [{name: blog, default: true}]\n",
     "previews.max: 101 is out of range"),
    ("previews: {domain: p.example.test, password: short}\nsites: [{name: blog, default: true}]\n",
     "previews.password: expected 8 to 128"),
    ("previews: {domain: p.example.test, public: true}\nsites: [{name: my--blog, default: true}]\n",
     "sites[0].name: 'my--blog': with previews, a site's name has no '--'"),
    ("previews: {domain: p.example.test, public: true}\n"
     "sites: [{name: blog, default: true}, {name: docs, domains: [x--blog.p.example.test]}]\n",
     "sites[1].domains: x--blog.p.example.test is under the previews' domain"),
    ("previews: {domain: p.example.test, public: true, certificate: {dns: exec}}\n"
     "sites: [{name: blog, default: true}]\n", "sites[0].previews.certificate: a certificate for the previews"),
    ("previews: {domain: p.example.test, public: true, certificate: {dns: 'no such provider'}}\n"
     "sites: [{name: blog, default: true}]\n", "previews.certificate.dns: 'no such provider' is not a DNS provider"),
    ("previews: {domain: p.example.test, public: true, colour: blue}\nsites: [{name: blog, default: true}]\n",
     "previews.colour: unknown key"),
    ("sites: [{name: blog, default: true, environment: {PREVIEWS_PUBLIC: '1'}}]\n",
     "sites[0].environment.PREVIEWS_PUBLIC: previews are set in the `previews` section"),
    ("environment: {PREVIEWS_HOST: blog.p.example.test}\nsites: [{name: blog, default: true}]\n",
     "environment.PREVIEWS_HOST: previews are set in the `previews` section"),
    ("previews: {domain: p.example.or-, public: true}\nsites: [{name: blog, default: true}]\n",
     "previews.domain: 'p.example.or-' is not a host name"),
    (f"previews: {{domain: {'a' * 60}.{'b' * 60}.{'c' * 60}.{'d' * 60}.org, public: true}}\n"
     "sites: [{name: blogblogblogblog, default: true}]\n", "is longer than a host name may be (253)"),
])
def test_bad_previews_settings_are_refused_in_one_line_naming_the_key(yaml: str, said: str) -> None:
    from container.bootstrap import parse_bootstrap
    from container.errors import BootstrapError

    with pytest.raises(BootstrapError) as refused:
        parse_bootstrap(yaml, "pequod-bootstrap.yaml")
    assert str(refused.value).startswith("pequod-bootstrap.yaml: ") and said in str(refused.value), refused.value
    assert "\n" not in str(refused.value)


def test_the_frontend_routes_previews_to_their_site_uncached_and_haproxy_takes_it(tmp_path: Path) -> None:
    import dataclasses
    import ipaddress

    from container.frontend import check_config, render_haproxy_conf
    from container.records import Server, Service, SiteRoute, Tls

    servers = (Server("blog-1", ipaddress.IPv6Address("fd00::2"), 8000),)
    pem, blog_pem = tmp_path / "previews.pem", tmp_path / "blog.pem"
    sites = (SiteRoute("blog", ("blog.example.test",), servers, True, blog_pem, "blog.preview.example.test", pem),
             SiteRoute("docs", ("docs.example.test",), servers, False, None, None))
    text = render_haproxy_conf((Service("web", ipaddress.IPv6Address("::"), 8080, "/_site/health", sites=sites,
                                        tls=Tls(8443, None, 8402)),), tmp_path)
    lines = text.splitlines()
    assert "    acl preview_blog var(txn.host) -m end -- --blog.preview.example.test" in lines
    assert lines.index("    use_backend web.blog if preview_blog") < lines.index(
        "    use_backend web.blog if site_blog")
    backend = text.split("\nbackend web.blog\n")[1].split("\nbackend ")[0]
    assert "cache-use pages unless { var(txn.preview) -m bool }" in backend
    assert "cache-store pages unless { var(txn.preview) -m bool }" in backend
    assert "unless" not in text.split("\nbackend web.docs\n")[1].split("\nbackend ")[0]  # the others as before
    swapping = render_haproxy_conf((Service("web", ipaddress.IPv6Address("::"), 8080, "/_site/health", sites=tuple(
        dataclasses.replace(site, swaps=True) for site in sites), tls=Tls(8443, None, 8402)),), tmp_path)
    backend = swapping.split("\nbackend web.blog\n")[1].split("\nbackend ")[0]
    assert "cache-use released unless { var(txn.preview) -m bool }" in backend  # told of swaps: the longer life
    assert "cache-store released unless { var(txn.preview) -m bool }" in backend
    assert "\ncache released\n" in swapping and "\ncache pages\n" not in swapping  # only the caches in use
    assert f"crt {pem}" in text and any("preview_blog" in line and "redirect" in line for line in lines)
    default_redirect = next(line for line in lines if "redirect location https://blog.example.test" in line)
    assert "!preview_blog" in default_redirect  # a preview's host is never sent to the default site
    check_config(text.replace(f"ssl crt {blog_pem} crt {pem}", ""))


def test_a_site_may_turn_the_top_level_previews_off() -> None:
    from container.bootstrap import parse_bootstrap

    boot = parse_bootstrap("previews: {domain: p.example.test, public: true}\nsites:\n  - {name: blog, default: true}\n"
                           "  - {name: docs, domains: [d.example.test], previews: false}\n", "x.yaml")
    assert boot.sites[0].previews is not None and boot.sites[1].previews is None
    assert not any(key.startswith("PREVIEWS_") for key in boot.site_env(boot.sites[1]))


def test_lego_answers_dns01_with_the_provider_for_the_wildcard(tmp_path: Path) -> None:
    from container.bootstrap import parse_bootstrap
    from container.certificates import Store, lego_command
    from container.tls_keeper import Keepers

    boot = parse_bootstrap(PREVIEWS_YAML.replace("tls: {", "tls: {challenge_port: 8402, "), "x.yaml")
    keepers = Keepers(tmp_path)
    keepers.configure(boot.frontend.tls, {site.name: (site.domains, site.email) for site in boot.sites},
                      {site.previews.certificate_key: (site.previews.domain, site.previews.certificate)
                       for site in boot.sites if site.previews and site.previews.certificate})
    wildcard = keepers.by_site["previews.preview.example.test"]
    assert wildcard.settings.domains == ("*.preview.example.test",)
    command = lego_command(wildcard.settings, wildcard.store, renew=False)
    assert command[command.index("--dns") + 1] == "exec" and "--http" not in command
    assert command[command.index("--dns.resolvers") + 1] == "127.0.0.1:5353"
    assert "--http" in lego_command(keepers.by_site["docs"].settings, keepers.by_site["docs"].store, renew=False)
    assert Store(tmp_path, "previews.preview.example.test").settings() == wildcard.settings  # read back whole


@pytest.mark.system
def test_the_eleventh_branch_retires_the_least_recently_pushed_preview(site_repo: SiteRepo, start_site) -> None:
    site = start_site(site_repo.url, PREVIEWS_HOST=HOST, PREVIEWS_PASSWORD=PASSWORD)  # PREVIEWS_MAX: 10
    site.wait_live(site_repo.clone.head.commit.hexsha)
    commits = {}
    for number in range(11):
        commits[f"b{number}"] = push_branch(site_repo, f"b{number}", f"post-{number}", f"Branch post {number}")
        if number < 10:
            wait_preview(site, f"b{number}", commits[f"b{number}"])  # pushed one after the other
    wait_preview(site, "b10", commits["b10"])
    wait_for("b0's preview to retire", lambda: preview_of(site, "b0") is None, 30)
    assert sorted(item["branch"] for item in site.status()["previews"].values()) == sorted(
        f"b{number}" for number in range(1, 11))
    assert preview_get(site, "b0").status_code == 404 and not (site.data_dir / "previews" / "b0").exists()
    assert "Branch post 1" in preview_get(site, "b1", "/posts/post-1/").text
    # b0 pushed again is the newest: it comes back, and the least recently pushed of the others (b1) goes.
    commits["b0"] = push_branch(site_repo, "b0", "post-0-again", "Branch post 0 again")
    wait_preview(site, "b0", commits["b0"])
    wait_for("b1's preview to retire", lambda: preview_of(site, "b1") is None, 30)
