"""What the host can provide: CPU in virtual MHz and memory, and the no-overbooking rule."""

from __future__ import annotations

import os
from dataclasses import dataclass

from container.errors import AgentError
from container.manifest import Resources


@dataclass(frozen=True)
class Capacity:
    cpus: int
    vmhz: int
    memory_mb: int

    @property
    def vmhz_per_cpu(self) -> float:
        return self.vmhz / self.cpus


def parse_cpuinfo(text: str, cpus: int) -> int:
    """Sum of the processors' clock rates in MHz (1000 per CPU where the kernel reports none)."""
    rates = [float(line.split(":", 1)[1]) for line in text.splitlines() if line.startswith("cpu MHz")]
    return int(sum(rates)) if rates else cpus * 1000


def parse_meminfo(text: str) -> int:
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise AgentError("/proc/meminfo has no MemTotal line")


def host_capacity() -> Capacity:
    cpus = os.cpu_count() or 1
    with open("/proc/cpuinfo") as cpuinfo, open("/proc/meminfo") as meminfo:
        return Capacity(cpus, parse_cpuinfo(cpuinfo.read(), cpus), parse_meminfo(meminfo.read()))


def nano_cpus(resources: Resources, capacity: Capacity) -> int:
    """The Docker CPU limit (in billionths of a CPU) that gives the manifest's virtual MHz."""
    return max(int(resources.cpu_vmhz / capacity.vmhz_per_cpu * 1e9), 10_000_000)


def check_fits(app: str, wanted: Resources, in_use: list[Resources], capacity: Capacity, site: bool = False) -> None:
    """Refuse what the host cannot provide next to what already runs (no overbooking)."""
    lower = ("give the site less (its vmhz, memory_mb) or remove a site" if site else
             "lower <resources {}> or stop an instance")
    used_vmhz = sum(r.cpu_vmhz for r in in_use)
    used_mb = sum(r.memory_mb for r in in_use)
    if used_vmhz + wanted.cpu_vmhz > capacity.vmhz:
        raise AgentError(
            f"{app} needs {wanted.cpu_vmhz} VMHz but the host offers {capacity.vmhz} VMHz "
            f"({capacity.cpus} CPUs) with {used_vmhz} in use; {lower.format('vmhz')}"
        )
    if used_mb + wanted.memory_mb > capacity.memory_mb:
        raise AgentError(
            f"{app} needs {wanted.memory_mb} MB but the host has {capacity.memory_mb} MB with {used_mb} in use; "
            f"{lower.format('mb')}"
        )
