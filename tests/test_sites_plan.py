"""Many sites, the pure part: the `sites` section of the bootstrap YAML, each site an application with its
own limits, the difference of two plans per site, and the frontend's routing by Host (checked by
`haproxy -c`). No root, Docker or network."""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path

import pytest

from container import frontend, plan
from container.bootstrap import parse_bootstrap
from container.errors import AgentError, BootstrapError
from container.manifest import Manifest, ProvidedService, Resources

BASE = """\
frontend: {port: 8080}
environment: {POLL_INTERVAL: 5, SITE_REPO: "file:///srv/shared.git"}
"""
SITES = BASE + """\
sites:
  - {name: blog, default: true, domains: [blog.example.org, www.blog.example.org], vmhz: 500, memory_mb: 256,
     environment: {SITE_REPO: "file:///srv/pequod/site.git", WEBHOOK_SECRET: one}}
  - {name: docs, domains: [docs.example.org], environment: {SITE_REPO: "file:///srv/pequod/docs.git"}}
"""
IMAGE = plan.Application("srcco-de:1", "srcco-de", "1", Manifest(
    "srcco-de:1:/pequod.xml", Resources(640, 2000, 256, 4096), (),
    (ProvidedService("srcco-de", "1", 8000, "/_site/health", 120),), ()))


def test_each_site_is_an_application_with_its_environment_and_limits() -> None:
    boot = parse_bootstrap(SITES, "b.yaml")
    blog, docs = plan.site_applications((IMAGE,), boot)
    assert (blog.name, blog.manifest.resources.memory_mb, blog.manifest.resources.cpu_vmhz) == ("blog", 256, 500)
    assert docs.manifest.resources == IMAGE.manifest.resources  # the manifest's when the site says nothing
    assert boot.site_env(blog.site) == {"POLL_INTERVAL": "5", "SITE_REPO": "file:///srv/pequod/site.git",
                                        "WEBHOOK_SECRET": "one"}
    assert "WEBHOOK_SECRET" not in boot.site_env(docs.site)  # one site's secret is not another's
    plan.check_services((blog, docs), boot)  # every site provides the same service: no conflict
    with pytest.raises(AgentError, match=r"sites\[0\].vmhz: 4000 is more than the manifest's"):
        plan.site_applications((IMAGE,), parse_bootstrap(SITES.replace("vmhz: 500", "vmhz: 4000"), "b.yaml"))
    with pytest.raises(AgentError, match="each site runs the one image"):
        plan.site_applications((IMAGE, dataclasses.replace(IMAGE, image="other:1", name="other")), boot)


@pytest.mark.parametrize(("sites", "message"), [
    ("  - {name: Blog, default: true}\n", r"sites\[0\].name: 'Blog' is not a site name"),
    ("  - {name: a, default: true}\n  - {name: a, domains: [x.org]}\n", r"sites\[1\].name: site 'a' is defined twice"),
    ("  - {name: a, domains: [x.org]}\n  - {name: b, domains: [X.org]}\n",
     r"sites\[1\].domains: x.org belongs to site 'a' already"),
    ("  - {name: a, default: true}\n  - {name: b, default: true}\n",
     r"sites\[1\].default: another site is the default"),
    ("  - {name: a}\n", r"sites\[0\]: a site needs domains"),
    ("  - {name: a, domains: ['*.x.org']}\n", r"sites\[0\].domains\[0\]: '\*.x.org' is not a host name"),
    ("  - {name: a, default: true, memory_mb: 0}\n", r"sites\[0\].memory_mb: 0 is out of range"),
    ("  - {name: a, default: true, color: red}\n", r"sites\[0\].color: unknown key"),
])
def test_bad_sites_are_refused_in_one_line(sites: str, message: str) -> None:
    with pytest.raises(BootstrapError, match=message) as error:
        parse_bootstrap(BASE + "sites:\n" + sites, "b.yaml")
    assert "\n" not in str(error.value) and str(error.value).startswith("b.yaml: ")


def test_a_change_touches_only_the_sites_it_changes() -> None:
    net = plan.Network(ipaddress.IPv6Network("fd00:1::/64"), "x", ipaddress.IPv6Address("fd00:1::1"))
    old = plan.in_force(parse_bootstrap(SITES, "b.yaml"), net)
    added = SITES + "  - {name: shop, domains: [shop.example.org]}\n"
    change = plan.changes(old, plan.in_force(parse_bootstrap(added, "b.yaml"), net))
    assert (change.sites_added, change.sites_removed, change.sites_replaced, change.sites_routed) == (
        ("shop",), (), (), ())
    assert not change.replace_instances and not change.frontend
    removed = SITES.split("  - {name: docs")[0]
    assert plan.changes(old, plan.in_force(parse_bootstrap(removed, "b.yaml"), net)).sites_removed == ("docs",)
    limits = SITES.replace("vmhz: 500", "vmhz: 400")
    change = plan.changes(old, plan.in_force(parse_bootstrap(limits, "b.yaml"), net))
    assert (change.sites_replaced, change.sites_routed) == (("blog",), ())
    domains = SITES.replace("[docs.example.org]", "[docs.example.org, api.example.org]")
    change = plan.changes(old, plan.in_force(parse_bootstrap(domains, "b.yaml"), net))
    assert (change.sites_replaced, change.sites_routed) == ((), ("docs",))
    previews = SITES.replace("WEBHOOK_SECRET: one}}", "WEBHOOK_SECRET: one}, previews: {domain: p.example.org}}")
    change = plan.changes(old, plan.in_force(parse_bootstrap(previews, "b.yaml"), net))
    assert (change.sites_replaced, change.sites_routed) == (("blog",), ())  # its instance learns of them
    shared = SITES.replace("POLL_INTERVAL: 5", "POLL_INTERVAL: 6")  # shared by all: every site is replaced
    assert plan.changes(old, plan.in_force(parse_bootstrap(shared, "b.yaml"), net)).replace_instances


def _services(yaml: str, pems: dict[str, Path] | None = None) -> tuple[frontend.Service, ...]:
    boot = parse_bootstrap(yaml, "b.yaml")
    apps = plan.site_applications((IMAGE,), boot)
    net = plan.Network(ipaddress.IPv6Network("fd00:1::/64"), "x", ipaddress.IPv6Address("fd00:1::1"))
    serving = {app.name: plan.Serving(f"i-{app.name}", ipaddress.IPv6Address(f"fd00:1::{i + 10}"))
               for i, app in enumerate(apps)}
    return plan.frontend_services(apps, boot.frontend, net, serving, site_pems=pems)


def test_the_frontend_routes_by_host_to_each_site(tmp_path: Path) -> None:
    (service,) = _services(SITES)
    assert [(s.name, s.domains, s.default, s.servers[0].name) for s in service.sites] == [
        ("blog", ("blog.example.org", "www.blog.example.org"), True, "i-blog"),
        ("docs", ("docs.example.org",), False, "i-docs")]
    text = frontend.render_haproxy_conf((service,), tmp_path)
    assert "acl site_docs var(txn.host) -m str docs.example.org" in text
    assert "deny deny_status 400 unless { req.hdr_cnt(host) eq 1 }" in text  # "Host: a, b" poisons no cache
    assert "use_backend srcco-de.docs if site_docs" in text
    assert "default_backend srcco-de.blog" in text  # the default site takes every other host
    assert "backend srcco-de.docs\n" in text and "server i-docs [fd00:1::11]:8000" in text
    frontend.check_config(text)
    no_default = SITES.replace("default: true, ", "")
    text = frontend.render_haproxy_conf(_services(no_default), tmp_path)
    assert f"default_backend {frontend.NO_SITE}" in text and "status 404" in text
    frontend.check_config(text)


def test_https_per_site_redirects_only_to_a_site_domain(tmp_path: Path) -> None:
    from tests.acme_server import make_certificate

    yaml = SITES.replace("frontend: {port: 8080}", "frontend: {port: 8080, tls: {email: a@example.org, port: 8443}}")
    make_certificate(tmp_path, "blog", ["blog.example.org", "www.blog.example.org"], None)
    pem = tmp_path / "blog.pem"
    pem.write_text((tmp_path / "blog.pem").read_text() + (tmp_path / "blog.key").read_text())
    (service,) = _services(yaml, {"blog": pem})
    text = frontend.render_haproxy_conf((service,), tmp_path)
    assert f"ssl crt {pem} alpn" in text  # only the site with a certificate so far
    redirects = [line for line in text.splitlines() if "http-request redirect" in line]
    assert len(redirects) == 2, redirects  # blog's own hosts, and the default site's first domain for others
    assert "https://%[var(txn.host)]:8443%[capture.req.uri]" in redirects[0] and redirects[0].endswith("site_blog")
    assert "https://blog.example.org:8443" in redirects[1] and "!site_blog !site_docs" in redirects[1]
    frontend.check_config(text)


def test_volumes_the_disk_cannot_hold_are_refused(tmp_path: Path) -> None:
    from container import volume
    from container.errors import VolumeError
    from container.manifest import PersistentFilesystem

    free_mb = volume.os.statvfs(tmp_path).f_bavail * volume.os.statvfs(tmp_path).f_frsize // 2**20
    volume.check_disk(tmp_path, [("blog", PersistentFilesystem("/workdir", 64))])
    too_big = [(f"s{i}", PersistentFilesystem("/workdir", free_mb // 2 + 1)) for i in range(2)]
    with pytest.raises(VolumeError, match=r"the volumes need \d+ MB more than the disk of .* has free"):
        volume.check_disk(tmp_path, too_big)
    # What an image file already holds counts as used: only the growth is asked of the disk.
    image, _ = volume.paths(tmp_path, "s0", too_big[0][1])
    image.parent.mkdir(parents=True)
    with open(image, "wb") as handle:
        handle.truncate(1)  # sparse: allocates nothing, so the check still refuses
    with pytest.raises(VolumeError):
        volume.check_disk(tmp_path, too_big)
