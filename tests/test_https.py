"""HTTPS at the frontend, end to end: certificates from an ACME CA (Pebble, offline) through the real agent
and HAProxy, HTTP-01 answered through the frontend, renewal under load, a CA that is down, an agent
restart, and the administrator's own certificate.

One agent (module scope) serves the blog as blog.pequod.test, which Pebble's DNS resolves to 127.0.0.1.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import requests
from cryptography import x509

from tests.acme_server import AcmeServer, make_certificate
from tests.agent_fixtures import AgentRun, agent_cmd
from tests.helpers import SiteRepo, free_port, python_env, wait_for, wait_for_agent_rounds

pytestmark = pytest.mark.system  # root, Docker, HAProxy, an ACME CA (pebble)

DOMAIN = "blog.pequod.test"
POST = "/posts/welcome/"
GITHUB = ("external_services:\n  - {service_name: github-https, service_version: '1', external_host: github.com, "
          "external_port: 443}\n")


class HttpsSite:
    def __init__(self, run: AgentRun, acme: AcmeServer, https_port: int, image: str):
        self.run, self.acme, self.https_port, self.image = run, acme, https_port, image

    def context(self, cafile: Path | None = None) -> ssl.SSLContext:
        """Trusting only Pebble's root (or `cafile`)."""
        return ssl.create_default_context(cafile=str(cafile or self.acme.root_pem))

    def connection(self, cafile: Path | None = None) -> http.client.HTTPSConnection:
        """HTTPS to the frontend on 127.0.0.1 with SNI and verification for DOMAIN."""
        context = self.context(cafile)
        port = self.https_port

        class Connection(http.client.HTTPSConnection):
            def connect(self) -> None:
                raw = socket.create_connection(("127.0.0.1", port), timeout=10)
                self.sock = context.wrap_socket(raw, server_hostname=DOMAIN)

        return Connection(DOMAIN, port, timeout=10)

    def get(self, path: str, cafile: Path | None = None) -> tuple[http.client.HTTPResponse, bytes, str]:
        """(response, body, serial of the certificate served) over a new connection."""
        connection = self.connection(cafile)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read()
            der = connection.sock.getpeercert(binary_form=True)
            return response, body, f"{x509.load_der_x509_certificate(der).serial_number:X}"
        finally:
            connection.close()

    def served_serial(self) -> str:
        return self.get("/_site/health")[2]

    def agent(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(agent_cmd(*args, "--state-dir", str(self.run.state_dir)), capture_output=True,
                                text=True, timeout=180, env=python_env())
        if check:
            assert result.returncode == 0, result.stdout + result.stderr
        return result

    def certificates(self) -> dict:
        rows = json.loads(self.agent("-i", "certificates", "--json").stdout)
        assert len(rows) == 1, rows
        return rows[0]

    def curl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["curl", "-sS", "--max-time", "10", "--resolve", f"{DOMAIN}:{self.https_port}:127.0.0.1",
                               "--cacert", str(self.acme.root_pem), *args], capture_output=True, text=True,
                              timeout=30)


def tls_yaml(https_port: int, acme: AcmeServer, challenge_port: int) -> str:
    return (f"\n  tls:\n    domains: [{DOMAIN}]\n    email: admin@pequod.test\n"
            f"    acme_directory: {acme.directory_url}\n    acme_ca_bundle: {acme.ca_pem}\n"
            f"    port: {https_port}\n    challenge_port: {challenge_port}")


@pytest.fixture(scope="module")
def site(tmp_path_factory, docker_client: docker.DockerClient, app_image: str) -> Iterator[HttpsSite]:
    tmp = tmp_path_factory.mktemp("https")
    run = AgentRun(tmp, docker_client, SiteRepo(tmp / "remote"))
    acme = AcmeServer(tmp / "acme", run.frontend_port)
    https_port = free_port()
    try:
        run.write_yaml(extra_frontend=tls_yaml(https_port, acme, free_port()))
        run.start((app_image,))
        run.wait_healthy(timeout=120)
        site = HttpsSite(run, acme, https_port, app_image)
        wait_for("a certificate from the ACME CA", lambda: site.certificates()["serial"], 120, interval=1)
        wait_for("the blog over HTTPS", lambda: site.get(POST)[0].status == 200, 60, interval=0.5)
        yield site
    finally:
        run.cleanup()
        acme.cleanup()


def test_the_blog_is_served_over_https_with_the_acme_certificate(site: HttpsSite) -> None:
    response, body, serial = site.get(POST)
    assert response.status == 200 and b"A Pequod Blog" in body
    row = site.certificates()
    assert serial == row["serial"] and serial in site.acme.issued()[-1].upper()
    assert row["domains"] == [DOMAIN] and "Pebble" in row["issuer"] and row["last_error"] is None and row["served"]
    assert row["not_after"] > time.time() + 30 * 86400
    assert response.getheader("Strict-Transport-Security") == "max-age=63072000"
    # curl, trusting only Pebble's root: HTTP/2 by ALPN, TLS 1.3; TLS 1.2 still offered (intermediate profile)
    out = site.curl("--http2", "-o", "/dev/null", "-w", "%{http_version} %{http_code}", f"https://{DOMAIN}:"
                    f"{site.https_port}{POST}")
    assert out.stdout == "2 200", out.stdout + out.stderr
    out = site.curl("-v", "--tlsv1.3", "-o", "/dev/null", f"https://{DOMAIN}:{site.https_port}/")
    assert out.returncode == 0 and "SSL connection using TLSv1.3" in out.stderr, out.stderr
    out = site.curl("-v", "--tls-max", "1.2", "-o", "/dev/null", f"https://{DOMAIN}:{site.https_port}/")
    assert out.returncode == 0 and "SSL connection using TLSv1.2 / ECDHE" in out.stderr, out.stderr
    # ...and not by the system's CAs: the certificate really comes from this CA
    out = subprocess.run(["curl", "-sS", "--max-time", "10", "--resolve", f"{DOMAIN}:{site.https_port}:127.0.0.1",
                          f"https://{DOMAIN}:{site.https_port}/"], capture_output=True, text=True, timeout=30)
    assert out.returncode != 0


def test_plain_http_redirects_to_https_except_acme_challenges(site: HttpsSite) -> None:
    plain = f"http://127.0.0.1:{site.run.frontend_port}"
    response = requests.get(f"{plain}{POST}?page=2", headers={"Host": f"{DOMAIN}:{site.run.frontend_port}"},
                            allow_redirects=False, timeout=10)
    assert response.status_code == 301
    assert response.headers["Location"] == f"https://{DOMAIN}:{site.https_port}{POST}?page=2"
    assert "Strict-Transport-Security" not in response.headers  # only over HTTPS
    # A Host that is not a configured domain (an address, another name) is sent to the configured one.
    for host in ("evil.example", "127.0.0.1", f"{DOMAIN}.evil.example:80"):
        foreign = requests.get(f"{plain}{POST}", headers={"Host": host}, allow_redirects=False, timeout=10)
        assert foreign.status_code == 301 and foreign.headers["Location"] == f"https://{DOMAIN}:{site.https_port}{POST}"
    challenge = requests.get(f"{plain}/.well-known/acme-challenge/x", headers={"Host": DOMAIN},
                             allow_redirects=False, timeout=10)
    assert challenge.status_code != 301  # goes to the ACME client (503 while none runs)


def test_keys_and_certificates_are_private(site: HttpsSite) -> None:
    tls = site.run.state_dir / "tls"
    assert stat.S_IMODE(tls.stat().st_mode) == 0o700
    for path in [tls / "site.pem", *[p for p in (tls / "lego").rglob("*") if p.is_file()]]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert list((tls / "lego" / "accounts").rglob("*.key")), "the account key is kept for renewals"


def test_agent_metrics_show_the_certificate_expiry(site: HttpsSite) -> None:
    metrics = requests.get(f"http://127.0.0.1:{site.run.metrics_ports[0]}/metrics", timeout=10).text
    expiry = [line for line in metrics.splitlines()
              if line.startswith("pequod_agent_certificate_expiry_timestamp_seconds{")]
    assert expiry and f'domain="{DOMAIN}"' in expiry[0]
    assert abs(float(expiry[0].split()[-1]) - site.certificates()["not_after"]) < 1


class HttpsLoad:
    """32 clients fetching a post over HTTPS, each request on a new connection, counting every failure."""

    def __init__(self, site: HttpsSite, clients: int = 32):
        self.site, self.ok, self.failed, self.serials = site, 0, [], set()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def _client(self) -> None:
        while not self.stop.is_set():
            try:
                response, body, serial = self.site.get(POST)
                good = response.status == 200 and b"A Pequod Blog" in body
                with self.lock:
                    self.serials.add(serial)
                    if good:
                        self.ok += 1
                    else:
                        self.failed.append(f"status {response.status}")
            except (OSError, http.client.HTTPException) as exc:
                with self.lock:
                    self.failed.append(f"{type(exc).__name__}: {exc}")

    def __enter__(self) -> HttpsLoad:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(20)


def test_forced_renewal_under_load_drops_no_request(site: HttpsSite) -> None:
    before = site.served_serial()
    issued = len(site.acme.issued())
    with HttpsLoad(site) as load:
        wait_for("clients served the old certificate", lambda: load.ok > 50, 30, interval=0.05)
        renewed = site.agent("--renew", "--force")
        new = site.certificates()["serial"]
        served = load.ok
        # Proof the renewal was under load: clients got the new certificate and went on being served.
        wait_for("clients served the new certificate", lambda: new in load.serials and load.ok > served + 50, 30,
                 interval=0.05)
    after = site.served_serial()
    assert "renewed" in renewed.stdout and "the frontend serves it now" in renewed.stdout, renewed.stdout
    assert len(site.acme.issued()) == issued + 1
    assert after != before and after == site.certificates()["serial"]
    assert load.failed == [] and load.ok > 100, (load.ok, load.failed[:5])
    assert {before, after} <= load.serials  # clients saw the old certificate, then the new one


def test_renew_without_force_does_nothing_when_not_due(site: HttpsSite) -> None:
    orders = site.acme.orders()
    result = site.agent("--renew")
    assert "nothing due" in result.stdout and site.acme.orders() == orders


def test_an_agent_restart_places_no_new_order(site: HttpsSite) -> None:
    serial, orders = site.served_serial(), site.acme.orders()
    attempt = site.certificates()["last_attempt"]
    assert site.run.agent is not None and site.run.agent.stop() == 0
    site.run.start((site.image,))
    wait_for("the restarted agent supervising", lambda: "supervising" in site.run.agent.log, 60)
    # Its first round decides whether a certificate is due (and would start the order); three more rounds
    # after it has answered on its metrics endpoint, that decision is long made.
    wait_for_agent_rounds(f"http://127.0.0.1:{site.run.metrics_ports[0]}/metrics", 3)
    assert "; asking " not in site.run.agent.log  # certificates.obtain logs that before it orders
    assert site.served_serial() == serial
    assert site.acme.orders() == orders and site.certificates()["last_attempt"] == attempt


def test_a_ca_that_is_down_keeps_the_certificate_and_reports(site: HttpsSite) -> None:
    serial = site.served_serial()
    site.acme.stop_ca()
    try:
        result = site.agent("--renew", "--force", check=False)
        assert result.returncode == 1
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("pequod-agent: the ACME CA at ") and "connection refused" in last, result.stderr
        assert "Traceback" not in result.stderr
        row = site.certificates()
        assert row["last_error"] and row["serial"] == serial
        table = site.agent("-i", "certificates").stdout
        assert DOMAIN in table and "ACME CA" in table
        response, _, served = site.get(POST)
        assert response.status == 200 and served == serial
    finally:
        site.acme.start()


def test_the_administrators_own_certificate_replaces_acme_and_is_reloaded_when_its_file_changes(
        site: HttpsSite, tmp_path: Path) -> None:
    ca = make_certificate(tmp_path, "own-ca", ["pequod own CA"], None, ca=True)
    make_certificate(tmp_path, "own", [DOMAIN], ca, days=90)
    pem = tmp_path / "blog.pem"
    pem.write_bytes((tmp_path / "own.pem").read_bytes() + (tmp_path / "own.key").read_bytes())
    own_serial = f"{x509.load_pem_x509_certificate((tmp_path / 'own.pem').read_bytes()).serial_number:X}"
    yaml_text = site.run.yaml.read_text()
    try:
        site.run.yaml.write_text(yaml_text.replace(
            yaml_text[yaml_text.index("  tls:\n"):yaml_text.index("metrics:")],
            f"  tls:\n    certificate: {pem}\n    port: {site.https_port}\n"))
        wait_for("the administrator's certificate served",
                 lambda: site.get(POST, tmp_path / "own-ca.pem")[2] == own_serial, 30, interval=0.5)
        # No domains are configured with it: plain HTTP is redirected to the certificate's name.
        redirect = requests.get(f"http://127.0.0.1:{site.run.frontend_port}{POST}", headers={"Host": "evil.example"},
                                allow_redirects=False, timeout=10)
        assert redirect.headers["Location"] == f"https://{DOMAIN}:{site.https_port}{POST}"
        make_certificate(tmp_path, "own2", [DOMAIN], ca, days=90)  # the administrator renews the file
        pem.write_bytes((tmp_path / "own2.pem").read_bytes() + (tmp_path / "own2.key").read_bytes())
        new_serial = f"{x509.load_pem_x509_certificate((tmp_path / 'own2.pem').read_bytes()).serial_number:X}"
        wait_for("the renewed file served", lambda: site.get(POST, tmp_path / "own-ca.pem")[2] == new_serial, 30,
                 interval=0.5)
    finally:
        site.run.yaml.write_text(yaml_text)


@pytest.mark.parametrize(("tls", "expected"), [
    ("{domains: [blog.example.org]}", "frontend.tls: missing key email"),
    ("{domains: ['https://blog.example.org/'], email: a@example.org}", "is not a host name"),
    ("{certificate: /nonexistent/blog.pem}", "cannot read /nonexistent/blog.pem"),
])
def test_bad_tls_settings_are_refused_with_one_line(tmp_path: Path, tls: str, expected: str,
                                                    app_image: str) -> None:
    yaml_path = tmp_path / "bootstrap.yaml"
    yaml_path.write_text(f"{GITHUB}frontend:\n  port: {free_port()}\n  tls: {tls}\n")
    result = subprocess.run(agent_cmd("--bootstrap", app_image, str(yaml_path), "--state-dir", str(tmp_path / "s")),
                            capture_output=True, text=True, timeout=120, env=python_env())
    assert result.returncode == 1 and expected in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_https_port_held_by_another_program_is_refused(tmp_path: Path, app_image: str) -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as holder:
        holder.bind(("::", 0))
        holder.listen()
        port = holder.getsockname()[1]
        yaml_path = tmp_path / "bootstrap.yaml"
        yaml_path.write_text(f"{GITHUB}frontend:\n  port: {free_port()}\n  tls: {{domains: [{DOMAIN}], email: a@b.org, "
                             f"port: {port}}}\n")
        result = subprocess.run(agent_cmd("--bootstrap", app_image, str(yaml_path), "--state-dir",
                                          str(tmp_path / "s")), capture_output=True, text=True, timeout=120,
                                env=python_env())
    assert result.returncode == 1, result.stderr
    assert f"cannot publish HTTPS on [::]:{port}" in result.stderr and "frontend.tls.port" in result.stderr
    assert not os.path.exists(tmp_path / "s" / "haproxy" / "haproxy.pid")
