"""Command line: the only place that parses arguments and configures logging.

Each subcommand has a ``_add_<name>(sub)`` function that declares its arguments
and sets ``func`` to a ``_run_<name>(args) -> int`` function. Expected failures
(:class:`~convfocus.errors.ConvFocusError`, and an :class:`OSError` that names its
file) become one line on stderr and a non-zero exit code; SIGINT and SIGTERM one line
and 130 / 143; nothing else is caught here.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from pathlib import Path

    from convfocus.api import ScanOptions

from convfocus import __version__
from convfocus.errors import ConvFocusError

log = logging.getLogger("convfocus")

#: Subcommand adders, in the order they appear in --help; each section appends its own.
_ADDERS: list = []


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr (exit code 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _bounded(
    cast: type, *, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
    hi_open: bool = False, what: str = "a number", hint: str = "",
) -> Callable[[str], Any]:
    """An argparse ``type`` that parses with ``cast`` and checks the value's range."""
    lo_s, hi_s = ("(" if lo_open else "["), (")" if hi_open else "]")

    def parse(text: str) -> Any:
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
        bad_lo = lo is not None and (value <= lo if lo_open else value < lo)
        bad_hi = hi is not None and (value >= hi if hi_open else value > hi)
        if bad_lo or bad_hi:
            rng = f"{lo_s}{'' if lo is None else lo}, {'' if hi is None else hi}{hi_s}"
            raise argparse.ArgumentTypeError(f"must be in {rng}{hint}: {text!r}")
        return value

    return parse


_unit_fraction = _bounded(float, lo=0.0, hi=1.0)
_positive_float = _bounded(float, lo=0.0, lo_open=True)
_positive_int = _bounded(int, lo=0, lo_open=True, what="an integer")
#: Level-0 pixel sizes a slide can have: 0.05 µm/px (beyond any 100x scan) to 20 µm/px (a
#: macro photograph); anything else is a typo (or mm for µm).
_pixel_size = _bounded(float, lo=0.05, hi=20.0, hint=" µm/px")
#: Windows and strides in model pixels: the network needs at least 64 px to see a
#: structure, and beyond 1024 px (256 µm) a window no longer localises blur.
_window_px = _bounded(int, lo=64, hi=1024, what="an integer", hint=" model px")
_stride_px = _bounded(int, lo=16, hi=1024, what="an integer", hint=" model px")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="model: 'default' (the shipped grader), 'fast' (its distilled "
                   "student, about twice the speed), another name or a path to its .json")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu",
                   help="where the model runs (default cpu; auto = CUDA when ONNX Runtime "
                   "can use it: the onnxruntime-gpu package)")
    p.add_argument("--backend", choices=("auto", "onnx"), default="auto",
                   help="inference runtime: ONNX Runtime (the only one)")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="inference threads (default: all cores)")


def _add_precision(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", choices=("fp32", "int8", "fp16"), default="fp32",
                   help="fp32 (default); int8: quantised ONNX graph on the CPU (docs/"
                   "performance.md); fp16: half precision on CUDA")


def _add_scan(sub: argparse._SubParsersAction) -> None:
    from convfocus.grading.regions import PROFILES

    p = sub.add_parser(
        "scan", help="grade slides: class map, heatmap, regions, summary, report",
        description="Grade every tissue window of each slide on the 30-class OOF scale and "
        "write OUT/<slide>/{tiles.csv,classmap.npy,heatmap.png,overlay.png,"
        "oof_regions.geojson,summary.json,report.html}, plus OUT/index.{csv,html}.")
    p.add_argument("inputs", nargs="+", help="slides, folders of slides, or CSV manifests")
    p.add_argument("--out", default="convfocus-out", help="output folder (default convfocus-out)")
    _add_model_args(p)
    _add_precision(p)
    p.add_argument("--dense", action="store_true",
                   help="one pass of the conv stack per region: a few %% faster, but window "
                   "edges see their neighbours, so about 2 %% of classes differ "
                   "(docs/performance.md)")
    p.add_argument("--mpp", type=_pixel_size, default=None,
                   help="level-0 pixel size in µm/px (overrides the file's metadata)")
    p.add_argument("--native", action="store_true",
                   help="grade level 0 as it is, without resampling to the model's 0.25 µm/px")
    p.add_argument("--profile", choices=sorted(PROFILES), default="histology",
                   help="verdict thresholds by clinical use (cytology is stricter)")
    p.add_argument("--window", type=_window_px, default=None,
                   help="window in model px (139; 64-1024)")
    p.add_argument("--stride", type=_stride_px, default=None,
                   help="stride in model px (128; 16-1024)")
    p.add_argument("--min-tissue", type=_unit_fraction, default=0.25,
                   help="grade a window when at least this share of it is tissue (0.25)")
    p.add_argument("--workers", type=_positive_int, default=1, help="local worker processes")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run the batch on a dask.distributed scheduler (tcp://host:port)")
    p.add_argument("--resume", action="store_true",
                   help="keep slides whose outputs are complete and were made with the same "
                   "settings (summary.json 'settings'); rescan the others, saying why")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="print only errors: no progress, no verdict lines, no summary line")
    p.set_defaults(func=_run_scan)


def _scan_options(args: argparse.Namespace) -> ScanOptions:
    from convfocus.api import ScanOptions

    if not 0.0 <= args.min_tissue <= 1.0:
        from convfocus.errors import ConfigError

        raise ConfigError(f"--min-tissue must be within 0..1, got {args.min_tissue}")
    return ScanOptions(
        model=args.model, mpp=args.mpp, native=args.native, profile=args.profile,
        device=args.device, backend=args.backend, threads=args.threads, window_px=args.window,
        stride_px=args.stride, min_tissue=args.min_tissue, precision=args.precision,
        dense=args.dense,
    )


def _run_scan(args: argparse.Namespace) -> int:
    # each slide: convfocus.api.scan_path (open_slide, grade_slide, save_outputs) in a worker
    from pathlib import Path

    from convfocus.api import load_grader
    from convfocus.grading.batch import run_batch
    from convfocus.grading.jobs import expand_inputs

    opts = _scan_options(args)
    load_grader(opts.model, device=opts.device, backend=opts.backend,  # fail early on the model
                precision=opts.precision)
    jobs = expand_inputs(args.inputs)
    # progress on stderr (a terminal), each slide's verdict line and the batch's on stdout
    results = run_batch(jobs, Path(args.out), opts, workers=args.workers,
                        scheduler=args.scheduler, resume=args.resume, quiet=args.quiet)
    failed = [r for r in results if r.status == "failed"]
    if failed:
        if len(results) > 1:
            print(f"convfocus: {len(failed)} of {len(results)} slides failed:", file=sys.stderr)
        for r in failed:
            print(f"convfocus: error: {r.error}", file=sys.stderr)
        return 1
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="build a demo slide with known blur, scan it, print the report")
    p.add_argument("--out", default="demo-out", help="output folder (default demo-out)")
    _add_model_args(p)
    _add_precision(p)
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from convfocus.demo import run_demo
    from convfocus.grading.infer import load_grader

    grader = load_grader(args.model, device=args.device, backend=args.backend,
                         threads=args.threads, precision=args.precision)
    report = run_demo(Path(args.out), grader=grader)
    print(report)
    return 0


_ADDERS += [_add_scan, _add_demo]


# --- training: patches, calibrate, train, export ----------------------------------------------


def _shared_data() -> Path | None:
    from pathlib import Path

    here = Path.cwd()
    for base in (here, *here.parents):
        cand = base.parent / "shared" / "data"
        if cand.is_dir():
            return cand
    return None


def _add_patches(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("patches", help="cut the in-focus patch pool (300x300 at 0.25 µm/px)")
    p.add_argument("sources", nargs="*", help="slides or images (default: ../shared/data pool)")
    p.add_argument("--out", required=True, help="pool folder to write")
    p.add_argument("--densest", type=_positive_int, default=None, metavar="K",
                   help="keep only the K densest patches per source (lowest mean luma)")
    p.add_argument("--max-per-source", type=_positive_int, default=400)
    p.add_argument("--native-stride", type=_positive_int, default=None, metavar="PX",
                   help="grid step for sources already at about 0.25 µm/px (default 150)")
    p.add_argument("--max-per-upsampled", type=_positive_int, default=None, metavar="N",
                   help="cap the patches of sources that had to be upsampled")
    p.add_argument("--max-mpp", type=_positive_float, default=0.55,
                   help="leave out sources coarser than this (µm/px)")
    p.add_argument("--val", action="append", default=None, metavar="NAME",
                   help="source file name held out for validation (repeatable)")
    p.set_defaults(func=_run_patches)


def _run_patches(args: argparse.Namespace) -> int:
    from pathlib import Path

    from convfocus.training.pool import DEFAULT_VALIDATION, build_pool, default_sources

    sources = [Path(s) for s in args.sources] or default_sources(_shared_data())
    entries = build_pool(
        sources, Path(args.out), densest_k=args.densest, max_per_source=args.max_per_source,
        max_mpp=args.max_mpp, validation=args.val or DEFAULT_VALIDATION,
        native_stride_px=args.native_stride, max_per_upsampled_source=args.max_per_upsampled,
    )
    n_val = sum(e.split == "val" for e in entries)
    print(f"{len(entries)} patches ({n_val} validation) in {args.out}")
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a grader on semi-synthetic defocus")
    p.add_argument("--pool", required=True, help="in-focus pool folder (convfocus patches)")
    p.add_argument("--out", required=True, help="run folder (checkpoint, log, exported model)")
    p.add_argument("--preset", default="config4",
                   help="paper Table 2 row: config1..config5 (config4 = ConvFocus), "
                   "config4-linear, config4-lite; v2, v2-large; students fast-dw16, fast-lite")
    p.add_argument("--arch", choices=("paper", "lite", "large", "w8", "dw16"), default=None)
    p.add_argument("--steps", type=_positive_int, default=None)
    p.add_argument("--batch-size", type=_positive_int, default=None)
    p.add_argument("--lr", type=_positive_float, default=None)
    p.add_argument("--optimizer", choices=("adamw", "rmsprop"), default=None)
    p.add_argument("--workers", type=int, default=None, help="synthesis worker processes")
    p.add_argument("--val-every", type=_positive_int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--noise-s", type=_positive_float, nargs=2, default=None,
                   metavar=("MIN", "MAX"),
                   help="Poisson scale S on the 0..255 scale, drawn log-uniformly (0.05 0.5)")
    p.add_argument("--name", default=None, help="model name (default convfocus-PRESET)")
    p.add_argument("--max-minutes", type=_positive_float, default=None,
                   help="stop (and export) after this long; rerun to resume")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--init", default=None, metavar="MODEL",
                   help="start from the weights of this model (fine-tuning)")
    p.add_argument("--teacher", default=None, metavar="MODEL",
                   help="distil this model (presets fast-dw16, fast-lite; e.g. convfocus-default)")
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from convfocus.training.train import preset_config, train

    cfg = preset_config(
        args.preset, arch=args.arch, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        optimizer=args.optimizer, workers=args.workers, val_every=args.val_every, seed=args.seed,
        teacher=args.teacher,
    )
    if args.noise_s:
        from dataclasses import replace

        lo, hi = sorted(args.noise_s)
        cfg = replace(cfg, synthesis=cfg.synthesis.with_(noise_s_8bit=(lo, hi)))
    base = train(Path(args.pool), Path(args.out), cfg, name=args.name, device=args.device,
                 max_minutes=args.max_minutes, init=args.init)
    print(base.with_suffix(".json"))
    return 0


def _add_calibrate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate",
        help="refit the Gaussian-vs-bokeh blur scale pair (paper: 0.926 / 1.4, 132 / 200)",
    )
    p.add_argument("images", nargs="*",
                   help="in-focus slides or images (default: ../shared/data/infocus, else "
                        "scikit-image's IHC image)")
    p.add_argument("--pool", default=None, help="use the patches of a pool folder instead")
    p.add_argument("--mpp", type=_pixel_size, default=None,
                   help="pixel size (µm/px) of the given images, where they store none")
    p.add_argument("--per-source", type=_positive_int, default=8,
                   help="densest patches taken from each image (default 8)")
    p.add_argument("--max-patches", type=_positive_int, default=400,
                   help="at most this many patches (a seeded random subset)")
    p.add_argument("--out", default=None,
                   help="folder for calibration.json and calibration.png")
    p.set_defaults(func=_run_calibrate)


def _run_calibrate(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np

    from convfocus.training.calibrate import (
        calibrate_blur,
        calibration_table,
        default_calibration_patches,
        source_patches,
        write_calibration,
    )

    if args.pool is not None:
        from convfocus.training.pool import load_pool

        patches = load_pool(Path(args.pool))[0]
    elif args.images:
        patches = source_patches([Path(s) for s in args.images], per_source=args.per_source,
                                 mpp=args.mpp)[0]
    else:
        patches = default_calibration_patches(_shared_data(), per_source=args.per_source)
    if len(patches) == 0:
        from convfocus.errors import ConfigError

        raise ConfigError("no patches to calibrate on")
    if len(patches) > args.max_patches:
        rng = np.random.default_rng(0)
        patches = patches[np.sort(rng.choice(len(patches), args.max_patches, replace=False))]
    result = calibrate_blur(patches)
    print(calibration_table(result))
    if args.out is not None:
        densest = int(np.argmin(patches.reshape(len(patches), -1).mean(axis=1)))
        for path in write_calibration(Path(args.out), result, patches[densest]):
            print(path)
    return 0


def _add_check_model(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check-model", help="the grader's validation battery on held-out real tissue",
        description="Run every check of the validation battery (docs/model-card.md): "
        "calibration across held-out sources, sharp tissue, the real z-stack, orientation "
        "per window, textureless tissue, the TCGA@Focus pair and synthetic validation. "
        "Exits 1 when a required check fails; checks whose data is absent are skipped.")
    _add_model_args(p)
    _add_precision(p)
    p.add_argument("--out", default=None, help="write every figure as JSON here")
    p.add_argument("--against", default=None, metavar="BATTERY_JSON",
                   help="also set every gated figure beside those of another model's "
                   "battery (a file written by --out) and say which are better or worse")
    p.set_defaults(func=_run_check_model)


def _read_battery(path: Path) -> dict:
    """A battery result written by ``check-model --out``, or a plain error naming it."""
    import json

    from convfocus.errors import ConfigError

    try:
        res = json.loads(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read it ({e.strerror or e})", path) from None
    except ValueError:
        raise ConfigError("not a JSON file", path) from None
    from convfocus.evaluation.battery import figures

    try:
        ok = isinstance(res, dict) and "failed" in res and bool(figures(res))
    except (KeyError, TypeError, ValueError, AttributeError):
        ok = False
    if not ok:
        raise ConfigError("not a battery result (write one with check-model --out)", path)
    return res


def _run_check_model(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from convfocus.evaluation.battery import compare, run_battery, summary_rows
    from convfocus.grading.infer import load_grader

    ref = _read_battery(Path(args.against)) if args.against else None
    grader = load_grader(args.model, device=args.device, backend=args.backend,
                         threads=args.threads, precision=args.precision)
    res = run_battery(grader, _shared_data())
    if args.out:
        from convfocus.io.atomic import write_text_atomic

        write_text_atomic(Path(args.out), json.dumps(res, indent=2, default=float) + "\n")
    spec = grader.spec
    print(f"{spec.name} {spec.version} ({spec.arch})")
    rows = summary_rows(res)
    width = max(len(r[0]) for r in rows)
    for check, figure, verdict in rows:
        print(f"  {check:<{width}}  {figure:<30}  {verdict}")
    for name in res["skipped"]:
        print(f"  {name}: skipped (its data is absent: ../shared/data)")
    if ref is not None:
        rows_c = compare(res, ref)
        other = ref.get("model", {}).get("name", args.against)
        print(f"against {other} ({args.against}):")
        width = max(len(r[0]) for r in rows_c)
        for fig, ours, theirs, word in rows_c:
            print(f"  {fig:<{width}}  {ours:8.3f}  {theirs:8.3f}  {word}")
        worse = [r[0] for r in rows_c if r[3] == "worse"]
        print(f"worse than {other} on: {', '.join(worse)}" if worse
              else f"better than or the same as {other} on every figure")
    if res["failed"]:
        print(f"FAILED: {', '.join(res['failed'])}")
        return 1
    print("every required check passed")
    return 0


_ADDERS += [_add_patches, _add_calibrate, _add_train, _add_check_model]


# --- evaluation --------------------------------------------------------------------------------


def _class_list(text: str) -> list[int]:
    """``"0-29"``, ``"0,5,10"`` or a mix (``"0-4,10,20-29"``) -> sorted unique classes."""
    out: set[int] = set()
    try:
        for part in filter(None, (p.strip() for p in text.split(","))):
            lo, _, hi = part.partition("-")
            out.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a class list: {text!r}") from None
    if not out or min(out) < 0 or max(out) > 29:
        raise argparse.ArgumentTypeError(f"classes must lie in 0..29: {text!r}")
    return sorted(out)


def _named_model(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected CONFIG=PATH, got {text!r}")
    return name, path


def _add_eval_common(
    p: argparse.ArgumentParser, *, model: bool = True, mpp: bool = True, device: bool = True
) -> None:
    p.add_argument("--out", required=True, help="output folder (JSON, PNG, Markdown)")
    p.add_argument("--seed", type=int, default=0, help="seed of all resampling (default 0)")
    if model:
        p.add_argument("--model", default=None, help="model name or path (default: shipped)")
    if mpp:
        p.add_argument("--mpp", type=_pixel_size, default=None,
                       help="level-0 pixel size (µm/px) of inputs that lack one")
    if device:
        p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="the paper's evaluations (JSON, plots, Markdown)")
    ev = p.add_subparsers(dest="evaluation", metavar="EVALUATION", required=True)

    g = ev.add_parser("grades", help="predicted class vs pathologist-graded regions")
    g.add_argument("manifest", help="CSV: slide,annotations,test_set (paths relative to it)")
    g.add_argument("--tiles", default=None,
                   help="folder of existing scan outputs (<stem>/tiles.csv); default: scan")
    g.add_argument("--group-by", default="test_set",
                   help="manifest column (or summary.json key) naming the test set")
    g.add_argument("--grade-key", default="grade", help="GeoJSON property with the grade")
    g.add_argument("--per-grade", type=_positive_int, default=3000,
                   help="windows drawn per test set and grade, with replacement (paper: 3000)")
    _add_eval_common(g)
    g.set_defaults(func=_run_evaluate_grades)

    z = ev.add_parser("zstack", help="predicted class vs z-level of one field")
    z.add_argument("manifest", help="CSV: path,z_um (images or slides, relative to it)")
    z.add_argument("--tiles", default=None, help="folder of existing scan outputs")
    z.add_argument("--plot-windows", type=_positive_int, default=114,
                   help="windows drawn in the V plot (paper: 114)")
    _add_eval_common(z)
    z.set_defaults(func=_run_evaluate_zstack)

    d = ev.add_parser("detector", help="a detector's AUC vs focus quality (real and synthetic)")
    d.add_argument("--scores", default=None,
                   help="experiment 1 CSV: slide,score,label[,oof_class] (or x_px,y_px + --tiles)")
    d.add_argument("--tiles", default=None, help="scan outputs to join oof_class from")
    d.add_argument("--detector", default=None,
                   help="experiment 2: module:function scoring (n, h, w, 3) uint8 windows")
    d.add_argument("--windows", default=None,
                   help="experiment 2: labelled windows (.npz images/labels[/slides] or CSV)")
    d.add_argument("--classes", type=_class_list, default=list(range(30)),
                   help="blur classes of experiment 2, e.g. 0-29 or 0,5,10 (default 0-29)")
    d.add_argument("--bootstrap", type=_positive_int, default=500,
                   help="slide-level bootstrap samples (paper: 500)")
    d.add_argument("--example", action="store_true",
                   help="run both experiments on generated example data with the "
                        "demonstration detector (not a cancer detector)")
    _add_eval_common(d, model=False, mpp=False, device=False)
    d.set_defaults(func=_run_evaluate_detector)

    b = ev.add_parser("benchmark", help="FocusPath / TCGA@Focus, beside published numbers")
    b.add_argument("benchmark", choices=("focuspath", "tcga-focus"))
    b.add_argument("list", help="the benchmark's label list (CSV)")
    b.add_argument("--images", required=True, help="folder the list's paths are relative to")
    b.add_argument("--image-mpp", type=_pixel_size, default=None,
                   help="pixel size of the patches (µm/px); resampled to the model's if given")
    b.add_argument("--infocus-max-z", type=float, default=1.0,
                   help="FocusPath: |z| at most this counts as in focus (default 1)")
    b.add_argument("--folds", type=_positive_int, default=10,
                   help="FocusPath: folds split by slide (default 10)")
    b.add_argument("--split", default=None, help="TCGA@Focus: only rows of this split")
    _add_eval_common(b, mpp=False)
    b.set_defaults(func=_run_evaluate_benchmark)

    a = ev.add_parser("ablation", help="the five presets on one evaluation set (Table 2)")
    a.add_argument("manifest", help="grades manifest (as for 'evaluate grades')")
    a.add_argument("--config", dest="configs", type=_named_model, action="append", default=[],
                   metavar="CONFIG=MODEL", help="model of a preset, e.g. config4=run4/model")
    a.add_argument("--tiles-root", default=None,
                   help="folder with one scan-output folder per preset (config1/..config5/)")
    a.add_argument("--train-pool", default=None,
                   help="train the missing presets on this in-focus pool")
    a.add_argument("--steps", type=_positive_int, default=None, help="training steps per preset")
    a.add_argument("--group-by", default="test_set")
    a.add_argument("--per-grade", type=_positive_int, default=3000)
    _add_eval_common(a, model=False)
    a.set_defaults(func=_run_evaluate_ablation)


def _print_markdown(path: str) -> None:
    from pathlib import Path

    print(Path(path).read_text(), end="")


def _run_evaluate_grades(args: argparse.Namespace) -> int:
    from convfocus.evaluation.grades import evaluate_grades

    evaluate_grades(
        args.manifest, args.out, tiles=args.tiles, model=args.model, mpp=args.mpp,
        device=args.device, group_by=args.group_by, grade_key=args.grade_key,
        n_per_grade=args.per_grade, seed=args.seed,
    )
    _print_markdown(f"{args.out}/grades.md")
    return 0


def _run_evaluate_zstack(args: argparse.Namespace) -> int:
    from convfocus.evaluation.zstack import evaluate_zstack

    evaluate_zstack(args.manifest, args.out, tiles=args.tiles, model=args.model, mpp=args.mpp,
                    device=args.device, max_plot_windows=args.plot_windows, seed=args.seed)
    _print_markdown(f"{args.out}/zstack.md")
    return 0


def _run_evaluate_detector(args: argparse.Namespace) -> int:
    from convfocus.evaluation.impact import evaluate_detector

    evaluate_detector(
        args.out, scores=args.scores, tiles=args.tiles, detector=args.detector,
        windows=args.windows, classes=args.classes, n_boot=args.bootstrap, seed=args.seed,
        example=args.example,
    )
    _print_markdown(f"{args.out}/detector.md")
    return 0


def _run_evaluate_benchmark(args: argparse.Namespace) -> int:
    from convfocus.evaluation.benchmarks import evaluate_benchmark

    evaluate_benchmark(
        args.benchmark, args.list, args.images, args.out, model=args.model, device=args.device,
        image_mpp=args.image_mpp, infocus_max_abs_z=args.infocus_max_z, n_folds=args.folds,
        split=args.split, seed=args.seed,
    )
    _print_markdown(f"{args.out}/benchmark-{args.benchmark}.md")
    return 0


def _run_evaluate_ablation(args: argparse.Namespace) -> int:
    from convfocus.evaluation.ablation import PresetTrainer, evaluate_ablation

    train_preset: PresetTrainer | None = None
    if args.train_pool is not None:  # training needs torch: imported only then
        from convfocus.training import ablation

        train_preset = ablation.train_preset

    evaluate_ablation(
        args.manifest, args.out, models=dict(args.configs), tiles_root=args.tiles_root,
        train_pool=args.train_pool, steps=args.steps, device=args.device, mpp=args.mpp,
        group_by=args.group_by, n_per_grade=args.per_grade, seed=args.seed,
        train_preset=train_preset,
    )
    _print_markdown(f"{args.out}/ablation.md")
    return 0


_ADDERS.append(_add_evaluate)


# --- web: sample, rate, view -------------------------------------------------------------------


_port = _bounded(int, lo=0, hi=65535, what="a port number", hint=" (0: any free port)")
_fraction = _bounded(float, lo=0.0, hi=1.0, hi_open=True)


def _add_serve_args(p: argparse.ArgumentParser, port: int) -> None:
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; "
                        "0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=_port, default=port,
                   help=f"port to listen on (default {port}; 0 picks a free one)")


def _add_sample(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="sample the densest 40x tissue patches for human raters")
    p.add_argument("slides", nargs="+", metavar="SLIDE",
                   help="slide files, or folders of slides")
    p.add_argument("--out", required=True, metavar="DIR", help="new folder for patches + manifest")
    p.add_argument("-k", "--k", type=_positive_int, default=8,
                   help="patches kept per slide, lowest mean luma first (paper: 8 AT2, 24 XR)")
    p.add_argument("--candidates", type=_positive_int, default=200,
                   help="random tissue patches drawn per slide before keeping K (default 200)")
    p.add_argument("--patch-px", type=_positive_int, default=300, help="patch side (default 300)")
    p.add_argument("--min-tissue", type=_positive_float, default=0.5,
                   help="least tissue fraction of a candidate patch (default 0.5)")
    p.add_argument("--allow-overlap", action="store_true",
                   help="let kept patches of a slide overlap")
    p.add_argument("--mpp", type=_pixel_size, default=None,
                   help="level-0 µm/px of the slides, overriding their metadata")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_run_sample)


def _run_sample(args: argparse.Namespace) -> int:
    from convfocus.io.formats import find_slides
    from convfocus.training.sampling import sample_patches

    slides = find_slides(args.slides, recursive=False)
    records, skipped = sample_patches(
        slides, args.out, k=args.k, n_candidates=max(args.candidates, args.k), seed=args.seed,
        patch_px=args.patch_px, mpp=args.mpp, min_tissue=min(args.min_tissue, 1.0),
        allow_overlap=args.allow_overlap,
    )
    n_slides = len({r.source for r in records})
    print(f"{len(records)} patches from {n_slides} slides in {args.out}"
          + (f"; {len(skipped)} slides skipped" if skipped else ""))
    for path, why in skipped:
        print(f"  skipped {path}: {why}", file=sys.stderr)
    print(f"next: convfocus rate {args.out}")
    return 1 if skipped else 0


def _add_rate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rate", help="rating workbench in the browser (or --export the consensus)")
    p.add_argument("folder", metavar="DIR", help="folder written by `convfocus sample`")
    _add_serve_args(p, 8765)
    p.add_argument("--export", metavar="POOL", default=None,
                   help="write the consensus in-focus patches to POOL and exit")
    p.add_argument("--min-raters", type=_positive_int, default=3,
                   help="raters who must all say in-focus (paper: 3)")
    p.add_argument("--val-fraction", type=_fraction, default=0.2,
                   help="share of sources held out for validation in the export (default 0.2)")
    p.set_defaults(func=_run_rate)


def _run_rate(args: argparse.Namespace) -> int:
    if args.export is not None:
        from convfocus.web.rating import export_consensus

        stats = export_consensus(args.folder, args.export, min_raters=args.min_raters,
                                 val_fraction=args.val_fraction)
        kappa = stats["fleiss_kappa"]
        print(f"{stats['consensus_in_focus']} consensus in-focus patches of {stats['patches']} "
              f"-> {args.export} (Fleiss' kappa "
              f"{'n/a' if kappa is None else f'{kappa:.3f}'}, "
              f"{stats['patches_with_min_raters']} patches with >= {args.min_raters} raters)")
        return 0
    from convfocus.web.rating import RatingApp
    from convfocus.web.server import serve

    serve(RatingApp(args.folder), args.host, args.port)
    return 0


def _add_view(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("view", help="slide viewer with the out-of-focus overlay in the browser")
    p.add_argument("path", metavar="OUT", help="a scan output folder OUT/<slide>, or OUT itself")
    p.add_argument("--slide", default=None,
                   help="the slide file, when it has moved since the scan")
    p.add_argument("--mpp", type=_pixel_size, default=None,
                   help="level-0 pixel size in µm/px to open the slide with (default: the "
                   "scan's, from summary.json)")
    _add_serve_args(p, 8766)
    p.set_defaults(func=_run_view)


def _run_view(args: argparse.Namespace) -> int:
    from convfocus.web.server import serve
    from convfocus.web.viewer import ViewerApp

    app = ViewerApp(args.path, slide_path=args.slide, mpp=args.mpp)
    try:
        serve(app, args.host, args.port)
    finally:
        app.close()
    return 0


_ADDERS += [_add_sample, _add_rate, _add_view]


# --- parser ------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="convfocus",
        description="Find and grade out-of-focus regions in whole-slide images (ConvFocus).",
    )
    parser.add_argument("--version", action="version", version=f"convfocus {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in _ADDERS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s: %(message)s",
    )
    if not args.verbose:
        # the slide reader turns a damaged TIFF into one clear error of its own; tifffile's
        # messages about the same file (several ERROR lines) are only noise then
        logging.getLogger("tifffile").setLevel(logging.CRITICAL)
    restore = _stop_on_signals()
    try:
        return int(args.func(args) or 0)
    except ConvFocusError as exc:
        print(f"convfocus: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file the library did not expect to fail (it names it)
        if args.verbose or not exc.filename:
            raise
        print(f"convfocus: error: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        import signal

        signum = getattr(exc, "signum", signal.SIGINT)
        what = getattr(exc, "message", "")
        print(f"convfocus: interrupted ({signal.Signals(signum).name})"
              + (f": {what}" if what else ""), file=sys.stderr)
        return 128 + signum
    finally:
        restore()


def _stop_on_signals() -> Callable[[], None]:
    """Make SIGINT (Ctrl-C) and SIGTERM raise :class:`~convfocus.errors.Interrupted` in
    the main thread, once: a second signal while the first is cleaned up is ignored.
    Signals that were ignored when convfocus started stay ignored. Returns a function that
    puts the old handlers back."""
    import signal
    import threading

    from convfocus.errors import Interrupted

    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    stopping: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        if stopping:
            return
        stopping.append(signum)
        raise Interrupted(signum)

    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) is not signal.SIG_IGN:
            old[sig] = signal.signal(sig, handler)

    def restore() -> None:
        for sig, h in old.items():
            signal.signal(sig, h)

    return restore


if __name__ == "__main__":
    raise SystemExit(main())
