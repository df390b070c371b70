"""`pequod-agent`: the host agent's command line.

    pequod-agent --check PATH_OR_IMAGE...      validate manifests (files, or images' /pequod.xml)
    pequod-agent --build-image [TAG]           Docker engine + stand-in base + application image
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pequod_agent.errors import AgentError, ManifestError
from pequod_agent.manifest import load_manifest

DEFAULT_IMAGE = "srcco-de:1"


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
                from pequod_agent import engine
                from pequod_agent.image import manifest_from_image

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
    from pequod_agent import base_image as base
    from pequod_agent import engine
    from pequod_agent.image import build_app_image

    if not (context / "Dockerfile").is_file():
        raise AgentError(f"{context}: no Dockerfile here; run from the repository or pass --context PATH")
    client = engine.ensure_engine(progress)
    base_tag = base_image or base.ensure_base_image(client, progress=progress)
    build_app_image(client, context, tag, base_tag, progress)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pequod-agent", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--check", nargs="+", metavar="PATH_OR_IMAGE",
                        help="validate manifests: pequod.xml files or images holding /pequod.xml")
    action.add_argument("--build-image", nargs="?", const=DEFAULT_IMAGE, metavar="TAG",
                        help=f"build the application image (default tag {DEFAULT_IMAGE}) on a local stand-in base")
    parser.add_argument("--base-image", help="with --build-image: use this base instead of the stand-in")
    parser.add_argument("--context", type=Path, default=Path("."),
                        help="with --build-image: the directory holding the Dockerfile (default: .)")
    args = parser.parse_args(argv)
    try:
        if args.check:
            return check(args.check)
        return build_image(args.build_image, args.base_image, args.context)
    except AgentError as exc:
        print(f"pequod-agent: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
