"""`pequod-agent`: the host agent's command line (USAGE below is what `--help` shows first).

Errors of the error tree (container.errors) are one line on stderr and exit status 1; anything else is
a bug or an unmapped failure: its traceback goes to the log (stderr) and the exit status is 1 too.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from container.errors import AgentError, ManifestError
from container.manifest import load_manifest
from container.state import StateDir

if TYPE_CHECKING:  # imported where used: each command loads only what it needs
    from container.certificates import Store

DEFAULT_IMAGE = "srcco-de:1"

USAGE = """%(prog)s --bootstrap IMAGE [IMAGE...] BOOTSTRAP_YAML [--supervise [--pid-file FILE]]
       %(prog)s -i [instances|services|certificates] [--json]
       %(prog)s --renew [--force]
       %(prog)s --teardown [--purge]
       %(prog)s --check PATH_OR_IMAGE [PATH_OR_IMAGE...]
       %(prog)s --build-image [TAG] [--base-image IMAGE] [--context DIR]
       %(prog)s --export kubernetes IMAGE [IMAGE...] BOOTSTRAP_YAML [--namespace NS] [--replicas N] ...
       (add --state-dir DIR to the first four when the state is not in /var/lib/pequod-agent)"""

DESCRIPTION = """Run and supervise IPv6-only, resource-limited application containers on this host, with NAT64 to
external services and an HAProxy frontend for the services they provide."""

# How an action's arguments read in --help (argparse would repeat a `nargs="+"` metavar).
ARGUMENTS = {"bootstrap": "IMAGE [IMAGE...] BOOTSTRAP_YAML", "export": "kubernetes IMAGE [IMAGE...] BOOTSTRAP_YAML"}


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    def _format_args(self, action: argparse.Action, default_metavar: str) -> str:
        return ARGUMENTS.get(action.dest) or super()._format_args(action, default_metavar)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def looks_like_file(target: str) -> bool:
    return os.path.exists(target) or target.endswith(".xml") or "/" in target and ":" not in target


def check(targets: list[str]) -> int:
    """Validate each target; print a summary of each good one and one line per bad one."""
    status = 0
    client = None
    for target in targets:
        try:
            if looks_like_file(target):
                manifest = load_manifest(target)
            else:
                from container import engine
                from container.image import manifest_from_image

                client = client or engine.connect()
                if client is None:
                    raise ManifestError(f"{target}: cannot read the image: no Docker engine answers")
                manifest = manifest_from_image(client, target)
        except ManifestError as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = 1
            continue
        print(manifest.summary())
    return status


def build_image(tag: str, base_image: str | None, context: Path) -> int:
    from container import base_image as base
    from container import engine
    from container.image import build_app_image

    if not (context / "Dockerfile").is_file():
        raise AgentError(f"{context}: no Dockerfile here; run from the repository or pass --context PATH")
    client = engine.ensure_engine(progress)
    base_tag = base_image or base.ensure_base_image(client, progress=progress)
    build_app_image(client, context, tag, base_tag, progress)
    return 0


def export(args: argparse.Namespace) -> int:
    """--export kubernetes IMAGE [IMAGE ...] BOOTSTRAP_YAML: print (or write) the Kubernetes objects."""
    from container import engine, kubernetes, plan, runtime
    from container.bootstrap import load_bootstrap
    from container.image import load_application

    kind, *rest = args.export
    if kind != "kubernetes" or len(rest) < 2:
        raise AgentError("--export kubernetes IMAGE [IMAGE ...] BOOTSTRAP_YAML")
    images, yaml_path = rest[:-1], rest[-1]
    bootstrap = load_bootstrap(yaml_path)
    client = engine.connect()
    if client is None:
        raise AgentError("no Docker engine answers: the images' manifests cannot be read")
    images_apps = tuple(load_application(client, image) for image in images)
    users = {app.image: runtime.run_user(runtime.image_info(client, app.image).user)[1] or 65534
             for app in images_apps}
    apps = plan.site_applications(images_apps, bootstrap)  # with sites: one application per site
    uids = {app.name: users[app.image] for app in apps}
    options = kubernetes.Options(args.namespace, args.replicas, args.mhz_per_cpu, args.storage_class,
                                 args.ingress_class, args.dns64)
    plan.check_services(apps, bootstrap)
    notes = kubernetes.not_expressed(apps, bootstrap, options)
    exported = kubernetes.export(apps, bootstrap, uids, options)
    if args.output is None:
        print(kubernetes.render(exported, notes), end="")
        return 0
    for app in apps:
        docs = [doc for doc in exported if doc["metadata"]["labels"]["app.kubernetes.io/name"] == app.name]
        path = args.output / f"{app.name}.yaml"
        try:
            args.output.mkdir(parents=True, exist_ok=True)
            path.write_text(kubernetes.render(docs, notes))
        except OSError as exc:
            raise AgentError(f"--output {args.output}: cannot write {path.name}: {exc.strerror or exc}") from None
        print(f"wrote {path}")
    return 0


def bootstrap(images: list[str], yaml_path: str, state_dir: Path) -> int:
    from container import engine
    from container.agent import Agent

    client = engine.connect()
    if client is None:
        raise AgentError("no Docker engine answers: start dockerd (or run pequod-agent --build-image)")
    agent = Agent(images, Path(yaml_path), state_dir, client)
    agent.load()  # everything checked before anything is touched

    agent_pid = os.getpid()

    def stop(signum: int, _frame: FrameType | None) -> None:
        if os.getpid() != agent_pid:  # a helper child forked by pyroute2: just die
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        logging.getLogger("container").info("signal %d: stopping", signum)
        agent.stop.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    agent.run()
    return 0


def supervise(agent_args: list[str], pid_file: Path) -> int:
    """Run the agent as a child and start it again whenever it exits (back-off for crash loops).

    For hosts without systemd: the pid file names this supervisor; SIGTERM stops the agent, then it."""
    import threading
    import time

    from container import proc
    from container.daemon import running_cmdline
    from container.supervision import STABLE_AFTER, restart_delay

    log = logging.getLogger("container")
    try:
        other = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        other = 0
    if other and other != os.getpid() and "--supervise" in running_cmdline(other):
        raise AgentError(f"already running: a supervisor with pid {other} holds {pid_file}")
    try:
        pid_file.parent.mkdir(parents=True, exist_ok=True)
        pid_file.write_text(f"{os.getpid()}\n")
    except OSError as exc:
        raise AgentError(f"--pid-file {pid_file}: cannot write it: {exc.strerror or exc}") from None
    stopping = threading.Event()
    child: proc.Popen[bytes] | None = None

    def stop(signum: int, _frame: FrameType | None) -> None:
        stopping.set()
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    failures = 0
    try:
        while not stopping.is_set():
            started = time.monotonic()
            child = proc.start([sys.executable, "-m", "container", *agent_args], new_session=False)
            log.info("supervisor: agent started (pid %d)", child.pid)
            code = child.wait()
            if stopping.is_set():
                break
            failures = failures + 1 if time.monotonic() - started < STABLE_AFTER else 1
            delay = max(1.0, restart_delay(failures))
            log.warning("supervisor: agent exited with status %s; starting it again in %.0f s", code, delay)
            stopping.wait(delay)
    finally:
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)
            child.wait(30)
        pid_file.unlink(missing_ok=True)
    return 0


def renew(state_dir: Path, force: bool) -> int:
    """Against the running agent's state: renew what is due (or everything with --force) and serve it."""
    from container import certificates

    for store in certificates.stores(state_dir) or [certificates.Store(state_dir)]:
        _renew(store, state_dir, force)
    return 0


def _renew(store: Store, state_dir: Path, force: bool) -> None:
    from container import certificates

    settings = store.settings()
    site = f"site {store.site}: " if store.site else ""
    if not settings.acme:
        raise AgentError(f"the frontend serves your own certificate ({settings.certificate}): replace that file; "
                         "the agent serves the new one within 10 s")
    reason = certificates.obtain(settings, store, force)
    current = store.current()
    if reason is None:
        print(site + (f"nothing due: the certificate for {', '.join(settings.domains)} is valid for "
              f"{current.days_left(time.time()):.0f} more days (renewed {settings.renew_days} days before "
              "expiry; --force renews now)" if current else "nothing due"))
        return
    assert current is not None  # just obtained
    served = certificates.sync_frontend(store, state_dir / "haproxy" / "admin.sock")
    print(f"{site}renewed ({reason}): serial {current.serial}, valid until "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(current.not_after))}; "
          + ("the frontend serves it now" if served else "the frontend serves it once the agent runs"))


def inspect(what: str, as_json: bool, state_dir: Path) -> int:
    from container import certificates, engine, tables

    if what == "certificates":
        rows = [row for store in certificates.stores(state_dir)
                for row in certificates.rows(store, state_dir / "haproxy" / "admin.sock")]
        print(json.dumps(rows, indent=2) if as_json else certificates.table(rows))
        return 0
    client = engine.connect()
    if client is None:
        raise AgentError("no Docker engine answers: nothing can be inspected")
    if what == "services":
        rows = tables.service_rows(client)
        print(json.dumps(rows, indent=2) if as_json else tables.services_table(rows))
    else:
        replacements = StateDir(state_dir).load().get("replacements", {})
        rows = tables.instance_rows(client, replacements=replacements)
        print(json.dumps(rows, indent=2) if as_json else tables.instances_table(rows))
        certs = [row for store in certificates.stores(state_dir)
                 for row in certificates.rows(store, state_dir / "haproxy" / "admin.sock")]
        if certs and not as_json:
            print("\n" + certificates.table(certs))
    return 0


def teardown(state_dir: Path, purge: bool) -> int:
    from container import engine
    from container.teardown import teardown as remove_all

    client = engine.connect()
    if client is None:
        raise AgentError("no Docker engine answers: cannot remove containers")
    for item in remove_all(client, state_dir, purge):
        print(f"removed {item}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pequod-agent", usage=USAGE, description=DESCRIPTION,
                                     formatter_class=_HelpFormatter)
    actions = parser.add_argument_group("actions (exactly one)")
    action = actions.add_mutually_exclusive_group(required=True)
    action.add_argument("--bootstrap", nargs="+",
                        help="start one instance of each IMAGE and supervise them (runs in the foreground)")
    action.add_argument("-i", "--inspect", nargs="?", const="instances",
                        choices=("instances", "services", "certificates"), metavar="WHAT",
                        help="print the running instances (WHAT: instances, the default), their services "
                             "(services) or the HTTPS certificates (certificates)")
    action.add_argument("--renew", action="store_true",
                        help="renew the frontend's HTTPS certificate if due, against the running agent's state")
    action.add_argument("--teardown", action="store_true", help="remove every container and link of ours")
    action.add_argument("--check", nargs="+", metavar="PATH_OR_IMAGE",
                        help="validate manifests: pequod.xml files or images holding /pequod.xml")
    action.add_argument("--build-image", nargs="?", const=DEFAULT_IMAGE, metavar="TAG",
                        help=f"build the application image (default tag {DEFAULT_IMAGE}) on a local stand-in base")
    action.add_argument("--export", nargs="+",
                        help="print the applications as Kubernetes objects (multi-document YAML)")
    run = parser.add_argument_group("with --bootstrap")
    run.add_argument("--supervise", action="store_true",
                     help="run the agent as a child and restart it whenever it exits")
    run.add_argument("--pid-file", type=Path, metavar="FILE", default=Path("/run/pequod-agent.pid"),
                     help="with --supervise: where the supervisor writes its pid (default /run/pequod-agent.pid)")
    other = parser.add_argument_group("with -i, --renew, --teardown, --build-image")
    other.add_argument("--json", action="store_true", help="with -i: JSON instead of a table")
    other.add_argument("--force", action="store_true", help="with --renew: renew even if not due")
    other.add_argument("--purge", action="store_true",
                       help="with --teardown: also delete the applications' persistent volumes (their releases)")
    other.add_argument("--base-image", metavar="IMAGE",
                       help="with --build-image: use this base instead of the stand-in")
    other.add_argument("--context", type=Path, metavar="DIR", default=Path("."),
                       help="with --build-image: the directory holding the Dockerfile (default: .)")
    kube = parser.add_argument_group("with --export")
    kube.add_argument("--namespace", default="default", metavar="NS", help="the namespace (default: default)")
    kube.add_argument("--replicas", type=int, default=1, metavar="N", help="replicas per application (1)")
    kube.add_argument("--mhz-per-cpu", type=int, default=2000, metavar="MHZ",
                      help="MHz of one CPU of the cluster's nodes, to convert vmhz (2000)")
    kube.add_argument("--storage-class", metavar="CLASS", help="volumes as claims of this class (a StatefulSet)")
    kube.add_argument("--ingress-class", metavar="CLASS", help="an Ingress of this class per published service")
    kube.add_argument("--dns64", action="store_true",
                      help="the cluster's DNS synthesises AAAA records (no hostAliases)")
    kube.add_argument("--output", type=Path, metavar="DIR", help="write DIR/<application>.yaml instead")
    common = parser.add_argument_group("common")
    common.add_argument("--state-dir", type=Path, metavar="DIR", default=Path("/var/lib/pequod-agent"),
                        help="what survives a restart (default /var/lib/pequod-agent)")
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s pequod-agent %(levelname)s %(message)s")
    for noisy in ("docker", "urllib3", "watchdog", "pyroute2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        if args.bootstrap and len(args.bootstrap) < 2:
            parser.error("--bootstrap needs at least one IMAGE and the BOOTSTRAP_YAML")
        if args.bootstrap and args.supervise:
            return supervise(["--bootstrap", *args.bootstrap, "--state-dir", str(args.state_dir)]
                             + (["-v"] if args.verbose else []), args.pid_file)
        if args.bootstrap:
            return bootstrap(args.bootstrap[:-1], args.bootstrap[-1], args.state_dir)
        if args.inspect:
            return inspect(args.inspect, args.json, args.state_dir)
        if args.renew:
            return renew(args.state_dir, args.force)
        if args.teardown:
            return teardown(args.state_dir, args.purge)
        if args.check:
            return check(args.check)
        if args.export:
            return export(args)
        return build_image(args.build_image, args.base_image, args.context)
    except AgentError as exc:  # expected: bad input, or an external system said no
        print(f"pequod-agent: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader of our output stopped reading (`| grep -q`, `| head`): not a failure
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception:  # a bug, or a failure no gateway maps: keep the traceback
        logging.getLogger("container").exception("unexpected error; please report it with this traceback")
        return 1


if __name__ == "__main__":
    sys.exit(main())
