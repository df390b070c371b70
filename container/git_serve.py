"""The forced command of a push key: what sshd runs, as the git user, whatever the client asked for.

    command="PYTHON -I -m container.git_serve SITE=REPOSITORY ...",restrict ssh-ed25519 AAAA… SITE:NAME

`./bootstrap.sh site key add` writes one such line per key into the git user's authorized_keys
(container/push_keys.py); `restrict` already refuses a pty, port, agent and X11 forwarding. This command
lets the client run git's own two programs and nothing else: `git-receive-pack 'SITE'` (git push) and
`git-upload-pack 'SITE'` (git clone, fetch, pull), for the sites its key was given (`git@HOST:docs`,
`git@HOST:docs.git`, `ssh://git@HOST/docs`). Anything else (a shell, another command, another site's or
any other path) is refused with one line that says what the key may do. Standard library only: it runs as
the git user, for every connection.
"""

from __future__ import annotations

import os
import shlex
import sys

PROGRAMS = {"git-receive-pack": "receive-pack", "git-upload-pack": "upload-pack"}


def site_of(path: str) -> str:
    """The site a client's path names: `docs`, `/docs`, `~/docs`, `docs.git` and `docs/` all name docs."""
    name = path.strip()
    for prefix in ("~/", "/"):
        name = name.removeprefix(prefix)
    return name.rstrip("/").removesuffix(".git")


def decide(original: str, allowed: dict[str, str]) -> tuple[list[str] | None, str]:
    """(the git command to run, "") for an allowed request, or (None, why not)."""
    reachable = ", ".join(f"git@HOST:{site}" for site in allowed) or "nothing"
    try:
        words = shlex.split(original)
    except ValueError:
        words = []
    if len(words) != 2 or words[0] not in PROGRAMS:
        return None, (f"this key pushes and fetches with git only ({reachable}): no shell, no other command")
    site = site_of(words[1])
    if site not in allowed:
        return None, f"this key has no access to {words[1]!r}; it reaches {reachable}"
    # The repository is root's (shared with the git group): git refuses another owner's unless told it is safe,
    # which a command-line setting may say (protected configuration, git 2.37 and later).
    # Every object a push brings is checked (a malformed tree or commit is refused before any ref moves).
    return ["git", "-c", f"safe.directory={allowed[site]}", "-c", "receive.fsckObjects=true", PROGRAMS[words[0]],
            allowed[site]], ""


def environment(given: dict[str, str]) -> dict[str, str]:
    """What git runs with: nothing the client may have sent (an SSH server that accepts GIT_* variables would let
    it set hooks through GIT_CONFIG_PARAMETERS) but the protocol version it asks for."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": given.get("HOME", "/"), "LANG": "C.UTF-8"}
    protocol = given.get("GIT_PROTOCOL", "")
    if protocol in ("version=1", "version=2"):
        env["GIT_PROTOCOL"] = protocol
    return env


def main(argv: list[str]) -> int:
    allowed = dict(arg.partition("=")[::2] for arg in argv)
    command, refusal = decide(os.environ.get("SSH_ORIGINAL_COMMAND", ""), allowed)
    if command is None:
        print(f"pequod: {refusal}", file=sys.stderr)
        return 1
    os.execvpe(command[0], command, environment(dict(os.environ)))  # does not return


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
