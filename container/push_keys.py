"""Push access per site without root: SSH keys on one `git` user, each limited to its sites' repositories.

`./bootstrap.sh site key add SITE NAME [KEYFILE|-]`, `site key list [SITE]` and `site key remove SITE NAME`
(container/sites.py) keep the keys in KEYS (/etc/pequod/push-keys.yaml: site → name → public key) and
write the git user's `~/.ssh/authorized_keys` from it, whole and atomically: one line per key, with the
options `restrict` (no pty, no port, agent or X11 forwarding) and a forced command
(container/git_serve.py) that runs git's receive-pack or upload-pack on the key's sites' repositories and
nothing else. The host's own SSH server is used as it is. A site's repository is made the git user's
group's (`core.sharedRepository=group`) when it gets its first key, so pushes over SSH and root's local
pushes both keep it writable, and the instance still reads it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import grp
import hashlib
import os
import pwd
import re
import socket
import stat
import sys
from pathlib import Path
from typing import Any

import yaml

from container import proc
from container.errors import AgentError
from container.files import replace_file
from container.settings import Bootstrap

GIT_USER = os.environ.get("PEQUOD_GIT_USER", "git")
GIT_HOME = Path(os.environ.get("PEQUOD_GIT_HOME", "/var/lib/pequod-git"))
KEYS = Path("/etc/pequod/push-keys.yaml")
KEY_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,39}")
KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
             "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com")
PROGRAM_SECONDS = 60  # git config, useradd, usermod, userdel (with the git user's small home)
SAFE_PATH = re.compile(r"/[A-Za-z0-9._/+-]+")  # what may stand in a forced command's arguments unquoted
MAX_KEY_BYTES = 16384


class KeyError_(AgentError):  # noqa: N801 - KeyError is Python's own
    """A push key that cannot be used, or a site that cannot take one: one line that says why."""


@dataclasses.dataclass(frozen=True)
class PushKey:
    site: str
    name: str
    kind: str
    blob: str  # base64

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256(base64.b64decode(self.blob)).digest()
        return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")

    @property
    def line(self) -> str:
        return f"{self.kind} {self.blob} {self.site}:{self.name}"


# -- keys ---------------------------------------------------------------------------------------------------
def parse_key(text: str, source: str) -> tuple[str, str]:
    """(type, base64) of the one OpenSSH public key in `text` (a `.pub` file's line; its comment is dropped)."""
    if "PRIVATE KEY-----" in text:
        raise KeyError_(f"{source}: this is a private key; give its public half (the .pub file) and keep this secret")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if len(lines) != 1:
        raise KeyError_(f"{source}: expected one public key line (as in ~/.ssh/id_ed25519.pub), found {len(lines)}")
    fields = lines[0].split()
    if len(fields) < 2 or fields[0] not in KEY_TYPES:
        raise KeyError_(f"{source}: not an OpenSSH public key of a known type ({', '.join(KEY_TYPES[:3])}, …); "
                        "options before the key are not accepted either")
    kind, blob = fields[0], fields[1]
    try:
        raw = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        raise KeyError_(f"{source}: the key's data is not base64") from None
    length = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else -1
    if raw[4:4 + length].decode("ascii", "replace") != kind:
        raise KeyError_(f"{source}: the key's data is not a {kind} key")
    return kind, base64.b64encode(raw).decode()  # as ssh-keygen writes it: one key, one spelling


def read_keys(path: Path) -> list[PushKey]:
    """The keys of `path` (none when it does not exist), checked as when they were added."""
    if not path.exists():
        return []
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise KeyError_(f"{path}: cannot be read ({exc}); fix or remove it, then run the command again") from None
    if not isinstance(data, dict):
        raise KeyError_(f"{path}: expected a mapping of site names to {{key name: public key}}")
    keys = []
    for site, named in data.items():
        if not isinstance(named, dict):
            raise KeyError_(f"{path}: site {site!r}: expected a mapping of key names to public keys")
        for name, text in named.items():
            kind, blob = parse_key(str(text), f"{path}: site {site}, key {name}")
            keys.append(PushKey(str(site), str(name), kind, blob))
    return keys


def write_keys(path: Path, keys: list[PushKey]) -> None:
    data: dict[str, dict[str, str]] = {}
    for key in sorted(keys, key=lambda k: (k.site, k.name)):
        data.setdefault(key.site, {})[key.name] = key.line
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_file(path, "# push keys per site: ./bootstrap.sh site key add|list|remove (docs/sites.md)\n"
                 + yaml.safe_dump(data, sort_keys=True), mode=0o600)


# -- the sites' repositories ------------------------------------------------------------------------------------
def repository_of(boot: Bootstrap, site_name: str) -> Path:
    """The host path of the site's repository, which a push key reaches; refused for a site that publishes from
    elsewhere (a GitHub URL: push there)."""
    site = next((s for s in boot.sites if s.name == site_name), None)
    if site is None:
        raise KeyError_(f"no site {site_name!r} on this host (./bootstrap.sh site list shows them)")
    url = boot.site_env(site).get("SITE_REPO", "")
    if not url.startswith(("file://", "/")):
        raise KeyError_(f"site {site_name} publishes from {url}, not from a repository on this host: push there")
    inside = url.removeprefix("file://")
    mounts = {m.target: m.source for m in boot.site_mounts(site)}
    path = Path(mounts.get(inside, inside))
    if not SAFE_PATH.fullmatch(str(path)):
        raise KeyError_(f"site {site_name}: its repository path {path} has characters a forced command cannot "
                        "carry (use letters, digits and . _ / + -)")
    if not (path / "HEAD").is_file():
        raise KeyError_(f"site {site_name}: {path} is not a bare git repository on this host")
    return path


# Git's own settings and scripts stay root's alone: receive-pack writes objects and refs, never these, so a key
# holder's group never gets to change what root's own git commands run in the repository.
ROOTS_ONLY = {"config", "hooks", "info", "description"}


def _walk_owned(repository: Path, visit: Any) -> None:
    """Call visit(fd, st, path) on the repository and every entry in it, each opened by descriptor without
    following a link (links, sockets and the like are left alone). Every entry must be root's: a repository
    another user can write could be changed under the walk (a file swapped for a link to a system file)."""
    root_fd = os.open(repository, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        for folder, dirs, files, dir_fd in os.fwalk(dir_fd=root_fd, follow_symlinks=False):
            if folder == ".":
                visit(dir_fd, os.fstat(dir_fd), "")
            for name in [*dirs, *files]:
                path = os.path.normpath(os.path.join(folder, name))
                try:
                    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY, dir_fd=dir_fd)
                except OSError:  # a link (ELOOP), or gone meanwhile (a gc): nothing to change
                    continue
                try:
                    info = os.fstat(fd)
                    if stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode):
                        visit(fd, info, path)
                finally:
                    os.close(fd)
    finally:
        os.close(root_fd)


def _check_roots(repository: Path) -> None:
    def check(_fd: int, info: os.stat_result, path: str) -> None:
        if info.st_uid != 0:
            raise KeyError_(f"{repository / path} belongs to uid {info.st_uid}, not root: push keys need a "
                            f"repository only root writes (chown -R root {repository})")
    _walk_owned(repository, check)


def share_with_group(repository: Path, gid: int) -> None:
    """Make `repository` writable by the group `gid` (the git user's), as `git init --shared=group` would: every
    entry the group's, group-writable (but git's settings and hooks: ROOTS_ONLY), directories setgid, and git
    told to keep it so. Only a repository whose every entry is root's; by descriptor, never through a link."""
    _check_roots(repository)
    proc.run(["git", "--git-dir", str(repository), "config", "core.sharedRepository", "group"],
             timeout=PROGRAM_SECONDS, error=KeyError_)

    def share(fd: int, info: os.stat_result, path: str) -> None:
        mode = stat.S_IMODE(info.st_mode) & 0o777  # no setuid or sticky bit carried over
        if path.split(os.sep)[0] not in ROOTS_ONLY:
            mode |= stat.S_IRGRP | stat.S_IWGRP | (stat.S_IXGRP | stat.S_ISGID if stat.S_ISDIR(info.st_mode) else 0)
        else:
            mode &= ~stat.S_IWGRP
        os.fchown(fd, -1, gid)
        os.fchmod(fd, mode)
    _walk_owned(repository, share)


def unshare(repository: Path) -> None:
    """Undo share_with_group: root's group, writable by root alone (the git user's group may be gone, and its id
    given to another)."""
    if not (repository / "HEAD").is_file():
        return
    proc.run(["git", "--git-dir", str(repository), "config", "--unset", "core.sharedRepository"],
             timeout=PROGRAM_SECONDS, check=False, error=KeyError_)

    def own(fd: int, info: os.stat_result, _path: str) -> None:
        if info.st_uid == 0:
            os.fchown(fd, -1, 0)
            os.fchmod(fd, stat.S_IMODE(info.st_mode) & 0o755)
    _walk_owned(repository, own)


# -- the git user and its authorized_keys ------------------------------------------------------------------------
def git_user(create: bool) -> pwd.struct_passwd | None:
    """The git user (GIT_USER, home GIT_HOME), made when missing and `create`. One that exists with another home
    is someone else's: refused (PEQUOD_GIT_USER names another)."""
    try:
        user = pwd.getpwnam(GIT_USER)
    except KeyError:
        if not create:
            return None
        proc.run(["useradd", "--system", "--user-group", "--home-dir", str(GIT_HOME), "--create-home",
                  "--shell", "/bin/sh", "--comment", "pequod pushes over SSH", GIT_USER],
                 timeout=PROGRAM_SECONDS, error=KeyError_, package="passwd")
        # Not locked ("!"), no password ("*"): an SSH server without PAM refuses a locked account's keys too.
        proc.run(["usermod", "--password", "*", GIT_USER], timeout=PROGRAM_SECONDS, error=KeyError_,
                 package="passwd")
        user = pwd.getpwnam(GIT_USER)
    members = grp.getgrgid(user.pw_gid).gr_mem
    if members:
        raise KeyError_(f"the group of the user {GIT_USER!r} has other members ({', '.join(members)}): they could "
                        "write the sites' repositories; give the user a group of its own")
    if Path(user.pw_dir) != GIT_HOME:
        raise KeyError_(f"a user {GIT_USER!r} exists with the home {user.pw_dir}, not pequod's {GIT_HOME}: set "
                        "PEQUOD_GIT_USER to another name (pushes then go to NAME@HOST)")
    return user


def forced_command(sites: dict[str, Path]) -> str:
    args = " ".join(f"{site}={path}" for site, path in sorted(sites.items()))
    return f"{sys.executable} -I -m container.git_serve {args}"


def authorized_keys(keys: list[PushKey], repositories: dict[str, Path]) -> str:
    """One line per distinct key: its sites in its forced command (a key given to two sites reaches both)."""
    sites: dict[tuple[str, str], dict[str, Path]] = {}
    names: dict[tuple[str, str], list[str]] = {}
    for key in keys:
        if key.site in repositories:
            sites.setdefault((key.kind, key.blob), {})[key.site] = repositories[key.site]
            names.setdefault((key.kind, key.blob), []).append(f"{key.site}:{key.name}")
    lines = ["# written by ./bootstrap.sh site key (pequod); changes here are overwritten"]
    for (kind, blob), reach in sites.items():
        lines.append(f'restrict,command="{forced_command(reach)}" {kind} {blob} {",".join(names[(kind, blob)])}')
    return "\n".join(lines) + "\n"


def install(keys: list[PushKey], boot: Bootstrap, user: pwd.struct_passwd) -> None:
    """Write the git user's authorized_keys for `keys` (their sites' repositories shared with its group)."""
    repositories = {}
    for site in sorted({key.site for key in keys}):
        try:
            repositories[site] = repository_of(boot, site)
        except KeyError_ as exc:  # a site removed since, or moved to GitHub: its keys reach nothing
            print(f"    {exc}; its keys reach nothing", file=sys.stderr)
    for path in repositories.values():
        share_with_group(path, user.pw_gid)
    unshare_sites(boot, set(repositories), user.pw_gid)  # a site without keys: root's alone again
    ssh_dir = Path(user.pw_dir) / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    os.chown(ssh_dir, user.pw_uid, user.pw_gid)
    target = ssh_dir / "authorized_keys"
    replace_file(target, authorized_keys(keys, repositories), mode=0o600)
    os.chown(target, user.pw_uid, user.pw_gid)


def unshare_sites(boot: Bootstrap, keep: set[str], gid: int) -> None:
    """Give the repositories of the sites but `keep` that are shared with the group `gid` back to root alone."""
    for site in boot.sites:
        if site.name in keep:
            continue
        with contextlib.suppress(KeyError_, OSError):
            path = repository_of(boot, site.name)
            if path.stat().st_gid == gid:
                unshare(path)


def ssh_server_answers(port: int = 22) -> bool:
    for family, address in ((socket.AF_INET6, "::1"), (socket.AF_INET, "127.0.0.1")):
        with socket.socket(family) as probe:
            probe.settimeout(1)
            try:
                probe.connect((address, port))
                return probe.recv(4).startswith(b"SSH-")
            except OSError:
                continue
    return False


def no_server_advice() -> str:
    return ("no SSH server answers on port 22 here: pushes over SSH need one (apt-get install openssh-server); "
            "pushes on this machine work without it")


def as_rows(keys: list[PushKey]) -> list[dict[str, Any]]:
    return [{"site": k.site, "name": k.name, "type": k.kind, "fingerprint": k.fingerprint} for k in keys]


# -- bootstrap.sh: the git user with the host, and gone with it ----------------------------------------------------
def setup(keys_path: Path, yaml_path: Path) -> int:
    """The git user (made when missing) and its authorized_keys from the keys kept (a re-run changes nothing)."""
    from container.bootstrap import load_bootstrap

    user = git_user(create=True)
    assert user is not None
    install(read_keys(keys_path), load_bootstrap(str(yaml_path)), user)
    print(f"    the user {user.pw_name} takes pushes over SSH for the keys that `./bootstrap.sh site key add` gives")
    if not ssh_server_answers():
        print(f"    note: {no_server_advice()}")
    return 0


def teardown(yaml_path: Path) -> int:
    """Remove the git user pequod made (its home is GIT_HOME; another one is left alone), its group's access to the
    sites' repositories first (they stay, root's alone)."""
    user = git_user(create=False)
    if user is not None:
        with contextlib.suppress(AgentError, OSError):  # no bootstrap YAML left: no repository to give back
            from container.bootstrap import load_bootstrap

            unshare_sites(load_bootstrap(str(yaml_path)), set(), user.pw_gid)
        proc.run(["userdel", "--remove", GIT_USER], timeout=PROGRAM_SECONDS, error=KeyError_, package="passwd")
        print(f"    removed the user {GIT_USER} (pushes over SSH) and {GIT_HOME}")
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m container.push_keys", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("setup", "teardown"))
    parser.add_argument("--keys", type=Path, default=KEYS)
    parser.add_argument("--yaml", type=Path, default=Path("/etc/pequod/pequod-bootstrap.yaml"))
    args = parser.parse_args(argv)
    try:
        return setup(args.keys, args.yaml) if args.command == "setup" else teardown(args.yaml)
    except (AgentError, OSError) as exc:
        print(f"push keys: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
