"""An evaluation's inputs: CSV manifests (paths relative to the manifest) and the scan
output folder of each listed slide, found under ``--tiles`` or scanned when missing.

Slides are scanned through :func:`convfocus.grading.scan.scan_path`; scan outputs are
read with :mod:`convfocus.io.scanout`.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from convfocus.errors import ConfigError
from convfocus.io.scanout import find_scan_output

log = logging.getLogger(__name__)


def read_manifest(path: str | Path, required: Sequence[str]) -> list[dict[str, str]]:
    """Rows of a CSV manifest with a header, checking that ``required`` columns exist."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ConfigError(f"cannot read manifest: {exc.strerror or exc}", p) from None
    reader = csv.DictReader(io.StringIO(text))
    columns = [c.strip() for c in reader.fieldnames or []]
    missing = [c for c in required if c not in columns]
    if missing:
        raise ConfigError(
            f"manifest lacks column(s) {', '.join(missing)} (has: {', '.join(columns) or 'none'})",
            p,
        )
    rows = [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in reader]
    rows = [r for r in rows if any(r.values())]
    if not rows:
        raise ConfigError("manifest has no rows", p)
    return rows


def resolve_path(base: Path, text: str) -> Path:
    """A path from a manifest: ``~`` expanded, relative paths taken from ``base``."""
    p = Path(text).expanduser()
    return p if p.is_absolute() else base / p


def _scan(
    slide: Path, scans: Path, *, model: str | Path | None, mpp: float | None, device: str,
    grader: Any = None,
) -> Path:
    """Scan ``slide`` into ``scans/<stem>``, reusing a complete earlier output."""
    try:
        from convfocus.grading.scan import is_complete, output_dir, scan_path
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigError(f"scanning is not available ({exc}); pass --tiles") from None
    folder = output_dir(slide, scans)
    if is_complete(folder):
        log.info("reusing scan output %s", folder)
        return folder
    log.info("scanning %s", slide)
    return scan_path(slide, scans, model=model, mpp=mpp, device=device, grader=grader)


def scan_outputs(
    inputs: Sequence[Path],
    *,
    tiles: str | Path | None,
    scans: str | Path | None,
    model: str | Path | None = None,
    mpp: float | None = None,
    device: str = "cpu",
    grader: Any = None,
) -> list[Path]:
    """The scan output folder of each input: found under ``tiles``, or scanned into
    ``scans`` (inputs sharing a file stem go to numbered subfolders, as outputs are
    named by stem)."""
    stems = [p.stem for p in inputs]
    shared = {st for st in stems if stems.count(st) > 1}
    if tiles is not None:
        if shared:
            raise ConfigError(f"several inputs share the name {min(shared)!r}, so their "
                              "scan outputs cannot be told apart under --tiles")
        return [find_scan_output(tiles, p) for p in inputs]
    if scans is None:
        raise ConfigError("give existing scan outputs (--tiles) or a folder to scan into")
    root = Path(scans)
    return [
        _scan(p, root / f"{k + 1:03d}" if p.stem in shared else root, model=model, mpp=mpp,
              device=device, grader=grader)
        for k, p in enumerate(inputs)
    ]
