"""The agent's metrics (Prometheus text format, via prometheus_client) on a host-only address.

Instances by state, replacements by reason, each instance's memory and CPU from its cgroup, egress
packets and bytes the firewall rejected per application, NAT64 address mappings and, with HTTPS, when
the served certificate expires, and the rounds of the supervision loop finished.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from container import firewall
from container.records import Instance

log = logging.getLogger(__name__)
CGROUP = Path("/sys/fs/cgroup")


def _cgroup_paths(pid: int) -> dict[str, str] | None:
    """Controller → the process's cgroup below it (`""`: the unified hierarchy of cgroup v2)."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    paths = {}
    for line in lines:
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path.lstrip("/")
    return paths


def memory_cgroup(pid: int) -> tuple[Path, bool] | None:
    """The directory of the process's memory cgroup and whether it is cgroup v2; None when unknown."""
    paths = _cgroup_paths(pid)
    if paths is None:
        return None
    if "" in paths and (CGROUP / paths[""] / "memory.current").exists():
        return CGROUP / paths[""], True
    if "memory" in paths:
        return CGROUP / "memory" / paths["memory"], False
    return None


def cgroup_usage(pid: int) -> tuple[int, float] | None:
    """(memory bytes, CPU seconds) of the cgroup the process is in (cgroup v1 or v2); None when unknown."""
    found, paths = memory_cgroup(pid), _cgroup_paths(pid)
    if found is None or paths is None:
        return None
    base, v2 = found
    try:
        if v2:
            memory = int((base / "memory.current").read_text())
            usage = dict(line.split() for line in (base / "cpu.stat").read_text().splitlines())
            return memory, int(usage["usage_usec"]) / 1e6
        memory = int((base / "memory.usage_in_bytes").read_text())
        cpuacct = next(CGROUP / mount / paths["cpuacct"] / "cpuacct.usage" for mount in ("cpuacct", "cpu,cpuacct")
                       if (CGROUP / mount / paths["cpuacct"] / "cpuacct.usage").exists())
        return memory, int(cpuacct.read_text()) / 1e9
    except (OSError, KeyError, ValueError, StopIteration):
        return None


def nat64_mappings(data_dir: Path) -> int:
    """Addresses Tayga has mapped dynamically (its dynamic.map, one line each)."""
    try:
        return sum(1 for line in (data_dir / "dynamic.map").read_text().splitlines() if line.strip()
                   and not line.startswith("#"))
    except OSError:
        return 0


class AgentCollector:
    """`snapshot` gives, at each scrape: {"instances": [(Instance, state)], "replacements": {app: {reason: n}},
    "certificate": Certificate | None, "certificate_failures": n, "certificates": {site: (Certificate | None,
    failures)}, "rounds": n}."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]], tayga_data: Path):
        self.snapshot, self.tayga_data = snapshot, tayga_data

    def collect(self) -> Iterator[Metric]:
        snapshot = self.snapshot()
        instances: list[tuple[Instance, str]] = snapshot["instances"]
        by_state = GaugeMetricFamily("pequod_agent_instances", "Instances, by application and state.",
                                     labels=["application", "state"])
        counted: dict[tuple[str, str], int] = {}
        for instance, state in instances:
            counted[(instance.application, state)] = counted.get((instance.application, state), 0) + 1
        for (application, state), count in sorted(counted.items()):
            by_state.add_metric([application, state], count)
        yield by_state
        replaced = CounterMetricFamily("pequod_agent_replacements", "Instances replaced, by application and reason "
                                       "(crash, unhealthy, config, image).", labels=["application", "reason"])
        for application, reasons in sorted(snapshot["replacements"].items()):
            for reason, count in sorted(reasons.items()):
                replaced.add_metric([application, reason], int(count))
        yield replaced
        memory = GaugeMetricFamily("pequod_agent_instance_memory_bytes", "Memory charged to the instance's cgroup.",
                                   labels=["application", "instance"])
        cpu = CounterMetricFamily("pequod_agent_instance_cpu_seconds", "CPU time the instance's cgroup used.",
                                  labels=["application", "instance"])
        for instance, _state in instances:
            usage = cgroup_usage(instance.pid)
            if usage is not None:
                memory.add_metric([instance.application, instance.name], usage[0])
                cpu.add_metric([instance.application, instance.name], usage[1])
        yield memory
        yield cpu
        packets = CounterMetricFamily("pequod_agent_egress_rejected_packets", "Packets from instances the firewall "
                                      "rejected (not declared), by application.", labels=["application"])
        volume = CounterMetricFamily("pequod_agent_egress_rejected_bytes", "Bytes of those packets.",
                                     labels=["application"])
        for application, (count, size) in sorted(firewall.rejected_by_application().items()):
            packets.add_metric([application], count)
            volume.add_metric([application], size)
        yield packets
        yield volume
        # With sites, each site's certificate (a domain belongs to one site, so the domain tells which).
        certificates = [cert for cert, _ in snapshot.get("certificates", {}).values() if cert is not None] or \
            [cert for cert in [snapshot.get("certificate")] if cert is not None]
        if certificates:  # only with HTTPS
            expiry = GaugeMetricFamily("pequod_agent_certificate_expiry_timestamp_seconds", "When the certificate "
                                       "the frontend serves expires (Unix time), by domain.", labels=["domain"])
            for domain, not_after in sorted({(d, c.not_after) for c in certificates for d in c.domains}):
                expiry.add_metric([domain], not_after)
            yield expiry
            yield GaugeMetricFamily("pequod_agent_certificate_renewal_failures", "Failed attempts to renew the "
                                    "certificate since the last success.", value=snapshot["certificate_failures"])
        yield GaugeMetricFamily("pequod_agent_nat64_mappings", "IPv4 addresses NAT64 has mapped to instance "
                                "addresses.", value=nat64_mappings(self.tayga_data))
        yield CounterMetricFamily("pequod_agent_loop_rounds", "Rounds of the agent's supervision loop finished "
                                  "(each checks every instance, the frontend, NAT64, the firewall and the "
                                  "certificate).", value=int(snapshot.get("rounds", 0)))


def serve(address: Any, port: int, collector: AgentCollector) -> None:
    """The metrics endpoint in a thread of the agent: http://ADDRESS:PORT/metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    start_http_server(port, addr=str(address), registry=registry)
    log.info("metrics at http://%s/metrics", f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}")
