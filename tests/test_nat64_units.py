"""The pure parts of NAT64, the firewall and the frontend: rendered configurations, checked by the real
programs (tayga's syntax by text, iptables-restore --test, haproxy -c), and the YAML sections."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from container import firewall, frontend, nat64, plan
from container.bootstrap import BootstrapError, Nat64, Network, parse_bootstrap
from container.manifest import Manifest, RequiredService, Resources
from container.nat64 import Destination

V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address
NAT = Nat64(ipaddress.IPv6Network("fd99:69a4:fefb:64::/96"), ipaddress.IPv4Network("198.19.64.0/24"))
NET = Network(ipaddress.IPv6Network("fd00:5eed:1::/64"), "test", V6("fd00:5eed:1::1"), (V6("fd00:5eed:1::1"),))


def test_tayga_conf() -> None:
    assert nat64.render_tayga_conf(NAT, Path("/var/lib/pequod-agent/tayga/data")) == (
        "# Written by pequod-agent; changes are overwritten.\n"
        "tun-device pequod64\n"
        "ipv4-addr 198.19.64.1\n"
        "prefix fd99:69a4:fefb:64::/96\n"
        "dynamic-pool 198.19.64.128/25\n"
        "data-dir /var/lib/pequod-agent/tayga/data\n"
    )
    assert nat64.host_tun_address(NAT) == V4("198.19.64.2")


def test_synthesised_address_embeds_the_ipv4_address() -> None:
    assert nat64.synthesise(NAT, V4("140.82.121.4")) == V6("fd99:69a4:fefb:64::8c52:7904")
    assert nat64.synthesise(NAT, V4("198.18.0.2")) == V6("fd99:69a4:fefb:64::198.18.0.2")


def _manifest(*requires: RequiredService) -> Manifest:
    return Manifest("pequod.xml", Resources(384, 1000, 256, 4096), (), (), requires)


def test_destinations_resolve_each_required_service() -> None:
    bootstrap = parse_bootstrap(
        "external_services:\n"
        "  - {service_name: github-https, service_version: '1', external_host: github.com, external_port: 443}\n",
        "b.yaml")
    manifest = _manifest(RequiredService("github-https", "1", "github.com", 443))
    found = nat64.destinations(manifest, bootstrap.external_services, NAT,
                               resolve=lambda host: (V4("140.82.121.3"), V4("140.82.121.4")))
    assert found == (Destination("github-https", "github.com", 443, "github.com", 443,
                                 (V4("140.82.121.3"), V4("140.82.121.4")),
                                 (V6("fd99:69a4:fefb:64::8c52:7903"), V6("fd99:69a4:fefb:64::8c52:7904"))),)
    assert plan.hosts_entries(found) == ("fd99:69a4:fefb:64::8c52:7903\tgithub.com\n"
                                         "fd99:69a4:fefb:64::8c52:7904\tgithub.com\n")


def test_resolve_ipv4_takes_literals_and_names() -> None:
    assert nat64.resolve_ipv4("198.18.7.9") == (V4("198.18.7.9"),)
    assert nat64.resolve_ipv4("localhost") == (V4("127.0.0.1"),)
    assert nat64.resolve_ipv4("name.invalid") == ()


GITHUB = Destination("github-https", "github.com", 443, "github.com", 443, (V4("198.18.0.2"),),
                     (V6("fd99:69a4:fefb:64::c612:2"),))
MOVED = Destination("mirror", "mirror.local", 80, "mirror.example", 8080, (V4("198.18.0.6"),),
                    (V6("fd99:69a4:fefb:64::c612:6"),))


@pytest.mark.system  # ip6tables-restore --test needs root
def test_rules_allow_declared_destinations_then_reject_the_rest() -> None:
    blog, other = V6("fd00:5eed:1:0:aacc:1:c000:202"), V6("fd00:5eed:1:0:aacc:2:c000:202")
    rules = firewall.render_rules(NET, NAT, (firewall.Grant((blog,), GITHUB), firewall.Grant((blog,), MOVED)),
                                  (firewall.HostListener((other,), 9000, "reader -> srcco-de"),))
    v6 = rules["ip6tables"].splitlines()
    accept = ('-A PEQUOD-FORWARD -i pequod0 -o pequod64 -s fd00:5eed:1:0:aacc:1:c000:202/128 '
              '-d fd99:69a4:fefb:64::c612:2/128 -p tcp --dport 443 '
              '-m comment --comment "pequod: github-https" -j ACCEPT')
    reject = ('-A PEQUOD-FORWARD -i pequod0 -m comment --comment "pequod: egress not declared" '
              '-j REJECT --reject-with icmp6-adm-prohibited')
    assert v6.index(accept) < v6.index(reject)
    assert v6[3] == "-A PEQUOD-FORWARD -o pequod0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
    # A local port that differs from the external one is translated before the filter sees it.
    assert ('-A PEQUOD-PREROUTING -i pequod0 -s fd00:5eed:1:0:aacc:1:c000:202/128 '
            '-d fd99:69a4:fefb:64::c612:6/128 -p tcp --dport 80 '
            '-m comment --comment "pequod: mirror" -j DNAT --to-destination [fd99:69a4:fefb:64::c612:6]:8080') in v6
    assert any("--dport 8080" in line and "-j ACCEPT" in line and "c612:6" in line for line in v6)
    # DNS on the gateway and the declared host listener are the only ways into the host.
    assert ('-A PEQUOD-INPUT -i pequod0 -d fd00:5eed:1::1/128 -p udp --dport 53 '
            '-m comment --comment "pequod: dns" -j ACCEPT') in v6
    # Only the instance that requires it reaches a service another instance provides.
    assert ('-A PEQUOD-INPUT -i pequod0 -s fd00:5eed:1:0:aacc:2:c000:202/128 -d fd00:5eed:1::1/128 -p tcp '
            '--dport 9000 -m comment --comment "pequod: reader -> srcco-de" -j ACCEPT') in v6
    assert not [line for line in v6 if "aacc:2:" in line and "c612" in line]  # and nothing of the blog's
    last_input = [line for line in v6 if line.startswith("-A PEQUOD-INPUT")][-1]
    assert last_input.endswith("-j REJECT --reject-with icmp6-adm-prohibited")
    v4 = rules["iptables"].splitlines()
    assert ('-A PEQUOD-FORWARD -i pequod64 -s 198.19.64.0/24 -d 198.18.0.2/32 -p tcp --dport 443 '
            '-m comment --comment "pequod: github-https" -j ACCEPT') in v4
    assert ('-A PEQUOD-POSTROUTING -s 198.19.64.0/24 ! -o pequod64 '
            '-m comment --comment "pequod: NAT44 of the NAT64 pool" -j MASQUERADE') in v4
    firewall.check_rules(rules)  # iptables-restore --test accepts them


@pytest.mark.system  # ip6tables-restore --test needs root
def test_rules_without_declarations_allow_nothing_out() -> None:
    rules = firewall.render_rules(Network(NET.subnet, "t", NET.gateway), NAT, ())
    assert [line for line in rules["ip6tables"].splitlines() if "ACCEPT" in line] == [
        "-A PEQUOD-FORWARD -o pequod0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "-A PEQUOD-INPUT -i pequod0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "-A PEQUOD-INPUT -i pequod0 -p ipv6-icmp -j ACCEPT",
    ]
    firewall.check_rules(rules)


def test_haproxy_conf_is_accepted_by_haproxy() -> None:
    services = (
        frontend.Service("srcco-de", V6("::"), 80, "/_site/health",
                         (frontend.Server("bootstrap--srcco-de-1-9641", V6("fd00:5eed:1:0:aacc:1:c000:202"), 8000),),
                         (), 100, 1000),
        frontend.Service("api", V4("127.0.0.1"), 8081, "/health"),
        frontend.Service("internal", V6("::"), 0, "/", (), ((V6("fd00:5eed:1::1"), 80),)),
    )
    text = frontend.render_haproxy_conf(services, Path("/run/pequod"), "haproxy")
    assert "    master-worker\n" in text and "expose-fd listeners" in text
    assert "frontend srcco-de\n    bind [::]:80 v4v6\n    stick-table type ipv6" in text
    # Per-client limits where set, and every frontend takes requests whole and bounded.
    assert "    tcp-request connection reject if { sc_conn_cur(0) gt 100 }\n" in text
    assert "    http-request deny deny_status 429 if { sc_http_req_rate(0) gt 1000 }\n" in text
    assert text.count("    http-request wait-for-body time 10s\n") == 3
    assert text.count("sc_conn_cur") == 1
    assert "    option httpchk GET /_site/health?serving\n    http-check expect status 200\n" in text
    assert "    server bootstrap--srcco-de-1-9641 [fd00:5eed:1:0:aacc:1:c000:202]:8000\n" in text
    assert "    bind 127.0.0.1:8081\n" in text
    # Port 0: not published; only the listener on the gateway for instances that require it.
    assert "frontend internal\n    bind [fd00:5eed:1::1]:80\n    http-request return status 414" in text
    assert "    timeout http-request 10s\n" in text  # slow clients cannot hold a connection forever
    frontend.check_config(text)
    with pytest.raises(frontend.FrontendError, match="haproxy -c refused"):
        frontend.check_config(text.replace("default_backend srcco-de", "default_backend missing"))


SEED = """\
networks:
  - ipv6_subnet_ip: "fd00:5eed:1::"
    ipv6_subnet_prefixlen: 64
    ipv6_routes:
      - {destination_ip: "fd42:64::", destination_prefixlen: 96, gateway: "fd00:5eed:1::1"}
"""


def test_nat64_and_frontend_sections() -> None:
    defaults = parse_bootstrap("", "b.yaml")
    assert defaults.nat64 == Nat64(ipaddress.IPv6Network("fd99:69a4:fefb:64::/96"),
                                   ipaddress.IPv4Network("198.19.64.0/24"))
    assert (defaults.frontend.bind, defaults.frontend.port) == (V6("::"), 80)
    assert parse_bootstrap(SEED, "b.yaml").nat64.prefix == ipaddress.IPv6Network("fd42:64::/96")  # from the route
    explicit = parse_bootstrap(SEED + "nat64: {prefix: 'fd43::/96', ipv4_pool: 198.18.96.0/28}\n"
                               "frontend: {bind: 127.0.0.1, port: 8080, ports: {api: 8081}}\n", "b.yaml")
    assert explicit.nat64 == Nat64(ipaddress.IPv6Network("fd43::/96"), ipaddress.IPv4Network("198.18.96.0/28"))
    assert explicit.frontend.port_of("srcco-de") == 8080 and explicit.frontend.port_of("api") == 8081
    assert explicit.frontend.bind == V4("127.0.0.1")


@pytest.mark.parametrize(("text", "message"), [
    ("nat64: {prefix: 'fd43::/64'}", "nat64.prefix: fd43::/64 must be a /96"),
    ("nat64: {prefix: '64:ff9b::/96'}", "the well-known prefix 64:ff9b::/96 cannot reach private IPv4"),
    ("nat64: {prefix: 'fd00:5eed:1::/96'}", "nat64.prefix: fd00:5eed:1::/96 overlaps the instance subnet"),
    ("nat64: {prefix: nope}", "nat64.prefix: 'nope' is not an IPv6 network"),
    ("nat64: {ipv4_pool: 10.0.0.0/30}", "nat64.ipv4_pool: 10.0.0.0/30: expected a /16 to /28"),
    ("nat64: {ipv4_pool: 10.0.0.1/24}", "nat64.ipv4_pool: '10.0.0.1/24' is not an IPv4 network"),
    ("nat64: {pool: 10.0.0.0/24}", "nat64.pool: unknown key"),
    ("frontend: {bind: localhost}", "frontend.bind: 'localhost' is not an IP address"),
    ("frontend: {port: 0}", "frontend.port: 0 is out of range: expected a port number"),
    ("frontend: {ports: [80]}", "frontend.ports: expected a mapping, got a list"),
    ("frontend: {ports: {Blog: 80}}", "frontend.ports.Blog: 'Blog' is not a service name"),
    ("frontend: 80", "frontend: expected a mapping, got int"),
])
def test_bad_nat64_and_frontend_sections(text: str, message: str) -> None:
    with pytest.raises(BootstrapError) as caught:
        parse_bootstrap(SEED + text + "\n", "b.yaml")
    assert str(caught.value).startswith("b.yaml: ") and message in str(caught.value), str(caught.value)
