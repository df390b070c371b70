"""An offline ACME CA for tests: Debian's `pebble`, with `pebble-challtestsrv` as its DNS.

Every name resolves to 127.0.0.1, so Pebble validates HTTP-01 challenges through the frontend under test
on `http_port`. Pebble's own HTTPS uses a certificate from a throw-away test CA (`ca_pem`), which is what
`frontend.tls.acme_ca_bundle` points at; the certificates Pebble issues chain to its root (`root_pem`),
a new one each start.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import re
import shutil
import socket
import ssl
from pathlib import Path

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.helpers import Process, free_port, python_env, wait_for


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_certificate(directory: Path, stem: str, names: list[str], issuer: tuple[x509.Certificate, object] | None,
                     days: int = 30, ca: bool = False) -> tuple[x509.Certificate, object]:
    """A P-256 key and certificate written as STEM.pem and STEM.key; self-signed when `issuer` is None."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    subject = _name(names[0])
    alt: list[x509.GeneralName] = []
    for name in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer[0].subject if issuer else subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    certificate = builder.sign(issuer[1] if issuer else key, hashes.SHA256())  # type: ignore[arg-type]
    (directory / f"{stem}.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (directory / f"{stem}.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                              serialization.PrivateFormat.PKCS8,
                                                              serialization.NoEncryption()))
    return certificate, key


def https_get(port: int, host: str, path: str, root_pem: Path, extra: str = "") -> tuple[int, str, list[str]]:
    """GET `path` over TLS on 127.0.0.1:`port` with SNI and Host `host` (`extra`: more header lines): the
    status, the whole answer, and the DNS names of the certificate served (checked against `root_pem`)."""
    context = ssl.create_default_context(cafile=str(root_pem))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=host) as tls:
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n".encode())
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
        cert = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return int(data.split(b" ", 2)[1]), data.decode(errors="replace"), names.get_values_for_type(x509.DNSName)


class AcmeServer:
    def __init__(self, directory: Path, http_port: int):
        for program in ("pebble", "pebble-challtestsrv"):
            assert shutil.which(program), f"{program} is missing: apt-get install pebble (test.sh installs it)"
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        ca = make_certificate(directory, "test-ca", ["pequod test CA"], None, ca=True)
        make_certificate(directory, "pebble", ["localhost", "127.0.0.1", "::1"], ca)
        self.ca_pem = directory / "test-ca.pem"
        self.port, self.management_port, dns_port = free_port(), free_port(), free_port()
        self.dns_management = free_port()  # pebble-challtestsrv's API: /set-txt, /clear-txt (DNS-01)
        self.directory_url = f"https://127.0.0.1:{self.port}/dir"
        config = {"pebble": {
            "listenAddress": f"127.0.0.1:{self.port}", "managementListenAddress": f"127.0.0.1:{self.management_port}",
            "certificate": str(directory / "pebble.pem"), "privateKey": str(directory / "pebble.key"),
            "httpPort": http_port, "tlsPort": free_port(), "ocspResponderURL": "",
            "externalAccountBindingRequired": False}}
        (directory / "pebble.json").write_text(json.dumps(config))
        self.dns = Process(["pebble-challtestsrv", "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
                            "-dns01", f"127.0.0.1:{dns_port}", "-http01", "", "-https01", "", "-tlsalpn01", "",
                            "-management", f"127.0.0.1:{self.dns_management}"], python_env(), directory / "dns.log")
        self.log_path = directory / "pebble.log"
        self.pebble: Process | None = None
        self._dns_port = dns_port
        self.start()

    def start(self) -> None:
        # No random sleeps before validations and no randomly refused nonces: quick and deterministic.
        self.pebble = Process(["pebble", "-config", str(self.dir / "pebble.json"), "-dnsserver",
                               f"127.0.0.1:{self._dns_port}"],
                              python_env(PEBBLE_VA_NOSLEEP=1, PEBBLE_WFE_NONCEREJECT=0), self.log_path)
        wait_for("pebble's ACME directory", lambda: requests.get(self.directory_url, verify=str(self.ca_pem),
                                                                 timeout=2).ok, 30)
        self.root_pem = self.dir / "pebble-root.pem"
        self.root_pem.write_text(requests.get(f"https://127.0.0.1:{self.management_port}/roots/0",
                                              verify=str(self.ca_pem), timeout=5).text)

    @property
    def dns_resolver(self) -> str:
        """The DNS server Pebble asks (pebble-challtestsrv), as host:port."""
        return f"127.0.0.1:{self._dns_port}"

    def dns_hook(self, path: Path) -> Path:
        """A program for lego's `exec` DNS provider (EXEC_PATH): `present FQDN VALUE` sets the TXT record in
        Pebble's DNS, `cleanup FQDN VALUE` clears it."""
        path.write_text(f"""#!/bin/sh
set -e
case "$1" in
  present) what=set-txt; body="{{\\"host\\": \\"$2\\", \\"value\\": \\"$3\\"}}" ;;
  cleanup) what=clear-txt; body="{{\\"host\\": \\"$2\\"}}" ;;
  *) exit 0 ;;
esac
exec curl -sf -X POST -d "$body" http://127.0.0.1:{self.dns_management}/$what
""")
        path.chmod(0o755)
        return path

    def stop_ca(self) -> None:
        if self.pebble is not None:
            self.pebble.stop()
            self.pebble = None

    def issued(self) -> list[str]:
        """Serials of the certificates Pebble issued (from its log)."""
        return re.findall(r"Issued certificate serial (\w+)", self.log_path.read_text(errors="replace"))

    def orders(self) -> int:
        return self.log_path.read_text(errors="replace").count("POST /order-plz")

    def cleanup(self) -> None:
        self.stop_ca()
        self.dns.stop()
