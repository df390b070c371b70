"""Unit tests for the agent's pure parts: addresses, names, limits, capacity, tables."""

from __future__ import annotations

import ipaddress

import pytest

from container import network
from container.bootstrap import parse_bootstrap
from container.capacity import Capacity, check_fits, nano_cpus, parse_cpuinfo, parse_meminfo
from container.errors import AgentError
from container.manifest import (
    Manifest,
    PersistentFilesystem,
    ProvidedService,
    RequiredService,
    Resources,
    TemporaryFilesystem,
)
from container.plan import Application, check_services, hosts_file
from container.runtime import InstanceId, app_from_image, container_args, run_user
from container.supervision import restart_delay
from container.tables import relative, table


def test_instance_address_follows_the_seed_pattern() -> None:
    subnet = ipaddress.IPv6Network("2a01:4f8:190:314e::/64")
    address = network.instance_address(subnet, ipaddress.IPv4Address("5.9.148.78"), 0x6F04)
    assert str(address) == "2a01:4f8:190:314e:aacc:6f04:509:944e"


def test_generated_network_is_a_stable_ula() -> None:
    first, again = network.generated_network(b"seed"), network.generated_network(b"seed")
    assert first == again and first.subnet.prefixlen == 64
    assert first.subnet.subnet_of(ipaddress.IPv6Network("fd00::/8"))
    assert first.gateway == first.subnet[1]


def test_veth_names_fit_the_kernel_limit() -> None:
    name = network.veth_name("bootstrap--srcco-de-1-9641")
    assert name.startswith("pq-") and len(name) <= 15


def test_names_from_image_and_instance() -> None:
    assert app_from_image("srcco-de:1") == ("srcco-de", "1")
    assert app_from_image("registry.example:5000/team/blog:2.1") == ("blog", "2.1")
    assert app_from_image("blog") == ("blog", "latest")
    assert InstanceId("bootstrap", "", "srcco-de", "1", "9641").name == "bootstrap--srcco-de-1-9641"


def test_never_root() -> None:
    assert run_user("10001") == ("10001", 10001)
    assert run_user("") == ("65534", 65534)
    assert run_user("root") == ("65534", 65534)
    assert run_user("site") == ("site", None)


def test_capacity_parsing_and_cpu_limit() -> None:
    assert parse_cpuinfo("cpu MHz\t\t: 2500.5\ncpu MHz\t\t: 2500.5\n", 2) == 5001
    assert parse_cpuinfo("processor: 0\n", 4) == 4000
    assert parse_meminfo("MemTotal:       24000000 kB\n") == 23437
    capacity = Capacity(cpus=2, vmhz=5000, memory_mb=4096)
    assert nano_cpus(Resources(256, 1250, 64, 1024), capacity) == 500_000_000


def test_no_overbooking() -> None:
    capacity = Capacity(cpus=2, vmhz=5000, memory_mb=1024)
    check_fits("a", Resources(512, 2500, 64, 1024), [Resources(512, 2500, 64, 1024)], capacity)
    with pytest.raises(AgentError, match="needs 3000 VMHz but the host offers 5000 VMHz .* with 2500 in use"):
        check_fits("a", Resources(256, 3000, 64, 1024), [Resources(256, 2500, 64, 1024)], capacity)
    with pytest.raises(AgentError, match="needs 768 MB but the host has 1024 MB with 512 in use"):
        check_fits("a", Resources(768, 10, 64, 1024), [Resources(512, 10, 64, 1024)], capacity)


def test_container_args_carry_limits_and_hardening() -> None:
    manifest = Manifest("m", Resources(384, 1000, 256, 4096), (TemporaryFilesystem("/workdir", 128),), (), ())
    args = container_args(
        image="srcco-de:1", instance=InstanceId("bootstrap", "", "srcco-de", "1", "abcd"), manifest=manifest,
        environment={"A": "1"}, image_user="10001", capacity=Capacity(2, 5000, 8192),
        read_only_binds={"/etc/hosts": "/state/hosts"}, labels={"zone": "bootstrap"},
    )
    assert args["network_mode"] == "none" and args["read_only"] is True
    assert args["cap_drop"] == ["ALL"] and args["security_opt"] == ["no-new-privileges"]
    assert args["mem_limit"] == args["memswap_limit"] == "384m"
    assert args["nano_cpus"] == 400_000_000 and args["pids_limit"] == 256
    assert args["ulimits"][0]["Soft"] == args["ulimits"][0]["Hard"] == 4096
    assert args["tmpfs"] == {"/workdir": "size=128m,uid=10001,gid=10001,mode=0700"}
    assert args["volumes"] == {"/state/hosts": {"bind": "/etc/hosts", "mode": "ro"}}
    assert args["labels"] == {"org.pequod.agent": "1", "org.pequod.agent.zone": "bootstrap"}
    assert args["sysctls"]["net.ipv6.conf.all.disable_ipv6"] == "0"
    assert args["healthcheck"] == {"test": ["NONE"]}  # the agent checks health, not Docker (the image's test off)


def test_container_args_volumes_from_the_manifest() -> None:
    provide = ProvidedService("srcco-de", "1", 8000, "/_site/health", 90)
    manifest = Manifest("m", Resources(384, 1000, 256, 4096), (), (provide,), (),
                        (PersistentFilesystem("/workdir", 1024),))
    args = container_args(
        image="srcco-de:1", instance=InstanceId("bootstrap", "", "srcco-de", "1", "abcd"), manifest=manifest,
        environment={}, image_user="10001", capacity=Capacity(2, 5000, 8192), read_only_binds={}, labels={},
        read_write_binds={"/workdir": "/state/volumes/srcco-de-workdir"},
    )
    assert args["volumes"] == {"/state/volumes/srcco-de-workdir": {"bind": "/workdir", "mode": "rw"}}


def test_restart_back_off() -> None:
    assert [restart_delay(n) for n in range(0, 9)] == [0, 1, 2, 4, 8, 16, 32, 60, 60]


def test_inspect_formatting() -> None:
    assert relative(5) == "5s ago" and relative(57 * 60 + 3) == "57m ago" and relative(7200) == "2h ago"
    assert table(("A", "Port"), [("x", "8000"), ("long-name", "443")], right=(1,)).splitlines() == [
        "A         Port", "x         8000", "long-name  443",
    ]


def test_bootstrap_defaults_and_environment() -> None:
    boot = parse_bootstrap(
        "networks:\n  - {ipv6_subnet_ip: 'fd00:1::', ipv6_subnet_prefixlen: 64}\n"
        "environment: {SITE_REPO: x, POLL_INTERVAL: 5, DEBUG: true}\n", "b.yaml",
    )
    assert boot.network is not None and boot.network.gateway == ipaddress.IPv6Address("fd00:1::1")
    assert boot.env == {"SITE_REPO": "x", "POLL_INTERVAL": "5", "DEBUG": "true"}
    assert parse_bootstrap("", "empty.yaml").network is None


@pytest.mark.parametrize(("text", "message"), [
    ('external_services: [{service_name: "gh\\n", service_version: "1", external_host: github.com, '
     'external_port: 443}]',
     "external_services[0].service_name: 'gh\\n' is not a service name"),
    ('external_services: [{service_name: gh, service_version: "1", external_host: "github.com\\n", '
     'external_port: 443}]',
     "external_services[0].external_host: 'github.com\\n' is not a host name"),
    ('environment: {"SITE_REPO\\n": x}', "environment.SITE_REPO\\n: not a valid environment variable name"),
    ('mounts: [{source: "/srv\\n", target: /srv}]', "mounts[0].source: '/srv\\n' is not an absolute path"),
    ('frontend: {ports: {"blog\\n": 81}}', "frontend.ports.blog\\n: 'blog\\n' is not a service name"),
    ('frontend: {tls: {domains: [a.org], email: "a@b.org\\n"}}', "frontend.tls.email: 'a@b.org\\n' is not an email"),
    ('frontend: {tls: {certificate: "/etc/blog.pem\\n"}}', "frontend.tls.certificate: '/etc/blog.pem\\n' is not an"),
])
def test_names_and_paths_with_a_trailing_newline_are_refused(text: str, message: str) -> None:
    with pytest.raises(AgentError) as caught:
        parse_bootstrap(text + "\n", "b.yaml")
    assert message in str(caught.value) and "\n" not in str(caught.value)


def _app(image: str, provides: tuple = (), requires: tuple = ()) -> Application:
    name, version = image.split(":")
    return Application(image, name, version,
                       Manifest(f"{image}:/pequod.xml", Resources(64, 100, 32, 256), (), provides, requires))


def test_requires_are_satisfied_here_or_by_external_services() -> None:
    blog = _app("srcco-de:1", (ProvidedService("srcco-de", "1", 8000, "/", 30),),
                (RequiredService("github-https", "1", "github.com", 443),))
    reader = _app("reader:1", (), (RequiredService("srcco-de", "1", "blog.internal", 80),))
    external = parse_bootstrap("external_services:\n  - {service_name: github-https, service_version: '1', "
                               "external_host: github.com, external_port: 443}\n", "b.yaml")
    check_services((blog, reader,), external)  # github from the YAML, srcco-de from the blog
    with pytest.raises(AgentError, match=r'reader:1:/pequod.xml: <require service-name="srcco-de"> is not defined '
                                         r"in b.yaml \(add it under external_services\) and no application here"):
        check_services((reader,), external)
    twice = _app("copy:1", (ProvidedService("srcco-de", "1", 8000, "/", 30),))
    with pytest.raises(AgentError, match="'srcco-de' is provided by both srcco-de:1 and copy:1"):
        check_services((blog, twice, reader,), external)
    clash = _app("api:1", (ProvidedService("api", "1", 9000, "/", 30),))
    both = _app("both:1", (), (RequiredService("srcco-de", "1", "blog", 80), RequiredService("api", "1", "api", 80)))
    with pytest.raises(AgentError, match='local-port="80">: the port is already used for srcco-de'):
        check_services((blog, clash, both,), external)


def test_hosts_file_names_external_and_local_services() -> None:
    from container.nat64 import Destination

    github = Destination("github-https", "github.com", 443, "github.com", 443, (ipaddress.IPv4Address("140.82.121.4"),),
                         (ipaddress.IPv6Address("fd99:69a4:fefb:64::8c52:7904"),))
    text = hosts_file("reader", ipaddress.IPv6Address("fd00::aacc:1:c000:202"), (github,),
                      {"blog.internal": ipaddress.IPv6Address("fd00::1")})
    assert text.splitlines()[2:] == ["fd00::aacc:1:c000:202\treader", "fd99:69a4:fefb:64::8c52:7904\tgithub.com",
                                     "fd00::1\tblog.internal"]


def test_liveness_replaces_only_after_failing_for_the_whole_threshold() -> None:
    from container.supervision import liveness

    assert liveness(None, True, 100.0) == (None, False)
    since, replace = liveness(None, False, 100.0)
    assert (since, replace) == (100.0, False)  # the first failed check starts the clock
    assert liveness(since, False, 109.9) == (100.0, False)
    assert liveness(since, False, 110.0) == (100.0, True)
    assert liveness(since, True, 109.0) == (None, False)  # one good answer resets it


def test_replacements_are_counted_per_application_and_reason() -> None:
    from container.supervision import count_replacement

    state = count_replacement({"restarts": 2}, "srcco-de", "unhealthy")
    state = count_replacement(state, "srcco-de", "crash")
    state = count_replacement(state, "reader", "unhealthy")
    assert state["restarts"] == 5
    assert state["replacements"] == {"srcco-de": {"unhealthy": 1, "crash": 1}, "reader": {"unhealthy": 1}}
