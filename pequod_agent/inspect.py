"""`pequod-agent -i` and `-i services`: what runs, as the seed's tables or JSON.

Read from Docker (our labels) and the manifest in each instance's image, so it works whether or
not the agent is running.
"""

from __future__ import annotations

import time
from typing import Any

import docker

from pequod_agent import runtime
from pequod_agent.errors import AgentError
from pequod_agent.image import manifest_from_image

INSTANCE_COLUMNS = ("Instance Name", "Repo", "Application Name", "Ver", "Zone", "PID", "IPv6", "Started")
SERVICE_COLUMNS = ("Instance Name", "Repo", "Application Name", "Ver", "Type", "Service", "Ver",
                   "Local Hostname", "Local Port")


def relative(seconds: float) -> str:
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def instance_rows(client: docker.DockerClient, now: float | None = None) -> list[dict[str, Any]]:
    now = time.time() if now is None else now
    rows = []
    for container in runtime.our_containers(client):
        if container.status != "running":
            continue
        started = float(runtime.label(container, "started") or now)
        rows.append({
            "instance_name": container.name, "repo": runtime.label(container, "repo"),
            "application_name": runtime.label(container, "application"),
            "version": runtime.label(container, "version"), "zone": runtime.label(container, "zone"),
            "pid": container.attrs["State"]["Pid"], "ipv6": runtime.label(container, "ipv6"),
            "started": started, "started_relative": relative(now - started),
        })
    return sorted(rows, key=lambda row: row["instance_name"])


def service_rows(client: docker.DockerClient) -> list[dict[str, Any]]:
    rows = []
    for instance in instance_rows(client):
        container = client.containers.get(instance["instance_name"])
        try:
            manifest = manifest_from_image(client, runtime.label(container, "image"))
        except AgentError:
            continue
        base = {key: instance[key] for key in ("instance_name", "repo", "application_name", "version")}
        for provide in manifest.provides:
            rows.append({**base, "type": "provide", "service": provide.name, "service_version": provide.version,
                         "local_hostname": instance["ipv6"], "local_port": provide.local_port})
        for require in manifest.requires:
            rows.append({**base, "type": "require", "service": require.name, "service_version": require.version,
                         "local_hostname": require.local_hostname, "local_port": require.local_port})
    return rows


def table(columns: tuple[str, ...], rows: list[tuple[str, ...]], right: tuple[int, ...] = ()) -> str:
    widths = [max([len(col), *(len(row[i]) for row in rows)]) for i, col in enumerate(columns)]

    def line(cells: tuple[str, ...]) -> str:
        return " ".join(
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]) for i, cell in enumerate(cells)
        ).rstrip()

    return "\n".join([line(columns), *(line(row) for row in rows)])


def instances_table(rows: list[dict[str, Any]]) -> str:
    return table(INSTANCE_COLUMNS, [
        (r["instance_name"], r["repo"], r["application_name"], r["version"], r["zone"], str(r["pid"]), r["ipv6"],
         r["started_relative"]) for r in rows
    ])


def services_table(rows: list[dict[str, Any]]) -> str:
    return table(SERVICE_COLUMNS, [
        (r["instance_name"], r["repo"], r["application_name"], r["version"], r["type"], r["service"],
         r["service_version"], r["local_hostname"], str(r["local_port"])) for r in rows
    ], right=(8,))
