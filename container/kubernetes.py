"""`pequod-agent --export kubernetes`: the applications the agent runs, as Kubernetes objects.

A pure function of the manifests, the bootstrap settings, the images' users and the options: the same
inputs give the same output (stable order, no times), so it can live in git and be applied by Argo CD
or Flux. What Kubernetes cannot express is said in a comment at the top, never silently dropped.

With `sites` in the bootstrap YAML each site is an application of its own (`plan.site_applications`: named
after the site, with its limits): its own Deployment, Service, Secret (its environment's secrets), Ingress
(a rule per domain; a host-less rule for the default site; with `frontend.tls` a `tls` entry naming the
Secret `<site>-tls` for its certificate), NetworkPolicy and PodDisruptionBudget, all named after the site and
selected by `app.kubernetes.io/name: <site>`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

from container import builders, nat64
from container.errors import AgentError
from container.manifest import PersistentFilesystem
from container.plan import egress_manifest, external_services, local_requires, provider
from container.records import Application, Destination
from container.settings import Bootstrap

Doc = dict[str, Any]  # a Kubernetes object, or a part of one, as the plain data rendered to YAML
MANAGED_BY = "pequod"
SECRET_KEYS = re.compile(r"(SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|_KEY\Z)", re.IGNORECASE)
# User-info of a URL of any scheme (`https://TOKEN@host/`, `https://user:password@host/`, encoded or not), or
# of git's scp-like form (`user@host:path`), anywhere in a value.
USERINFO = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#\s]*@|(?:^|\s)[^\s/@:]+(?::[^\s/@]*)?@[^\s/@:]+:")
HEALTH_PERIOD = 5  # seconds between liveness and readiness probes, as the agent checks
UNHEALTHY_AFTER = 10  # seconds of failed liveness probes before a restart, as the agent replaces


class ExportError(AgentError):
    """The applications cannot be exported as asked."""


@dataclass(frozen=True)
class Options:
    namespace: str = "default"
    replicas: int = 1
    mhz_per_cpu: int = 2000
    storage_class: str | None = None  # StatefulSet with a PersistentVolumeClaim per replica
    ingress_class: str | None = None
    dns64: bool = False  # the cluster synthesises AAAA records itself: no hostAliases


def cpu_quantity(vmhz: int, mhz_per_cpu: int) -> str:
    """VMHz as a CPU quantity in millicores (at least 1m)."""
    return f"{max(1, round(vmhz * 1000 / mhz_per_cpu))}m"


def exported_env(bootstrap: Bootstrap, app: Application) -> dict[str, str]:
    """The instance's environment in the cluster: previews are left out (an Ingress routes host names, not the
    `BRANCH--SITE.DOMAIN` names of a site's previews, so nothing would reach them)."""
    return {k: v for k, v in bootstrap.site_env(app.site).items() if not k.startswith("PREVIEWS_")}


def is_secret(key: str, value: str) -> bool:
    """Variables that go into the Secret, whole: secret-looking names, and values with user-info in a URL
    anywhere in them (a token alone counts as much as user:password)."""
    return bool(SECRET_KEYS.search(key) or USERINFO.search(value))


def check_repo(environment: dict[str, str], where: str = "") -> None:
    repo = environment.get("SITE_REPO", "")
    if repo.startswith(("file://", "/")):
        raise ExportError(f"{where}SITE_REPO={repo}: a path on this host does not exist in a cluster; use a git URL "
                          "the cluster can reach (https://, ssh://, git://)")


def _labels(app: Application) -> dict[str, str]:
    return {"app.kubernetes.io/name": app.name, "app.kubernetes.io/version": app.version,
            "app.kubernetes.io/managed-by": MANAGED_BY}


def _meta(app: Application, options: Options, name: str | None = None) -> Doc:
    return {"name": name or app.name, "namespace": options.namespace, "labels": _labels(app)}


def _volume_name(mountpoint: str) -> str:
    return "vol" + re.sub(r"[^a-z0-9]+", "-", mountpoint.lower()).rstrip("-")


def _probe(path: str, port: int, period: int, failures: int) -> Doc:
    return {"httpGet": {"path": path, "port": port}, "periodSeconds": period, "timeoutSeconds": 1,
            "failureThreshold": failures}


def pod_spec(app: Application, apps: tuple[Application, ...], bootstrap: Bootstrap, uid: int, options: Options,
             secret_name: str | None) -> Doc:
    manifest, resources = app.manifest, app.manifest.resources
    env = {k: v for k, v in exported_env(bootstrap, app).items() if not is_secret(k, v)}
    container: Doc = {
        "name": app.name,
        "image": app.image,
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": f"p{p.local_port}", "containerPort": p.local_port, "protocol": "TCP"}
                  for p in manifest.provides],
        "env": [{"name": k, "value": v} for k, v in sorted(env.items())],
        "resources": {
            "requests": {"memory": f"{resources.memory_mb}Mi", "cpu": cpu_quantity(resources.cpu_vmhz,
                                                                                     options.mhz_per_cpu)},
            "limits": {"memory": f"{resources.memory_mb}Mi", "cpu": cpu_quantity(resources.cpu_vmhz,
                                                                                   options.mhz_per_cpu)},
        },
        "securityContext": {
            "runAsNonRoot": True, "runAsUser": uid, "runAsGroup": uid, "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [{"name": _volume_name(fs.mountpoint), "mountPath": fs.mountpoint}
                         for fs in manifest.filesystems + manifest.volumes],
    }
    if secret_name:
        container["envFrom"] = [{"secretRef": {"name": secret_name}}]
    containers = [container]
    if manifest.builder is not None:
        container["env"].append({"name": "BUILDER_SOCKET", "value": manifest.builder.socket})
        containers.append(builder_container(app, uid, options))
    if manifest.provides:
        first = manifest.provides[0]
        container["startupProbe"] = _probe(first.health_check_path, first.local_port, HEALTH_PERIOD,
                                           max(1, first.health_check_timeout // HEALTH_PERIOD))
        container["readinessProbe"] = _probe(first.health_check_path, first.local_port, HEALTH_PERIOD, 1)
        container["livenessProbe"] = _probe(first.health_check_path, first.local_port, HEALTH_PERIOD,
                                            UNHEALTHY_AFTER // HEALTH_PERIOD)
    volumes = [{"name": _volume_name(fs.mountpoint), "emptyDir": {"medium": "Memory", "sizeLimit": f"{fs.size_mb}Mi"}}
               for fs in manifest.filesystems]
    if manifest.builder is not None:
        volumes.append({"name": "builder-tmp", "emptyDir": {"medium": "Memory", "sizeLimit": f"{builders.TMPFS_MB}Mi"}})
    if not options.storage_class:
        volumes += [{"name": _volume_name(fs.mountpoint), "emptyDir": {"sizeLimit": f"{fs.size_mb}Mi"}}
                    for fs in manifest.volumes]
    spec: Doc = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": uid, "fsGroup": uid,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": containers,
        "volumes": volumes,
    }
    aliases = host_aliases(app, apps, bootstrap, options)
    if aliases:
        spec["hostAliases"] = aliases
    if bootstrap.network and bootstrap.network.dns:
        spec["dnsPolicy"] = "None"
        spec["dnsConfig"] = {"nameservers": [str(server) for server in bootstrap.network.dns]}
    return spec


def builder_container(app: Application, uid: int, options: Options) -> Doc:
    """The application's builder (container/builders.py) as a second container of the pod: its own user and PID
    namespace (the pod does not share one), its limits, no secret, its own volume and, read-only, the one it
    reads. The pod's containers share one network namespace: the NetworkPolicy's egress rules hold for it too."""
    builder = app.manifest.builder
    assert builder is not None
    limits = builders.resources(builder, app.manifest.resources)
    user = builders.uid(uid)
    cpu = cpu_quantity(limits.cpu_vmhz, options.mhz_per_cpu)
    mounts: list[Doc] = [{"name": _volume_name(builder.volume), "mountPath": builder.volume},
              {"name": "builder-tmp", "mountPath": "/tmp"}]
    if builder.reads and builder.reads_volume:
        mounts.insert(0, {"name": _volume_name(builder.reads_volume), "mountPath": builder.reads, "readOnly": True,
                          **({"subPath": builder.reads_subpath} if builder.reads_subpath else {})})
    return {
        "name": "builder",
        "image": app.image,
        "imagePullPolicy": "IfNotPresent",
        "command": list(builder.command),
        "env": [{"name": "BUILDER_SOCKET", "value": builder.socket}, {"name": "HOME", "value": builder.volume}],
        "resources": {"requests": {"memory": f"{limits.memory_mb}Mi", "cpu": cpu},
                      "limits": {"memory": f"{limits.memory_mb}Mi", "cpu": cpu}},
        "securityContext": {
            "runAsNonRoot": True, "runAsUser": user, "runAsGroup": user, "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": mounts,
    }


def _destinations(app: Application, apps: tuple[Application, ...],
                  bootstrap: Bootstrap) -> tuple[Destination, ...]:
    return nat64.destinations(egress_manifest(app, bootstrap), external_services(apps, app, bootstrap), bootstrap.nat64)


def host_aliases(app: Application, apps: tuple[Application, ...], bootstrap: Bootstrap, options: Options) -> list[Doc]:
    """The required external services' local host names → their NAT64 addresses (unless the cluster does
    DNS64 itself)."""
    if options.dns64:
        return []
    by_address: dict[str, list[str]] = {}
    for found in _destinations(app, apps, bootstrap):
        for address in found.ipv6:
            by_address.setdefault(str(address), []).append(found.local_hostname)
    return [{"ip": ip, "hostnames": sorted(names)} for ip, names in sorted(by_address.items())]


def network_policy(app: Application, apps: tuple[Application, ...], bootstrap: Bootstrap, options: Options) -> Doc:
    """Ingress only to the provided ports; egress only to the declared external services, the DNS servers
    and the services of other applications it requires."""
    egress: list[Doc] = []
    for found in _destinations(app, apps, bootstrap):
        blocks = [{"ipBlock": {"cidr": f"{address}/128"}} for address in found.ipv6] or [
            {"ipBlock": {"cidr": str(bootstrap.nat64.prefix)}}]
        egress.append({"to": blocks, "ports": [{"protocol": "TCP", "port": found.local_port}]})
    for require in local_requires(apps, app):
        other = provider(apps, require.name)
        assert other is not None
        port = next(p.local_port for p in other.manifest.provides if p.name == require.name)
        egress.append({"to": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": other.name}}}],
                       "ports": [{"protocol": "TCP", "port": port}]})
    dns_to = ([{"ipBlock": {"cidr": f"{server}/128"}} for server in bootstrap.network.dns]
              if bootstrap.network and bootstrap.network.dns else
              [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}])
    egress.append({"to": dns_to, "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]})
    ingress = ([{"ports": [{"protocol": "TCP", "port": p.local_port} for p in app.manifest.provides]}]
               if app.manifest.provides else [])
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": _meta(app, options),
            "spec": {"podSelector": {"matchLabels": {"app.kubernetes.io/name": app.name}},
                     "policyTypes": ["Ingress", "Egress"], "ingress": ingress, "egress": egress}}


def workload(app: Application, apps: tuple[Application, ...], bootstrap: Bootstrap, uid: int, options: Options,
             secret_name: str | None) -> Doc:
    selector = {"matchLabels": {"app.kubernetes.io/name": app.name}}
    template = {"metadata": {"labels": _labels(app)},
                "spec": pod_spec(app, apps, bootstrap, uid, options, secret_name)}
    if not options.storage_class or not app.manifest.volumes:
        return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(app, options),
                "spec": {"replicas": options.replicas, "selector": selector,
                         "strategy": {"type": "RollingUpdate",
                                      "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                         "template": template}}
    claims = [_claim(fs, options.storage_class) for fs in app.manifest.volumes]
    return {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": _meta(app, options),
            "spec": {"replicas": options.replicas, "selector": selector, "serviceName": app.name,
                     "updateStrategy": {"type": "RollingUpdate"},
                     "template": template, "volumeClaimTemplates": claims}}


def _claim(fs: PersistentFilesystem, storage_class: str) -> Doc:
    return {"metadata": {"name": _volume_name(fs.mountpoint)},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": storage_class,
                     "resources": {"requests": {"storage": f"{fs.size_mb}Mi"}}}}


def secrets_of(app: Application, bootstrap: Bootstrap) -> dict[str, str]:
    """The variables of the app's environment (its site's, with sites) that go into its Secret."""
    return {k: v for k, v in sorted(exported_env(bootstrap, app).items()) if is_secret(k, v)}


def service_name(app: Application, index: int) -> str:
    """The Service (and Ingress) of the app's `index`th provided service: the service's name, so that other
    applications find it as today; with sites, the site's name (then `<site>-<service>` for further ones)."""
    provide = app.manifest.provides[index]
    if app.site is None:
        return provide.name
    name = app.name if index == 0 else f"{app.name}-{provide.name}"
    if len(name) > 63:
        raise ExportError(f"site {app.name}: the Service name {name} is longer than 63 characters")
    return name


def export(apps: tuple[Application, ...], bootstrap: Bootstrap, uids: dict[str, int], options: Options) -> list[Doc]:
    """The Kubernetes objects for the applications, in a stable order."""
    for site in bootstrap.sites:
        check_repo(bootstrap.site_env(site), f"site {site.name}: ")
    if not bootstrap.sites:
        check_repo(bootstrap.env)
    if options.replicas < 1 or options.mhz_per_cpu < 1:
        raise ExportError("--replicas and --mhz-per-cpu must be at least 1")
    docs: list[Doc] = []
    for app in apps:
        secrets = secrets_of(app, bootstrap)
        secret_name = f"{app.name}-env" if secrets else None
        if secret_name:
            docs.append({"apiVersion": "v1", "kind": "Secret", "metadata": _meta(app, options, secret_name),
                         "type": "Opaque", "stringData": secrets})
        docs.append(workload(app, apps, bootstrap, uids.get(app.name, 65534), options, secret_name))
        for index, provide in enumerate(app.manifest.provides):
            name = service_name(app, index)
            docs.append({"apiVersion": "v1", "kind": "Service", "metadata": _meta(app, options, name),
                         "spec": {"selector": {"app.kubernetes.io/name": app.name},
                                  "ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv6"],
                                  "ports": [{"name": "http", "port": provide.local_port,
                                             "targetPort": provide.local_port, "protocol": "TCP"}]}})
            if not bootstrap.frontend.port_of(provide.name):
                continue
            if app.site is not None:
                docs.append(site_ingress(app, name, provide.local_port, bootstrap, options))
            elif options.ingress_class:
                docs.append(ingress(app, provide.name, provide.local_port, options))
        docs.append(network_policy(app, apps, bootstrap, options))
        docs.append({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": _meta(app, options),
                     "spec": {"maxUnavailable": 1,
                              "selector": {"matchLabels": {"app.kubernetes.io/name": app.name}}}})
    return docs


def ingress(app: Application, service: str, port: int, options: Options) -> Doc:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": _meta(app, options, service),
            "spec": {"ingressClassName": options.ingress_class,
                     "rules": [{"http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {
                         "service": {"name": service, "port": {"number": port}}}}]}}]}}


def site_ingress(app: Application, service: str, port: int, bootstrap: Bootstrap, options: Options) -> Doc:
    """A site's Ingress: a rule per domain (and a host-less one for the default site, which serves the hosts no
    site names); with `frontend.tls`, HTTPS for its domains with the certificate in the Secret `<site>-tls`.
    Written with or without --ingress-class (without it, the cluster's default IngressClass serves it)."""
    assert app.site is not None
    def http() -> Doc:  # a new dict per rule: no YAML anchors and aliases in the output
        return {"paths": [{"path": "/", "pathType": "Prefix", "backend": {
            "service": {"name": service, "port": {"number": port}}}}]}

    rules = [{"host": domain, "http": http()} for domain in app.site.domains]
    if app.site.default:
        rules.append({"http": http()})
    spec: Doc = {"ingressClassName": options.ingress_class} if options.ingress_class else {}
    if bootstrap.frontend.tls is not None and app.site.domains:
        spec["tls"] = [{"hosts": list(app.site.domains), "secretName": f"{app.name}-tls"}]
    spec["rules"] = rules
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": _meta(app, options, service),
            "spec": spec}


def not_expressed(apps: tuple[Application, ...], bootstrap: Bootstrap, options: Options) -> list[str]:
    """What the agent does that these objects cannot say."""
    notes = [f"CPU: vmhz converted at {options.mhz_per_cpu} MHz per CPU (--mhz-per-cpu)."]
    for app in apps:
        res = app.manifest.resources
        notes.append(f"{app.name}: procs={res.processes} is a node setting in Kubernetes (kubelet podPidsLimit); "
                     f"files={res.open_files} (nofile) has no pod field.")
        for require in app.manifest.requires:
            other = provider(apps, require.name)
            if other is not None:
                notes.append(f"{app.name}: requires {require.name} as {require.local_hostname}:{require.local_port}; "
                             f"in the cluster it is the Service {require.name} (port of {other.name}).")
        for found in _destinations(app, apps, bootstrap):
            if found.local_port != found.external_port:
                notes.append(f"{app.name}: {found.local_hostname}:{found.local_port} is {found.external_host}:"
                             f"{found.external_port}; a cluster does no port translation.")
    if bootstrap.sites:
        notes += site_notes(apps, bootstrap)
    else:
        secret_keys = sorted(k for k, v in bootstrap.environment if is_secret(k, v))
        if secret_keys:
            notes.append(f"The Secret <application>-env holds {', '.join(secret_keys)} whole (secret-looking names "
                         "and values with credentials in a URL): seal or encrypt it before it goes into git.")
    if any(site.previews for site in bootstrap.sites):
        notes.append("previews are left out: an Ingress routes host names, not the BRANCH--SITE.DOMAIN names of a "
                     "site's previews; the sites' instances get no PREVIEWS_* settings.")
    if bootstrap.mounts or any(site.mounts for site in bootstrap.sites):
        notes.append("mounts (host paths) do not span nodes and are left out.")
    if options.dns64:
        notes.append("DNS64: the cluster's resolver synthesises the external services' addresses.")
    else:
        notes.append(f"The NAT64 addresses in hostAliases need NAT64 for the prefix {bootstrap.nat64.prefix} on the "
                     "nodes or the provider's gateway (or --dns64 with a DNS64 resolver).")
    if options.storage_class:
        notes.append(f"Volumes: StatefulSet with a PersistentVolumeClaim per replica (storage class "
                     f"{options.storage_class}).")
    else:
        notes.append("Volumes: disk-backed emptyDir of the manifest's size; it survives container restarts in the "
                     "pod, not the pod (use --storage-class for claims).")
    return notes


def site_notes(apps: tuple[Application, ...], bootstrap: Bootstrap) -> list[str]:
    """With sites: each site's Secret, and where the certificates come from."""
    notes = [f"Sites: each site is an application of {apps[0].image if apps else 'the image'} named after it, "
             "with its own Secret, Service and Ingress (a rule per domain; the default site also gets the hosts no "
             "site names)."]
    for app in apps:
        keys = sorted(secrets_of(app, bootstrap))
        if keys:
            notes.append(f"The Secret {app.name}-env holds {', '.join(keys)} whole (secret-looking names and values "
                         "with credentials in a URL): seal or encrypt it before it goes into git.")
    if bootstrap.frontend.tls is not None:
        notes.append("HTTPS: the Ingress of each site with domains names the TLS Secret <site>-tls for its "
                     "certificate; create it (kubectl create secret tls) or let cert-manager issue it (annotate the "
                     "Ingress with cert-manager.io/cluster-issuer). The agent's own ACME client does not run here.")
    return notes


def render(docs: list[Doc], notes: list[str]) -> str:
    header = "# Generated by pequod-agent --export kubernetes. Not expressed by these objects:\n"
    header += "".join(f"# - {note}\n" for note in notes)
    return header + yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False, explicit_start=True)

