"""IPv4-only "internet hosts" for the tests: each a network namespace joined to the host by a veth pair,
with addresses from 198.18.0.0/15 (never routed off this machine). Removed again, also on failure."""

from __future__ import annotations

import ipaddress
import random
import subprocess
from pathlib import Path

from tests.helpers import Process, python_env


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


class Ipv4Host:
    """A namespace with one IPv4 address (a /30 shared with the host end) and no IPv6 at all."""

    def __init__(self, tmp: Path, label: str):
        self.tmp = tmp
        tag = f"{random.randrange(16 ** 5):05x}"
        self.netns = f"pqt-{label}-{tag}"
        self.host_if, inner = f"pqth{tag}", f"pqtn{tag}"
        block = ipaddress.IPv4Network((int(ipaddress.IPv4Address("198.18.128.0")) + 4 * random.randrange(4096), 30))
        self.gateway, self.address = block[1], block[2]
        self.processes: list[Process] = []
        ip("netns", "add", self.netns)
        try:
            ip("link", "add", self.host_if, "type", "veth", "peer", "name", inner)
            ip("link", "set", inner, "netns", self.netns)
            ip("addr", "add", f"{self.gateway}/30", "dev", self.host_if)
            ip("link", "set", self.host_if, "up")
            self.run("sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1")
            self.run("ip", "addr", "add", f"{self.address}/30", "dev", inner)
            self.run("ip", "link", "set", inner, "up")
            self.run("ip", "link", "set", "lo", "up")
            self.run("ip", "route", "add", "default", "via", str(self.gateway))
        except BaseException:
            self.remove()
            raise

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["ip", "netns", "exec", self.netns, *argv], capture_output=True, text=True,
                                timeout=30)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} in {self.netns}: {result.stderr.strip()}")
        return result

    def start(self, name: str, *argv: str) -> Process:
        log = self.tmp / f"{self.netns}-{name}.log"
        process = Process(["ip", "netns", "exec", self.netns, *argv], python_env(), log)
        self.processes.append(process)
        return process

    def serve_git(self, base_path: Path, port: int) -> Process:
        return self.start("git", "git", "daemon", "--reuseaddr", "--export-all", f"--base-path={base_path}",
                          "--listen=0.0.0.0", f"--port={port}", str(base_path))

    def serve_http(self, directory: Path, port: int) -> Process:
        return self.start("http", "python3", "-m", "http.server", "--bind", "0.0.0.0", "--directory",
                          str(directory), str(port))

    def remove(self) -> None:
        for process in self.processes:
            process.stop()
        ip("link", "del", self.host_if, check=False)
        ip("netns", "del", self.netns, check=False)
