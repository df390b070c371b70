"""`pequod-agent --export kubernetes`: the conversion, checked strictly against Kubernetes' schemas."""

from __future__ import annotations

import copy
import dataclasses

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
    load_manifest,
)
from container.plan import Application, site_applications
from tests.helpers import REPO_ROOT

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


@pytest.mark.parametrize("options", [kubernetes.Options(), kubernetes.Options(storage_class="fast")])
def test_the_builder_is_a_second_container_of_its_own_user_without_secrets(options: kubernetes.Options) -> None:
    blog = dataclasses.replace(BLOG, manifest=load_manifest(str(REPO_ROOT / "pequod.xml")))
    docs = exported(options, apps=(blog,))
    validate(docs)
    pod = next(d for d in docs if d["kind"] in ("Deployment", "StatefulSet"))["spec"]["template"]["spec"]
    instance, builder = pod["containers"]
    assert {"name": "BUILDER_SOCKET", "value": "/builder/socket"} in instance["env"]
    assert builder["command"] == ["python3", "-m", "pipeline.build.door"]
    assert builder["env"] == [{"name": "BUILDER_SOCKET", "value": "/builder/socket"},
                              {"name": "HOME", "value": "/builder"}]
    assert "envFrom" not in builder and "ports" not in builder and not pod.get("shareProcessNamespace")
    security = builder["securityContext"]
    assert security["runAsUser"] == security["runAsGroup"] == 110001 != instance["securityContext"]["runAsUser"]
    assert security["readOnlyRootFilesystem"] and security["capabilities"] == {"drop": ["ALL"]}
    assert builder["resources"]["limits"] == {"memory": "640Mi", "cpu": "1000m"}
    assert builder["volumeMounts"] == [
        {"name": "vol-workdir-build", "mountPath": "/workdir/build", "readOnly": True},
        {"name": "vol-builder", "mountPath": "/builder"},
        {"name": "builder-tmp", "mountPath": "/tmp"}]  # not /workdir: no release, no repository, no status


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


SITES_YAML = """\
external_services:
  - {service_name: github-https, service_version: "1", external_host: "198.18.0.1", external_port: 443}
environment:
  POLL_INTERVAL: 5
  SITE_REPO: "https://git.example.org/shared.git"
frontend:
  tls: {email: me@example.org}
sites:
  - name: blog
    default: true
    domains: [blog.example.org, www.blog.example.org]
    memory_mb: 256
    vmhz: 500
    environment: {SITE_REPO: "https://git.example.org/blog.git", WEBHOOK_SECRET: blog-only}
  - name: docs
    domains: [docs.example.org]
    memory_mb: 128
    environment: {SITE_REPO: "https://reader:pw@git.example.org/docs.git", WEBHOOK_SECRET: docs-only}
"""


def exported_sites(options: kubernetes.Options | None = None, text: str = SITES_YAML) -> list[dict]:
    boot = parse_bootstrap(text, "b.yaml")
    apps = site_applications((BLOG,), boot)
    return kubernetes.export(apps, boot, {app.name: 10001 for app in apps}, options or kubernetes.Options())


def of_site(docs: list[dict], site: str, kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind and d["metadata"]["labels"]["app.kubernetes.io/name"] == site]


@pytest.mark.parametrize("options", [
    kubernetes.Options(),
    kubernetes.Options(namespace="sites", replicas=2, mhz_per_cpu=2600, storage_class="fast", ingress_class="nginx"),
])
def test_each_site_gets_its_own_objects_validated_strictly(options: kubernetes.Options) -> None:
    docs = exported_sites(options)
    validate(docs)
    names = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(names) == len(set(names))
    workload = "StatefulSet" if options.storage_class else "Deployment"
    for site in ("blog", "docs"):
        kinds = sorted(d["kind"] for d in docs if d["metadata"]["labels"]["app.kubernetes.io/name"] == site)
        assert kinds == sorted(["Secret", workload, "Service", "Ingress", "NetworkPolicy", "PodDisruptionBudget"])
        assert {d["metadata"]["name"] for d in of_site(docs, site, "Service") + of_site(docs, site, "Ingress")
                + of_site(docs, site, workload)} == {site}
        assert of_site(docs, site, "Secret")[0]["metadata"]["name"] == f"{site}-env"
        pod = of_site(docs, site, workload)[0]["spec"]["template"]
        assert pod["spec"]["containers"][0]["image"] == "srcco-de:1"
        assert pod["spec"]["containers"][0]["envFrom"] == [{"secretRef": {"name": f"{site}-env"}}]
        # Each site's Service (and policy, budget) selects its own pods only.
        selector = of_site(docs, site, "Service")[0]["spec"]["selector"]
        for other in ("blog", "docs"):
            labels = of_site(docs, other, workload)[0]["spec"]["template"]["metadata"]["labels"]
            assert (selector.items() <= labels.items()) == (other == site)
        ingress = of_site(docs, site, "Ingress")[0]["spec"]
        assert ingress.get("ingressClassName") == options.ingress_class
        assert {p["backend"]["service"]["name"] for r in ingress["rules"] for p in r["http"]["paths"]} == {site}


def test_a_sites_secret_holds_its_own_secrets_only() -> None:
    docs = exported_sites()
    blog, docs_secret = (of_site(docs, site, "Secret")[0]["stringData"] for site in ("blog", "docs"))
    assert blog == {"WEBHOOK_SECRET": "blog-only"}
    assert docs_secret == {"SITE_REPO": "https://reader:pw@git.example.org/docs.git", "WEBHOOK_SECRET": "docs-only"}
    env = {site: {e["name"]: e["value"] for e in of_site(docs, site, "Deployment")[0]["spec"]["template"]["spec"]
                  ["containers"][0]["env"]} for site in ("blog", "docs")}
    assert env == {"blog": {"POLL_INTERVAL": "5", "SITE_REPO": "https://git.example.org/blog.git"},
                   "docs": {"POLL_INTERVAL": "5"}}
    text = yaml.safe_dump([d for d in docs if d["kind"] != "Secret"])
    assert "blog-only" not in text and "docs-only" not in text and "reader:pw" not in text
    notes = kubernetes.not_expressed(site_applications((BLOG,), parse_bootstrap(SITES_YAML, "b.yaml")),
                                     parse_bootstrap(SITES_YAML, "b.yaml"), kubernetes.Options())
    assert "The Secret blog-env holds WEBHOOK_SECRET whole" in " ".join(notes)
    assert "The Secret docs-env holds SITE_REPO, WEBHOOK_SECRET whole" in " ".join(notes)
    assert any("TLS Secret <site>-tls" in note for note in notes)


def test_previews_are_left_out_of_the_cluster_and_said_so() -> None:
    text = SITES_YAML.replace("frontend:", "previews: {domain: preview.example.org}\nfrontend:")
    docs = exported_sites(text=text)
    dumped = yaml.safe_dump(docs)
    assert "PREVIEWS_" not in dumped and "preview.example.org" not in dumped
    boot = parse_bootstrap(text, "b.yaml")
    assert "previews are left out" in " ".join(kubernetes.not_expressed(site_applications((BLOG,), boot), boot,
                                                                        kubernetes.Options()))


def test_ingress_hosts_are_the_sites_domains_with_tls_per_site() -> None:
    docs = exported_sites()
    blog, docs_ingress = (of_site(docs, site, "Ingress")[0]["spec"] for site in ("blog", "docs"))
    assert [r.get("host") for r in blog["rules"]] == ["blog.example.org", "www.blog.example.org", None]  # default
    assert [r.get("host") for r in docs_ingress["rules"]] == ["docs.example.org"]
    assert blog["tls"] == [{"hosts": ["blog.example.org", "www.blog.example.org"], "secretName": "blog-tls"}]
    assert docs_ingress["tls"] == [{"hosts": ["docs.example.org"], "secretName": "docs-tls"}]
    assert all(r["http"]["paths"][0]["backend"]["service"] == {"name": "docs", "port": {"number": 8000}}
               for r in docs_ingress["rules"])
    assert "&id" not in kubernetes.render(docs, [])  # no YAML anchors for the rules' shared backend
    plain = exported_sites(text=SITES_YAML.replace("frontend:\n  tls: {email: me@example.org}\n", ""))
    validate(plain)
    assert all("tls" not in d["spec"] for d in plain if d["kind"] == "Ingress")


def test_limits_per_site_from_its_lowered_manifest() -> None:
    docs = exported_sites(kubernetes.Options(mhz_per_cpu=2000))
    limits = {site: of_site(docs, site, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["resources"]
              for site in ("blog", "docs")}
    assert limits["blog"]["limits"] == limits["blog"]["requests"] == {"memory": "256Mi", "cpu": "250m"}
    assert limits["docs"]["limits"] == limits["docs"]["requests"] == {"memory": "128Mi", "cpu": "1000m"}  # vmhz: 2000


def test_a_sites_local_repository_path_is_refused() -> None:
    with pytest.raises(kubernetes.ExportError, match="site docs: SITE_REPO=file:///srv/docs.git"):
        exported_sites(text=SITES_YAML.replace("https://reader:pw@git.example.org/docs.git", "file:///srv/docs.git"))
    # A top-level path that every site overrides is not used: no error.
    validate(exported_sites(text=SITES_YAML.replace("https://git.example.org/shared.git", "file:///srv/shared.git")))


def test_cli_export_writes_a_file_per_site(tmp_path, monkeypatch, capsys) -> None:
    from container import cli, engine, image, runtime

    monkeypatch.setattr(engine, "connect", lambda: object())
    monkeypatch.setattr(image, "load_application", lambda _client, _image: BLOG)
    monkeypatch.setattr(runtime, "image_info", lambda _client, _image: runtime.ImageInfo("id", "10001"))
    (tmp_path / "b.yaml").write_text(SITES_YAML)
    args = ["--export", "kubernetes", "srcco-de:1", str(tmp_path / "b.yaml")]
    assert cli.main(args) == 0
    printed = list(yaml.safe_load_all(capsys.readouterr().out))
    assert printed == exported_sites()
    assert cli.main([*args, "--output", str(tmp_path / "out")]) == 0
    for site in ("blog", "docs"):
        written = list(yaml.safe_load_all((tmp_path / "out" / f"{site}.yaml").read_text()))
        assert written == [d for d in printed if d["metadata"]["labels"]["app.kubernetes.io/name"] == site]
