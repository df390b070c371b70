"""The plan and the supervision rules: pure functions, tested without Docker, root or network."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest

from container import plan, supervision
from container.bootstrap import parse_bootstrap
from container.errors import AgentError
from container.manifest import Manifest, ProvidedService, RequiredService, Resources
from container.nat64 import Destination
from container.supervision import Instance, Retiring

V6 = ipaddress.IPv6Address
YAML = """\
external_services:
  - {service_name: github-https, service_version: "1", external_host: "198.18.0.1", external_port: 443}
networks:
  - {ipv6_subnet_ip: "fd00:5eed:1::", ipv6_subnet_prefixlen: 64, ipv6_dns: ["fd00:5eed:1::53"]}
frontend: {port: 8080, ports: {api: 0}, max_connections_per_client: 20}
environment: {SITE_REPO: "git://github.com:443/site.git"}
"""


def app(image: str, provides=(), requires=()) -> plan.Application:
    name, version = image.split(":")
    return plan.Application(image, name, version,
                            Manifest(f"{image}:/pequod.xml", Resources(64, 100, 32, 256), (), provides, requires))


BLOG = app("srcco-de:1", (ProvidedService("srcco-de", "1", 8000, "/_site/health", 120),),
           (RequiredService("github-https", "1", "github.com", 443), RequiredService("api", "1", "api.internal", 80)))
API = app("api:2", (ProvidedService("api", "2", 9000, "/health", 30),))
APPS = (BLOG, API)
BOOT = parse_bootstrap(YAML, "b.yaml")
NET = BOOT.network
GITHUB = Destination("github-https", "github.com", 443, "198.18.0.1", 443,
                     (ipaddress.IPv4Address("198.18.0.1"),), (V6("fd99:69a4:fefb:64::c612:1"),))


def test_topology_local_and_external_requires() -> None:
    assert plan.provider(APPS, "api") == API and plan.provider(APPS, "github-https") is None
    assert [r.name for r in plan.local_requires(APPS, BLOG)] == ["api"]
    assert [s.name for s in plan.external_services(APPS, BLOG, BOOT)] == ["github-https"]
    plan.check_services(APPS, BOOT)
    with pytest.raises(AgentError, match="is not defined in b.yaml"):
        plan.check_services((BLOG,), BOOT)  # nobody provides api


def test_frontend_services_publish_ports_limits_and_gateway_listeners() -> None:
    address = V6("fd00:5eed:1:0:aacc:1:c000:202")
    services = plan.frontend_services(APPS, BOOT.frontend, NET, {"srcco-de": plan.Serving("blog-1", address)})
    blog, api = services
    assert (blog.name, blog.port, blog.health_path, blog.max_connections_per_client) == \
        ("srcco-de", 8080, "/_site/health", 20)
    assert blog.servers[0].address == address and blog.servers[0].port == 8000
    assert api.port == 0 and api.servers == ()  # not published; no instance serving yet
    assert api.local_binds == ((NET.gateway, 80),)  # the blog reaches it on the gateway
    plan.check_frontend_ports(services, "b.yaml")
    with pytest.raises(AgentError, match="port 8080 is used by more than one"):
        plan.check_frontend_ports((blog, dataclasses.replace(api, port=8080)), "b.yaml")


def test_firewall_grants_follow_addresses_and_requires() -> None:
    blog_address = V6("fd00:5eed:1:0:aacc:1:c000:202")
    rules = plan.firewall_rules(APPS, NET, BOOT.nat64, {"srcco-de": (blog_address,), "api": ()},
                                {"srcco-de": (GITHUB,)})
    v6 = rules["ip6tables"]
    assert f"-s {blog_address}/128 -d fd99:69a4:fefb:64::c612:1/128 -p tcp --dport 443" in v6
    assert f"-s {blog_address}/128 -d {NET.gateway}/128 -p tcp --dport 80" in v6  # srcco-de -> api
    assert plan.firewall_rules(APPS, NET, BOOT.nat64, {}, {}) != rules


def test_rendered_files() -> None:
    hosts = plan.instance_hosts(APPS, BLOG, V6("fd00:5eed:1::aacc:1:c000:202"), NET, (GITHUB,))
    assert "fd00:5eed:1:0:aacc:1:c000:202\tsrcco-de\n" in hosts
    assert "fd99:69a4:fefb:64::c612:1\tgithub.com\n" in hosts and f"{NET.gateway}\tapi.internal\n" in hosts
    assert plan.resolv_conf(NET) == "nameserver fd00:5eed:1::53\n"
    assert plan.resolv_conf(dataclasses.replace(NET, dns=())).startswith("#")


def test_a_reload_compares_plans() -> None:
    old = plan.in_force(BOOT, NET)
    assert not plan.changes(old, old).any
    env = plan.in_force(parse_bootstrap(YAML.replace("site.git", "other.git"), "b.yaml"), NET)
    assert plan.changes(old, env) == plan.Changes(replace_instances=True)
    limits = plan.in_force(parse_bootstrap(YAML.replace("20}", "30}"), "b.yaml"), NET)
    assert plan.changes(old, limits) == plan.Changes(frontend=True)
    dns = parse_bootstrap(YAML.replace("fd00:5eed:1::53", "fd00:5eed:1::54"), "b.yaml")
    assert plan.changes(old, plan.in_force(dns, dns.network)) == plan.Changes(dns=True)
    moved = parse_bootstrap(YAML.replace("fd00:5eed:1::", "fd00:5eed:2::"), "b.yaml")
    change = plan.changes(old, plan.in_force(moved, moved.network))
    assert change.readdress and change.replace_instances and not change.dns


def instance(name: str, started: float) -> Instance:
    return Instance(name, "srcco-de", "1", "bootstrap", "", V6("fd00::1"), started, "srcco-de:1", "sha256:1", 7)


def test_supervision_rules() -> None:
    # Back-off: quick failures count up, a failure after a stable run starts afresh; never healthy counts.
    assert supervision.after_failure(0, lived=2, unhealthy=False) == (1, 1.0)
    assert supervision.after_failure(3, lived=5, unhealthy=False) == (4, 8.0)
    assert supervision.after_failure(3, lived=600, unhealthy=False) == (1, 1.0)
    assert supervision.after_failure(3, lived=600, unhealthy=True) == (4, 8.0)
    assert [supervision.restart_delay(n) for n in (0, 1, 7, 8)] == [0, 1, 60, 60]
    # Adoption: the newest healthy instance; the rest are duplicates.
    old, new, newest = instance("a", 1), instance("b", 2), instance("c", 3)
    assert supervision.adoption([(old, True), (new, True), (newest, False)]) == (new, [old, newest])
    assert supervision.adoption([]) == (None, [])
    # Retirement: removed once its drain time is over.
    retiring = (Retiring(old, 10.0), Retiring(new, 20.0))
    assert supervision.due(retiring, 15.0) == ((Retiring(old, 10.0),), (Retiring(new, 20.0),))


def test_the_notification_target_is_an_egress_of_every_instance() -> None:
    site = 'SITE_REPO: "git://github.com:443/site.git"'
    boot = parse_bootstrap(YAML.replace(site, site + ', NOTIFY_URL: "https://hooks.example.org/x"'), "b.yaml")
    manifest = plan.egress_manifest(BLOG, boot)
    assert manifest.requires[-1] == RequiredService("notify", "1", "hooks.example.org", 443)
    notify = plan.external_services(APPS, BLOG, boot)[-1]
    assert (notify.name, notify.external_host, notify.external_port) == ("notify", "hooks.example.org", 443)
    # A `notify` entry of the YAML says where the host really is (an IPv4 address, say).
    defined = parse_bootstrap(YAML.replace("external_services:\n", "external_services:\n  - {service_name: notify, "
                                           "service_version: '1', external_host: '198.18.0.9', external_port: 8080}\n")
                              .replace(site, site + ', NOTIFY_URL: "http://hooks.test:8080/"'), "b.yaml")
    hosts = [s.external_host for s in plan.external_services(APPS, BLOG, defined) if s.name == "notify"]
    assert hosts == ["198.18.0.9"]
    assert plan.egress_manifest(BLOG, BOOT) is BLOG.manifest  # no NOTIFY_URL: nothing added
