"""Command line of the pipeline: `python -m pipeline {watch,check-config,status,rollback}`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from dataclasses import asdict
from types import FrameType

from pipeline import config, releases
from pipeline.config import Settings, settings_from_env
from pipeline.errors import ConfigError, ReleaseError
from pipeline.publish import builds
from pipeline.publish.watcher import Watcher, live_release
from pipeline.releases import rollback
from pipeline.status import Status


def _env(args: argparse.Namespace, *, need_repo: bool) -> dict[str, str]:
    env = dict(os.environ)
    if args.data_dir:
        env["DATA_DIR"] = args.data_dir
    if not need_repo:
        env.setdefault("SITE_REPO", "/")  # not used by these commands
    return env


def _settings(args: argparse.Namespace, *, need_repo: bool) -> Settings:
    return settings_from_env(_env(args, need_repo=need_repo))


def cmd_watch(args: argparse.Namespace) -> int:
    settings = _settings(args, need_repo=True)
    watcher = Watcher(settings)

    def stop(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger("pipeline").info("signal %d: stopping", signum)
        watcher.stop.set()
        watcher.wake.set()
        builds.terminate_running()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    watcher.run_forever()
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    env = _env(args, need_repo=True)
    settings_from_env(env)
    if args.shell:  # run.sh's: the values it needs itself, so that it repeats no default
        sys.stdout.write(config.shell(env, args.shell))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    settings = _settings(args, need_repo=False)
    status = Status.load(settings.layout.status).to_json()
    live = live_release(settings)
    status["current"] = asdict(live) if live else None
    status["releases"] = releases.list_releases(settings.layout.releases)
    print(json.dumps(status, indent=2))
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    settings = _settings(args, need_repo=False)
    try:
        meta = rollback(settings.layout, args.release)
    except ReleaseError as exc:
        print(f"rollback: {exc}", file=sys.stderr)
        return 1
    print(f"rolled back: {meta.release} (commit {meta.commit[:12]}) is live until the next push")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    parser.add_argument("--data-dir", help="state directory (default: $DATA_DIR or /workdir)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log command lines too")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("watch", help="poll the remote, build and publish (the default)")
    check = sub.add_parser("check-config", help="check the environment settings and exit")
    check.add_argument("--shell", nargs="+", metavar="NAME",
                       help="then print NAME=value lines (quoted for sh) of these settings, defaults applied")
    sub.add_parser("status", help="print the deploy status as JSON")
    roll = sub.add_parser("rollback", help="make an earlier release live until the next push")
    roll.add_argument("release", nargs="?", help="release id (default: the one before the live one)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s pipeline %(levelname)s %(message)s",
    )
    logging.getLogger("git").setLevel(logging.WARNING)
    commands = {
        None: cmd_watch, "watch": cmd_watch, "check-config": cmd_check_config,
        "status": cmd_status, "rollback": cmd_rollback,
    }
    try:
        return commands[args.command](args)
    except ConfigError as exc:
        print(f"pipeline: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
