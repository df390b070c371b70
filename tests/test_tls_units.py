"""HTTPS settings, renewal decisions and the HAProxy configuration they render: pure logic, no root, no CA."""

from __future__ import annotations

import dataclasses
import ipaddress
import subprocess
import time
from pathlib import Path

import pytest

from container import certificates, frontend, plan
from container.bootstrap import TlsSettings, parse_bootstrap
from container.errors import BootstrapError, CertificateError
from container.host_settings import merge
from tests.acme_server import make_certificate


def tls_of(text: str) -> TlsSettings:
    settings = parse_bootstrap(f"frontend:\n  tls: {text}\n", "b.yaml").frontend.tls
    assert settings is not None
    return settings


def test_acme_settings_with_defaults() -> None:
    tls = tls_of("{domains: [Blog.Example.org, www.example.org.], email: admin@example.org}")
    assert tls.domains == ("blog.example.org", "www.example.org") and tls.acme
    assert tls.acme_directory == "https://acme-v02.api.letsencrypt.org/directory" and tls.port == 443
    assert parse_bootstrap("frontend: {port: 80}\n", "b.yaml").frontend.tls is None


@pytest.mark.parametrize(("text", "message"), [
    ("{domains: [blog.example.org]}", "b.yaml: frontend.tls: missing key email"),
    ("{domains: [192.0.2.1], email: a@b.org}", "frontend.tls.domains[0]: '192.0.2.1' is not a host name"),
    ("{domains: ['*.example.org'], email: a@b.org}", "is not a host name"),
    ("{domains: ['blog.example.org:443'], email: a@b.org}", "is not a host name"),
    ("{domains: [a.org, a.org], email: a@b.org}", "a.org is listed twice"),
    ("{domains: [a.org], email: nobody}", "frontend.tls.email: 'nobody' is not an email address"),
    ("{domains: [a.org], email: a@b.org, acme_directory: 'http://ca/dir'}", "is not an https:// URL"),
    ("{domains: [a.org], email: a@b.org, port: 80}", "frontend.tls.port: 80 is already frontend.port"),
    ("{email: a@b.org}", "give domains (certificates from an ACME CA) or certificate"),
    ("{certificate: /x.pem, email: a@b.org}", "frontend.tls.email: not used with certificate"),
    ("{certificate: relative.pem}", "frontend.tls.certificate: 'relative.pem' is not an absolute path"),
    ("{domains: [a.org], email: a@b.org, colour: blue}", "frontend.tls.colour: unknown key"),
])
def test_bad_settings_name_the_key(text: str, message: str) -> None:
    with pytest.raises(BootstrapError, match=None) as caught:
        tls_of(text)
    assert message in str(caught.value)


def test_renewal_is_due_30_days_before_expiry_or_for_new_domains() -> None:
    tls = TlsSettings(domains=("a.org", "b.org"), email="x@y.org")
    now = time.time()
    cert = certificates.Certificate("1", now + 40 * 86400, "CA", ("a.org", "b.org"))
    assert certificates.due(None, tls, now) == "no certificate yet"
    assert certificates.due(cert, tls, now) is None
    assert certificates.due(cert, tls, now + 11 * 86400) == "expires in 29 days"
    assert certificates.due(cert, tls, now, force=True) == "renewal forced"
    assert certificates.due(certificates.Certificate("1", now + 80 * 86400, "CA", ("a.org",)), tls, now) \
        == "not valid for b.org"
    # A name taken away (from a site): a new certificate without it, not a renewal that keeps it.
    assert certificates.due(cert, dataclasses.replace(tls, domains=("a.org",)), now) \
        == "also for b.org, no longer configured"


def test_failed_attempts_back_off_up_to_six_hours() -> None:
    delays = [certificates.retry_delay(n) for n in range(1, 12)]
    assert delays[0] == 60 and delays == sorted(delays) and delays[-1] == 6 * 3600


def test_served_pem_checks_that_key_and_certificate_belong_together(tmp_path: Path) -> None:
    make_certificate(tmp_path, "one", ["a.org"], None)
    make_certificate(tmp_path, "two", ["a.org"], None)
    pem = certificates.served_pem((tmp_path / "one.pem").read_bytes(), (tmp_path / "one.key").read_bytes(), "x")
    assert certificates.read_certificate(pem, "x").domains == ("a.org",)
    with pytest.raises(CertificateError, match="x: the private key does not belong to the certificate"):
        certificates.served_pem((tmp_path / "one.pem").read_bytes(), (tmp_path / "two.key").read_bytes(), "x")
    with pytest.raises(CertificateError, match="no PEM certificate"):
        certificates.served_pem(b"junk", (tmp_path / "two.key").read_bytes(), "x")
    with pytest.raises(CertificateError, match="cannot read /nonexistent.pem"):
        certificates.administrator_pem(TlsSettings(certificate="/nonexistent.pem"))


def _service(tls: frontend.Tls | None) -> frontend.Service:
    return frontend.Service("blog", ipaddress.IPv6Address("::"), 8080, "/_site/health",
                            (frontend.Server("i1", ipaddress.IPv6Address("fd00::2"), 8000),),
                            ((ipaddress.IPv6Address("fd00::1"), 8081),), tls=tls)


def test_https_configuration_is_accepted_by_haproxy(tmp_path: Path) -> None:
    make_certificate(tmp_path, "site", ["a.org"], None)
    pem = tmp_path / "site-full.pem"
    pem.write_bytes((tmp_path / "site.pem").read_bytes() + (tmp_path / "site.key").read_bytes())
    text = frontend.render_haproxy_conf((_service(frontend.Tls(8443, pem, 8402, ("a.org", "www.a.org"))),), tmp_path)
    assert f"bind [::]:8443 v4v6 ssl crt {pem} alpn h2,http/1.1" in text
    assert "ssl-min-ver TLSv1.2" in text and "TLS_AES_128_GCM_SHA256" in text
    # The redirect names a configured domain: the request's own Host only when it is one; else the first.
    redirects = [line.strip() for line in text.splitlines() if "redirect" in line]
    assert len(redirects) == 2 and "req.hdr(host),regsub" not in "".join(r.split(" if ")[0] for r in redirects)
    assert redirects[0].startswith("http-request redirect location https://www.a.org:8443%[capture.req.uri] code 301")
    assert redirects[0].endswith("{ var(txn.host) -m str www.a.org }")
    assert redirects[1].startswith("http-request redirect location https://a.org:8443%[capture.req.uri] code 301")
    assert redirects[1].endswith("!acme_challenge")
    assert "!{ dst fd00::1 }" in text  # instances that require the service over the gateway are not redirected
    assert "use_backend pequod-acme if acme_challenge" in text and "server acme 127.0.0.1:8402" in text
    path = tmp_path / "haproxy.cfg"
    path.write_text(text)
    result = subprocess.run(["haproxy", "-c", "-f", str(path)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_redirect_domains_of_an_own_certificate_are_its_names(tmp_path: Path) -> None:
    make_certificate(tmp_path, "own", ["*.a.org", "Blog.A.org", "www.a.org"], None)
    assert certificates.redirect_domains(tmp_path / "own.pem") == ("blog.a.org", "www.a.org")
    assert certificates.redirect_domains(tmp_path / "missing.pem") == ()
    own = certificates.redirect_domains(tmp_path / "own.pem")
    settings = parse_bootstrap("frontend: {tls: {certificate: /x.pem}}\n", "b.yaml").frontend
    assert plan.frontend_tls(settings, tmp_path / "own.pem", own) == frontend.Tls(443, tmp_path / "own.pem", None,
                                                                           ("blog.a.org", "www.a.org"))
    configured = parse_bootstrap("frontend: {tls: {certificate: /x.pem, domains: [c.org]}}\n", "b.yaml").frontend
    assert plan.frontend_tls(configured, tmp_path / "own.pem", own).domains == ("c.org",)
    # Without a name to redirect to, plain HTTP stays plain (HTTPS still carries HSTS).
    text = frontend.render_haproxy_conf((_service(frontend.Tls(443, tmp_path / "own.pem", None)),), tmp_path)
    assert "redirect location" not in text and "Strict-Transport-Security" in text


def test_before_the_first_certificate_only_the_challenge_route_exists(tmp_path: Path) -> None:
    text = frontend.render_haproxy_conf((_service(frontend.Tls(443, None, 8402)),), tmp_path)
    assert "ssl crt" not in text and "redirect" not in text and "Strict-Transport-Security" not in text
    assert "use_backend pequod-acme" in text
    assert "X-Forwarded-Proto" in text
    plain = frontend.render_haproxy_conf((_service(None),), tmp_path)
    assert "acme" not in plain and "ssl" not in plain


def test_bootstrap_sh_settings_add_tls_and_keep_it() -> None:
    tls = {"domains": ["blog.example.org"], "email": "a@example.org"}
    merged = merge({}, site_repo="file:///r", port=80, mount="/r", tls=tls)
    assert merged["frontend"] == {"port": 80, "tls": tls}
    again = merge(merged, site_repo="file:///r", port=80, mount="/r")
    assert again["frontend"]["tls"] == tls
