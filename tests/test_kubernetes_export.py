"""`pequod-agent --export kubernetes`: the conversion, checked strictly against Kubernetes' schemas."""

from __future__ import annotations

import copy

import kubernetes_validate
import pytest
import yaml

from container import kubernetes
from container.bootstrap import parse_bootstrap
from container.manifest import (
    Manifest,
    PersistentFilesystem,
    ProvidedService,
    RequiredService,
    Resources,
    TemporaryFilesystem,
)
from container.plan import Application

# The oldest and the newest Kubernetes versions still supported (three minor releases are) that the
# schema package ships.
VERSIONS = ("1.35.0", "1.37.0")
YAML = """\
external_services:
  - {service_name: github-https, service_version: "1", external_host: "198.18.0.1", external_port: 443}
environment:
  SITE_REPO: "https://writer:hunter2@git.example.org/blog.git"
  WEBHOOK_SECRET: s3cret
  POLL_INTERVAL: 5
"""
BLOG = Application("srcco-de:1", "srcco-de", "1", Manifest(
    "pequod.xml", Resources(384, 2000, 256, 4096), (TemporaryFilesystem("/tmp", 64),),
    (ProvidedService("srcco-de", "1", 8000, "/_site/health", 120),),
    (RequiredService("github-https", "1", "github.com", 443),), (PersistentFilesystem("/workdir", 1024),)))
READER = Application("reader:1", "reader", "1", Manifest(
    "reader.xml", Resources(64, 100, 32, 256), (), (ProvidedService("reader", "1", 8080, "/", 30),),
    (RequiredService("srcco-de", "1", "blog.internal", 8000),)))


def exported(options: kubernetes.Options | None = None, apps=(BLOG,), text: str = YAML) -> list[dict]:
    return kubernetes.export(apps, parse_bootstrap(text, "b.yaml"), {"srcco-de": 10001, "reader": 10001},
                             options or kubernetes.Options())


def validate(docs: list[dict]) -> None:
    for version in VERSIONS:
        for doc in docs:
            kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("options", [
    kubernetes.Options(),
    kubernetes.Options(namespace="blog", replicas=3, mhz_per_cpu=2600, storage_class="fast", ingress_class="nginx"),
    kubernetes.Options(dns64=True),
])
def test_every_object_passes_strict_schema_validation(options: kubernetes.Options) -> None:
    docs = exported(options, apps=(BLOG, READER))
    validate(docs)
    kinds = [d["kind"] for d in docs]
    assert kinds.count("NetworkPolicy") == 2 and kinds.count("PodDisruptionBudget") == 2
    assert ("StatefulSet" in kinds) == bool(options.storage_class)
    assert ("Ingress" in kinds) == bool(options.ingress_class)


def test_a_misspelled_field_fails_the_check() -> None:
    deployment = copy.deepcopy(next(d for d in exported() if d["kind"] == "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesytem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)


def test_limits_security_probes_and_volumes() -> None:
    deployment = next(d for d in exported(kubernetes.Options(mhz_per_cpu=2600)) if d["kind"] == "Deployment")
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["requests"] == container["resources"]["limits"] == {"memory": "384Mi",
                                                                                      "cpu": "769m"}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
    assert security["capabilities"] == {"drop": ["ALL"]} and security["runAsUser"] == 10001
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["startupProbe"]["failureThreshold"] * container["startupProbe"]["periodSeconds"] == 120
    assert container["livenessProbe"]["httpGet"] == {"path": "/_site/health", "port": 8000}
    volumes = {v["name"]: v["emptyDir"] for v in pod["volumes"]}
    assert volumes == {"vol-tmp": {"medium": "Memory", "sizeLimit": "64Mi"}, "vol-workdir": {"sizeLimit": "1024Mi"}}
    assert pod["hostAliases"] == [{"ip": "fd99:69a4:fefb:64::c612:1", "hostnames": ["github.com"]}]
    assert kubernetes.cpu_quantity(2000, 2000) == "1000m" and kubernetes.cpu_quantity(1, 4000) == "1m"


def test_secrets_are_split_out() -> None:
    docs = exported()
    secret = next(d for d in docs if d["kind"] == "Secret")
    assert secret["stringData"] == {"SITE_REPO": "https://writer:hunter2@git.example.org/blog.git",
                                    "WEBHOOK_SECRET": "s3cret"}
    container = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["env"] == [{"name": "POLL_INTERVAL", "value": "5"}]
    assert container["envFrom"] == [{"secretRef": {"name": "srcco-de-env"}}]
    text = yaml.safe_dump([d for d in docs if d["kind"] != "Secret"])
    assert "hunter2" not in text and "s3cret" not in text


@pytest.mark.parametrize("value", [
    "https://ghp_TOKEN123@github.com/owner/blog.git",  # a token alone as the user
    "https://writer:hunter2@git.example.org/blog.git",
    "https://writer:hunter%40two@git.example.org/blog.git",  # percent-encoded
    "https://x-access-token:@github.com/owner/blog.git",  # empty password
    "ssh://deploy@git.example.org:2222/blog.git",
    "git@github.com:owner/blog.git",  # git's scp-like form
    "mirrors: https://a.example.org/x.git https://ghp_TOKEN123@b.example.org/x.git",  # a URL within a value
])
def test_every_credential_in_a_url_goes_into_the_secret(value: str) -> None:
    text = YAML.replace("POLL_INTERVAL: 5", f"POLL_INTERVAL: 5\n  MIRROR: {value!r}")
    docs = exported(text=text)
    validate(docs)
    assert next(d for d in docs if d["kind"] == "Secret")["stringData"]["MIRROR"] == value
    container = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert [e["name"] for e in container["env"]] == ["POLL_INTERVAL"]
    assert value not in yaml.safe_dump([d for d in docs if d["kind"] != "Secret"])
    notes = kubernetes.not_expressed((BLOG,), parse_bootstrap(text, "b.yaml"), kubernetes.Options())
    assert any("MIRROR, SITE_REPO, WEBHOOK_SECRET whole" in note for note in notes)


@pytest.mark.parametrize("value", ["https://git.example.org/blog.git", "git://198.18.0.1:9418/blog.git",
                                   "owner@example.org", "https://example.org/@scope/package"])
def test_urls_without_credentials_stay_in_the_pod_spec(value: str) -> None:
    docs = exported(text=YAML.replace("POLL_INTERVAL: 5", f"POLL_INTERVAL: 5\n  PLAIN: {value!r}"))
    container = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "PLAIN", "value": value} in container["env"]


def test_network_policy_per_require() -> None:
    docs = exported(apps=(BLOG, READER))
    policies = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "NetworkPolicy"}
    blog, reader = policies["srcco-de"], policies["reader"]
    assert blog["ingress"] == [{"ports": [{"protocol": "TCP", "port": 8000}]}]
    assert blog["egress"][0] == {"to": [{"ipBlock": {"cidr": "fd99:69a4:fefb:64::c612:1/128"}}],
                                 "ports": [{"protocol": "TCP", "port": 443}]}
    assert reader["egress"][0] == {"to": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "srcco-de"}}}],
                                   "ports": [{"protocol": "TCP", "port": 8000}]}
    assert all(rule["ports"][0]["port"] == 53 for rule in (blog["egress"][-1], reader["egress"][-1]))
    service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "srcco-de")
    assert service["spec"]["ipFamilyPolicy"] == "SingleStack" and service["spec"]["ipFamilies"] == ["IPv6"]


def test_same_inputs_same_output_and_what_is_not_expressed() -> None:
    boot = parse_bootstrap(YAML, "b.yaml")
    notes = kubernetes.not_expressed((BLOG, READER), boot, kubernetes.Options())
    first = kubernetes.render(exported(apps=(BLOG, READER)), notes)
    assert first == kubernetes.render(exported(apps=(BLOG, READER)), notes)
    assert "procs=256 is a node setting" in first and "files=4096 (nofile) has no pod field" in first
    assert "blog.internal:8000" in first


def test_a_local_repository_path_is_refused() -> None:
    with pytest.raises(kubernetes.ExportError, match="use a git URL the cluster can reach"):
        exported(text=YAML.replace("https://writer:hunter2@git.example.org/blog.git", "file:///srv/pequod/site.git"))
