"""The table of the bootstrap YAML's keys (container/yaml_keys.py) and the reader (container/bootstrap.py)
agree: hand-written documents that name every key of the table parse, and every mapping the reader reads
allows exactly the table's keys there (a mapping of free names, such as `environment`, is a key of the
table too). Pure: parses text."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from container import yaml_keys
from container.bootstrap import parse_bootstrap
from container.yaml_reader import Reader

# Three documents, as some keys exclude others: `frontend.tls.domains` is not used with `sites`, and
# `certificate` not with ACME's keys.
ONE_SITE = """
external_services:
  - {service_name: github-https, service_version: "1", external_host: github.com, external_port: 443,
     zone_name: bootstrap}
networks:
  - ipv6_subnet_ip: "fd00:5eed:1::"
    ipv6_subnet_prefixlen: 64
    location_name: home
    ipv6_gateway: "fd00:5eed:1::1"
    ipv6_dns: ["fd00:5eed:1::53"]
    ipv6_routes:
      - {destination_ip: "fd99:69a4:fefb:64::", destination_prefixlen: 96, gateway: "fd00:5eed:1::1"}
environment: {SITE_REPO: "file:///srv/pequod/site.git"}
nat64: {prefix: "fd99:69a4:fefb:64::/96", ipv4_pool: "198.19.64.0/24"}
frontend:
  bind: "::"
  port: 80
  ports: {srcco-de: 80}
  max_connections_per_client: 100
  max_requests_per_client: 3000
  tls:
    domains: [blog.example.org]
    email: admin@example.org
    acme_directory: https://acme-v02.api.letsencrypt.org/directory
    acme_ca_bundle: /etc/pequod/ca.pem
    port: 443
    challenge_port: 8402
    renew_days: 30
mounts:
  - {source: /srv/pequod/site.git, target: /srv/pequod/site.git}
metrics: {agent: "127.0.0.1:9464", haproxy: off}
"""
SITES = """
frontend: {tls: {email: admin@example.org}}
sites:
  - name: docs
    domains: [docs.example.org]
    default: true
    email: docs@example.org
    memory_mb: 256
    vmhz: 500
    environment: {SITE_REPO: "file:///srv/pequod/docs.git"}
    mounts: [{source: /srv/pequod/docs.git, target: /srv/pequod/docs.git}]
    previews: {max: 3}
previews:
  domain: preview.example.org
  max: 10
  password: eight-or-more
  public: false
  certificate: {dns: cloudflare, environment: {CF_DNS_API_TOKEN: secret}, resolvers: ["1.1.1.1:53"]}
"""
OWN_CERTIFICATE = """
frontend: {tls: {certificate: /etc/ssl/private/blog.pem, key: /etc/ssl/private/blog.key}}
"""
DOCUMENTS = (ONE_SITE, SITES, OWN_CERTIFICATE)


def named(value: Any, prefix: str = "") -> set[str]:
    """The key paths a parsed document names, as the table writes them (`[]` for a list's items); not inside a
    mapping of free names (`environment`) nor one with the keys of another path (a site's `previews`)."""
    found: set[str] = set()
    if isinstance(value, list):
        for item in value:
            found |= named(item, f"{prefix}[]")
    elif isinstance(value, dict) and (not prefix or any(key.parent == prefix for key in yaml_keys.KEYS)):
        for key, item in value.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            found |= {path} | named(item, path)
    return found


def test_the_documents_name_every_key_of_the_table_and_no_other() -> None:
    paths = set().union(*(named(yaml.safe_load(document)) for document in DOCUMENTS))
    assert paths == {key.path for key in yaml_keys.KEYS}


def test_the_reader_allows_exactly_the_tables_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    read: dict[str, tuple[tuple[str, ...] | None, tuple[str, ...]]] = {}
    mapping = Reader.mapping

    def recording(self: Reader, value: Any, where: str, allowed: tuple[str, ...] | None,
                  required: tuple[str, ...]) -> dict[Any, Any]:
        read[re.sub(r"\[\d+\]", "[]", where.replace("top level", ""))] = (allowed, required)
        return mapping(self, value, where, allowed, required)

    monkeypatch.setattr(Reader, "mapping", recording)
    for document in DOCUMENTS:
        parse_bootstrap(document, "b.yaml")  # each key in them is accepted
    table = {key.path: key for key in yaml_keys.KEYS}
    for path, (allowed, required) in sorted(read.items()):
        if allowed is None:  # a mapping of free names: a key without keys of its own
            assert path in table and yaml_keys.keys(path) == (), path
            continue
        canonical = next((key.like + path[len(key.path):] for key in yaml_keys.KEYS
                          if key.like and (path + ".").startswith((key.path + ".", key.path + "[]"))), path)
        below = [key for key in yaml_keys.KEYS if key.parent == canonical]
        assert allowed == tuple(key.name for key in below), path
        assert required == tuple(key.name for key in below if key.default is yaml_keys.REQUIRED), path
    parents = {key.parent for key in yaml_keys.KEYS} | {  # and those with the keys of another, as `sites[].mounts[]`
        key.path + other.parent[len(key.like):] for key in yaml_keys.KEYS if key.like
        for other in yaml_keys.KEYS if other.parent in (key.like, f"{key.like}[]")}
    assert parents - set(read) == set(), "the reader reads no mapping at these paths of the table"


def test_a_key_not_in_the_table_is_refused() -> None:
    with pytest.raises(Exception, match=r"b.yaml: frontend.tls.colour: unknown key \(allowed: domains, email, "
                       r"acme_directory, acme_ca_bundle, certificate, key, port, challenge_port, renew_days\)"):
        parse_bootstrap("frontend: {tls: {domains: [a.org], email: a@b.org, colour: blue}}", "b.yaml")
