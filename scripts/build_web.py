#!/usr/bin/env python3
"""Bundle the front-end libraries into the package (no CDN at run time).

Runs ``npm ci`` (or ``npm install`` without a lock file) at the repository root, then
copies OpenSeadragon's minified build and its button images into
``src/convfocus/web/static/vendor/openseadragon/``. The copy is committed, so
``pip install`` works offline; rerun this after changing the version in package.json.

Usage: python scripts/build_web.py [--skip-npm] [--check]
"""

from __future__ import annotations

import argparse
import filecmp
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "node_modules" / "openseadragon"
DEST = ROOT / "src" / "convfocus" / "web" / "static" / "vendor" / "openseadragon"


def _npm() -> None:
    npm = shutil.which("npm")
    if npm is None:
        sys.exit("build_web: npm not found (install Node.js and npm)")
    cmd = [npm, "ci"] if (ROOT / "package-lock.json").exists() else [npm, "install"]
    subprocess.run([*cmd, "--no-audit", "--no-fund"], cwd=ROOT, check=True)


def _files() -> list[tuple[Path, Path]]:
    """(source, destination) pairs of everything that is vendored."""
    build = SRC / "build" / "openseadragon"
    pairs = [
        (build / "openseadragon.min.js", DEST / "openseadragon.min.js"),
        (SRC / "LICENSE.txt", DEST / "LICENSE.txt"),
    ]
    pairs += [(p, DEST / "images" / p.name) for p in sorted((build / "images").glob("*.png"))]
    return pairs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-npm", action="store_true", help="use node_modules as it is")
    parser.add_argument("--check", action="store_true",
                        help="only check that the vendored copy matches node_modules")
    args = parser.parse_args()
    if not (args.skip_npm or args.check):
        _npm()
    if not SRC.exists():
        sys.exit(f"build_web: {SRC} missing: run npm ci first")
    version = json.loads((SRC / "package.json").read_text())["version"]
    pairs = _files()
    if args.check:
        stale = [str(d.relative_to(ROOT)) for s, d in pairs
                 if not d.exists() or not filecmp.cmp(s, d, shallow=False)]
        if stale:
            print("build_web: stale vendored files:\n  " + "\n  ".join(stale))
            return 1
        print(f"build_web: vendored OpenSeadragon {version} is up to date")
        return 0
    if DEST.exists():
        shutil.rmtree(DEST)
    for src, dst in pairs:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    (DEST / "VERSION").write_text(f"openseadragon {version}\n")
    print(f"build_web: OpenSeadragon {version} -> {DEST.relative_to(ROOT)} ({len(pairs)} files)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
