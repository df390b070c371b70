"""bootstrap.sh's update of the bootstrap YAML: what it manages is set, what an administrator added stays."""

from __future__ import annotations

from pathlib import Path

import yaml

from container.bootstrap import load_bootstrap
from container.host_settings import main


def test_rerun_keeps_what_the_administrator_added(tmp_path: Path, capsys) -> None:
    path = tmp_path / "pequod-bootstrap.yaml"
    assert main([str(path), "--site-repo", "file:///srv/pequod/site.git", "--port", "80",
                 "--mount", "/srv/pequod/site.git"]) == 0
    data = yaml.safe_load(path.read_text())
    data["environment"]["WEBHOOK_SECRET"] = "s3cret"
    data["frontend"]["max_requests_per_client"] = 5000
    data["external_services"].append({"service_name": "other", "service_version": "1",
                                      "external_host": "198.18.0.9", "external_port": 80})
    path.write_text(yaml.safe_dump(data))
    capsys.readouterr()
    assert main([str(path), "--site-repo", "file:///srv/pequod/site.git", "--port", "80",
                 "--mount", "/srv/pequod/site.git"]) == 0
    assert capsys.readouterr().out == "unchanged\n"
    assert main([str(path), "--site-repo", "file:///srv/pequod/site.git", "--port", "8080",
                 "--mount", "/srv/pequod/site.git"]) == 0
    boot = load_bootstrap(str(path))
    assert boot.env["WEBHOOK_SECRET"] == "s3cret" and boot.frontend.port == 8080
    assert boot.frontend.max_requests_per_client == 5000
    assert [s.name for s in boot.external_services] == ["github-https", "other"]
    assert path.stat().st_mode & 0o777 == 0o600  # it may hold secrets


def test_odd_repository_paths_are_quoted_and_the_old_mount_replaced(tmp_path: Path) -> None:
    path = tmp_path / "pequod-bootstrap.yaml"
    odd = '/srv/git/my "blog": #1'
    assert main([str(path), "--site-repo", "file:///srv/pequod/site.git", "--port", "80",
                 "--mount", "/srv/pequod/site.git"]) == 0
    assert main([str(path), "--site-repo", f"file://{odd}", "--port", "80", "--mount", odd]) == 0
    boot = load_bootstrap(str(path))
    assert boot.env["SITE_REPO"] == f"file://{odd}"
    assert [(m.source, m.target) for m in boot.mounts] == [(odd, odd)]
    assert main([str(path), "--site-repo", "https://github.com/me/blog.git", "--port", "80"]) == 0
    boot = load_bootstrap(str(path))
    assert boot.mounts == () and boot.env["SITE_REPO"] == "https://github.com/me/blog.git"


def test_a_file_the_agent_would_refuse_is_not_written(tmp_path: Path, capsys) -> None:
    path = tmp_path / "pequod-bootstrap.yaml"
    path.write_text("frontend: {port: 80, bogus: 1}\n")
    assert main([str(path), "--site-repo", "file:///x", "--port", "80"]) == 1
    assert "frontend" in capsys.readouterr().err
    assert path.read_text() == "frontend: {port: 80, bogus: 1}\n"


def test_notify_settings_are_set_when_given_and_kept_otherwise(tmp_path: Path) -> None:
    path = tmp_path / "pequod-bootstrap.yaml"
    assert main([str(path), "--site-repo", "file:///x", "--port", "80", "--notify-url", "https://hooks.example.org/p",
                 "--notify-secret", "k"]) == 0
    assert main([str(path), "--site-repo", "file:///x", "--port", "80"]) == 0
    env = load_bootstrap(str(path)).env
    assert env["NOTIFY_URL"] == "https://hooks.example.org/p" and env["NOTIFY_SECRET"] == "k"
