"""A batch's jobs: the slides to scan, from files, folders and CSV manifests, and how
each job ended.

A manifest has a ``slide`` (or ``path``) column and an optional ``mpp``; a row that
cannot be scanned (a bad mpp, an empty slide cell) becomes a job that fails alone. Each
slide is scanned once, however often it is listed.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from convfocus.errors import ConfigError
from convfocus.io.formats import find_slides, is_dicom_folder

log = logging.getLogger("convfocus.grading.batch")


@dataclass(frozen=True)
class SlideJob:
    """One slide to scan: its path and the pixel size given for it (``None``: the file's).

    ``error``: why a manifest row cannot be scanned (a bad mpp cell, an empty slide
    cell); such a job fails with that line and the rest of the batch goes on. ``label``
    names a row that has no slide path in the index.
    """

    path: Path
    mpp: float | None = None
    error: str | None = None
    label: str | None = None


@dataclass(frozen=True)
class JobResult:
    """How one slide's job in a batch ended (its graded result is in its output folder)."""

    path: Path
    status: str  # "done", "skipped", "failed"
    out: Path | None = None
    error: str | None = None
    seconds: float = 0.0
    label: str | None = None  # the index's name of a job without a slide (SlideJob.label)


def expand_inputs(inputs: Sequence[str | Path]) -> list[SlideJob]:
    """Files, folders and CSV manifests -> slide jobs (in the given order, each slide once).

    A path that does not exist is kept, so that scanning it reports the error. A slide
    named more than once is scanned once, with the first mpp given for it; one warning
    line lists the duplicates and where they came from.
    """
    found: list[tuple[SlideJob, str]] = []
    for item in inputs:
        p = Path(item)
        if p.suffix.lower() == ".csv" and p.is_file():
            found += _read_manifest(p)
        elif p.is_dir() and not is_dicom_folder(p):
            slides = find_slides([p])  # a DICOM WSI folder inside is one slide
            if not slides:
                found.append((SlideJob(p), str(p)))  # reported as an error: no slide in it
            found += [(SlideJob(f), str(p)) for f in slides]
        else:
            found.append((SlideJob(p), "the command line"))
    first: dict[Path, int] = {}
    unique: list[SlideJob] = []
    origins: list[list[str]] = []
    for j, origin in found:
        if j.error is not None:  # a bad manifest row is never a duplicate
            unique.append(j)
            origins.append([origin])
            continue
        key = j.path.resolve() if j.path.exists() else j.path
        if key in first:
            k = first[key]
            origins[k].append(origin if j.mpp == unique[k].mpp
                              else f"{origin} with mpp {j.mpp}, not used")
            continue
        first[key] = len(unique)
        unique.append(j)
        origins.append([origin])
    dups = [(j, o) for j, o in zip(unique, origins, strict=True) if len(o) > 1]
    if dups:
        log.warning("%d %s listed more than once, each scanned once: %s", len(dups),
                    "slide" if len(dups) == 1 else "slides",
                    "; ".join(f"{j.path.name} ({', '.join(o)})" for j, o in dups))
    return unique


def _read_manifest(path: Path) -> list[tuple[SlideJob, str]]:
    """The rows of a CSV manifest as jobs, each with where it came from ("m.csv line 3").

    A row that cannot be scanned (a bad mpp, an empty slide cell) becomes a job that
    fails with one line naming the manifest, the line and the cause; the whole file
    fails only when it cannot be read or has no slide column.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        cause = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(f"cannot read the manifest: {cause}", path) from None
    if not rows:
        raise ConfigError("manifest has no rows", path)
    col = "slide" if "slide" in rows[0] else "path" if "path" in rows[0] else None
    if col is None:
        raise ConfigError("manifest needs a 'slide' or 'path' column", path)
    jobs = []
    for i, r in enumerate(rows, start=2):
        where = f"{path.name} line {i}"
        cell = (r.get(col) or "").strip()
        if not cell:
            if any((v or "").strip() for v in r.values() if isinstance(v, str)):
                why = ConfigError(f"line {i}: the {col!r} cell is empty", path)
                jobs.append((SlideJob(path, error=str(why), label=where), where))
            continue  # an empty row
        slide = (path.parent / cell).resolve()
        raw = (r.get("mpp") or "").strip()
        mpp = None
        if raw:
            try:
                mpp = float(raw)
            except ValueError:
                why = ConfigError(f"line {i}: mpp {raw!r} is not a number", path)
                jobs.append((SlideJob(slide, error=str(why)), where))
                continue
        jobs.append((SlideJob(slide, mpp), where))
    return jobs
