"""Runs one `nikola build` in this process, then removes output no task produces any more.

Started by `pipeline.nikola_build` as `python -m pipeline.nikola_runner SITE_DIR`. Removing
orphans (pages of deleted posts, tags no post uses any more) is what lets an incremental build
give exactly the output of a clean build.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def remove_orphans(site: object) -> int:
    from nikola.plugins.command.check import real_scan_files

    orphans, _missing = real_scan_files(site)
    for name in orphans:
        os.unlink(name)
    output = Path(site.config["OUTPUT_FOLDER"])  # type: ignore[attr-defined]
    for root, _dirs, _files in sorted(os.walk(output), key=lambda entry: -len(entry[0])):
        if root != str(output) and not os.listdir(root):
            os.rmdir(root)
    return len(orphans)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m pipeline.nikola_runner SITE_DIR", file=sys.stderr)
        return 2
    os.chdir(argv[0])
    os.environ.setdefault("NIKOLA_MONO", "1")
    import nikola.__main__ as nikola_main

    nikola_main._RETURN_DOITNIKOLA = True
    doit_nikola = nikola_main.main(["build"])
    if isinstance(doit_nikola, int):  # conf.py could not be loaded
        return doit_nikola or 1
    status = doit_nikola.run(["build"])
    if status != 0:
        return int(status)
    removed = remove_orphans(doit_nikola.nikola)
    print(f"pequod: build finished, {removed} stale output file(s) removed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
