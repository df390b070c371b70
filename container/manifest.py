"""The application manifest `pequod.xml`, parsed once into frozen, typed objects.

    <manifest xmlns="http://tech.zalando.com/pequod/schema/registry" version="1.0">
      <resources mb="384" vmhz="1000" procs="256" files="1024"/>
      <filesystems><temporary mountpoint="/workdir" default-mb="128"/></filesystems>
      <services>
        <provide service-name="srcco-de" service-version="1" local-port="8000"
                 health-check-http-path="/_site/health" health-check-timeout-seconds="120"/>
        <require service-name="github-https" service-version="1" local-hostname="github.com" local-port="443"/>
      </services>
      <builder volume="/builder" reads="/workdir/build"
               command="python3 -m pipeline.build.door" mb="640" vmhz="2000" procs="128"/>
    </manifest>

A `<builder>` is a container of its own beside the instances (container/builders.py): `command` in the same image,
as a user of its own, with the persistent volume `volume` (its own: all it may write) and, read-only, the folder
`reads` of another persistent volume.

Parsing is safe: no DTD is accepted (so no entity expansion and no external entities), nothing is
fetched from the network, and files over MAX_BYTES are refused before parsing.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from lxml import etree

from container.errors import ManifestError

NAMESPACE = "http://tech.zalando.com/pequod/schema/registry"
VERSION = "1.0"
MAX_BYTES = 64 * 1024
# Shared with the bootstrap YAML's reader: service, zone and host names.
NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOSTNAME = re.compile(rf"(?=.{{1,253}}\Z){_LABEL}(\.{_LABEL})*")
_FORBIDDEN_MOUNTPOINTS = ("/", "/proc", "/sys", "/dev", "/etc")
T = TypeVar("T")


@dataclass(frozen=True)
class Resources:
    memory_mb: int
    cpu_vmhz: int
    processes: int
    open_files: int


@dataclass(frozen=True)
class TemporaryFilesystem:
    mountpoint: str
    size_mb: int


@dataclass(frozen=True)
class PersistentFilesystem:
    """Storage that outlives the instance: a fixed-size volume of the application, kept on the host."""
    mountpoint: str
    size_mb: int


@dataclass(frozen=True)
class ProvidedService:
    name: str
    version: str
    local_port: int
    health_check_path: str
    health_check_timeout: int
    # A symlink in a persistent volume the instance swaps (rename(2)) when it publishes: the frontend forgets
    # the service's cached answers at once when it changes (container/swaps.py). None: within the cache's 1 s.
    release_link: str | None = None
    release_volume: str | None = None  # the <persistent> mountpoint that holds it


@dataclass(frozen=True)
class RequiredService:
    name: str
    version: str
    local_hostname: str
    local_port: int


@dataclass(frozen=True)
class Builder:
    """Where the application's untrusted work runs: its own container, user, PID namespace and limits."""
    volume: str  # the mountpoint of its own persistent volume (its user's; the instances see it too)
    reads: str | None  # a folder of another persistent volume (the instances'), which it may read
    command: tuple[str, ...]
    resources: Resources
    reads_volume: str | None = None  # the mountpoint of that volume

    @property
    def socket(self) -> str:
        """Where it waits for the instance (BUILDER_SOCKET, given to both)."""
        return f"{self.volume}/socket"

    @property
    def reads_subpath(self) -> str:
        """`reads` inside its volume ("" for the volume's root)."""
        assert self.reads is not None and self.reads_volume is not None
        return self.reads[len(self.reads_volume):].lstrip("/")


@dataclass(frozen=True)
class Manifest:
    source: str
    resources: Resources
    filesystems: tuple[TemporaryFilesystem, ...]
    provides: tuple[ProvidedService, ...]
    requires: tuple[RequiredService, ...]
    volumes: tuple[PersistentFilesystem, ...] = ()
    builder: Builder | None = None

    def summary(self) -> str:
        res = self.resources
        lines = [
            f"{self.source}: ok",
            f"  resources: {res.memory_mb} MB memory, {res.cpu_vmhz} VMHz CPU, {res.processes} processes, "
            f"{res.open_files} open files",
        ]
        lines += [f"  temporary filesystem: {fs.mountpoint} ({fs.size_mb} MB)" for fs in self.filesystems]
        lines += [f"  persistent filesystem: {fs.mountpoint} ({fs.size_mb} MB)" for fs in self.volumes]
        lines += [
            f"  provides: {p.name} {p.version} on port {p.local_port} "
            f"(health check {p.health_check_path}, {p.health_check_timeout} s)" for p in self.provides
        ]
        lines += [f"  requires: {r.name} {r.version} as {r.local_hostname}:{r.local_port}" for r in self.requires]
        if self.builder is not None:
            b = self.builder
            lines.append(f"  builder: {' '.join(b.command)} ({b.resources.memory_mb} MB memory, "
                         f"{b.resources.cpu_vmhz} VMHz CPU, {b.resources.processes} processes), writing "
                         f"{b.volume}" + (f", reading {b.reads}" if b.reads else ""))
        return "\n".join(lines)


def _local(tag: object) -> str:
    return etree.QName(tag).localname if isinstance(tag, str) else str(tag)


class _Checker:
    """Reads attributes of one element, turning every problem into a ManifestError naming it."""

    def __init__(self, source: str, element: etree._Element, allowed: tuple[str, ...]):
        self.source = source
        self.element = element
        self.name = _local(element.tag)
        for attr in element.attrib:
            if attr not in allowed:
                self.fail(attr, element.attrib[attr], f"unknown attribute (allowed: {', '.join(allowed)})")

    def fail(self, attr: str | None, value: str | None, expected: str) -> None:
        where = f"<{self.name}>" if attr is None else f'<{self.name} {attr}="{_clip(value or "")}">'
        raise ManifestError(f"{self.source}:{self.element.sourceline}: {where}: {expected}")

    def missing(self, attr: str, expected: str) -> ManifestError:
        return ManifestError(f"{self.source}:{self.element.sourceline}: <{self.name}>: missing attribute {attr} "
                             f"({expected})")

    def text(self, attr: str, pattern: re.Pattern[str], expected: str, default: str | None = None) -> str:
        value = self.element.get(attr)
        if value is None:
            if default is not None:
                return default
            raise self.missing(attr, expected)
        if not pattern.fullmatch(value):
            self.fail(attr, value, f"expected {expected}")
        return value

    def integer(self, attr: str, low: int, high: int, what: str, default: int | None = None) -> int:
        value = self.element.get(attr)
        if value is None:
            if default is not None:
                return default
            raise self.missing(attr, f"{what} {low}-{high}")
        if not re.fullmatch(r"\s*[0-9]+\s*", value) or not low <= int(value) <= high:
            self.fail(attr, value, f"expected {what} {low}-{high}")
        return int(value)


def _clip(value: str, limit: int = 40) -> str:
    """The value as it goes into a one-line message: control characters escaped, a long one cut."""
    value = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in value)
    return value if len(value) <= limit else value[:limit] + "…"


def _children(source: str, parent: etree._Element, allowed: tuple[str, ...]) -> list[etree._Element]:
    children = []
    for child in parent:
        if not isinstance(child.tag, str):  # comments, processing instructions
            continue
        if etree.QName(child).namespace != NAMESPACE or _local(child.tag) not in allowed:
            raise ManifestError(
                f"{source}:{child.sourceline}: <{_local(child.tag)}> is not allowed in <{_local(parent.tag)}> "
                f"(allowed: {', '.join(f'<{name}>' for name in allowed)})"
            )
        if child.text and child.text.strip():
            raise ManifestError(f"{source}:{child.sourceline}: <{_local(child.tag)}>: unexpected text content")
        children.append(child)
    return children


def _one(source: str, elements: list[etree._Element], name: str, parent: str, required: bool) -> etree._Element | None:
    found = [e for e in elements if _local(e.tag) == name]
    if len(found) > 1:
        raise ManifestError(f"{source}:{found[1].sourceline}: <{name}> appears more than once in <{parent}>")
    if not found and required:
        raise ManifestError(f"{source}: <{parent}> lacks the required <{name}> element")
    return found[0] if found else None


def _unique(source: str, items: list[T], key: Callable[[T], object], what: str) -> None:
    seen: set[object] = set()
    for item in items:
        if key(item) in seen:
            raise ManifestError(f"{source}: {what} {key(item)!r} is declared twice")
        seen.add(key(item))


def parse_manifest(data: bytes, source: str = "pequod.xml") -> Manifest:
    """Parse and validate manifest bytes; raise ManifestError with one clear line on any problem."""
    root = _document(data, source)
    top = _Checker(source, root, ("version",))
    version = root.get("version")
    if version != VERSION:
        top.fail("version", version, f"expected version=\"{VERSION}\"")
    sections = _children(source, root, ("resources", "filesystems", "services", "builder"))
    res_el = _one(source, sections, "resources", "manifest", required=True)
    assert res_el is not None
    resources = _resources(source, res_el)
    filesystems, volumes = _filesystems(source, _one(source, sections, "filesystems", "manifest", required=False))
    provides, requires = _services(source, _one(source, sections, "services", "manifest", required=False), volumes)
    builder_el = _one(source, sections, "builder", "manifest", required=False)
    builder = None if builder_el is None else _builder(source, builder_el, resources, volumes)
    return Manifest(source, resources, filesystems, provides, requires, volumes, builder)


def _builder(source: str, el: etree._Element, resources: Resources,
             volumes: tuple[PersistentFilesystem, ...]) -> Builder:
    _children(source, el, ())
    check = _Checker(source, el, ("volume", "reads", "command", "mb", "vmhz", "procs"))
    persistent = {fs.mountpoint for fs in volumes}
    volume = check.text("volume", re.compile(r"/[A-Za-z0-9._/-]*"), "an absolute path")
    if volume not in persistent:
        check.fail("volume", volume, "expected the mountpoint of a <persistent> filesystem (the builder's own)")
    reads = el.get("reads")
    reads_volume = None
    if reads is not None:
        holders = sorted((mp for mp in persistent if reads == mp or reads.startswith(mp.rstrip("/") + "/")), key=len)
        if not re.fullmatch(r"/[A-Za-z0-9._/-]*", reads) or posixpath.normpath(reads) != reads or not holders \
                or holders[-1] == volume or reads == volume or reads.startswith(volume + "/"):
            check.fail("reads", reads, "expected a normalised path in a <persistent> filesystem other than the "
                       "builder's volume")
        reads_volume = holders[-1]
    command = check.text("command", re.compile(r"[\x21-\x7e]+( [\x21-\x7e]+)*"),
                         "a command: words of printable ASCII separated by single spaces")
    return Builder(volume, reads, tuple(command.split(" ")), Resources(
        memory_mb=check.integer("mb", 16, 1024 * 1024, "memory in MB", default=resources.memory_mb),
        cpu_vmhz=check.integer("vmhz", 1, 10_000_000, "CPU in virtual MHz", default=resources.cpu_vmhz),
        processes=check.integer("procs", 8, 1_000_000, "a process limit", default=resources.processes),
        open_files=resources.open_files,
    ), reads_volume)


def _document(data: bytes, source: str) -> etree._Element:
    """The <manifest> root element, parsed without DTDs, entities or network."""
    if len(data) > MAX_BYTES:
        raise ManifestError(f"{source}: file is {len(data)} bytes; a manifest may be at most {MAX_BYTES} bytes")
    if not data.strip():
        raise ManifestError(f"{source}: file is empty; expected a <manifest> document")
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        # Refused before parsing: no entity can be expanded or fetched.
        raise ManifestError(f"{source}: DOCTYPE declarations are not allowed (no DTDs or entities in a manifest)")
    parser = etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
        huge_tree=False, remove_comments=True, remove_pis=True,
    )
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        raise ManifestError(f"{source}: not well-formed XML: {exc}") from None
    docinfo = root.getroottree().docinfo
    if docinfo.internalDTD is not None or docinfo.doctype:
        raise ManifestError(f"{source}: DOCTYPE declarations are not allowed (no DTDs or entities in a manifest)")
    if _local(root.tag) != "manifest" or etree.QName(root).namespace != NAMESPACE:
        raise ManifestError(
            f"{source}:{root.sourceline}: root element is <{_local(root.tag)}> in namespace "
            f"{etree.QName(root).namespace or '(none)'}; expected <manifest xmlns=\"{NAMESPACE}\">"
        )
    return root


def _resources(source: str, res_el: etree._Element) -> Resources:
    _children(source, res_el, ())
    res = _Checker(source, res_el, ("mb", "vmhz", "procs", "files"))
    return Resources(
        memory_mb=res.integer("mb", 16, 1024 * 1024, "memory in MB"),
        cpu_vmhz=res.integer("vmhz", 1, 10_000_000, "CPU in virtual MHz"),
        processes=res.integer("procs", 8, 1_000_000, "a process limit"),
        open_files=res.integer("files", 64, 1_048_576, "an open-file limit"),
    )


def _filesystems(source: str, fs_el: etree._Element | None,
                 ) -> tuple[tuple[TemporaryFilesystem, ...], tuple[PersistentFilesystem, ...]]:
    filesystems: list[TemporaryFilesystem] = []
    volumes: list[PersistentFilesystem] = []
    for el in _children(source, fs_el, ("temporary", "persistent")) if fs_el is not None else []:
        check = _Checker(source, el, ("mountpoint", "default-mb"))
        mountpoint = check.text("mountpoint", re.compile(r"/[A-Za-z0-9._/-]*"), "an absolute path")
        if posixpath.normpath(mountpoint) != mountpoint or mountpoint in _FORBIDDEN_MOUNTPOINTS:
            check.fail("mountpoint", mountpoint,
                       f"expected a normalised absolute path other than {', '.join(_FORBIDDEN_MOUNTPOINTS)}")
        if _local(el.tag) == "temporary":
            size = check.integer("default-mb", 1, 1024 * 1024, "a size in MB")
            filesystems.append(TemporaryFilesystem(mountpoint, size))
        else:
            size = check.integer("default-mb", 16, 1024 * 1024, "a size in MB")
            volumes.append(PersistentFilesystem(mountpoint, size))
    mounted: list[TemporaryFilesystem | PersistentFilesystem] = [*filesystems, *volumes]
    _unique(source, mounted, lambda fs: fs.mountpoint, "mountpoint")
    return tuple(filesystems), tuple(volumes)


def _release_link(check: _Checker, link: str | None, volumes: tuple[PersistentFilesystem, ...],
                  ) -> tuple[str | None, str | None]:
    """`release-link`: a normalised path below a <persistent> mountpoint; (the path, that mountpoint)."""
    if link is None:
        return None, None
    holders = sorted((fs.mountpoint for fs in volumes if link.startswith(fs.mountpoint.rstrip("/") + "/")), key=len)
    if not re.fullmatch(r"/[A-Za-z0-9._/-]*", link) or posixpath.normpath(link) != link or not holders:
        check.fail("release-link", link, "expected a normalised path inside a <persistent> filesystem (the link the "
                   "instance swaps when it publishes)")
    return link, holders[-1]


def _services(source: str, svc_el: etree._Element | None, volumes: tuple[PersistentFilesystem, ...] = (),
              ) -> tuple[tuple[ProvidedService, ...], tuple[RequiredService, ...]]:
    provides: list[ProvidedService] = []
    requires: list[RequiredService] = []
    for el in _children(source, svc_el, ("provide", "require")) if svc_el is not None else []:
        if _local(el.tag) == "provide":
            check = _Checker(source, el, (
                "service-name", "service-version", "local-port", "health-check-http-path",
                "health-check-timeout-seconds", "release-link",
            ))
            link, holder = _release_link(check, el.get("release-link"), volumes)
            provides.append(ProvidedService(
                name=check.text("service-name", NAME, "a service name (lowercase letters, digits, '-')"),
                version=check.text("service-version", _VERSION, "a version (letters, digits, '.', '_', '-')"),
                local_port=check.integer("local-port", 1, 65535, "a port number"),
                health_check_path=check.text(
                    "health-check-http-path", re.compile(r"/[\x21-\x7e]*"), "an HTTP path starting with /", "/"
                ),
                health_check_timeout=check.integer(
                    "health-check-timeout-seconds", 1, 3600, "seconds", default=120
                ),
                release_link=link, release_volume=holder,
            ))
        else:
            check = _Checker(source, el, ("service-name", "service-version", "local-hostname", "local-port"))
            requires.append(RequiredService(
                name=check.text("service-name", NAME, "a service name (lowercase letters, digits, '-')"),
                version=check.text("service-version", _VERSION, "a version (letters, digits, '.', '_', '-')"),
                local_hostname=check.text("local-hostname", HOSTNAME, "a host name"),
                local_port=check.integer("local-port", 1, 65535, "a port number"),
            ))
    _unique(source, provides, lambda s: s.name, "provided service")
    _unique(source, provides, lambda s: s.local_port, "provided local-port")
    _unique(source, requires, lambda s: s.name, "required service")
    return tuple(provides), tuple(requires)


def load_manifest(path: str) -> Manifest:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_manifest(data, path)
