"""Batch scanning: many slides, one failure never stops the rest; local processes or Dask.

Inputs are files, folders (searched for slides) and CSV manifests (a ``slide`` or
``path`` column, optional ``mpp``). Workers open their own slide handles; only
paths and settings travel to them, never pixels. ``resume`` skips slides whose
output folder is complete and was made with the same settings (summary.json's
``settings``); since every folder is written under a temporary name and renamed
when whole, a batch killed at any moment and rerun ends with the same outputs as an
uninterrupted run. SIGINT and SIGTERM stop the workers at once and index what
finished.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

from convfocus.errors import ConfigError, ConvFocusError, Interrupted, OutputError
from convfocus.grading.jobs import JobResult, SlideJob
from convfocus.grading.scan import (
    ScanOptions,
    ensure_output_root,
    is_complete,
    output_dir,
    scan_path,
    scan_settings,
    settings_changes,
)
from convfocus.io.atomic import remove_stale, write_text_atomic
from convfocus.io.formats import is_dicom_folder

log = logging.getLogger(__name__)


@lru_cache(maxsize=4)
def _cached_grader(
    model: str | None, device: str, backend: str, threads: int | None, precision: str = "fp32",
    dense: bool = False,
) -> Any:
    from convfocus.grading.infer import load_grader

    return load_grader(model, device=device, backend=backend, threads=threads,
                       precision=precision, dense=dense)


def scan_job(
    job: SlideJob, out_root: str, opts: ScanOptions, *,
    progress: Callable[[int, int], None] | None = None,
) -> JobResult:
    """Scan one slide, turning expected failures into a result (runs in any worker).

    ``progress(done, total)``: called as the slide's regions are graded.
    """
    t0 = time.perf_counter()
    o = replace(opts, mpp=job.mpp if job.mpp is not None else opts.mpp)

    def failed(message: str) -> JobResult:
        return JobResult(job.path, "failed", None, message, time.perf_counter() - t0, job.label)

    if job.error is not None:
        return failed(job.error)
    if job.path.is_dir() and not is_dicom_folder(job.path):
        return failed(f"{job.path}: no slides in this folder")
    try:
        grader = _cached_grader(None if o.model is None else str(o.model), o.device, o.backend,
                                o.threads, o.precision, o.dense)
        out = scan_path(job.path, Path(out_root), options=o, grader=grader, progress=progress)
        return JobResult(job.path, "done", out, None, time.perf_counter() - t0)
    except ConvFocusError as exc:
        return failed(str(exc))
    except MemoryError:
        return failed(f"{job.path}: out of memory")
    except Exception as exc:  # one slide's unexpected failure never stops the batch
        log.debug("unexpected error on %s", job.path, exc_info=True)
        return failed(f"{job.path}: unexpected error ({type(exc).__name__}: {exc})")


# --- what the terminal shows ------------------------------------------------------------------


class Progress:
    """What a batch shows while it runs.

    On a terminal (``err`` is a TTY): one status line on stderr, redrawn in place (at
    most ten times a second, and each second while nothing else happens) with the
    slides done, the slides being graded and their share of regions, elapsed time and
    ETA. Elsewhere (a log file): one plain line on stderr per finished slide, for
    batches of more than one slide. Each slide's verdict line goes to ``out`` (stdout)
    as the slide finishes; :meth:`close` prints the batch summary line. ``quiet``:
    nothing at all.
    """

    def __init__(self, total: int, *, quiet: bool = False, stream: Any = None,
                 out: Any = None) -> None:
        self.total, self.quiet = total, quiet
        self.stream = stream or sys.stderr
        self.out = out or sys.stdout
        self.t0 = time.perf_counter()
        self.done = 0
        self.tty = bool(hasattr(self.stream, "isatty") and self.stream.isatty())
        self._running: dict[int, list[Any]] = {}  # job index -> [name, start, done, total]
        self._finished: set[int] = set()
        self._lock = threading.RLock()
        self._drawn_at = 0.0
        self._shown = 0  # characters of the status line now on the terminal
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._log_handlers: list[logging.Handler] = []
        if self.tty and not quiet:
            self._ticker = threading.Thread(target=self._tick, daemon=True,
                                            name="convfocus-progress")
            self._ticker.start()
            # a log line (a warning) takes the status line's place; the next redraw is below it
            self._log_handlers = [h for h in logging.getLogger().handlers
                                  if getattr(h, "stream", None) is self.stream]
            for h in self._log_handlers:
                h.addFilter(self._clear_for_log)

    # -- events --

    def start(self, i: int, name: str) -> None:
        """Job ``i`` (slide ``name``) began."""
        with self._lock:
            if i not in self._finished:
                self._running[i] = [name, time.perf_counter(), 0, 0]
                self._draw(force=True)

    def step(self, i: int, done: int, total: int) -> None:
        """Job ``i`` graded ``done`` of its ``total`` regions."""
        with self._lock:
            run = self._running.get(i)
            if run is not None:
                run[2], run[3] = done, total
                self._draw(force=done == total)

    def note(self, text: str) -> None:
        """A line on stderr (a slide rescanned, ...), above the status line."""
        if self.quiet:
            return
        with self._lock:
            self._clear()
            print(text, file=self.stream, flush=True)
            self._draw(force=True)

    def update(self, r: JobResult, i: int | None = None, line: str | None = None) -> None:
        """A job ended; ``line`` (its verdict) goes to stdout."""
        with self._lock:
            self.done += 1
            if i is not None:
                self._finished.add(i)
                self._running.pop(i, None)
            if self.quiet:
                return
            self._clear()
            if line:
                print(line, file=self.out, flush=True)
            if not self.tty and self.total > 1:
                print(self._plain_line(r), file=self.stream, flush=True)
            self._draw(force=True)

    def close(self, summary: str | None = None) -> None:
        """Stop redrawing, take the status line away, print ``summary`` to stdout."""
        self._stop.set()
        for h in self._log_handlers:
            h.removeFilter(self._clear_for_log)
        self._log_handlers = []
        with self._lock:
            self._clear()
            self._running.clear()
            if summary and not self.quiet:
                print(summary, file=self.out, flush=True)

    # -- drawing --

    def _plain_line(self, r: JobResult) -> str:
        el = time.perf_counter() - self.t0
        eta = el / max(1, self.done) * (self.total - self.done)
        what = r.status if r.status != "failed" else "FAILED"
        name = r.out.name if r.out is not None else (r.label or r.path.name)
        return (f"[{_bar(self.done / max(1, self.total))}] {self.done}/{self.total} {name}: "
                f"{what} ({r.seconds:.1f} s)  elapsed {_hms(el)}  ETA {_hms(eta)}")

    def _status(self) -> str:
        now = time.perf_counter()
        el = now - self.t0
        parts = []
        share = float(self.done)
        for name, t_start, done, total in self._running.values():
            f = done / total if total else 0.0
            share += f
            what = f"{name} {100 * f:.0f} %" if total else f"{name} opening"
            if total and done == total:
                what = f"{name} writing outputs"
            parts.append(what)
        frac = share / max(1, self.total)
        eta = "--:--" if frac <= 0.0 else _hms(el / frac * (1.0 - frac))
        head = f"[{_bar(frac, 20)}] " + (f"{self.done}/{self.total} " if self.total > 1 else "")
        return f"{head}{_hms(el)} ETA {eta}  {', '.join(parts)}"

    def _draw(self, *, force: bool = False) -> None:
        if not self.tty or self.quiet or self._stop.is_set() or self.done >= self.total:
            return
        now = time.perf_counter()
        if not force and now - self._drawn_at < 0.1:
            return
        self._drawn_at = now
        line = self._status()
        try:
            width = os.get_terminal_size(self.stream.fileno()).columns - 1
        except (OSError, ValueError, AttributeError):
            width = 0
        width = width if width >= 20 else 99  # a terminal that does not say its width
        line = line[:width]
        self.stream.write("\r" + line.ljust(self._shown))
        self.stream.flush()
        self._shown = len(line)

    def _clear(self) -> None:
        if self.tty and self._shown:
            self.stream.write("\r" + " " * self._shown + "\r")
            self.stream.flush()
            self._shown = 0

    def _clear_for_log(self, record: logging.LogRecord) -> bool:
        with self._lock:
            self._clear()
        return True

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            with self._lock:
                self._draw(force=True)


def _bar(frac: float, width: int = 24) -> str:
    fill = int(width * min(1.0, max(0.0, frac)))
    return "#" * fill + "-" * (width - fill)


def _hms(s: float) -> str:
    s = round(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def result_line(r: JobResult) -> str | None:
    """One slide's verdict and key figures, one line (None for a failed slide)::

        slide-a: REVIEW (histology): 12.3 % of 3.21 mm² tissue out of focus (class >= 15),
        mean class 4.1,
        4.2 s -> OUT/slide-a/report.html
    """
    if r.status == "failed" or r.out is None:
        return None
    try:
        s = json.loads((r.out / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"{r.out.name}: {r.status} -> {r.out / 'report.html'}"
    v = s.get("verdict") or {}
    verdict = str(v.get("verdict") if isinstance(v, dict) else v).upper()
    profile = v.get("profile") if isinstance(v, dict) else None
    figures = []
    share, area = s.get("oof_share"), s.get("tissue_area_mm2")
    reasons = v.get("reasons") if isinstance(v, dict) else None
    need = v.get("min_tissue_mm2") if isinstance(v, dict) else None
    if verdict == "NO-TISSUE" and reasons:
        figures.append(str(reasons[0]))  # why there is nothing to grade
    elif verdict == "INSUFFICIENT-TISSUE":
        figures.append("too little tissue for a verdict"
                       + (f" (needs {need:g} mm²)" if isinstance(need, (int, float)) else ""))
    if verdict != "NO-TISSUE" and isinstance(share, (int, float)) and isinstance(area, (
            int, float)):
        at = s.get("oof_min_class")
        at = f" (class >= {at})" if isinstance(at, int) else ""
        figures.append(f"{100 * share:.1f} % of {area:.2f} mm² tissue out of focus{at}")
    ink, ink_share = s.get("ink_area_mm2"), s.get("ink_share")
    if (isinstance(ink, (int, float)) and isinstance(ink_share, (int, float))
            and ink_share >= 0.01 and verdict != "NO-TISSUE"):
        figures.append(f"ink left out: {ink:.2g} mm² ({100 * ink_share:.0f} %)")
    if isinstance(s.get("mean_class"), (int, float)):
        figures.append(f"mean class {s['mean_class']:.1f}")
    if (s.get("pattern") or {}).get("scan_lanes"):
        figures.append("scan lanes")
    figures.append(f"{r.seconds:.1f} s" if r.status == "done" else "kept from an earlier scan")
    head = f"{r.out.name}: {verdict}" + (f" ({profile})" if profile else "")
    line = f"{head}: {', '.join(figures)} -> {r.out / 'report.html'}"
    coarse = s.get("coarse_slide")
    if isinstance(coarse, dict) and coarse.get("note"):
        line += f"\n  coarse slide: {coarse['note']}"
    return line


def summary_line(results: Sequence[JobResult], out_root: Path, seconds: float) -> str:
    """The batch in one line: slides, time, verdict counts, failures, the index."""
    counts: dict[str, int] = {}
    for r in results:
        if r.status == "failed" or r.out is None:
            continue
        try:
            v = json.loads((r.out / "summary.json").read_text(encoding="utf-8")).get("verdict")
        except (OSError, ValueError):
            v = None
        key = str((v.get("verdict") if isinstance(v, dict) else v) or "done")
        counts[key] = counts.get(key, 0) + 1
    failed = sum(r.status == "failed" for r in results)
    kept = sum(r.status == "skipped" for r in results)
    parts = [f"{n} {k}" for k, n in counts.items()]
    if failed:
        parts.append(f"{failed} failed")
    if kept:
        parts.append(f"{kept} kept from an earlier scan")
    n = len(results)
    return (f"{n} slide{'s' if n != 1 else ''} in {_hms(seconds)}: {', '.join(parts) or 'none'}"
            f" -> {out_root / 'index.html'}")


# --- the batch ----------------------------------------------------------------------------------


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
    progress: Progress | None = None,
) -> list[JobResult]:
    """Scan every job; return one result per job in input order, then write the index.

    ``resume``: keep a slide's complete output folder when it was made with the same
    settings (:func:`~convfocus.grading.scan.settings_changes`), rescan it otherwise and
    say why in one line. ``progress``: what the terminal shows (default: a
    :class:`Progress`, silent with ``quiet``).

    On SIGINT or SIGTERM (:class:`KeyboardInterrupt`) every worker is stopped, folders
    being written are removed, the index is written for the slides that finished, and
    :class:`~convfocus.errors.Interrupted` is raised saying how many did.
    """
    out_root = Path(out_root)
    t0, started = time.perf_counter(), time.time()
    ensure_output_root(out_root)
    remove_stale(out_root)  # folders and files that killed runs were writing or replacing
    progress = progress if progress is not None else Progress(len(jobs), quiet=quiet)
    results: dict[int, JobResult] = {}
    todo: list[tuple[int, SlideJob]] = []
    names: dict[str, Path] = {}
    check = _ResumeCheck(opts) if resume else None
    for i, j in enumerate(jobs):
        if j.error is not None:
            results[i] = JobResult(j.path, "failed", None, j.error, label=j.label)
            continue
        folder = output_dir(j.path, out_root)
        if folder.name in names:
            results[i] = JobResult(
                j.path, "failed", None,
                f"{j.path}: output name '{folder.name}' collides with {names[folder.name]}")
            continue
        names[folder.name] = j.path
        if check is not None and is_complete(folder):
            why = check.changes(folder, j)
            if not why:
                results[i] = JobResult(j.path, "skipped", folder)
                continue
            progress.note(f"{folder.name}: rescanning, {why}")
        todo.append((i, j))
    for i in sorted(results):
        progress.update(results[i], i, result_line(results[i]))

    def record(i: int, r: JobResult) -> None:
        results[i] = r
        progress.update(r, i, result_line(r))
        if r.status == "failed":
            log.debug("failed: %s", r.error)
        if on_result is not None:
            on_result(r)

    try:
        if scheduler:
            _run_dask(todo, out_root, opts, scheduler, record)
        elif workers > 1 and len(todo) > 1:
            _run_processes(todo, out_root, opts, workers, record, progress)
        else:
            for i, j in todo:
                progress.start(i, output_dir(j.path, out_root).name)
                record(i, scan_job(j, str(out_root), opts, progress=partial(progress.step, i)))
    except KeyboardInterrupt as exc:
        progress.close()
        for i, j in todo:  # published by a worker that was stopped before it reported back
            folder = output_dir(j.path, out_root)
            if i not in results and is_complete(folder) and (
                    (folder / "summary.json").stat().st_mtime >= started):
                results[i] = JobResult(j.path, "done", folder)
        raise _interrupted(exc, out_root, results, len(jobs)) from None
    except BaseException:
        progress.close()
        raise
    ordered = [results[i] for i in range(len(jobs))]
    try:
        write_index(out_root, ordered)
    except OSError as exc:
        progress.close()
        cause = exc.strerror or (os.strerror(exc.errno) if exc.errno else str(exc))
        raise OutputError(f"cannot write the batch index: {cause}", out_root) from None
    progress.close(summary_line(ordered, out_root, time.perf_counter() - t0)
                   if len(jobs) > 1 else None)
    return ordered


def _interrupted(
    exc: KeyboardInterrupt, out_root: Path, results: dict[int, JobResult], total: int
) -> Interrupted:
    """Clean up after SIGINT / SIGTERM: remove what was being written, index what finished."""
    signum = getattr(exc, "signum", signal.SIGINT)
    remove_stale(out_root)  # the workers are gone: their temporary folders go too
    finished = [results[i] for i in sorted(results)]
    count = {k: sum(r.status == k for r in finished) for k in ("done", "failed", "skipped")}
    text = f"{count['done']} of {total} slide{'s' if total != 1 else ''} scanned"
    if count["failed"]:
        text += f", {count['failed']} failed"
    if count["skipped"]:
        text += f", {count['skipped']} kept from an earlier scan"
    text += f", {total - len(finished)} not scanned"
    if finished:
        try:
            write_index(out_root, finished)
            text += f"; index: {out_root / 'index.csv'}"
        except (OSError, ConvFocusError) as err:
            text += f"; the index could not be written ({err})"
    return Interrupted(signum, text)


# --- local worker processes ---------------------------------------------------------------------

#: In a worker process: the pipe its slides' progress goes to (set by ``_worker_init``).
_PROGRESS_PIPE: Any = None


def _worker_init(parent_pid: int, pipe: Any) -> None:
    """Each worker: Ctrl-C is the parent's to handle (it stops the workers), and a worker
    whose parent is gone (killed outright) exits instead of scanning on."""
    global _PROGRESS_PIPE
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if hasattr(signal, "pthread_sigmask"):  # blocked by the parent while it started us
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    _PROGRESS_PIPE = pipe

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="convfocus-parent-watch").start()


def _pool_job(i: int, job: SlideJob, out_root: str, opts: ScanOptions) -> JobResult:
    """:func:`scan_job` in a worker process, its progress sent to the parent.

    The messages are a few bytes, each written to the pipe in one piece (atomic below
    PIPE_BUF), so the workers share the pipe without a lock that a stopped worker could
    leave held.
    """
    pipe = _PROGRESS_PIPE
    last = [0.0]

    def send(msg: tuple[int, int, int]) -> None:
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.send(msg)

    def step(done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - last[0] >= 0.25:
            last[0] = now
            send((i, done, total))

    send((i, 0, 0))  # started
    return scan_job(job, out_root, opts, progress=step)


def _relay_progress(pipe: Any, progress: Progress, names: dict[int, str],
                    stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            if not pipe.poll(0.05):
                continue
            i, done, total = pipe.recv()
        except (EOFError, OSError, ValueError):
            return
        if total == 0:
            progress.start(i, names.get(i, "?"))
        else:
            progress.step(i, done, total)


def _run_processes(todo, out_root: Path, opts: ScanOptions, workers: int, record,  # type: ignore[no-untyped-def]
                   progress: Progress) -> None:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    ctx = mp.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // workers)
    o = replace(opts, threads=opts.threads or threads, read_threads=1)
    receive, send = ctx.Pipe(duplex=False)
    stop = threading.Event()
    names = {i: output_dir(j.path, out_root).name for i, j in todo}
    relay = threading.Thread(target=_relay_progress, args=(receive, progress, names, stop),
                             daemon=True, name="convfocus-progress-relay")
    ex = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init,
                             initargs=(os.getpid(), send))
    futs: dict[Any, tuple[int, SlideJob]] = {}
    seen: set[int] = set()
    try:
        # the workers start with SIGINT / SIGTERM blocked (the mask is inherited) until
        # they ignore Ctrl-C themselves; here the signals wait until the loop is done
        with _signals_held():
            for i, j in todo:
                futs[ex.submit(_pool_job, i, j, str(out_root), o)] = (i, j)
        relay.start()
        for f in as_completed(futs):
            i, j = futs[f]
            try:
                r = f.result()
            except Exception as exc:  # noqa: BLE001 - a worker process died (killed, OOM)
                r = JobResult(j.path, "failed", None,
                              f"{j.path}: worker error: {type(exc).__name__}: {exc}")
            seen.add(i)
            record(i, r)
    except BaseException:
        _stop_workers(ex)
        for f, (i, _j) in futs.items():  # slides that finished while we were stopping
            if i not in seen and f.done() and not f.cancelled() and f.exception() is None:
                record(i, f.result())
        raise
    finally:
        stop.set()
        ex.shutdown(wait=True, cancel_futures=True)
        if relay.is_alive():
            relay.join(timeout=1)
        receive.close()
        send.close()


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM (delivered when the block ends) in this thread."""
    sigs = {signal.SIGINT, signal.SIGTERM}
    if not hasattr(signal, "pthread_sigmask"):  # pragma: no cover - not POSIX
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _stop_workers(ex: Any) -> None:
    """Terminate the pool's worker processes now and wait until they are gone."""
    # ProcessPoolExecutor has no public way to do this before Python 3.14
    # (terminate_workers); its process table has been ``_processes`` since 3.2
    procs = list((getattr(ex, "_processes", None) or {}).values())
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout=5)
        if p.is_alive():
            p.kill()
            p.join(timeout=5)


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
    futs: dict[Any, int] = {}
    try:
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
    except BaseException:
        client.cancel(list(futs))  # slides not yet started are dropped; running ones finish
        raise
    finally:
        client.close()


#: Leading columns of index.csv; the key figures of :func:`report.index_row` follow, then
#: ``error``: every row has the same columns in the same order.
INDEX_LEAD = ("name", "input", "status")


def index_columns() -> list[str]:
    """The columns of ``OUT/index.csv``, in order."""
    from convfocus.grading import report

    cols = list(INDEX_LEAD)
    cols += [k for k in report.index_row({}, None) if k not in cols and k != "error"]
    return [*cols, "error"]


def write_index(out_root: Path, results: Iterable[JobResult]) -> None:
    """``OUT/index.csv`` and ``OUT/index.html`` over the slides scanned into ``OUT``.

    The rows already in ``OUT/index.csv`` stay, in their order, each replaced by this
    batch's row of the same slide; this batch's other slides follow. ``name`` is the
    slide's output folder name (its file's stem) for every row, failed or not;
    ``input`` the slide's absolute path.
    """
    from convfocus.grading import report

    cols = index_columns()
    rows: dict[str, dict[str, Any]] = {}
    for row in _old_index_rows(out_root, cols):
        rows[row["name"]] = row
    for r in results:
        row = _index_row(r, out_root, cols)
        rows[row["name"]] = row  # a rescanned slide keeps its place
    text = io.StringIO()
    wr = csv.DictWriter(text, fieldnames=cols, lineterminator="\n", extrasaction="ignore")
    wr.writeheader()
    wr.writerows(rows.values())
    write_text_atomic(out_root / "index.csv", text.getvalue())
    write_text_atomic(out_root / "index.html", report.render_index_html(list(rows.values())))


def _summary_of(folder: Path) -> dict[str, Any] | None:
    try:
        s = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return s if isinstance(s, dict) else None


def _index_row(r: JobResult, out_root: Path, cols: list[str]) -> dict[str, Any]:
    from convfocus.grading import report

    name = r.out.name if r.out is not None else (r.label or output_dir(r.path, out_root).name)
    summary = _summary_of(r.out) if r.out is not None else None
    row: dict[str, Any] = dict.fromkeys(cols, "")
    if summary is not None:
        row.update(report.index_row(summary, f"{name}/report.html"))
    else:
        row.update(verdict="error" if r.status == "failed" else "", report="")
    row.update(name=name, input="" if r.label else os.path.abspath(r.path), status=r.status,
               error=r.error or "")
    return row


def _old_index_rows(out_root: Path, cols: list[str]) -> list[dict[str, Any]]:
    """The rows of an existing ``OUT/index.csv`` in today's columns; a slide whose complete
    output folder is still there gets its figures from its summary.json again."""
    from convfocus.grading import report

    path = out_root / "index.csv"
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            old = [r for r in csv.DictReader(fh) if r.get("name")]
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        log.warning("%s: unreadable, its rows are not kept (%s)", path, exc)
        return []
    rows = []
    for r in old:
        row: dict[str, Any] = dict.fromkeys(cols, "")
        row.update({k: v for k, v in r.items() if k in row and v is not None})
        summary = None
        if r.get("status") != "failed" and is_complete(out_root / r["name"]):
            summary = _summary_of(out_root / r["name"])
        if summary is not None:
            row.update(report.index_row(summary, f"{r['name']}/report.html"))
            row.update(name=r["name"], input=r.get("input") or summary.get("input", ""))
        else:
            row.update({k: _typed(v) for k, v in row.items()
                        if k not in ("name", "input", "report", "error")})
        rows.append(row)
    return rows


def _typed(value: str) -> Any:
    """A CSV cell as the index page shows it: numbers as numbers, True/False as bools."""
    if value in ("True", "False"):
        return value == "True"
    try:
        return float(value)
    except ValueError:
        return value


class _ResumeCheck:
    """Whether a complete output folder was made with this batch's settings."""

    def __init__(self, opts: ScanOptions) -> None:
        self.opts = opts
        self._expected: dict[str, Any] | None = None

    def changes(self, folder: Path, job: SlideJob) -> str:
        """How the folder's settings differ ("" when they match), for one line."""
        if self._expected is None:
            from convfocus.grading.modelfile import load_spec, model_sha256, resolve_model_path

            base = resolve_model_path(self.opts.model)
            self._expected = scan_settings(self.opts, load_spec(base), model_sha256(base))
        summary = _summary_of(folder)
        if summary is None:
            return "its summary.json is unreadable"
        mpp = job.mpp if job.mpp is not None else self.opts.mpp
        why = settings_changes(summary.get("settings"), self._expected, mpp)
        old_input, new_input = summary.get("input"), os.path.abspath(job.path)
        if old_input != new_input:
            why.append(f"input {old_input} -> {new_input}")
        return "; ".join(why)
