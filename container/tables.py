"""`pequod-agent -i` and `-i services`: what runs, as the seed's tables or JSON.

Read from Docker (our labels) and the manifest in each instance's image, so it works whether or
not the agent is running.
"""

from __future__ import annotations

import time
from typing import Any

from container import runtime
from container.errors import AgentError
from container.image import manifest_from_image

INSTANCE_COLUMNS = ("Instance Name", "Repo", "Application Name", "Ver", "Zone", "PID", "IPv6", "Started")
SERVICE_COLUMNS = ("Instance Name", "Repo", "Application Name", "Ver", "Type", "Service", "Ver",
                   "Local Hostname", "Local Port")


def relative(seconds: float) -> str:
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def instance_rows(client: Any, now: float | None = None,
                  replacements: dict[str, dict[str, int]] | None = None) -> list[dict[str, Any]]:
    """Running instances; `replacements` (from state.json: application → reason → count) adds, per row, how
    often its application's instance was replaced after a crash and after failing its health checks."""
    now = time.time() if now is None else now
    replacements = replacements or {}
    rows = []
    for instance in runtime.instances(client):
        if not instance.running:
            continue
        started = instance.started or now
        rows.append({
            "instance_name": instance.name, "repo": instance.repo, "application_name": instance.application,
            "version": instance.version, "zone": instance.zone, "pid": instance.pid, "ipv6": str(instance.address),
            "site": instance.site,
            "started": started, "started_relative": relative(now - started),
            "replacements": {reason: replacements.get(instance.application, {}).get(reason, 0)
                             for reason in ("crash", "unhealthy")},
        })
    return sorted(rows, key=lambda row: row["instance_name"])


def service_rows(client: Any) -> list[dict[str, Any]]:
    rows = []
    images = {instance.name: instance.image for instance in runtime.instances(client)}
    for instance in instance_rows(client):
        try:
            manifest = manifest_from_image(client, images.get(instance["instance_name"], ""))
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
    sites = any(r.get("site") for r in rows)  # a SITE column only on a host that serves sites
    columns = (*INSTANCE_COLUMNS[:3], "Site", *INSTANCE_COLUMNS[3:]) if sites else INSTANCE_COLUMNS
    text = table(columns, [
        (r["instance_name"], r["repo"], r["application_name"], *((r.get("site") or "-",) if sites else ()),
         r["version"], r["zone"], str(r["pid"]), r["ipv6"], r["started_relative"]) for r in rows
    ])
    replaced = {r["application_name"]: r["replacements"] for r in rows if any(r["replacements"].values())}
    notes = [f"{name}: replaced {counts['crash']} time(s) after a crash, {counts['unhealthy']} after failing its "
             "health checks" for name, counts in sorted(replaced.items())]
    return "\n".join([text, *([""] + notes if notes else [])])


def services_table(rows: list[dict[str, Any]]) -> str:
    return table(SERVICE_COLUMNS, [
        (r["instance_name"], r["repo"], r["application_name"], r["version"], r["type"], r["service"],
         r["service_version"], r["local_hostname"], str(r["local_port"])) for r in rows
    ], right=(8,))
