"""The per-client connection limit with real HAProxy: IPv6 clients count per /64 (one host or network holds
a whole /64, so per-address counting would give one attacker 2^64 budgets), IPv4 clients per address.
The IPv6 clients live in a network namespace of the test's own, routed to the host, so HAProxy sees
their addresses as sources."""

from __future__ import annotations

import concurrent.futures
import ctypes
import ipaddress
import random
import socket
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
import requests

from container.frontend import Server, Service, render_haproxy_conf
from tests.helpers import REPO_ROOT, Process, free_port, python_env, wait_for
from tests.netns import ip

pytestmark = pytest.mark.system  # root: a network namespace, HAProxy, ports

HOST, PEER = "fd00:c11e:ff::1", "fd00:c11e:ff::2"  # the veth's ends; HAProxy listens on HOST
NETWORK_1, NETWORK_2 = "fd00:c11e:1::", "fd00:c11e:2::"  # two /64s behind the namespace
CLIENTS = [NETWORK_1 + "10", NETWORK_1 + "11", NETWORK_1 + "12", NETWORK_2 + "10"]
REQUEST = b"GET / HTTP/1.1\r\nHost: limits.test\r\n\r\n"


class Clients:
    """A namespace holding CLIENTS, joined to the host by a veth; creates sockets inside it."""

    def __init__(self) -> None:
        tag = f"{random.randrange(16 ** 5):05x}"
        self.netns, self.host_if, inner = f"pqt-limits-{tag}", f"pqlh{tag}", f"pqln{tag}"
        ip("netns", "add", self.netns)
        self.thread: concurrent.futures.ThreadPoolExecutor | None = None
        try:
            ip("link", "add", self.host_if, "type", "veth", "peer", "name", inner)
            ip("link", "set", inner, "netns", self.netns)
            ip("-6", "addr", "add", f"{HOST}/64", "dev", self.host_if, "nodad")
            ip("link", "set", self.host_if, "up")
            for network in (NETWORK_1, NETWORK_2):
                ip("-6", "route", "add", f"{network}/64", "via", PEER, "dev", self.host_if)
            for address in (PEER, *CLIENTS):
                ip("-n", self.netns, "-6", "addr", "add", f"{address}/64", "dev", inner, "nodad")
            ip("-n", self.netns, "link", "set", inner, "up")
            # One thread that entered the namespace: sockets keep the namespace they were created in.
            self.thread = concurrent.futures.ThreadPoolExecutor(1, initializer=self._enter)
        except BaseException:
            self.remove()
            raise

    def _enter(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        with open(f"/run/netns/{self.netns}") as handle:
            if libc.setns(handle.fileno(), 0x40000000) != 0:  # CLONE_NEWNET
                raise OSError(ctypes.get_errno(), "setns")

    def socket(self) -> socket.socket:
        assert self.thread is not None
        return self.thread.submit(socket.socket, socket.AF_INET6, socket.SOCK_STREAM).result()

    def remove(self) -> None:
        if self.thread is not None:
            self.thread.shutdown()
        ip("link", "del", self.host_if, check=False)
        ip("netns", "del", self.netns, check=False)


@contextmanager
def frontend(tmp_path: Path) -> Iterator[tuple[Clients, int, int]]:
    """HAProxy as the agent configures it, with a limit of 2 connections per client on HOST and of 1 on
    127.0.0.1, in front of serve.py; the namespace and both ports."""
    release = tmp_path / "release"
    release.mkdir()
    (release / "index.html").write_text("<html>home</html>")
    backend, port6, port4 = free_port(), free_port(), free_port()
    with ExitStack() as stack:
        clients = Clients()
        stack.callback(clients.remove)
        serve = Process([sys.executable, str(REPO_ROOT / "serve.py"), str(release), "--host", "::1",
                         "--port", str(backend)], python_env(), tmp_path / "serve.log")
        stack.callback(serve.stop)
        servers = (Server("s1", ipaddress.IPv6Address("::1"), backend),)
        config = tmp_path / "haproxy.cfg"
        config.write_text(render_haproxy_conf((
            Service("six", ipaddress.IPv6Address(HOST), port6, "/_site/health", servers,
                    max_connections_per_client=2),
            Service("four", ipaddress.IPv4Address("127.0.0.1"), port4, "/_site/health", servers,
                    max_connections_per_client=1)), tmp_path))
        haproxy = Process(["haproxy", "-W", "-f", str(config)], python_env(), tmp_path / "haproxy.log")
        stack.callback(haproxy.stop)
        wait_for("the site through HAProxy",
                 lambda: requests.get(f"http://127.0.0.1:{port4}/", timeout=5).status_code == 200, 30)
        yield clients, port6, port4


def connect(sock: socket.socket, source: str, destination: tuple[str, int]) -> socket.socket | None:
    """The connection from `source`; None when it was reset at once (HAProxy refused it that fast)."""
    sock.settimeout(5)
    sock.bind((source, 0))
    try:
        sock.connect(destination)
    except ConnectionResetError:
        return None
    return sock


def ask(sock: socket.socket | None) -> bytes:
    """What HAProxy answers to a request on this connection (up to the end of the headers); b"" when it
    closes the connection instead."""
    answer = b""
    if sock is None:
        return answer
    try:
        sock.sendall(REQUEST)
        while b"\r\n\r\n" not in answer and (chunk := sock.recv(4096)):
            answer += chunk
    except (ConnectionResetError, BrokenPipeError):
        pass
    return answer


def answered(sock: socket.socket | None) -> bool:
    answer = ask(sock)
    if answer.startswith(b"HTTP/1.1 200"):
        return True
    assert answer == b"", answer  # refused means closed without an answer, not some error page
    return False


def test_ipv6_clients_count_per_64_and_ipv4_clients_per_address(tmp_path: Path) -> None:
    with frontend(tmp_path) as (clients, port6, port4), ExitStack() as held:
        def v6(source: str) -> socket.socket | None:
            return connect(held.enter_context(clients.socket()), source, (HOST, port6))

        def v4(source: str) -> socket.socket | None:
            return connect(held.enter_context(socket.socket(socket.AF_INET)), source, ("127.0.0.1", port4))

        # Two connections held open by two addresses of one /64: the limit of 2 is that network's.
        first, second = v6(NETWORK_1 + "10"), v6(NETWORK_1 + "11")
        assert answered(first) and answered(second)
        assert not answered(v6(NETWORK_1 + "12"))  # a third address of that /64 gets nothing
        assert answered(v6(NETWORK_2 + "10"))  # another /64 has its own budget
        assert answered(first) and answered(second)  # the held connections are still served
        assert second is not None
        second.close()
        wait_for("a connection from the first /64 to be answered again",
                 lambda: answered(v6(NETWORK_1 + "12")), 10)

        # IPv4: each address has its own budget (here 1), even next to each other.
        one, other = v4("127.0.0.2"), v4("127.0.0.3")
        assert answered(one) and answered(other)
        assert not answered(v4("127.0.0.2"))  # the limit holds per address
