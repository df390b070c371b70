"""Attack traffic and legitimate readers, for the tests and bench/: bounded in count and time, aimed only at
a frontend on this machine. Attackers use 127.0.0.x source addresses (each a client of its own for the
frontend's per-client limits); readers come from ::1."""

from __future__ import annotations

import contextlib
import http.client
import itertools
import socket
import statistics
import threading
import time

import requests


class Readers:
    """Legitimate readers fetching a page in a loop; latencies (s) and failures recorded."""

    def __init__(self, url: str, expect: str, threads: int = 4, pause: float = 0.05,
                 headers: dict[str, str] | None = None, absent: str = "", fresh: bool = False):
        """`headers` go with every request (e.g. the Host of one site); a page containing `absent` (another
        site's text) counts as failed; with `fresh`, each request has a query string of its own (`?n=1`, …:
        past the frontend's cache, to the instance)."""
        self.url, self.expect, self.pause, self.headers, self.absent = url, expect, pause, headers or {}, absent
        self.fresh = itertools.count() if fresh else None
        self.latencies: list[float] = []
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        session = requests.Session()
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                url = self.url if self.fresh is None else f"{self.url}?n={next(self.fresh)}"
                response = session.get(url, timeout=10, headers=self.headers, allow_redirects=False)
                if response.status_code == 200 and self.expect in response.text and \
                        not (self.absent and self.absent in response.text):
                    self.latencies.append(time.monotonic() - started)
                else:
                    self.failed.append(f"status {response.status_code}")
            except requests.RequestException as exc:
                self.failed.append(type(exc).__name__)
            time.sleep(self.pause)

    def __enter__(self) -> Readers:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)

    def quantile(self, q: int) -> float:
        return statistics.quantiles(self.latencies, n=100)[q - 1] if len(self.latencies) > 1 else 0.0


class Trickle:
    """`count` connections over `sources` client addresses, each sending a request one byte per second:
    half of them a body (within the frontend's body limit), half of them headers."""

    def __init__(self, port: int, count: int = 200, sources: int = 10):
        self.port, self.count, self.sources = port, count, sources
        self.socks: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drip, daemon=True)

    def __enter__(self) -> Trickle:
        for number in range(self.count):
            source = f"127.0.0.{10 + number % self.sources}"
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=10, source_address=(source, 0))
            if number % 2:
                sock.sendall(f"POST /x{number} HTTP/1.1\r\nHost: blog\r\nContent-Length: 40000\r\n\r\nx".encode())
            else:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: blog\r\nX-Slow: ")
            self.socks.append(sock)
        self._thread.start()
        return self

    def _drip(self) -> None:
        while not self._stop.wait(1.0):
            for sock in self.socks:
                with contextlib.suppress(OSError):
                    sock.send(b"y")

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        for sock in self.socks:
            sock.close()


class JunkFlood:
    """Distinct junk paths (`pad` bytes long) from `workers` client addresses, as fast as they are answered,
    until `count` were sent or the context ends. `statuses` counts the answers by status."""

    def __init__(self, port: int, count: int, workers: int = 16, pad: int = 2000, first_source: str = "127.0.1."):
        self.port, self.count, self.workers, self.pad, self.prefix = port, count, workers, pad, first_source
        self.statuses: dict[int, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(w,), daemon=True) for w in range(workers)]

    def _run(self, worker: int) -> None:
        def connect() -> http.client.HTTPConnection:
            return http.client.HTTPConnection("127.0.0.1", self.port, timeout=10,
                                              source_address=(f"{self.prefix}{worker + 1}", 0))
        conn = connect()
        pad = "a" * self.pad
        for number in range(worker, self.count, self.workers):
            if self._stop.is_set():
                break
            try:
                conn.request("GET", f"/{number:08d}{pad}", headers={"Accept-Encoding": "gzip"})
                response = conn.getresponse()
                response.read()
                status = response.status
                if response.will_close:
                    conn.close()
                    conn = connect()
            except (OSError, http.client.HTTPException):
                status = 0
                conn.close()
                conn = connect()
            with self._lock:
                self.statuses[status] = self.statuses.get(status, 0) + 1
        conn.close()

    def __enter__(self) -> JunkFlood:
        for thread in self._threads:
            thread.start()
        return self

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.wait(30)
