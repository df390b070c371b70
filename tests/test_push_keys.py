"""Push keys (container/push_keys.py, container/git_serve.py): the key parsing, the forced command's decisions and
the authorized_keys lines, pure. A real sshd, ssh and git push through them: tests/test_bootstrap_sh.py."""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path

import pytest

from container import push_keys
from container.git_serve import decide, environment, site_of
from container.push_keys import KeyError_, PushKey, authorized_keys, parse_key


def a_key(tmp_path: Path, name: str = "id") -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{name}@laptop", "-f",
                    str(tmp_path / name)], check=True)
    return (tmp_path / f"{name}.pub").read_text()


def test_a_public_key_is_read_with_its_fingerprint(tmp_path: Path) -> None:
    text = a_key(tmp_path)
    kind, blob = parse_key(text, "id.pub")
    assert kind == "ssh-ed25519"
    shown = subprocess.run(["ssh-keygen", "-l", "-f", str(tmp_path / "id.pub")], capture_output=True, text=True,
                           check=True).stdout.split()[1]
    assert PushKey("docs", "alice", kind, blob).fingerprint == shown  # what ssh-keygen -l says


@pytest.mark.parametrize(("text", "says"), [
    ("", "expected one public key line"),
    ("ssh-ed25519 AAAA one\nssh-ed25519 AAAA two\n", "found 2"),
    ('command="sh" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI x', "options before the key are not accepted"),
    ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n-----END OPENSSH PRIVATE KEY-----\n", "this is a private key"),
    ("ecdsa-sk AAAA x", "not an OpenSSH public key"),
    ("ssh-ed25519 not*base64", "not base64"),
    ("ssh-ed25519 " + base64.b64encode(b"\0\0\0\x07ssh-rsa" + b"\0" * 40).decode(), "not a ssh-ed25519 key"),
])
def test_what_is_not_one_public_key_is_refused_with_the_reason(text: str, says: str) -> None:
    with pytest.raises(KeyError_, match=says):
        parse_key(text, "alice.pub")


ALLOWED = {"docs": "/srv/pequod/docs.git", "blog": "/srv/pequod/site.git"}


@pytest.mark.parametrize(("original", "command"), [
    ("git-receive-pack 'docs'", ["receive-pack", "/srv/pequod/docs.git"]),
    ("git-receive-pack '/docs.git'", ["receive-pack", "/srv/pequod/docs.git"]),
    ("git-upload-pack '~/blog/'", ["upload-pack", "/srv/pequod/site.git"]),
])
def test_git_may_reach_the_keys_sites(original: str, command: list[str]) -> None:
    assert decide(original, ALLOWED) == (["git", "-c", f"safe.directory={command[1]}", "-c",
                                          "receive.fsckObjects=true", *command], "")


@pytest.mark.parametrize(("original", "says"), [
    ("", "no shell"),
    ("sh -i", "no shell"),
    ("git-upload-archive 'docs'", "no other command"),
    ("git-receive-pack 'docs' ; sh", "no other command"),
    ("git-receive-pack 'other'", "no access to 'other'"),
    ("git-receive-pack '../site.git'", "no access"),
    ("git-receive-pack '/srv/pequod/site.git'", "no access"),  # a path, not a site: only names reach
    ("git-receive-pack 'docs", "no shell"),  # unbalanced quote
])
def test_anything_else_is_refused_saying_what_the_key_reaches(original: str, says: str) -> None:
    command, why = decide(original, ALLOWED)
    assert command is None and says in why and "git@HOST:docs" in why


def test_a_site_is_named_the_way_git_clients_write_it() -> None:
    assert {site_of(path) for path in ("docs", "/docs", "~/docs", "docs.git", "docs/", "/docs.git/")} == {"docs"}


def test_one_line_per_key_restricted_to_its_sites(tmp_path: Path) -> None:
    kind, blob = parse_key(a_key(tmp_path, "alice"), "alice.pub")
    other = parse_key(a_key(tmp_path, "bob"), "bob.pub")
    keys = [PushKey("docs", "alice", kind, blob), PushKey("blog", "alice", kind, blob),
            PushKey("blog", "bob", *other), PushKey("gone", "carol", *other)]
    repositories = {"docs": Path("/srv/pequod/docs.git"), "blog": Path("/srv/pequod/site.git")}
    lines = authorized_keys(keys, repositories).splitlines()[1:]
    assert len(lines) == 2  # alice's key once, reaching both its sites; bob's, without the site that is gone
    assert lines[0].startswith('restrict,command="') and lines[0].endswith(f"{kind} {blob} docs:alice,blog:alice")
    assert "-I -m container.git_serve blog=/srv/pequod/site.git docs=/srv/pequod/docs.git" in lines[0]
    assert "gone" not in lines[1] and lines[1].endswith("blog:bob")


def test_the_keys_file_round_trips(tmp_path: Path) -> None:
    kind, blob = parse_key(a_key(tmp_path), "id.pub")
    keys = [PushKey("docs", "alice", kind, blob)]
    push_keys.write_keys(tmp_path / "keys.yaml", keys)
    assert push_keys.read_keys(tmp_path / "keys.yaml") == keys
    assert (tmp_path / "keys.yaml").stat().st_mode & 0o777 == 0o600
    (tmp_path / "keys.yaml").write_text("docs: [not, a, mapping]\n")
    with pytest.raises(KeyError_, match="site 'docs': expected a mapping"):
        push_keys.read_keys(tmp_path / "keys.yaml")


def test_git_runs_without_what_the_client_sent() -> None:
    env = environment({"HOME": "/var/lib/pequod-git", "GIT_CONFIG_PARAMETERS": "'core.hooksPath'='/tmp/x'",
                       "GIT_PROTOCOL": "version=2", "LD_PRELOAD": "/tmp/x.so"})
    assert env == {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/var/lib/pequod-git", "LANG": "C.UTF-8",
                   "GIT_PROTOCOL": "version=2"}
    assert "GIT_PROTOCOL" not in environment({"GIT_PROTOCOL": "version=2:x"})


def test_a_key_is_kept_in_one_spelling(tmp_path: Path) -> None:
    kind, blob = parse_key(a_key(tmp_path), "id.pub")
    assert parse_key(f"{kind} {blob}== padded", "id.pub") == (kind, blob)  # extra padding: the same key


def test_only_a_repository_root_alone_writes_is_shared(tmp_path: Path) -> None:
    repository = tmp_path / "docs.git"
    subprocess.run(["git", "init", "-q", "--bare", str(repository)], check=True)
    (repository / "hooks" / "post-update").write_text("#!/bin/sh\n")
    (repository / "outside").symlink_to("/etc/passwd")
    before = Path("/etc/passwd").stat()
    push_keys.share_with_group(repository, 4242)
    objects, config, hook = repository / "objects", repository / "config", repository / "hooks" / "post-update"
    assert objects.stat().st_gid == 4242 and objects.stat().st_mode & 0o2070 == 0o2070  # setgid, rwx for the group
    assert config.stat().st_gid == 4242 and not config.stat().st_mode & 0o020  # git's settings: root writes them
    assert not hook.stat().st_mode & 0o020
    assert Path("/etc/passwd").stat() == before  # the link was not followed
    push_keys.unshare(repository)
    assert objects.stat().st_gid == 0 and not objects.stat().st_mode & 0o020
    os.chown(repository / "HEAD", 1000, 1000)  # a file another user owns: that user could swap it for a link
    with pytest.raises(KeyError_, match="belongs to uid 1000, not root"):
        push_keys.share_with_group(repository, 4242)
