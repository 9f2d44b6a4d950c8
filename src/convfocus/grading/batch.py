"""Batch scanning: many slides, one failure never stops the rest; local processes or Dask.

Inputs are files, folders (searched for slides) and CSV manifests (a ``slide`` or
``path`` column, optional ``mpp``). Workers open their own slide handles; only
paths and settings travel to them, never pixels. ``resume`` skips slides whose
output folder is complete; since every folder is written under a temporary name
and renamed when whole, a batch killed at any moment and rerun ends with the same
outputs as an uninterrupted run.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from convfocus.errors import ConfigError, ConvFocusError, OutputError
from convfocus.grading.scan import (
    ScanOptions,
    ensure_output_root,
    is_complete,
    output_dir,
    scan_path,
)
from convfocus.io.atomic import remove_stale, write_text_atomic
from convfocus.io.formats import find_slides, is_dicom_folder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SlideJob:
    path: Path
    mpp: float | None = None


@dataclass(frozen=True)
class JobResult:
    """How one slide's job in a batch ended (its graded result is in its output folder)."""

    path: Path
    status: str  # "done", "skipped", "failed"
    out: Path | None = None
    error: str | None = None
    seconds: float = 0.0


def expand_inputs(inputs: Sequence[str | Path]) -> list[SlideJob]:
    """Files, folders and CSV manifests -> slide jobs (in the given order, no duplicates).

    A path that does not exist is kept, so that scanning it reports the error.
    """
    jobs: list[SlideJob] = []
    for item in inputs:
        p = Path(item)
        if p.suffix.lower() == ".csv" and p.is_file():
            jobs += _read_manifest(p)
        elif p.is_dir() and not is_dicom_folder(p):
            found = find_slides([p])  # a DICOM WSI folder inside is one slide
            if not found:
                jobs.append(SlideJob(p))  # reported as an error: a folder with no slide
            jobs += [SlideJob(f) for f in found]
        else:
            jobs.append(SlideJob(p))
    seen: set[Path] = set()
    unique = []
    for j in jobs:
        key = j.path.resolve() if j.path.exists() else j.path
        if key not in seen:
            seen.add(key)
            unique.append(j)
    return unique


def _read_manifest(path: Path) -> list[SlideJob]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ConfigError("manifest has no rows", path)
    col = "slide" if "slide" in rows[0] else "path" if "path" in rows[0] else None
    if col is None:
        raise ConfigError("manifest needs a 'slide' or 'path' column", path)
    jobs = []
    for i, r in enumerate(rows, start=2):
        mpp = None
        if r.get("mpp"):
            try:
                mpp = float(r["mpp"])
            except ValueError:
                raise ConfigError(f"line {i}: mpp {r['mpp']!r} is not a number", path) from None
        jobs.append(SlideJob((path.parent / r[col]).resolve(), mpp))
    return jobs


@lru_cache(maxsize=4)
def _cached_grader(
    model: str | None, device: str, backend: str, threads: int | None, precision: str = "fp32",
    dense: bool = False,
) -> Any:
    from convfocus.grading.infer import load_grader

    return load_grader(model, device=device, backend=backend, threads=threads,
                       precision=precision, dense=dense)


def scan_job(job: SlideJob, out_root: str, opts: ScanOptions) -> JobResult:
    """Scan one slide, turning expected failures into a result (runs in any worker)."""
    t0 = time.perf_counter()
    o = replace(opts, mpp=job.mpp if job.mpp is not None else opts.mpp)

    def failed(message: str) -> JobResult:
        return JobResult(job.path, "failed", None, message, time.perf_counter() - t0)

    if job.path.is_dir() and not is_dicom_folder(job.path):
        return failed(f"{job.path}: no slides in this folder")
    try:
        grader = _cached_grader(None if o.model is None else str(o.model), o.device, o.backend,
                                o.threads, o.precision, o.dense)
        out = scan_path(job.path, Path(out_root), options=o, grader=grader)
        return JobResult(job.path, "done", out, None, time.perf_counter() - t0)
    except ConvFocusError as exc:
        return failed(str(exc))
    except MemoryError:
        return failed(f"{job.path}: out of memory")
    except Exception as exc:  # one slide's unexpected failure never stops the batch
        log.debug("unexpected error on %s", job.path, exc_info=True)
        return failed(f"{job.path}: unexpected error ({type(exc).__name__}: {exc})")


class Progress:
    """A one-line progress bar with ETA on a terminal; plain log lines otherwise."""

    def __init__(self, total: int, *, quiet: bool = False, stream: Any = None) -> None:
        self.total, self.quiet = total, quiet
        self.stream = stream or sys.stderr
        self.t0 = time.perf_counter()
        self.done = 0
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def update(self, r: JobResult) -> None:
        self.done += 1
        if self.quiet:
            return
        el = time.perf_counter() - self.t0
        eta = el / self.done * (self.total - self.done)
        width = 24
        fill = int(width * self.done / max(1, self.total))
        bar = "#" * fill + "-" * (width - fill)
        what = r.status if r.status != "failed" else "FAILED"
        line = (f"[{bar}] {self.done}/{self.total} {r.path.name}: {what} "
                f"({r.seconds:.1f} s)  elapsed {_hms(el)}  ETA {_hms(eta)}")
        if self.tty:
            end = "\n" if self.done == self.total else ""
            print("\r" + line.ljust(100), end=end, file=self.stream, flush=True)
        else:
            print(line, file=self.stream, flush=True)


def _hms(s: float) -> str:
    s = round(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def run_batch(
    jobs: Sequence[SlideJob],
    out_root: Path,
    opts: ScanOptions,
    *,
    workers: int = 1,
    scheduler: str | None = None,
    resume: bool = False,
    quiet: bool = False,
    on_result: Callable[[JobResult], None] | None = None,
) -> list[JobResult]:
    """Scan every job; return one result per job in input order, then write the index."""
    out_root = Path(out_root)
    ensure_output_root(out_root)
    remove_stale(out_root)  # folders and files that killed runs were writing or replacing
    results: dict[int, JobResult] = {}
    todo: list[tuple[int, SlideJob]] = []
    names: dict[str, Path] = {}
    for i, j in enumerate(jobs):
        name = output_dir(j.path, out_root).name
        if name in names:
            results[i] = JobResult(j.path, "failed", None,
                                     f"{j.path}: output name '{name}' collides with {names[name]}")
            continue
        names[name] = j.path
        if resume and is_complete(output_dir(j.path, out_root)):
            results[i] = JobResult(j.path, "skipped", output_dir(j.path, out_root))
            continue
        todo.append((i, j))
    progress = Progress(len(jobs), quiet=quiet)
    for r in results.values():
        progress.update(r)

    def record(i: int, r: JobResult) -> None:
        results[i] = r
        progress.update(r)
        if r.status == "failed":
            log.debug("failed: %s", r.error)
        if on_result is not None:
            on_result(r)

    if scheduler:
        _run_dask(todo, out_root, opts, scheduler, record)
    elif workers > 1 and len(todo) > 1:
        _run_processes(todo, out_root, opts, workers, record)
    else:
        for i, j in todo:
            record(i, scan_job(j, str(out_root), opts))
    ordered = [results[i] for i in range(len(jobs))]
    try:
        write_index(out_root, ordered)
    except OSError as exc:
        cause = exc.strerror or (os.strerror(exc.errno) if exc.errno else str(exc))
        raise OutputError(f"cannot write the batch index: {cause}", out_root) from None
    return ordered


def _run_processes(todo, out_root: Path, opts: ScanOptions, workers: int, record) -> None:  # type: ignore[no-untyped-def]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = max(1, (os.cpu_count() or 1) // workers)
    o = replace(opts, threads=opts.threads or threads, read_threads=1)
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as ex:
        futs = {ex.submit(scan_job, j, str(out_root), o): (i, j) for i, j in todo}
        for f in as_completed(futs):
            i, j = futs[f]
            try:
                r = f.result()
            except Exception as exc:  # noqa: BLE001 - a worker process died (killed, OOM)
                r = JobResult(j.path, "failed", None,
                                f"{j.path}: worker error: {type(exc).__name__}: {exc}")
            record(i, r)


def _run_dask(todo, out_root: Path, opts: ScanOptions, address: str, record) -> None:  # type: ignore[no-untyped-def]
    try:
        from distributed import Client, as_completed
    except ImportError:  # pragma: no cover - dask is a dependency
        raise ConfigError("--scheduler needs dask.distributed installed") from None
    try:
        client = Client(address, timeout="20s")
    except (OSError, TimeoutError) as exc:
        raise ConfigError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
    # workers may run in another folder: send absolute paths
    model = opts.model
    if model is not None and Path(model).with_suffix(".json").is_file():
        model = str(Path(model).resolve())
    o = replace(opts, model=model)
    try:
        futs = {}
        for i, j in todo:
            jr = replace(j, path=j.path.absolute())
            f = client.submit(scan_job, jr, str(out_root.resolve()), o, pure=False,
                              key=f"convfocus-scan-{i}-{j.path.name}")
            futs[f] = i
        for f in as_completed(list(futs)):
            try:
                r = f.result()
            except Exception as exc:  # noqa: BLE001 - a worker died or raised unexpectedly
                j = dict(todo)[futs[f]]
                r = JobResult(j.path, "failed", None, f"{j.path}: worker error: {exc}")
            record(futs[f], r)
    finally:
        client.close()


def write_index(out_root: Path, results: Iterable[JobResult]) -> None:
    """``OUT/index.csv`` and ``OUT/index.html`` over every slide of the batch."""
    import json

    from convfocus.grading import report

    rows = []
    for r in results:
        if r.out is not None and (r.out / "summary.json").is_file():
            summary = json.loads((r.out / "summary.json").read_text())
            row = report.index_row(summary, f"{r.out.name}/report.html")
        else:
            row = {"name": r.path.name, "verdict": "error", "report": ""}
        row = {**row, "status": r.status, "error": r.error or ""}
        rows.append(row)
    cols: list[str] = []
    for row in rows:
        cols += [k for k in row if k not in cols]
    text = io.StringIO()
    wr = csv.DictWriter(text, fieldnames=cols, lineterminator="\n")
    wr.writeheader()
    wr.writerows(rows)
    write_text_atomic(out_root / "index.csv", text.getvalue())
    write_text_atomic(out_root / "index.html", report.render_index_html(rows))
