"""bootstrap.sh's update of the bootstrap YAML: the blog is the site `blog`, what it manages is set, what an
administrator added (other sites included) stays."""

from __future__ import annotations

from pathlib import Path

import yaml

from container.bootstrap import load_bootstrap
from container.host_settings import main

BLOG_ARGS = ["--site-repo", "file:///srv/pequod/site.git", "--port", "80", "--mount", "/srv/pequod/site.git"]


def blog_of(path: Path):
    boot = load_bootstrap(str(path))
    return boot, next(site for site in boot.sites if site.name == "blog")


def test_the_blog_is_the_default_site_with_its_repository_and_mount(tmp_path: Path) -> None:
    path = tmp_path / "pequod-bootstrap.yaml"
    assert main([str(path), *BLOG_ARGS]) == 0
    boot, blog = blog_of(path)
    assert blog.default and blog.domains == ()
    environment = dict(blog.environment)
    secret = environment.pop("WEBHOOK_SECRET")  # the blog's token (deploy data, rollbacks, the webhook)
    assert environment == {"SITE_REPO": "file:///srv/pequod/site.git"} and len(secret) == 64
    assert path.stat().st_mode & 0o077 == 0  # it holds the secret
    assert main([str(path), *BLOG_ARGS]) == 0
    assert dict(blog_of(path)[1].environment)["WEBHOOK_SECRET"] == secret, "a re-run keeps the token"
    assert [(m.source, m.target) for m in blog.mounts] == [("/srv/pequod/site.git", "/srv/pequod/site.git")]
    assert boot.mounts == () and boot.env == {"POLL_INTERVAL": "5"}  # shared by every site
    assert [s.name for s in boot.external_services] == ["github-https"]


def test_rerun_keeps_what_the_administrator_added_and_every_other_site(tmp_path: Path, capsys) -> None:
    path = tmp_path / "pequod-bootstrap.yaml"
    assert main([str(path), *BLOG_ARGS]) == 0
    data = yaml.safe_load(path.read_text())
    data["sites"][0]["environment"]["WEBHOOK_SECRET"] = "s3cret"
    data["sites"].append({"name": "docs", "domains": ["docs.example.org"], "memory_mb": 256,
                          "environment": {"SITE_REPO": "file:///srv/pequod/docs.git", "WEBHOOK_SECRET": "d0cs"},
                          "mounts": [{"source": "/srv/pequod/docs.git", "target": "/srv/pequod/docs.git"}]})
    data["frontend"]["max_requests_per_client"] = 5000
    data["external_services"].append({"service_name": "other", "service_version": "1",
                                      "external_host": "198.18.0.9", "external_port": 80})
    path.write_text(yaml.safe_dump(data))
    capsys.readouterr()
    assert main([str(path), *BLOG_ARGS]) == 0
    assert capsys.readouterr().out == "unchanged\n"
    assert main([str(path), *BLOG_ARGS[:3], "8080", *BLOG_ARGS[4:]]) == 0
    boot, blog = blog_of(path)
    assert dict(blog.environment)["WEBHOOK_SECRET"] == "s3cret" and boot.frontend.port == 8080
    assert boot.frontend.max_requests_per_client == 5000
    assert [s.name for s in boot.external_services] == ["github-https", "other"]
    docs = boot.sites[1]
    assert (docs.name, docs.domains, docs.memory_mb, docs.default) == ("docs", ("docs.example.org",), 256, False)
    assert dict(docs.environment) == {"SITE_REPO": "file:///srv/pequod/docs.git", "WEBHOOK_SECRET": "d0cs"}
    assert path.stat().st_mode & 0o777 == 0o600  # it holds secrets


def test_domain_sets_the_blogs_domains_and_tls_without_domains(tmp_path: Path) -> None:
    path = tmp_path / "pequod-bootstrap.yaml"
    assert main([str(path), *BLOG_ARGS, "--domain", "blog.example.org", "--email", "a@example.org",
                 "--acme-directory", "https://acme.example.org/dir"]) == 0
    boot, blog = blog_of(path)
    assert blog.domains == ("blog.example.org",) and blog.default
    assert boot.frontend.tls is not None and boot.frontend.tls.domains == ()
    assert boot.frontend.tls.acme_directory == "https://acme.example.org/dir"
    assert main([str(path), *BLOG_ARGS]) == 0  # without --domain: the domains and tls stay
    boot, blog = blog_of(path)
    assert blog.domains == ("blog.example.org",) and boot.frontend.tls is not None


def test_a_domain_of_another_site_is_refused(tmp_path: Path, capsys) -> None:
    path = tmp_path / "pequod-bootstrap.yaml"
    assert main([str(path), *BLOG_ARGS]) == 0
    data = yaml.safe_load(path.read_text())
    data["sites"].append({"name": "docs", "domains": ["docs.example.org"]})
    path.write_text(yaml.safe_dump(data))
    before = path.read_text()
    assert main([str(path), *BLOG_ARGS, "--domain", "docs.example.org", "--email", "a@example.org"]) == 1
    err = capsys.readouterr().err
    assert err == "bootstrap YAML: --domain docs.example.org belongs to site 'docs'; a domain belongs to one site\n"
    assert path.read_text() == before


def test_odd_repository_paths_are_quoted_and_the_old_mount_replaced(tmp_path: Path) -> None:
    path = tmp_path / "pequod-bootstrap.yaml"
    odd = '/srv/git/my "blog": #1'
    assert main([str(path), *BLOG_ARGS]) == 0
    assert main([str(path), "--site-repo", f"file://{odd}", "--port", "80", "--mount", odd]) == 0
    boot, blog = blog_of(path)
    assert dict(blog.environment)["SITE_REPO"] == f"file://{odd}"
    assert [(m.source, m.target) for m in blog.mounts] == [(odd, odd)]
    assert main([str(path), "--site-repo", "https://github.com/me/blog.git", "--port", "80"]) == 0
    boot, blog = blog_of(path)
    assert blog.mounts == () and boot.mounts == ()
    assert dict(blog.environment)["SITE_REPO"] == "https://github.com/me/blog.git"


def test_a_file_the_agent_would_refuse_is_not_written(tmp_path: Path, capsys) -> None:
    path = tmp_path / "pequod-bootstrap.yaml"
    path.write_text("frontend: {port: 80, bogus: 1}\n")
    assert main([str(path), "--site-repo", "file:///x", "--port", "80"]) == 1
    assert "frontend" in capsys.readouterr().err
    assert path.read_text() == "frontend: {port: 80, bogus: 1}\n"


def test_notify_settings_are_the_blogs_set_when_given_and_kept_otherwise(tmp_path: Path) -> None:
    path = tmp_path / "pequod-bootstrap.yaml"
    assert main([str(path), "--site-repo", "file:///x", "--port", "80", "--notify-url", "https://hooks.example.org/p",
                 "--notify-secret", "k"]) == 0
    assert main([str(path), "--site-repo", "file:///x", "--port", "80"]) == 0
    _boot, blog = blog_of(path)
    env = dict(blog.environment)
    assert env["NOTIFY_URL"] == "https://hooks.example.org/p" and env["NOTIFY_SECRET"] == "k"
