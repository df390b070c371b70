"""What `./bootstrap.sh site` watches on the live host (container/sites.py): whether the agent runs and
watches the bootstrap YAML, the Docker containers of a site, HTTP probes of its instances and through the
frontend, the agent's log (did it refuse the file?), and the wait until a change is live.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from container import proc
from container.settings import Bootstrap
from container.site_config import SiteError

if TYPE_CHECKING:  # the site commands run without the Docker SDK imported; the probes are given a client
    import docker
    from docker.models.containers import Container

SITE_LABEL = "org.pequod.agent.site"  # runtime.LABEL + ".site": the label of a site's instances
WAIT_SECONDS = 600
PROGRESS_SECONDS = 10
REFUSED = "ignoring the changed bootstrap YAML"  # the agent's log line for a file it does not apply
ROUNDS = "pequod_agent_loop_rounds_total "  # the agent's metric: rounds of its loop (it watches the YAML then)


def agent_running(pid_file: Path) -> bool:
    """The agent runs under systemd, or as bootstrap.sh's supervised daemon."""
    if (shutil.which("systemctl") and Path("/run/systemd/system").is_dir()
            and proc.run(["systemctl", "is-active", "-q", "pequod-agent.service"], timeout=30, check=False,
                         error=SiteError).returncode == 0):
        return True
    try:
        pid = int(pid_file.read_text().strip())
        return "--supervise" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except (OSError, ValueError):
        return False


def agent_ready(boot: Bootstrap, pid_file: Path, timeout: float = 60) -> None:
    """The agent runs and watches the YAML: a change written while it starts (before it watches the file)
    would wait for the next one, so with its metrics on, this waits until its loop has done a round."""
    if not agent_running(pid_file):
        raise SiteError("the agent is not running: start it with ./bootstrap.sh, then try again")
    if boot.metrics.agent is None:
        return
    address, port = boot.metrics.agent
    url = f"http://{f'[{address}]' if address.version == 6 else address}:{port}/metrics"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=3) as response:
                text = response.read().decode(errors="replace")
            if any(line.startswith(ROUNDS) and float(line.split()[1]) >= 1 for line in text.splitlines()):
                return
        except (OSError, ValueError, IndexError):
            pass
        time.sleep(0.5)
    raise SiteError(f"the agent runs but has not finished a round of its loop within {timeout:.0f} s ({url}); "
                    "its log says why")


def docker_client() -> Any:
    from container import engine

    client = engine.connect(timeout=30)
    if client is None:
        raise SiteError("no Docker engine answers (is this host set up? ./bootstrap.sh)")
    return client


def site_containers(client: docker.DockerClient, name: str | None = None) -> list[Container]:
    """The running instances of one site (or of every site)."""
    label = f"{SITE_LABEL}={name}" if name else SITE_LABEL
    return client.containers.list(filters={"label": label}, ignore_removed=True)


def instance_url(container: Any, port: int, path: str) -> str:
    return f"http://[{(container.labels or {}).get('org.pequod.agent.ipv6', '::')}]:{port}{path}"


def get_json(url: str, host: str | None = None, timeout: float = 3,
             token: str | None = None) -> tuple[int, Any, dict[str, str]]:
    """(status, JSON body or None, headers) of a GET that follows no redirect; status 0: no answer. With
    `token`, as the site's owner (the deploy data needs it)."""
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    headers = {"Host": host} if host else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.build_opener(NoRedirect).open(request, timeout=timeout) as response:
            status, body, headers = response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        status, body, headers = exc.code, exc.read(), dict(exc.headers)
    except (OSError, ValueError):
        return 0, None, {}
    try:
        return status, json.loads(body), headers
    except ValueError:
        return status, None, headers


def frontend_address(boot: Bootstrap) -> str:
    bind = str(boot.frontend.bind)
    host = {"::": "::1", "0.0.0.0": "127.0.0.1"}.get(bind, bind)
    return f"[{host}]" if ":" in host else host


class AgentLog:
    """What the agent logs from now on: its log file, or the journal under systemd."""

    def __init__(self, path: Path):
        self.path = path
        self.since = time.time()
        self.offset = path.stat().st_size if path.is_file() else 0
        self.lines: list[str] = []

    def new_lines(self) -> list[str]:
        if self.path.is_file():
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
            self.offset += len(data)
            fresh = data.decode(errors="replace").splitlines()
        elif shutil.which("journalctl"):
            done = proc.run(["journalctl", "-q", "-u", "pequod-agent.service", "-o", "cat", "--since",
                             f"@{int(self.since)}"], timeout=30, check=False, error=SiteError)
            fresh = done.stdout.splitlines()[len(self.lines):]
        else:
            fresh = []
        self.lines += fresh
        return fresh

    def refusal(self) -> str | None:
        """The agent's one line when it did not apply the file (it keeps the running configuration)."""
        self.new_lines()
        return next((line for line in self.lines if REFUSED in line), None)

    def last(self) -> str:
        return self.lines[-1][:160] if self.lines else ""


def wait(what: str, probe: Callable[[], tuple[bool, str]], log: AgentLog, timeout: float = WAIT_SECONDS,
         on_refusal: Callable[[str], None] | None = None) -> None:
    """Poll `probe` (done, how it looks) until done; progress every PROGRESS_SECONDS with the agent's last log
    line; fails at once when the agent refused the file, and after `timeout`."""
    deadline, shown, state = time.monotonic() + timeout, time.monotonic(), ""
    while time.monotonic() < deadline:
        done, state = probe()
        if done:
            return
        refused = log.refusal()
        if refused is not None:
            if on_refusal is not None:
                on_refusal(refused)
            raise SiteError(f"the agent did not apply the change: {refused.split(REFUSED, 1)[-1].lstrip(': ')}")
        if time.monotonic() - shown >= PROGRESS_SECONDS:
            shown = time.monotonic()
            print(f"    still waiting for {what} ({state}) {log.last()}".rstrip(), flush=True)
        time.sleep(0.5)
    raise SiteError(f"{what}: not within {timeout / 60:.0f} minutes (last: {state}); the agent's log "
                    f"({log.path if log.path.is_file() else 'journalctl -u pequod-agent'}) says why")


def served_probe(client: Any, boot: Bootstrap, name: str, domain: str,
                 instance_port: int) -> Callable[[], tuple[bool, str]]:
    """Done when the frontend answers for `domain` from the site's own instance: its health answer names
    the release that instance serves (a Host the frontend does not know yet would get the default site),
    or, with HTTPS, plain HTTP is redirected to https://DOMAIN."""
    port = boot.frontend.port
    frontend = f"http://{frontend_address(boot)}:{port}/_site/health"

    def probe() -> tuple[bool, str]:
        releases = set()
        for container in site_containers(client, name):
            status, body, _ = get_json(instance_url(container, instance_port, "/_site/health?serving"))
            if status == 200 and isinstance(body, dict):
                releases.add(body.get("release"))
        if not releases:
            return False, "its instance is starting" if site_containers(client, name) else "no instance yet"
        status, body, headers = get_json(frontend, domain)
        if status == 200 and isinstance(body, dict) and body.get("release") in releases:
            return True, "served"
        if status == 301 and headers.get("Location", "").startswith(f"https://{domain}"):
            return True, "served (HTTPS)"
        return False, f"frontend: HTTP {status}" if status else "frontend: no answer"
    return probe


