"""Pipeline settings: read once from the environment into a frozen dataclass."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pipeline.errors import ConfigError
from pipeline.layout import Layout

_URL_SCHEMES = ("file", "http", "https", "ssh", "git")
_SCP_LIKE = re.compile(r"[\w.-]+@[\w.-]+:.+")
# git check-ref-format's rules, the ones a user can plausibly trip over.
_BAD_BRANCH = re.compile(r"(^[-/.])|(\.\.)|([\s~^:?*\[\\])|(@\{)|(/\Z)|(\.lock\Z)|(\.\Z)|(//)")


@dataclass(frozen=True)
class Settings:
    site_repo: str
    site_branch: str = "main"
    poll_interval: float = 10.0
    data_dir: Path = Path("/workdir")
    build_timeout: float = 600.0
    git_timeout: float = 60.0
    keep_releases: int = 5
    build_memory_mb: int = 2048
    max_file_mb: int = 100
    notify_url: str | None = None
    notify_secret: str | None = None
    heartbeat_file: Path | None = None  # the watcher's (pipeline.heartbeat); run.sh sets WATCHER_HEARTBEAT
    links_broken_fail: bool = False  # broken internal links fail the build (pipeline.links)
    build_worker_idle: float = 900.0  # seconds the warm build worker waits for the next build (pipeline.build_worker)
    landlock_abi_max: int | None = None  # the highest Landlock ABI the sandbox uses (None: the kernel's)
    builder_socket: Path | None = None  # the builder's worker (a container of its own); None: a process of ours
    # Previews of the other branches (pipeline.previews), at LABEL--PREVIEWS_HOST; None: branches are ignored.
    previews_host: str | None = None
    previews_max: int = 10
    previews_password: str | None = None  # HTTP Basic (user `preview`); None with previews_public only
    previews_public: bool = False
    previews_https: bool = False  # their addresses are https:// (the agent keeps a wildcard certificate)

    @property
    def layout(self) -> Layout:
        return Layout(self.data_dir, self.builder_socket.parent if self.builder_socket is not None else None)


def redact_url(url: str) -> str:
    """The URL with any user/password removed, fit for logs and the status page."""
    parts = urlsplit(url)
    if parts.scheme and "@" in parts.netloc:
        host = parts.netloc.rsplit("@", 1)[1]
        return urlunsplit(parts._replace(netloc=f"***@{host}"))
    return url


def _number(env: Mapping[str, str], key: str, default: float, *, minimum: float, integer: bool) -> float:
    raw = env.get(key, "").strip()
    if not raw:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        kind = "a whole number" if integer else "a number"
        raise ConfigError(f"{key}={raw!r}: expected {kind}") from None
    if value < minimum or value != value:  # NaN compares unequal to itself
        raise ConfigError(f"{key}={raw!r}: must be at least {minimum:g}")
    return value


def check_repo_url(url: str) -> str:
    url = url.strip()
    if not url:
        raise ConfigError("SITE_REPO is not set: give the git URL of the site repository")
    scheme = urlsplit(url).scheme
    if scheme in _URL_SCHEMES or _SCP_LIKE.fullmatch(url) or url.startswith("/"):
        return url
    raise ConfigError(
        f"SITE_REPO={redact_url(url)!r}: expected a git URL (file://, https://, ssh://, git://, "
        "user@host:path) or an absolute path"
    )


def check_branch(branch: str) -> str:
    if not branch or _BAD_BRANCH.search(branch):
        raise ConfigError(f"SITE_BRANCH={branch!r}: not a valid git branch name")
    return branch


def check_notify_url(url: str) -> str | None:
    url = url.strip()
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"NOTIFY_URL={redact_url(url)!r}: expected an http:// or https:// URL")
    return url


_FLAGS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def _flag(env: Mapping[str, str], key: str, default: bool) -> bool:
    raw = env.get(key, "").strip()
    if not raw:
        return default
    try:
        return _FLAGS[raw.lower()]
    except KeyError:
        raise ConfigError(f"{key}={raw!r}: expected 1 or 0 (true/false, yes/no, on/off)") from None


def build_worker_idle(env: Mapping[str, str]) -> float:
    """BUILD_WORKER_IDLE: checked with the rest at start; the worker (which inherits it) reads it here too."""
    return _number(env, "BUILD_WORKER_IDLE", 900.0, minimum=1, integer=False)


def landlock_abi_max(env: Mapping[str, str]) -> int | None:
    """LANDLOCK_ABI_MAX: checked with the rest at start; the build worker (which inherits it) reads it here too."""
    if not env.get("LANDLOCK_ABI_MAX", "").strip():
        return None
    return int(_number(env, "LANDLOCK_ABI_MAX", 0, minimum=0, integer=True))


def check_builder_socket(path: str) -> Path | None:
    path = path.strip()
    if path and not path.startswith("/"):
        raise ConfigError(f"BUILDER_SOCKET={path!r}: expected an absolute path (the builder's unix socket)")
    return Path(path) if path else None


def check_heartbeat_file(path: str) -> Path | None:
    path = path.strip()
    if path and not path.startswith("/"):
        raise ConfigError(f"WATCHER_HEARTBEAT={path!r}: expected an absolute path")
    return Path(path) if path else None


def settings_from_env(env: Mapping[str, str]) -> Settings:
    """Check every setting before anything is started; raise ConfigError naming the first bad one."""
    # PORT is serve.py's (run.sh passes it on); checked here with the rest.
    port = int(_number(env, "PORT", 8000, minimum=1, integer=True))
    if port > 65535:
        raise ConfigError(f"PORT={port}: expected a port number 1-65535")
    data_dir = env.get("DATA_DIR", "").strip() or "/workdir"
    if not data_dir.startswith("/"):
        raise ConfigError(f"DATA_DIR={data_dir!r}: expected an absolute path")
    return Settings(
        site_repo=check_repo_url(env.get("SITE_REPO", "")),
        site_branch=check_branch(env.get("SITE_BRANCH", "").strip() or "main"),
        poll_interval=_number(env, "POLL_INTERVAL", 10.0, minimum=0.1, integer=False),
        data_dir=Path(data_dir),
        build_timeout=_number(env, "BUILD_TIMEOUT", 600.0, minimum=1, integer=False),
        git_timeout=_number(env, "GIT_TIMEOUT", 60.0, minimum=1, integer=False),
        keep_releases=int(_number(env, "KEEP_RELEASES", 5, minimum=2, integer=True)),
        build_memory_mb=int(_number(env, "BUILD_MEMORY_MB", 2048, minimum=256, integer=True)),
        max_file_mb=int(_number(env, "MAX_FILE_MB", 100, minimum=1, integer=True)),
        notify_url=check_notify_url(env.get("NOTIFY_URL", "")),
        notify_secret=env.get("NOTIFY_SECRET") or None,
        heartbeat_file=check_heartbeat_file(env.get("WATCHER_HEARTBEAT", "")),
        links_broken_fail=_flag(env, "LINKS_BROKEN_FAIL", False),
        build_worker_idle=build_worker_idle(env),
        landlock_abi_max=landlock_abi_max(env),
        builder_socket=check_builder_socket(env.get("BUILDER_SOCKET", "")),
        **previews(env),
    )


# SITE.DOMAIN: the site's name (no `--`, which separates a branch's label from it) and a host name.
_PREVIEWS_HOST = re.compile(r"(?=.{1,253}\Z)[a-z](?:-?[a-z0-9])*(\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+")


def previews(env: Mapping[str, str]) -> dict[str, object]:
    """PREVIEWS_HOST (SITE.DOMAIN; unset: no previews), PREVIEWS_MAX, PREVIEWS_PASSWORD, PREVIEWS_PUBLIC,
    PREVIEWS_HTTPS."""
    host = env.get("PREVIEWS_HOST", "").strip().lower()
    if not host:
        return {}
    if not _PREVIEWS_HOST.fullmatch(host) or len(host.split(".", 1)[0]) > 40:
        raise ConfigError(f"PREVIEWS_HOST={host!r}: expected SITE.DOMAIN (the site's name, without '--', and the "
                          "previews' domain), e.g. blog.preview.example.org")
    most = int(_number(env, "PREVIEWS_MAX", 10, minimum=1, integer=True))
    if most > 100:
        raise ConfigError(f"PREVIEWS_MAX={most}: at most 100 previews per site")
    public = _flag(env, "PREVIEWS_PUBLIC", False)
    password = env.get("PREVIEWS_PASSWORD") or None
    if password is None and not public:
        raise ConfigError("PREVIEWS_PASSWORD is not set: previews ask for a password unless PREVIEWS_PUBLIC=1")
    return {"previews_host": host, "previews_max": most, "previews_password": None if public else password,
            "previews_public": public, "previews_https": _flag(env, "PREVIEWS_HTTPS", False)}
