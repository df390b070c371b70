"""Checks of the host before the agent starts anything, and the health probe of an instance."""

from __future__ import annotations

import http.client
import ipaddress
import shutil
import socket
from pathlib import Path

from container.errors import AgentError
from container.manifest import Manifest
from container.settings import Bootstrap

HOST_PROGRAMS = {"tayga": "tayga", "haproxy": "haproxy", "iptables-restore": "iptables",
                 "ip6tables-restore": "iptables"}
VOLUME_PROGRAMS = {"mkfs.ext4": "e2fsprogs", "mount": "mount"}


def check_mounts(manifests: list[Manifest], bootstrap: Bootstrap) -> None:
    reserved = {"/etc/hosts", "/etc/resolv.conf", *(fs.mountpoint for m in manifests for fs in m.filesystems),
                *(fs.mountpoint for m in manifests for fs in m.volumes)}
    places = [("mounts", bootstrap.mounts)] + [(f"sites[{i}].mounts", site.mounts)
                                               for i, site in enumerate(bootstrap.sites)]
    for where, mounts in places:
        for index, mount in enumerate(mounts):
            if not Path(mount.source).exists():
                raise AgentError(f"{bootstrap.source}: {where}[{index}].source: {mount.source} does not exist on "
                                 "the host")
            if mount.target in reserved:
                raise AgentError(f"{bootstrap.source}: {where}[{index}].target: {mount.target} is managed by the "
                                 "agent or the manifest; choose another path")
            if where != "mounts" and mount.target in {m.target for m in bootstrap.mounts}:
                raise AgentError(f"{bootstrap.source}: {where}[{index}].target: {mount.target} is mounted for "
                                 "every site already (top-level mounts)")


def check_host_programs(volumes: bool, acme: bool = False) -> None:
    programs = {**HOST_PROGRAMS, **(VOLUME_PROGRAMS if volumes else {}), **({"lego": "lego"} if acme else {})}
    missing = sorted({package for program, package in programs.items() if shutil.which(program) is None})
    if missing:
        raise AgentError(f"missing host programs: install them with apt-get install {' '.join(missing)}")


def check_tls(bootstrap: Bootstrap) -> None:
    """The files HTTPS needs are readable and what they claim to be."""
    from container import certificates

    tls = bootstrap.frontend.tls
    if tls is None:
        return
    if tls.certificate is not None:
        try:
            certificates.administrator_pem(tls)
        except AgentError as exc:
            raise AgentError(f"{bootstrap.source}: {exc}") from None
    elif tls.acme_ca_bundle is not None:
        try:
            certificates.read_certificate(Path(tls.acme_ca_bundle).read_bytes(), tls.acme_ca_bundle)
        except OSError as exc:
            raise AgentError(f"{bootstrap.source}: frontend.tls.acme_ca_bundle: cannot read {tls.acme_ca_bundle}: "
                             f"{exc.strerror}") from None


def check_port_free(address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int, service: str,
                    setting: str = "frontend.port") -> None:
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((str(address), port))
        except OSError as exc:
            raise AgentError(
                f"cannot publish {service} on [{address}]:{port}: {exc.strerror} (another program listens there? "
                f"stop it, or choose another {setting} in the bootstrap YAML)") from None


def answers_health(address: str, port: int, path: str, timeout: float = 1.0) -> bool:
    connection = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        connection.request("GET", path)
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()
