"""Raw requests with a hostile Host (HTTP/1.1) or :authority (HTTP/2), plain or over TLS: what no HTTP
library lets a test send. Aimed at the tests' own frontend on loopback only."""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass

# Host values the frontend refuses (400): not a host name or IP literal with an optional port. (Not
# `host:80:80` or `host:`: over HTTP/2 HAProxy drops a scheme's default or empty port from the end of
# :authority first, which leaves `host:80` or `host`, well-formed and routed like `host`; over HTTP/1.1
# `host:` is refused.)
BAD_HOSTS = ("{host}/posts", "{host}@evil.example", "evil.example@{host}", "{host}\\x", "{host}%2f",
             "{host} x", "{host}..", ".{host}", "{host}:8080:8080", "{host}:8o", "[{host}]", "", "{host}?")


RESET = -1  # an HTTP/2 stream the frontend reset


@dataclass
class Answer:
    status: int
    body: str


def _connect(port: int, tls: ssl.SSLContext | None, server_name: str | None, alpn: str | None) -> socket.socket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    if tls is None:
        return raw
    if alpn:
        tls.set_alpn_protocols([alpn])
    return tls.wrap_socket(raw, server_hostname=server_name)


def http1(port: int, host: str | None, path: str = "/", *, tls: ssl.SSLContext | None = None,
          server_name: str | None = None, extra: str = "") -> Answer:
    """One HTTP/1.1 request with `host` as its Host line, byte for byte (None: no Host line)."""
    head = f"GET {path} HTTP/1.1\r\n" + ("" if host is None else f"Host: {host}\r\n") + extra
    with _connect(port, tls, server_name, "http/1.1" if tls else None) as connection:
        connection.sendall((head + "Connection: close\r\n\r\n").encode("latin-1"))
        data = b""
        while chunk := connection.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    return Answer(int(status_line.split(b" ")[1]), rest.partition(b"\r\n\r\n")[2].decode(errors="replace"))


def http2(port: int, authority: str, path: str = "/", *, host: str | None = None,
          tls: ssl.SSLContext | None = None, server_name: str | None = None) -> Answer:
    """One HTTP/2 request (prior knowledge on plain HTTP, ALPN h2 over TLS) with `authority` as its
    :authority, unchecked, and optionally a Host header beside it. Status RESET: the frontend reset the
    stream (refused it as malformed)."""
    import h2.config
    import h2.connection
    import h2.events

    config = h2.config.H2Configuration(client_side=True, validate_outbound_headers=False,
                                       normalize_outbound_headers=False, validate_inbound_headers=False)
    with _connect(port, tls, server_name, "h2" if tls else None) as connection:
        if tls is not None:
            assert connection.selected_alpn_protocol() == "h2", "the frontend did not agree to HTTP/2"
        conn = h2.connection.H2Connection(config=config)
        conn.initiate_connection()
        headers = [(":method", "GET"), (":scheme", "https" if tls else "http"), (":authority", authority),
                   (":path", path), *([("host", host)] if host is not None else [])]
        conn.send_headers(1, headers, end_stream=True)
        connection.sendall(conn.data_to_send())
        status, body, done = 0, b"", False
        while not done:
            data = connection.recv(65536)
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamReset):
                    status, done = RESET, True
                elif isinstance(event, h2.events.StreamEnded | h2.events.ConnectionTerminated):
                    done = True
            connection.sendall(conn.data_to_send())
    return Answer(status, body.decode(errors="replace"))
