"""The manifest model and `pequod-agent --check` on files (no Docker needed here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from container.cli import main
from container.manifest import (
    Builder,
    Manifest,
    PersistentFilesystem,
    ProvidedService,
    RequiredService,
    Resources,
    TemporaryFilesystem,
    load_manifest,
)
from tests.helpers import REPO_ROOT

NS = 'xmlns="http://tech.zalando.com/pequod/schema/registry"'
RES = '<resources mb="256" vmhz="500" procs="128" files="1024"/>'


def doc(body: str, root: str = f'<manifest {NS} version="1.0">') -> str:
    return f'<?xml version="1.0"?>\n{root}\n{body}\n</manifest>\n'


def test_the_blogs_manifest_parses_into_typed_objects() -> None:
    manifest = load_manifest(str(REPO_ROOT / "pequod.xml"))
    assert manifest == Manifest(
        source=str(REPO_ROOT / "pequod.xml"),
        resources=Resources(memory_mb=640, cpu_vmhz=2000, processes=256, open_files=4096),
        filesystems=(TemporaryFilesystem("/tmp", 64),),
        provides=(ProvidedService("srcco-de", "1", 8000, "/_site/health", 120, "/workdir/current", "/workdir"),),
        requires=(RequiredService("github-https", "1", "github.com", 443),),
        volumes=(PersistentFilesystem("/workdir", 1024), PersistentFilesystem("/workdir/build", 256),
                 PersistentFilesystem("/builder", 512)),
        builder=Builder("/builder", "/workdir/build",
                        ("python3", "-m", "pipeline.build.door"),
                        Resources(memory_mb=640, cpu_vmhz=2000, processes=128, open_files=4096), "/workdir/build"),
    )
    assert manifest.builder is not None and manifest.builder.socket == "/builder/socket"


def test_minimal_manifest_and_defaults(tmp_path: Path) -> None:
    path = tmp_path / "pequod.xml"
    path.write_text(doc(RES + '<services><provide service-name="web" service-version="2" local-port="80"/></services>'))
    manifest = load_manifest(str(path))
    assert manifest.filesystems == () and manifest.requires == ()
    assert manifest.provides == (ProvidedService("web", "2", 80, "/", 120),)


BOMB = (
    '<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol">'
    + "".join(f'<!ENTITY lol{n} "{"&lol" + str(n - 1) + ";" if n > 1 else "&lol;"}' * 10 + '">' for n in range(1, 10))
    + f"]>\n<manifest {NS} version=\"1.0\">&lol9;{RES}</manifest>\n"
)
EXTERNAL = (
    '<?xml version="1.0"?>\n<!DOCTYPE m [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'
    f'<manifest {NS} version="1.0"><resources mb="&xxe;" vmhz="1" procs="8" files="64"/></manifest>\n'
)

VOLUMES = ('<filesystems><persistent mountpoint="/w" default-mb="64"/><persistent mountpoint="/w/b" default-mb="64"/>'
           '<temporary mountpoint="/t" default-mb="1"/></filesystems>')
MALFORMED = [
    ("empty", "", "file is empty"),
    ("builder volume not persistent", doc(RES + VOLUMES + '<builder volume="/t" command="run"/>'),
     '<builder volume="/t">: expected the mountpoint of a <persistent> filesystem'),
    ("builder reads its own volume", doc(RES + VOLUMES + '<builder volume="/w/b" reads="/w/b/x" command="run"/>'),
     '<builder reads="/w/b/x">: expected a normalised path in a <persistent> filesystem other than the builder'),
    ("builder reads outside the volumes", doc(RES + VOLUMES + '<builder volume="/w/b" reads="/t/x" command="run"/>'),
     '<builder reads="/t/x">: expected a normalised path in a <persistent>'),
    ("builder without command", doc(RES + VOLUMES + '<builder volume="/w/b"/>'),
     "<builder>: missing attribute command"),
    ("builder command with a tab", doc(RES + VOLUMES + '<builder volume="/w/b" command="run&#9;x"/>'),
     "expected a command: words of printable ASCII"),
    ("builder with more memory than allowed", doc(RES + VOLUMES + '<builder volume="/w/b" command="run" mb="4"/>'),
     '<builder mb="4">: expected memory in MB 16-'),
    ("two builders", doc(RES + VOLUMES + '<builder volume="/w/b" command="a"/><builder volume="/w/b" command="b"/>'),
     "<builder> appears more than once"),
    ("not XML", "this is not xml", "not well-formed XML"),
    ("truncated", doc(RES)[:-5], "not well-formed XML"),
    ("wrong root", f"<application {NS}/>", "root element is <application>"),
    ("no namespace", '<manifest version="1.0">' + RES + "</manifest>", "in namespace (none)"),
    ("wrong namespace", '<manifest xmlns="urn:other" version="1.0"/>', "in namespace urn:other"),
    ("wrong version", doc(RES, f'<manifest {NS} version="2.0">'), 'version="2.0"'),
    ("unknown root attribute", doc(RES, f'<manifest {NS} version="1.0" owner="x">'), "unknown attribute"),
    ("unknown element", doc(RES + "<network/>"), "<network> is not allowed in <manifest>"),
    ("missing resources", doc(""), "lacks the required <resources>"),
    ("two resources", doc(RES + RES), "<resources> appears more than once"),
    ("missing memory", doc('<resources vmhz="1" procs="8" files="64"/>'), "missing attribute mb"),
    ("non-numeric memory", doc('<resources mb="lots" vmhz="1" procs="8" files="64"/>'), '<resources mb="lots">'),
    ("negative memory", doc('<resources mb="-5" vmhz="1" procs="8" files="64"/>'), "expected memory in MB"),
    ("memory too small", doc('<resources mb="4" vmhz="1" procs="8" files="64"/>'), "memory in MB 16-"),
    ("zero CPU", doc('<resources mb="64" vmhz="0" procs="8" files="64"/>'), "CPU in virtual MHz"),
    ("float procs", doc('<resources mb="64" vmhz="1" procs="8.5" files="64"/>'), '<resources procs="8.5">'),
    ("huge files", doc('<resources mb="64" vmhz="1" procs="8" files="99999999"/>'), "open-file limit"),
    ("unknown resource attribute", doc('<resources mb="64" vmhz="1" procs="8" files="64" gpu="1"/>'),
     '<resources gpu="1">: unknown attribute'),
    ("relative mountpoint", doc(RES + '<filesystems><temporary mountpoint="work" default-mb="5"/></filesystems>'),
     "expected an absolute path"),
    ("root mountpoint", doc(RES + '<filesystems><temporary mountpoint="/" default-mb="5"/></filesystems>'),
     "other than /"),
    ("dotdot mountpoint", doc(RES + '<filesystems><temporary mountpoint="/a/../etc" default-mb="5"/></filesystems>'),
     "normalised absolute path"),
    ("negative tmpfs size", doc(RES + '<filesystems><temporary mountpoint="/w" default-mb="-1"/></filesystems>'),
     "a size in MB"),
    ("duplicate mountpoint", doc(RES + '<filesystems><temporary mountpoint="/w" default-mb="1"/>'
                                       '<temporary mountpoint="/w" default-mb="2"/></filesystems>'),
     "mountpoint '/w' is declared twice"),
    ("unknown filesystem kind", doc(RES + '<filesystems><shared mountpoint="/w"/></filesystems>'),
     "<shared> is not allowed in <filesystems>"),
    ("persistent without size", doc(RES + '<filesystems><persistent mountpoint="/w"/></filesystems>'),
     "<persistent>: missing attribute default-mb (a size in MB 16-1048576)"),
    ("persistent too small", doc(RES + '<filesystems><persistent mountpoint="/w" default-mb="8"/></filesystems>'),
     '<persistent default-mb="8">: expected a size in MB 16-1048576'),
    ("persistent over temporary", doc(RES + '<filesystems><temporary mountpoint="/w" default-mb="1"/>'
                                            '<persistent mountpoint="/w" default-mb="64"/></filesystems>'),
     "mountpoint '/w' is declared twice"),
    ("port not a number", doc(RES + '<services><provide service-name="a" service-version="1" local-port="80x"/>'
                                    "</services>"), '<provide local-port="80x">: expected a port number 1-65535'),
    ("port out of range", doc(RES + '<services><provide service-name="a" service-version="1" local-port="70000"/>'
                                    "</services>"), "a port number 1-65535"),
    ("bad service name", doc(RES + '<services><provide service-name="Web Site" service-version="1" local-port="80"/>'
                                   "</services>"), "a service name"),
    ("service name with a trailing newline", doc(RES + '<services><provide service-name="a&#10;" service-version="1" '
                                                       'local-port="80"/></services>'),
     '<provide service-name="a\\n">'),
    ("version with a trailing newline", doc(RES + '<services><provide service-name="a" service-version="1&#10;" '
                                                  'local-port="80"/></services>'), "expected a version"),
    ("mountpoint with a trailing newline", doc(RES + '<filesystems><temporary mountpoint="/w&#10;" default-mb="5"/>'
                                                     "</filesystems>"), "expected an absolute path"),
    ("host name with a trailing newline", doc(RES + '<services><require service-name="gh" service-version="1" '
                                                    'local-hostname="github.com&#10;" local-port="443"/></services>'),
     "expected a host name"),
    ("missing service version", doc(RES + '<services><provide service-name="a" local-port="80"/></services>'),
     "missing attribute service-version"),
    ("duplicate service names", doc(RES + '<services><provide service-name="a" service-version="1" local-port="80"/>'
                                          '<provide service-name="a" service-version="1" local-port="81"/></services>'),
     "provided service 'a' is declared twice"),
    ("health path not absolute", doc(RES + '<services><provide service-name="a" service-version="1" local-port="80" '
                                           'health-check-http-path="health"/></services>'), "an HTTP path"),
    ("health timeout zero", doc(RES + '<services><provide service-name="a" service-version="1" local-port="80" '
                                      'health-check-timeout-seconds="0"/></services>'), "seconds 1-3600"),
    ("bad hostname", doc(RES + '<services><require service-name="gh" service-version="1" local-hostname="git hub" '
                               'local-port="443"/></services>'), "expected a host name"),
    ("text content", doc(RES + '<services><provide service-name="a" service-version="1" local-port="80">x</provide>'
                               "</services>"), "unexpected text content"),
    ("release link outside a volume", doc(RES + '<filesystems><persistent mountpoint="/w" default-mb="64"/>'
                                                '</filesystems><services><provide service-name="a" service-version="1"'
                                                ' local-port="80" release-link="/etc/current"/></services>'),
     '<provide release-link="/etc/current">: expected a normalised path inside a <persistent> filesystem'),
    ("release link not normalised", doc(RES + '<filesystems><persistent mountpoint="/w" default-mb="64"/>'
                                              '</filesystems><services><provide service-name="a" service-version="1"'
                                              ' local-port="80" release-link="/w/../etc/x"/></services>'),
     "expected a normalised path inside a <persistent> filesystem"),
    ("entity expansion bomb", BOMB, "DOCTYPE declarations are not allowed"),
    ("external entity", EXTERNAL, "DOCTYPE declarations are not allowed"),
    ("huge file", doc(RES + "<!--" + "x" * 70000 + "-->"), "a manifest may be at most 65536 bytes"),
]


@pytest.mark.parametrize(("name", "text", "message"), MALFORMED, ids=[case[0] for case in MALFORMED])
def test_malformed_manifest_gets_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, text: str, message: str,
) -> None:
    path = tmp_path / "pequod.xml"
    path.write_text(text)
    assert main(["--check", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: {path}")
    assert message in lines[0]
    assert "Traceback" not in err


def test_every_malformed_case_has_its_own_message() -> None:
    assert len(MALFORMED) >= 25
    assert len({message for _, _, message in MALFORMED}) >= 25


def test_check_exit_status_from_the_command_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.xml"
    bad.write_text(doc(RES.replace('mb="256"', 'mb="x"')))
    result = subprocess.run(
        [sys.executable, "-m", "container", "--check", str(REPO_ROOT / "pequod.xml"), str(bad)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert "pequod.xml: ok" in result.stdout and "provides: srcco-de 1 on port 8000" in result.stdout
    assert result.stderr.strip() == f'error: {bad}:3: <resources mb="x">: expected memory in MB 16-1048576'
    missing = subprocess.run(
        [sys.executable, "-m", "container", "--check", str(tmp_path / "none.xml")],
        capture_output=True, text=True, timeout=60,
    )
    assert missing.returncode == 1 and "cannot read: No such file or directory" in missing.stderr
