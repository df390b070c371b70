"""Pipeline settings: one table of the blog image's environment variables, read once into a frozen dataclass.

`SETTINGS` is the only place a setting's default, check and description are written: `settings_from_env`
parses with it, run.sh asks it for the values it needs (`python -m pipeline check-config --shell`), and the
reference in docs/configuration.md is printed from it (`python -m pipeline.config --reference`; a test
compares the two). (systemd's mkosi keeps its settings the same way.)
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pipeline import layout
from pipeline.errors import ConfigError
from pipeline.layout import Layout

_URL_SCHEMES = ("file", "http", "https", "ssh", "git")
_SCP_LIKE = re.compile(r"[\w.-]+@[\w.-]+:.+")
# git check-ref-format's rules, the ones a user can plausibly trip over.
_BAD_BRANCH = re.compile(r"(^[-/.])|(\.\.)|([\s~^:?*\[\\])|(@\{)|(/\Z)|(\.lock\Z)|(\.\Z)|(//)")


@dataclass(frozen=True)
class Settings:
    """The checked settings; made only by settings_from_env, from SETTINGS (where the defaults are)."""

    site_repo: str
    site_branch: str
    poll_interval: float
    data_dir: Path
    build_timeout: float
    git_timeout: float
    keep_releases: int
    build_memory_mb: int
    max_file_mb: int
    build_worker_idle: float
    builder_socket: Path | None  # None: builds run in a process of ours
    landlock_abi_max: int | None  # None: the kernel's
    notify_url: str | None
    notify_secret: str | None
    previews_host: str | None  # None: other branches are ignored
    previews_max: int
    previews_password: str | None  # None with previews_public only
    previews_public: bool
    previews_https: bool
    links_broken_fail: bool
    heartbeat_file: Path | None

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


# ---- how a value is read: (variable name, its value without surrounding blanks) -> the setting's value ----

Parse = Callable[[str, str], Any]


def number(minimum: float, *, integer: bool = False, maximum: float | None = None, above: str = "") -> Parse:
    """A number of at least `minimum`; above `maximum` the error says `above`."""
    def parse(name: str, raw: str) -> float:
        try:
            value = int(raw) if integer else float(raw)
        except ValueError:
            kind = "a whole number" if integer else "a number"
            raise ConfigError(f"{name}={raw!r}: expected {kind}") from None
        if value < minimum or value != value:  # NaN compares unequal to itself
            raise ConfigError(f"{name}={raw!r}: must be at least {minimum:g}")
        if maximum is not None and value > maximum:
            raise ConfigError(f"{name}={value}: {above}")
        return value
    return parse


_FLAGS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def flag(name: str, raw: str) -> bool:
    try:
        return _FLAGS[raw.lower()]
    except KeyError:
        raise ConfigError(f"{name}={raw!r}: expected 1 or 0 (true/false, yes/no, on/off)") from None


def text(_name: str, raw: str) -> str:
    return raw


def absolute_path(what: str = "") -> Parse:
    """An absolute path; `what` it is, said in the error."""
    def parse(name: str, raw: str) -> Path:
        if not raw.startswith("/"):
            raise ConfigError(f"{name}={raw!r}: expected an absolute path{f' ({what})' if what else ''}")
        return Path(raw)
    return parse


def repo_url(name: str, url: str) -> str:
    scheme = urlsplit(url).scheme
    if scheme in _URL_SCHEMES or _SCP_LIKE.fullmatch(url) or url.startswith("/"):
        return url
    raise ConfigError(
        f"{name}={redact_url(url)!r}: expected a git URL (file://, https://, ssh://, git://, "
        "user@host:path) or an absolute path"
    )


def branch(name: str, raw: str) -> str:
    if _BAD_BRANCH.search(raw):
        raise ConfigError(f"{name}={raw!r}: not a valid git branch name")
    return raw


def http_url(name: str, url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name}={redact_url(url)!r}: expected an http:// or https:// URL")
    return url


# SITE.DOMAIN: the site's name (no `--`, which separates a branch's label from it) and a host name.
_PREVIEWS_HOST = re.compile(r"(?=.{1,253}\Z)[a-z](?:-?[a-z0-9])*(\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+")


def previews_host(name: str, raw: str) -> str:
    host = raw.lower()
    if not _PREVIEWS_HOST.fullmatch(host) or len(host.split(".", 1)[0]) > 40:
        raise ConfigError(f"{name}={host!r}: expected SITE.DOMAIN (the site's name, without '--', and the "
                          "previews' domain), e.g. blog.preview.example.org")
    return host


# ---- the table ----

@dataclass(frozen=True)
class Setting:
    """One environment variable: how it is read, its value when unset or empty, and its line in the reference."""

    name: str
    parse: Parse
    default: Any
    help: str
    field: str | None = None  # the Settings field it fills; None: another part reads it (serve.py: PORT…)
    shown: str | None = None  # the reference's default where the value says too little (None, a condition)
    required: str | None = None  # unset is an error, with this hint
    strip: bool = True  # False: taken as given, blanks and all (secrets)
    needs: str | None = None  # read only when this other setting is given; else the default

    def read(self, env: Mapping[str, str]) -> Any:
        raw = env.get(self.name, "")
        value = raw.strip() if self.strip else raw
        if value:
            return self.parse(self.name, value)
        if self.required is not None:
            raise ConfigError(f"{self.name} is not set: {self.required}")
        return self.default


_PORT = "expected a port number 1-65535"

SETTINGS: tuple[Setting, ...] = (
    Setting("SITE_REPO", repo_url, None, "git URL of the site: `file://`, `https://`, `ssh://`, `git://`, "
            "`user@host:path` or an absolute path", "site_repo", shown="(required)",
            required="give the git URL of the site repository"),
    Setting("SITE_BRANCH", branch, "main", "branch to publish", "site_branch"),
    Setting("POLL_INTERVAL", number(0.1), 10.0, "seconds between checks of the remote head (a webhook or a push "
            "to a local remote is seen at once; `./bootstrap.sh` sets 5)", "poll_interval"),
    Setting("DATA_DIR", absolute_path(), layout.DEFAULT, "where releases, the work tree and the status live",
            "data_dir"),
    # serve.py's (run.sh passes it on as --port); checked here with the rest.
    Setting("PORT", number(1, integer=True, maximum=65535, above=_PORT), 8000, "port of `serve.py` (on `::`)"),
    Setting("BUILD_TIMEOUT", number(1), 600.0, "seconds a build may take", "build_timeout"),
    Setting("GIT_TIMEOUT", number(1), 60.0, "seconds a git command may take", "git_timeout"),
    Setting("KEEP_RELEASES", number(2, integer=True), 5, "releases kept (at least 2); the live one is never "
            "deleted", "keep_releases"),
    Setting("BUILD_MEMORY_MB", number(256, integer=True), 2048, "address-space limit of a build (at least 256)",
            "build_memory_mb"),
    Setting("MAX_FILE_MB", number(1, integer=True), 100, "the largest file a commit may hold (checked after the "
            "fetch, before anything is checked out), and the largest file a build may write", "max_file_mb"),
    # The build worker inherits it and reads it too (build_worker_idle below).
    Setting("BUILD_WORKER_IDLE", number(1), 900.0, "seconds the warm build worker (and the site it keeps loaded) "
            "waits for the next build before it ends, freeing its memory; the next push then loads the site "
            "afresh", "build_worker_idle"),
    Setting("BUILDER_SOCKET", absolute_path("the builder's unix socket"), None, "the unix socket of the builder's "
            "worker; the agent sets it (from `<builder volume>`) for both containers, so builds run in the "
            "builder", "builder_socket", shown="(none: builds run in a process of the instance)"),
    # The build worker inherits it and reads it too (landlock_abi_max below).
    Setting("LANDLOCK_ABI_MAX", number(0, integer=True), None, "the highest Landlock ABI the build sandbox uses: "
            "`2` gives the sandbox of Debian 12's kernel (6.1) on a newer one, to reproduce or test it; `0` turns "
            "Landlock off ([build-sandbox.md](build-sandbox.md))", "landlock_abi_max", shown="(the kernel's)"),
    # serve.py's (pipeline.serve.webhook).
    Setting("WEBHOOK_SECRET", text, None, "enables `POST /_site/hook` (the HMAC key of signed webhooks, or the "
            "token of plain requests), rollbacks and clean builds from the deploy page", shown="(none)",
            strip=False),
    Setting("NOTIFY_URL", http_url, None, "where deploy notifications are POSTed (`http://` or `https://`)",
            "notify_url", shown="(none)"),
    Setting("NOTIFY_SECRET", text, None, "their HMAC-SHA256 key (`X-Pequod-Signature-256`)", "notify_secret",
            shown="(none)", strip=False),
    Setting("PREVIEWS_HOST", previews_host, None, "`SITE.DOMAIN`: every other branch is built as a preview served "
            "at `BRANCH--SITE.DOMAIN` ([previews.md](previews.md)); the agent sets it and the four below from "
            "the bootstrap YAML's `previews`", "previews_host", shown="(none: other branches are ignored)"),
    Setting("PREVIEWS_MAX", number(1, integer=True, maximum=100, above="at most 100 previews per site"), 10,
            "previews at most (1-100); the least recently pushed branches retire", "previews_max",
            needs="PREVIEWS_HOST"),
    Setting("PREVIEWS_PASSWORD", text, None, "the previews' HTTP Basic password (user `preview`)",
            "previews_password", shown="(required unless public)", strip=False, needs="PREVIEWS_HOST"),
    Setting("PREVIEWS_PUBLIC", flag, False, "`1`: previews ask no password", "previews_public",
            needs="PREVIEWS_HOST"),
    Setting("PREVIEWS_HTTPS", flag, False, "`1`: preview addresses say `https://` (the agent keeps their wildcard "
            "certificate)", "previews_https", needs="PREVIEWS_HOST"),
    Setting("LINKS_BROKEN_FAIL", flag, False, "`1`: broken internal links or anchors fail the build (checked "
            "before the swap); `0`: they are only reported, after the swap "
            "([publishing.md](publishing.md#failing-the-build-instead-links_broken_fail))", "links_broken_fail"),
    # pipeline.heartbeat's ENV.
    Setting("WATCHER_HEARTBEAT", absolute_path(), None, "the watcher's heartbeat file, which the health check of "
            "`serve.py` reads; `run.sh` sets it (a file of the instance's own, outside `DATA_DIR`)",
            "heartbeat_file", shown="(set by `run.sh`)"),
)
SETTING = {setting.name: setting for setting in SETTINGS}


def value(env: Mapping[str, str], name: str) -> Any:
    """One setting's value (checked; its default when unset), for a part that reads it on its own."""
    return SETTING[name].read(env)


def _read_all(env: Mapping[str, str], settings: Iterable[Setting]) -> dict[str, Any]:
    """name → value in the table's order, the first bad one raising; a setting whose `needs` is unset keeps
    its default, unchecked."""
    values: dict[str, Any] = {}
    for setting in settings:
        needed = setting.needs is None or values.get(setting.needs) is not None
        values[setting.name] = setting.read(env) if needed else setting.default
    return values


def settings_from_env(env: Mapping[str, str]) -> Settings:
    """Check every setting before anything is started; raise ConfigError naming the first bad one."""
    values = _read_all(env, SETTINGS)
    _check_previews(values)
    return Settings(**{setting.field: values[setting.name] for setting in SETTINGS if setting.field})


def _check_previews(values: dict[str, Any]) -> None:
    """What no single setting says: previews ask for a password unless public, and a public one keeps none."""
    if values["PREVIEWS_HOST"] is None:
        return
    if values["PREVIEWS_PUBLIC"]:
        values["PREVIEWS_PASSWORD"] = None
    elif values["PREVIEWS_PASSWORD"] is None:
        raise ConfigError("PREVIEWS_PASSWORD is not set: previews ask for a password unless PREVIEWS_PUBLIC=1")


def build_worker_idle(env: Mapping[str, str]) -> float:
    """BUILD_WORKER_IDLE: checked with the rest at start; the worker (which inherits it) reads it here too."""
    return value(env, "BUILD_WORKER_IDLE")


def landlock_abi_max(env: Mapping[str, str]) -> int | None:
    """LANDLOCK_ABI_MAX: checked with the rest at start; the build worker (which inherits it) reads it here too."""
    return value(env, "LANDLOCK_ABI_MAX")


_PREVIEWS = tuple(setting for setting in SETTINGS if setting.name.startswith("PREVIEWS_"))


def previews(env: Mapping[str, str]) -> dict[str, object]:
    """The previews' settings (serve.py's share): Settings fields → values; nothing without PREVIEWS_HOST."""
    values = _read_all(env, _PREVIEWS)
    if values["PREVIEWS_HOST"] is None:
        return {}
    _check_previews(values)
    return {setting.field: values[setting.name] for setting in _PREVIEWS if setting.field}


# ---- what others are given: run.sh's values, the reference in docs/configuration.md ----

def _literal(value: Any) -> str:
    """A value as the environment would give it: 10.0 is `10`, True is `1`, None is empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def shell(env: Mapping[str, str], names: Iterable[str]) -> str:
    """`NAME=value` lines (quoted for sh) with the defaults applied: what run.sh needs itself (it repeats no
    default). Raises ConfigError for an unknown name, as for a bad value."""
    lines = []
    for name in names:
        if name not in SETTING:
            raise ConfigError(f"{name}: not a setting of the blog image (docs/configuration.md)")
        lines.append(f"{name}={shlex.quote(_literal(value(env, name)))}")
    return "".join(f"{line}\n" for line in lines)


REFERENCE_HEADER = "| variable | default | meaning |\n|---|---|---|\n"


def reference() -> str:
    """The markdown table of docs/configuration.md's pipeline settings."""
    rows = []
    for setting in SETTINGS:
        default = setting.shown if setting.shown is not None else f"`{_literal(setting.default)}`"
        rows.append(f"| `{setting.name}` | {default} | {setting.help} |\n")
    return REFERENCE_HEADER + "".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.config", description="The blog image's settings.")
    parser.add_argument("--reference", action="store_true",
                        help="print the markdown table of docs/configuration.md's pipeline settings")
    args = parser.parse_args(argv)
    if not args.reference:
        parser.error("nothing to do: give --reference")
    sys.stdout.write(reference())
    return 0


if __name__ == "__main__":
    sys.exit(main())
