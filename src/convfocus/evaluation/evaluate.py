"""The paper's evaluations as functions: each writes a JSON, PNG plots and a Markdown table.

- :func:`evaluate_grades` -- predicted class vs pathologist grade (Spearman, regression);
- :func:`evaluate_zstack` -- class vs z-level of the same field (the "V" plot);
- :func:`evaluate_detector` -- a detector's AUC per OOF bucket (real OOF) and vs added
  bokeh blur (synthetic OOF);
- :func:`evaluate_benchmark` -- FocusPath and TCGA@Focus, the field's public benchmarks;
- :func:`evaluate_ablation` -- the five training presets, as the paper's Table 2.

Scan outputs (``OUT/<stem>/tiles.csv`` and ``summary.json``) are read here; slides
are scanned through :func:`convfocus.grading.scan.scan_path` when no outputs are given.
Metrics come from :mod:`convfocus.evaluation.metrics`.

References: Kohlberger et al., J Pathol Inform 2019 (ConvFocus), Methods and Results.
"""

from __future__ import annotations

import csv
import importlib
import io
import json
import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from convfocus import NUM_CLASSES, metrics
from convfocus.errors import AnnotationError, ConfigError, OutputError

log = logging.getLogger(__name__)

#: Pathologist grades: 0..6 in half steps (13 grades). References: Kohlberger et al. 2019.
GRADE_MAX = 6.0

#: Table 2 of the paper: (description, blur, Spearman, slope, intercept) with (AT2, S360).
PAPER_TABLE2: dict[str, dict[str, Any]] = {
    "config1": {"description": "Default (only blur)", "blur": "Gaussian",
                "spearman": (-0.274, -0.134), "slope": (-0.023, -0.211),
                "intercept": (2.504, 1.949)},
    "config2": {"description": "#1 plus simulated Poisson noise", "blur": "Gaussian",
                "spearman": (-0.140, -0.325), "slope": (-0.057, -0.265),
                "intercept": (0.502, 1.234)},
    "config3": {"description": "#2 plus JPEG artifacts", "blur": "Gaussian",
                "spearman": (0.785, 0.922), "slope": (2.851, 2.851),
                "intercept": (2.801, 2.801)},
    "config4": {"description": "#3 with bokeh instead of Gaussian (ConvFocus)", "blur": "Bokeh",
                "spearman": (0.808, 0.936), "slope": (3.903, 4.408),
                "intercept": (-2.945, -1.730)},
    "config5": {"description": "#4 with a larger (modified Inception) network", "blur": "Bokeh",
                "spearman": (0.773, 0.934), "slope": (3.889, 4.504),
                "intercept": (-3.024, -1.969)},
}
PAPER_TEST_SETS = ("AT2", "S360")

#: Published results on the public benchmarks (FocusLiteNN, MICCAI 2020, Table 1).
PUBLISHED_BENCHMARKS: dict[str, dict[str, dict[str, float]]] = {
    "focuspath": {"srcc": {"ResNet-50 (best)": 0.929, "FocusLiteNN-1": 0.877, "MLV": 0.862}},
    "tcga-focus": {"roc_auc": {"DenseNet-13 (best)": 0.939, "FocusLiteNN-1": 0.931}},
}
BENCHMARKS = ("focuspath", "tcga-focus")


# --- writing outputs ---------------------------------------------------------------------------


def _make_folder(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create folder: {exc.strerror or exc}", path.parent) from None


def _write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` atomically (temporary name, then rename), creating the folder."""
    from convfocus.grading.report import write_bytes_atomic

    _make_folder(path)
    write_bytes_atomic(path, data)
    return path


def _write_json(path: Path, obj: Any) -> Path:
    """Write ``obj`` as JSON atomically; numpy values become numbers, NaN ``null``."""
    from convfocus.grading.report import write_json_atomic

    _make_folder(path)
    write_json_atomic(path, obj)
    return path


def _write_figure(path: Path, fig: Any) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return _write_bytes(path, buf.getvalue())


def _new_figure(ncols: int = 1, *, width: float = 5.5, height: float = 4.5) -> tuple:
    """A matplotlib Figure with ``ncols`` axes (Agg canvas, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    v = float(value)
    if not math.isfinite(v):
        return "-"
    if v != 0 and abs(v) < 10 ** -digits:
        return f"{v:.1e}"
    return f"{v:.{digits}f}"


def _fmt_p(value: Any) -> str:
    """A p-value: 3 decimals, scientific below 0.001, ``< 1e-300`` where it underflows."""
    if value is None or not math.isfinite(float(value)):
        return "-"
    v = float(value)
    return "< 1e-300" if v == 0 else f"{v:.1e}" if v < 1e-3 else f"{v:.3f}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table; numbers with 3 decimals, missing as ``-``."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [c if isinstance(c, str) else _fmt(c) for c in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --- reading inputs ----------------------------------------------------------------------------


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


def _resolve(base: Path, text: str) -> Path:
    p = Path(text).expanduser()
    return p if p.is_absolute() else base / p


@dataclass(frozen=True)
class ScanGrid:
    """The window grid of one scan: cell (row, col) covers level-0 pixels
    ``x0 + col * stride .. x0 + col * stride + window`` (and the same in y)."""

    l0_origin_px: tuple[float, float]
    l0_stride_px: float
    l0_window_px: float
    rows: int
    cols: int

    def boxes(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Level-0 boxes ``(n, 4)`` as ``x0, y0, x1, y1`` of the given cells."""
        x0 = self.l0_origin_px[0] + np.asarray(cols, np.float64) * self.l0_stride_px
        y0 = self.l0_origin_px[1] + np.asarray(rows, np.float64) * self.l0_stride_px
        return np.stack([x0, y0, x0 + self.l0_window_px, y0 + self.l0_window_px], axis=1)


@dataclass(frozen=True)
class ScanOutput:
    """The parts of one slide's scan output that the evaluations need."""

    folder: Path
    grid: ScanGrid
    dimensions: tuple[int, int] | None
    mpp: float | None
    summary: dict[str, Any]
    x_px: np.ndarray
    y_px: np.ndarray
    row: np.ndarray
    col: np.ndarray
    oof_class: np.ndarray


_TILE_COLUMNS = ("x_px", "y_px", "row", "col", "oof_class")


def read_scan_output(folder: str | Path) -> ScanOutput:
    """Read ``tiles.csv`` and ``summary.json`` of one scanned slide."""
    f = Path(folder)
    try:
        summary = json.loads((f / "summary.json").read_text())
        g = summary["grid"]
        grid = ScanGrid(
            (float(g["l0_origin_px"][0]), float(g["l0_origin_px"][1])),
            float(g["l0_stride_px"]), float(g["l0_window_px"]), int(g["rows"]), int(g["cols"]),
        )
    except OSError as exc:
        raise ConfigError(f"no readable summary.json: {exc.strerror or exc}", f) from None
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise ConfigError(f"summary.json has no valid grid ({exc})", f / "summary.json") from None
    dims = summary.get("dimensions")
    dimensions = (int(dims[0]), int(dims[1])) if dims else None
    mpp = summary.get("mpp")
    tiles = f / "tiles.csv"
    try:
        with open(tiles, newline="") as fh:
            header = next(csv.reader(fh), [])
    except OSError as exc:
        raise ConfigError(f"no readable tiles.csv: {exc.strerror or exc}", f) from None
    missing = [c for c in _TILE_COLUMNS if c not in header]
    if missing:
        raise ConfigError(f"tiles.csv lacks column(s) {', '.join(missing)}", tiles)
    cols = [header.index(c) for c in _TILE_COLUMNS]
    try:
        data = np.loadtxt(tiles, delimiter=",", skiprows=1, usecols=cols, ndmin=2)
    except ValueError as exc:
        raise ConfigError(f"tiles.csv is malformed ({exc})", tiles) from None
    data = data.reshape(-1, len(cols))
    return ScanOutput(
        folder=f, grid=grid, dimensions=dimensions,
        mpp=None if mpp is None else float(mpp), summary=summary,
        x_px=data[:, 0], y_px=data[:, 1], row=data[:, 2].astype(np.int64),
        col=data[:, 3].astype(np.int64), oof_class=data[:, 4].astype(np.int64),
    )


def find_scan_output(root: str | Path, slide: str | Path) -> Path:
    """The scan output folder of ``slide`` under ``root`` (``root/<stem>``)."""
    r, s = Path(root), Path(slide)
    names = [s.stem, s.name, s.name.split(".")[0]]
    for name in dict.fromkeys(names):
        if (r / name / "tiles.csv").is_file():
            return r / name
    raise ConfigError(f"no scan output for {s.name} (expected {r / s.stem}/tiles.csv)", r)


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


# --- annotations -------------------------------------------------------------------------------


@dataclass(frozen=True)
class GradedRegion:
    """One annotated region: its grade and its polygons, each ``(exterior, *holes)``
    as ``(k, 2)`` arrays of level-0 ``x, y``."""

    grade: float
    polygons: tuple[tuple[np.ndarray, ...], ...]
    feature: int


_GRADE_TEXT = re.compile(r"^\s*(?:grade|oof)?[\s:_-]*(\d+(?:\.\d+)?)\s*$", re.IGNORECASE)


def parse_grade(value: Any) -> float | None:
    """A grade from a number, a numeric string or a name such as ``"Grade 2.5"``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        m = _GRADE_TEXT.match(value)
        return float(m.group(1)) if m else None
    return None


def _feature_grade(props: Mapping[str, Any], grade_key: str) -> float | None:
    if grade_key in props:
        return parse_grade(props[grade_key])
    cls = props.get("classification")
    if isinstance(cls, Mapping):
        return parse_grade(cls.get("name"))
    if isinstance(cls, str):
        return parse_grade(cls)
    return None


def _rings(coords: Any, where: str, path: Path) -> tuple[np.ndarray, ...]:
    try:
        rings = tuple(np.asarray(ring, dtype=np.float64)[:, :2] for ring in coords)
    except (TypeError, ValueError, IndexError):
        raise AnnotationError(f"{where}: coordinates are not [x, y] pairs", path) from None
    if not rings or any(r.ndim != 2 or len(r) < 3 for r in rings):
        raise AnnotationError(f"{where}: a polygon ring has fewer than 3 points", path)
    if not all(np.isfinite(r).all() for r in rings):
        raise AnnotationError(f"{where}: coordinates are not finite", path)
    return rings


def read_grade_annotations(
    path: str | Path,
    *,
    dimensions: tuple[int, int] | None = None,
    grade_key: str = "grade",
    tolerance_px: float = 1.0,
) -> list[GradedRegion]:
    """Graded regions of a GeoJSON file (e.g. a QuPath export), in level-0 pixels.

    Each feature is a Polygon or MultiPolygon whose grade is the numeric property
    ``grade_key`` or, failing that, its QuPath classification name (``"2.5"``,
    ``"Grade 2.5"``). Grades are 0..6 in half steps. With ``dimensions`` (width,
    height), a polygon reaching more than ``tolerance_px`` outside the slide is an error.

    Raises
    ------
    AnnotationError
        Not GeoJSON, a feature without a valid grade or polygon, or a polygon
        outside the slide; one message naming the file, feature and cause.

    References: Kohlberger et al. 2019: grades 0 (in focus) .. 6 (very strong OOF),
    half grades allowed (13 grades).
    """
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8-sig"))
    except OSError as exc:
        raise AnnotationError(f"cannot read: {exc.strerror or exc}", p) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise AnnotationError(f"not GeoJSON (invalid JSON: {exc})", p) from None
    if isinstance(doc, Mapping) and doc.get("type") == "FeatureCollection":
        features = doc.get("features")
    elif isinstance(doc, Mapping) and doc.get("type") == "Feature":
        features = [doc]
    elif isinstance(doc, list):
        features = doc
    else:
        features = None
    if not isinstance(features, list):
        raise AnnotationError("not GeoJSON (no FeatureCollection or Feature list)", p)
    if not features:
        raise AnnotationError("no annotated regions (empty FeatureCollection)", p)
    regions = []
    for i, feat in enumerate(features):
        where = f"feature {i}"
        if not isinstance(feat, Mapping) or not isinstance(feat.get("geometry"), Mapping):
            raise AnnotationError(f"{where}: not a GeoJSON Feature with a geometry", p)
        geom = feat["geometry"]
        kind = geom.get("type")
        props = feat.get("properties") or {}
        grade = _feature_grade(props if isinstance(props, Mapping) else {}, grade_key)
        if grade is None:
            raise AnnotationError(
                f"{where}: no grade (numeric property {grade_key!r} or a classification "
                "name such as '2.5')", p,
            )
        if not (0.0 <= grade <= GRADE_MAX and float(grade * 2).is_integer()):
            raise AnnotationError(f"{where}: grade {grade:g} is not 0..6 in half steps", p)
        coords = geom.get("coordinates")
        polygons: tuple[tuple[np.ndarray, ...], ...]
        if kind == "Polygon":
            polygons = (_rings(coords, where, p),)
        elif kind == "MultiPolygon" and isinstance(coords, list):
            polygons = tuple(_rings(c, where, p) for c in coords)
        else:
            raise AnnotationError(f"{where}: geometry {kind} is not a Polygon or MultiPolygon", p)
        regions.append(GradedRegion(grade, polygons, i))
    if dimensions is not None:
        check_inside_slide(regions, dimensions, p, tolerance_px=tolerance_px)
    return regions


def check_inside_slide(
    regions: Sequence[GradedRegion],
    dimensions: tuple[int, int],
    path: str | Path,
    *,
    tolerance_px: float = 1.0,
) -> None:
    """Raise :class:`AnnotationError` for a region reaching outside ``(width, height)``."""
    w, h = dimensions
    for reg in regions:
        pts = np.concatenate([r for poly in reg.polygons for r in poly])
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        if (lo < -tolerance_px).any() or hi[0] > w + tolerance_px or hi[1] > h + tolerance_px:
            raise AnnotationError(
                f"feature {reg.feature}: polygon (x {lo[0]:.0f}..{hi[0]:.0f}, "
                f"y {lo[1]:.0f}..{hi[1]:.0f}) lies outside the slide ({w} x {h} px)", path,
            )


def _edges(rings: Sequence[np.ndarray]) -> np.ndarray:
    """All ring edges as ``(e, 4)``: x0, y0, x1, y1 (rings closed implicitly)."""
    return np.concatenate([np.hstack([r, np.roll(r, -1, axis=0)]) for r in rings])


def _points_in_rings(pts: np.ndarray, edges: np.ndarray, chunk: int = 1 << 21) -> np.ndarray:
    """Even-odd rule: a point is inside when a ray to +x crosses an odd number of edges."""
    inside = np.zeros(len(pts), dtype=bool)
    step = max(1, chunk // max(len(pts), 1))
    px, py = pts[:, :1], pts[:, 1:]
    for k in range(0, len(edges), step):
        x0, y0, x1, y1 = (edges[k : k + step, j][None, :] for j in range(4))
        straddles = (y0 > py) != (y1 > py)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_cross = x0 + (py - y0) * (x1 - x0) / (y1 - y0)
        inside ^= (straddles & (px < x_cross)).sum(axis=1) % 2 == 1
    return inside


def _boxes_touch_edges(boxes: np.ndarray, edges: np.ndarray, chunk: int = 1 << 21) -> np.ndarray:
    """Whether any segment meets each closed box (separating-axis test)."""
    hit = np.zeros(len(boxes), dtype=bool)
    step = max(1, chunk // max(len(boxes), 1))
    bx0, by0, bx1, by1 = (boxes[:, j][:, None] for j in range(4))
    for k in range(0, len(edges), step):
        x0, y0, x1, y1 = (edges[k : k + step, j][None, :] for j in range(4))
        overlap = (
            (np.minimum(x0, x1) <= bx1) & (np.maximum(x0, x1) >= bx0)
            & (np.minimum(y0, y1) <= by1) & (np.maximum(y0, y1) >= by0)
        )
        dx, dy = x1 - x0, y1 - y0
        sides = [dx * (cy - y0) - dy * (cx - x0)
                 for cx, cy in ((bx0, by0), (bx1, by0), (bx0, by1), (bx1, by1))]
        above = np.all([s > 0 for s in sides], axis=0)
        below = np.all([s < 0 for s in sides], axis=0)
        hit |= (overlap & ~above & ~below).any(axis=1)
    return hit


def boxes_inside_polygon(boxes: np.ndarray, rings: Sequence[np.ndarray]) -> np.ndarray:
    """Which boxes ``(n, 4)`` (x0, y0, x1, y1) lie wholly inside a polygon with holes.

    A box is inside when its centre is inside (even-odd over all rings) and no ring
    edge meets the box; a box touching the boundary counts as outside.
    """
    out = np.zeros(len(boxes), dtype=bool)
    if len(boxes) == 0:
        return out
    pts = np.concatenate(list(rings))
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    cand = np.flatnonzero(
        (boxes[:, 0] > lo[0]) & (boxes[:, 1] > lo[1])
        & (boxes[:, 2] < hi[0]) & (boxes[:, 3] < hi[1])
    )
    if cand.size == 0:
        return out
    edges = _edges(rings)
    b = boxes[cand]
    centres = np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2], axis=1)
    ok = _points_in_rings(centres, edges)
    if ok.any():
        ok[ok] = ~_boxes_touch_edges(b[ok], edges)
    out[cand] = ok
    return out


def window_grades(
    regions: Sequence[GradedRegion], boxes: np.ndarray
) -> tuple[np.ndarray, int]:
    """Grade of each window box: the grade of the regions wholly containing it.

    Returns ``(grades, n_conflicts)``; windows in no region, or inside regions of
    different grades, get NaN (the latter are counted).

    References: Kohlberger et al. 2019: regions rasterised on the 128 px grid; only
    patches completely inside a delineated region are used.
    """
    lo = np.full(len(boxes), np.inf)
    hi = np.full(len(boxes), -np.inf)
    for reg in regions:
        inside = np.zeros(len(boxes), dtype=bool)
        for poly in reg.polygons:
            inside |= boxes_inside_polygon(boxes, poly)
        lo[inside] = np.minimum(lo[inside], reg.grade)
        hi[inside] = np.maximum(hi[inside], reg.grade)
    grades = np.where(lo == hi, lo, np.nan)
    conflicts = int((np.isfinite(lo) & (lo != hi)).sum())
    return grades, conflicts


# --- graded annotations ------------------------------------------------------------------------


@dataclass(frozen=True)
class GradedWindows:
    """Windows inside graded regions, pooled over slides."""

    test_set: np.ndarray  # str
    slide: np.ndarray  # str
    grade: np.ndarray  # float
    oof_class: np.ndarray  # int
    per_slide: tuple[dict[str, Any], ...]


def collect_graded_windows(
    manifest: str | Path,
    *,
    tiles: str | Path | None = None,
    scans: str | Path | None = None,
    model: str | Path | None = None,
    mpp: float | None = None,
    device: str = "cpu",
    group_by: str = "test_set",
    grade_key: str = "grade",
    grader: Any = None,
) -> GradedWindows:
    """Read the manifest, scan (or find) each slide, and grade its annotated windows.

    Slides are identified by their manifest text (``slide`` column). ``group_by`` names the manifest column (or, failing that, a ``summary.json``
    key such as the scanner) that splits slides into test sets.
    """
    mpath = Path(manifest)
    rows = read_manifest(mpath, ("slide", "annotations"))
    base = mpath.parent
    slides = [_resolve(base, row["slide"]) for row in rows]
    ann_paths = [_resolve(base, row["annotations"]) for row in rows]
    # read every annotation file before scanning: a bad one fails in seconds, not hours
    annotations = [read_grade_annotations(a, grade_key=grade_key) for a in ann_paths]
    folders = scan_outputs(slides, tiles=tiles, scans=scans, model=model, mpp=mpp,
                           device=device, grader=grader)
    parts: dict[str, list[np.ndarray]] = {"t": [], "s": [], "g": [], "c": []}
    per_slide = []
    for row, slide, ann, regions, folder in zip(rows, slides, ann_paths, annotations, folders):
        out = read_scan_output(folder)
        if row.get(group_by):
            test_set = row[group_by]
        elif group_by in out.summary and not isinstance(out.summary[group_by], (dict, list)):
            test_set = str(out.summary[group_by])
        elif group_by == "test_set":
            test_set = "all"
        else:
            raise ConfigError(
                f"slide {slide.name}: no {group_by!r} in the manifest row or summary.json", mpath
            )
        if out.dimensions is not None:
            check_inside_slide(regions, out.dimensions, ann)
        grades, conflicts = window_grades(regions, out.grid.boxes(out.row, out.col))
        keep = np.isfinite(grades)
        n = int(keep.sum())
        slide_id = row["slide"]
        parts["t"].append(np.full(n, test_set, dtype=object))
        parts["s"].append(np.full(n, slide_id, dtype=object))
        parts["g"].append(grades[keep])
        parts["c"].append(out.oof_class[keep])
        per_slide.append({"slide": slide_id, "test_set": test_set, "scan_output": folder,
                          "regions": len(regions), "windows": n, "conflicting_windows": conflicts})
        log.info("%s: %d graded windows in %d regions", slide_id, n, len(regions))

    def cat(key: str, dtype: Any) -> np.ndarray:
        return np.concatenate(parts[key]).astype(dtype) if parts[key] else np.zeros(0, dtype)

    return GradedWindows(cat("t", object), cat("s", object), cat("g", np.float64),
                         cat("c", np.int64), tuple(per_slide))


def grade_agreement(
    grade: np.ndarray,
    oof_class: np.ndarray,
    rng: np.random.Generator,
    *,
    n_per_grade: int = 3000,
) -> tuple[dict[str, Any], np.ndarray]:
    """Agreement of predicted classes with grades on a grade-balanced resample.

    Returns the statistics (``spearman``, ``p_value``, ``slope``, ``intercept``, ...)
    and the resampled indices.

    References: Kohlberger et al. 2019: 3000 patches per test set and grade, drawn
    with replacement; Spearman with a two-sided test; regression slope vs 29/6 = 4.83
    and intercept vs 0.
    """
    idx = metrics.balanced_resample(grade, rng, n_per_stratum=n_per_grade)
    g, c = grade[idx], oof_class[idx].astype(np.float64)
    rho = metrics.spearman(g, c)
    fit = metrics.linregress(g, c)
    values, counts = np.unique(grade, return_counts=True)
    raw = metrics.spearman(grade, oof_class)
    stats = {
        "spearman": rho.r, "p_value": rho.p_value, "slope": fit.slope,
        "intercept": fit.intercept, "slope_stderr": fit.slope_stderr,
        "intercept_stderr": fit.intercept_stderr, "r_value": fit.r,
        "n_sampled": int(idx.size), "n_windows": int(grade.size),
        "n_per_grade": {f"{v:g}": int(n) for v, n in zip(values, counts)},
        "mean_class_per_grade": {
            f"{v:g}": float(oof_class[grade == v].mean()) for v in values
        },
        "spearman_unbalanced": raw.r,
        "ideal_slope": metrics.IDEAL_SLOPE, "ideal_intercept": 0.0,
    }
    return stats, idx


def _slide_colours(names: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {n: cmap(i % cmap.N) for i, n in enumerate(names)}


def _plot_grades(
    path: Path, data: GradedWindows, samples: Mapping[str, np.ndarray],
    stats: Mapping[str, Mapping[str, Any]], rng: np.random.Generator,
) -> Path:
    names = list(samples)
    fig, axes = _new_figure(max(1, len(names)))
    colours = _slide_colours(sorted(set(data.slide.tolist())))
    xs = np.linspace(0, GRADE_MAX, 2)
    for ax, name in zip(axes, names):
        idx = samples[name]
        st = stats[name]
        for slide in sorted(set(data.slide[idx].tolist())):
            sel = idx[data.slide[idx] == slide]
            ax.scatter(
                data.grade[sel] + rng.uniform(-0.18, 0.18, sel.size),
                data.oof_class[sel] + rng.uniform(-0.35, 0.35, sel.size),
                s=2, alpha=0.25, color=colours[slide], label=slide, rasterized=True,
            )
        ax.plot(xs, st["slope"] * xs + st["intercept"], "k-", lw=1.5,
                label=f"fit: {st['slope']:.2f} x {st['intercept']:+.2f}")
        ax.plot(xs, metrics.IDEAL_SLOPE * xs, "k--", lw=1, label="ideal: 4.83 x")
        ax.set(xlim=(-0.5, 6.5), ylim=(-1, NUM_CLASSES), xlabel="pathologist grade",
               ylabel="predicted OOF class",
               title=f"{name}: Spearman {st['spearman']:.3f} (n = {st['n_sampled']})")
        leg = ax.legend(loc="upper left", fontsize=7, markerscale=4, frameon=False)
        for handle in leg.legend_handles:
            if handle is not None:
                handle.set_alpha(1)
    return _write_figure(path, fig)


def _grades_markdown(stats: Mapping[str, Mapping[str, Any]]) -> str:
    rows = [
        [name, st["n_windows"], len(st["n_per_grade"]), st["spearman"], _fmt_p(st["p_value"]),
         st["slope"], st["intercept"]]
        for name, st in stats.items()
    ]
    for k, name in enumerate(PAPER_TEST_SETS):
        t2 = PAPER_TABLE2["config4"]
        rows.append([f"paper, {name}", "-", "13", t2["spearman"][k], "< 0.001",
                     t2["slope"][k], t2["intercept"][k]])
    table = markdown_table(
        ["test set", "windows", "grades", "Spearman", "p", "slope (ideal 4.83)",
         "intercept (ideal 0)"], rows,
    )
    return "# Predicted class vs pathologist grade\n\n" + table


def evaluate_grades(
    manifest: str | Path,
    out: str | Path,
    *,
    tiles: str | Path | None = None,
    model: str | Path | None = None,
    mpp: float | None = None,
    device: str = "cpu",
    group_by: str = "test_set",
    grade_key: str = "grade",
    n_per_grade: int = 3000,
    seed: int = 0,
    grader: Any = None,
) -> dict[str, Any]:
    """``convfocus evaluate grades``: agreement with pathologist-graded regions.

    The manifest (CSV) has ``slide,annotations[,test_set]``, paths relative to it.
    Writes ``grades.json`` (per test set: ``spearman``, ``p_value``, ``slope``,
    ``intercept``, ``n_per_grade``, ...), ``grades.png`` and ``grades.md`` to ``out``.
    Slides are scanned into ``out/scans`` (with ``grader``, or ``model`` loaded) unless
    ``tiles`` holds their scan outputs.

    References: Kohlberger et al. 2019: rho 0.808 (AT2), 0.936 (S360); Table 2.
    """
    o = Path(out)
    data = collect_graded_windows(
        manifest, tiles=tiles, scans=o / "scans", model=model, mpp=mpp, device=device,
        group_by=group_by, grade_key=grade_key, grader=grader,
    )
    if data.grade.size == 0:
        raise AnnotationError("no window lies wholly inside a graded region", manifest)
    rng = np.random.default_rng(seed)
    stats: dict[str, dict[str, Any]] = {}
    samples: dict[str, np.ndarray] = {}
    for name in sorted(set(data.test_set.tolist())):
        members = np.flatnonzero(data.test_set == name)
        st, idx = grade_agreement(data.grade[members], data.oof_class[members], rng,
                                  n_per_grade=n_per_grade)
        st["slides"] = sorted(set(data.slide[members].tolist()))
        stats[name] = st
        samples[name] = members[idx]
    result = {
        "command": "grades",
        "manifest": str(manifest),
        "settings": {"n_per_grade": n_per_grade, "seed": seed, "group_by": group_by,
                     "window": "the scan's window (l0_window_px) wholly inside a region",
                     "model": None if model is None else str(model), "tiles": tiles},
        "test_sets": stats,
        "slides": list(data.per_slide),
        "paper": {name: {key: PAPER_TABLE2["config4"][key][k]
                         for key in ("spearman", "slope", "intercept")}
                  for k, name in enumerate(PAPER_TEST_SETS)},
    }
    _plot_grades(o / "grades.png", data, samples, stats, rng)
    _write_bytes(o / "grades.md", _grades_markdown(stats).encode())
    _write_json(o / "grades.json", result)
    return result


# --- z-stacks ----------------------------------------------------------------------------------


def zstack_analysis(z_um: np.ndarray, classes: np.ndarray) -> dict[str, Any]:
    """Class vs z: the mean curve, its minimum and the Spearman of each V side.

    ``classes`` is ``(windows, levels)`` with levels in the order of ``z_um``.
    Each side (z <= z_min and z >= z_min) reports Spearman of ``|z - z_min|`` vs the
    mean class (NaN with fewer than 3 levels); ``about_zero`` does the same around
    z = 0, as the paper did.

    References: Kohlberger et al. 2019, Figure 7: rho > 0.999 (z <= 0) and 1.0
    (z >= 0), P < 0.001.
    """
    z = np.asarray(z_um, dtype=np.float64)
    c = np.asarray(classes, dtype=np.float64).reshape(-1, z.size)
    order = np.argsort(z, kind="stable")
    z, c = z[order], c[:, order]
    mean = c.mean(axis=0) if len(c) else np.full(z.size, np.nan)
    k_min = int(np.nanargmin(mean)) if np.isfinite(mean).any() else 0
    z_min = float(z[k_min])

    def sides(centre: float) -> dict[str, Any]:
        out = {}
        for side, sel in (("below", z <= centre), ("above", z >= centre)):
            rho = metrics.spearman(np.abs(z[sel] - centre), mean[sel])
            out[side] = {"spearman": rho.r, "p_value": rho.p_value, "levels": int(sel.sum())}
        return out

    per_window_min = z[np.argmin(c, axis=1)] if len(c) else np.zeros(0)
    return {
        "z_um": z, "mean_class": mean, "z_min_um": z_min, "mean_class_at_min": mean[k_min],
        "sides": sides(z_min), "about_zero": sides(0.0),
        "window_z_min_um": {"mean": float(per_window_min.mean()) if len(c) else math.nan,
                            "median": float(np.median(per_window_min)) if len(c) else math.nan,
                            "share_at_z_min": float((per_window_min == z_min).mean())
                            if len(c) else math.nan},
        "n_windows": len(c), "levels": int(z.size),
        "_per_window_min": per_window_min, "_classes": c,
    }


def _plot_zstack(path: Path, res: Mapping[str, Any], rng: np.random.Generator,
                 max_windows: int) -> Path:
    z, c, mean = res["z_um"], res["_classes"], res["mean_class"]
    fig, (ax, ax2) = _new_figure(2)
    pick = rng.permutation(len(c))[:max_windows]
    step = float(np.min(np.diff(z))) if z.size > 1 else 1.0
    from matplotlib import colormaps

    cmap = colormaps["hsv"]
    for i, w in enumerate(pick):
        ax.plot(z + rng.uniform(-0.2, 0.2, z.size) * step,
                c[w] + rng.uniform(-0.3, 0.3, z.size), ".-", lw=0.4, ms=2, alpha=0.5,
                color=cmap(i / max(len(pick), 1)))
    ax.plot(z, mean, "k-o", lw=2.5, ms=4, label="mean")
    ax.axvline(res["z_min_um"], color="k", ls="--", lw=1,
               label=f"minimum at z = {res['z_min_um']:g} µm")
    s = res["sides"]
    ax.set(xlabel="z (µm)", ylabel="predicted OOF class", ylim=(-1, NUM_CLASSES),
           title=(f"{len(pick)} of {len(c)} windows; Spearman |z - z_min| vs mean: "
                  f"{_fmt(s['below']['spearman'])} / {_fmt(s['above']['spearman'])}"))
    ax.legend(loc="upper center", fontsize=8, frameon=False)
    edges = np.r_[z - step / 2, z[-1] + step / 2] if z.size else np.zeros(1)
    ax2.hist(res["_per_window_min"], bins=np.unique(edges), color="0.4")
    ax2.set(xlabel="z of each window's lowest class (µm)", ylabel="windows")
    return _write_figure(path, fig)


def evaluate_zstack(
    manifest: str | Path,
    out: str | Path,
    *,
    tiles: str | Path | None = None,
    model: str | Path | None = None,
    mpp: float | None = None,
    device: str = "cpu",
    max_plot_windows: int = 114,
    seed: int = 0,
    grader: Any = None,
) -> dict[str, Any]:
    """``convfocus evaluate zstack``: one field scanned at several z-levels.

    The manifest has ``path,z_um`` (images or slides, paths relative to it). Windows
    present at every level (same level-0 position) are compared across z. Writes
    ``zstack.json``, ``zstack.png`` (the V plot, ``max_plot_windows`` windows drawn)
    and ``zstack.md``.

    References: Kohlberger et al. 2019: +-4 µm in 0.4 µm steps (21 levels), 114
    patches plotted; expect a "V" with its minimum near z = 0.
    """
    mpath = Path(manifest)
    rows = read_manifest(mpath, ("path", "z_um"))
    o = Path(out)
    try:
        zs = [float(row["z_um"]) for row in rows]
    except ValueError as exc:
        raise ConfigError(f"a z_um is not a number ({exc})", mpath) from None
    if len(set(zs)) != len(zs):
        raise ConfigError("two manifest rows have the same z_um", mpath)
    if len(zs) < 2:
        raise ConfigError("a z-stack needs at least 2 levels", mpath)
    sources = [_resolve(mpath.parent, row["path"]) for row in rows]
    folders = scan_outputs(sources, tiles=tiles, scans=o / "scans", model=model, mpp=mpp,
                           device=device, grader=grader)
    levels = [(z, src, read_scan_output(f)) for z, src, f in zip(zs, sources, folders)]
    keys = [set(zip(lv[2].x_px.tolist(), lv[2].y_px.tolist())) for lv in levels]
    common = sorted(set.intersection(*keys))
    if not common:
        raise ConfigError("no window is present at every z-level", mpath)
    classes = np.empty((len(common), len(levels)), dtype=np.int64)
    for j, (_, _, so) in enumerate(levels):
        lookup = dict(zip(zip(so.x_px.tolist(), so.y_px.tolist()), so.oof_class.tolist()))
        classes[:, j] = [lookup[k] for k in common]
    res = zstack_analysis(np.asarray(zs), classes)
    rng = np.random.default_rng(seed)
    _plot_zstack(o / "zstack.png", res, rng, max_plot_windows)
    public = {k: v for k, v in res.items() if not k.startswith("_")}
    result = {
        "command": "zstack", "manifest": str(manifest), **public,
        "levels_input": [{"z_um": z, "path": src, "scan_output": so.folder,
                          "windows": int(so.x_px.size)} for z, src, so in levels],
        "settings": {"seed": seed, "max_plot_windows": max_plot_windows},
        "paper": {"spearman_below": 0.999, "spearman_above": 1.0,
                  "note": "paper: > 0.999 for z <= 0 and 1.0 for z >= 0 (|z| vs mean class)"},
    }
    s, s0 = res["sides"], res["about_zero"]
    md = "# Predicted class vs z-level\n\n" + markdown_table(
        ["z (µm)", "mean class"], [[f"{z:g}", m] for z, m in zip(res["z_um"], res["mean_class"])]
    ) + "\n" + markdown_table(
        ["centre", "Spearman below", "p", "Spearman above", "p"],
        [[f"z_min = {res['z_min_um']:g} µm", s["below"]["spearman"], _fmt_p(s["below"]["p_value"]),
          s["above"]["spearman"], _fmt_p(s["above"]["p_value"])],
         ["z = 0", s0["below"]["spearman"], _fmt_p(s0["below"]["p_value"]),
          s0["above"]["spearman"], _fmt_p(s0["above"]["p_value"])],
         ["paper (z = 0)", 0.999, "< 0.001", 1.0, "< 0.001"]],
    ) + f"\n{res['n_windows']} windows present at all {res['levels']} levels.\n"
    _write_bytes(o / "zstack.md", md.encode())
    _write_json(o / "zstack.json", result)
    return result


# --- detector ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DetectorScores:
    """Per-window detector output: score, 0/1 label, slide id, OOF class."""

    slide: np.ndarray
    score: np.ndarray
    label: np.ndarray
    oof_class: np.ndarray


_LABEL_NAMES = ("label", "tumor", "tumour")


def read_detector_scores(path: str | Path, *, tiles: str | Path | None = None) -> DetectorScores:
    """Read a detector CSV: ``slide,score,label[,oof_class]`` (``tumor``/``tumour`` = label).

    Without ``oof_class``, it is joined from ``tiles/<slide>/tiles.csv`` on
    ``x_px,y_px`` (columns the CSV then needs).
    """
    p = Path(path)
    rows = read_manifest(p, ("slide", "score"))
    label_col = next((c for c in _LABEL_NAMES if c in rows[0]), None)
    if label_col is None:
        raise ConfigError("detector CSV lacks a label column (label, tumor or tumour)", p)
    try:
        slide = np.array([r["slide"] for r in rows], dtype=object)
        score = np.array([float(r["score"]) for r in rows])
        label = np.array([int(float(r[label_col])) for r in rows])
    except ValueError as exc:
        raise ConfigError(f"detector CSV has a non-numeric score or label ({exc})", p) from None
    if not np.isin(label, (0, 1)).all():
        raise ConfigError("detector labels must be 0 or 1", p)
    if not np.isfinite(score).all():
        raise ConfigError("detector scores must be finite", p)
    if "oof_class" in rows[0] and all(r["oof_class"] for r in rows):
        oof = np.array([int(float(r["oof_class"])) for r in rows])
    else:
        if tiles is None:
            raise ConfigError("detector CSV has no oof_class column; give --tiles to join it", p)
        if not {"x_px", "y_px"} <= set(rows[0]):
            raise ConfigError("joining OOF classes from tiles.csv needs x_px,y_px columns", p)
        oof = np.empty(len(rows), dtype=np.int64)
        cache: dict[str, dict[tuple[int, int], int]] = {}
        for i, r in enumerate(rows):
            if r["slide"] not in cache:
                so = read_scan_output(find_scan_output(tiles, r["slide"]))
                cache[r["slide"]] = dict(zip(
                    zip(so.x_px.astype(int).tolist(), so.y_px.astype(int).tolist()),
                    so.oof_class.tolist(),
                ))
            key = (int(float(r["x_px"])), int(float(r["y_px"])))
            if key not in cache[r["slide"]]:
                raise ConfigError(
                    f"row {i + 2}: no graded window at x_px={key[0]}, y_px={key[1]} in "
                    f"{r['slide']}/tiles.csv", p,
                )
            oof[i] = cache[r["slide"]][key]
    return DetectorScores(slide, score, label, oof)


def auc_by_bucket(
    scores: DetectorScores,
    rng: np.random.Generator,
    *,
    buckets: Sequence[tuple[int, int]] = metrics.OOF_BUCKETS,
    n_boot: int = 500,
    level: float = 0.95,
) -> list[dict[str, Any]]:
    """Detector ROC AUC in each OOF-class bucket with a slide-level bootstrap interval.

    References: Kohlberger et al. 2019, Figure 11: buckets 0-4, 5-9, 10-14, 15-19,
    20-29; 95 % intervals from n = 500 slide-level bootstrap samples.
    """
    which = metrics.bucket_index(scores.oof_class, buckets)
    out = []
    for k, (lo, hi) in enumerate(buckets):
        sel = which == k
        y, s, g = scores.label[sel], scores.score[sel], scores.slide[sel]
        ci = metrics.bootstrap_auc(y, s, g, rng, n_boot=n_boot, level=level)
        out.append({
            "bucket": f"{lo}-{hi}", "classes": [lo, hi], "auc": ci.estimate,
            "ci_low": ci.low, "ci_high": ci.high, "n_windows": int(sel.sum()),
            "n_tumour": int(y.sum()), "n_slides": int(np.unique(g).size),
            "n_boot_valid": ci.n_valid,
        })
    return out


def load_detector(spec: str) -> Callable[[np.ndarray], np.ndarray]:
    """Import a detector given as ``module:function`` (batch of RGB windows -> scores)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"detector {spec!r} is not of the form module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import detector module {module_name!r}: {exc}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"detector {spec!r}: {module_name} has no function {attr!r}")
    return fn  # type: ignore[no-any-return]


def read_labelled_windows(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labelled windows: an ``.npz`` (``images`` (n, h, w, 3) uint8, ``labels``,
    optional ``slides``) or a CSV ``path,label[,slide]`` of image files."""
    p = Path(path)
    if p.suffix.lower() == ".npz":
        try:
            with np.load(p, allow_pickle=False) as d:
                images, labels = d["images"], d["labels"]
                slides = d["slides"] if "slides" in d else np.full(len(labels), "all")
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"not a windows .npz with images and labels ({exc})", p) from None
    else:
        from convfocus.io.slide import read_image

        rows = read_manifest(p, ("path", "label"))
        images = np.stack([read_image(_resolve(p.parent, r["path"])) for r in rows])
        labels = np.array([int(float(r["label"])) for r in rows])
        slides = np.array([r.get("slide") or "all" for r in rows])
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ConfigError(f"windows must be (n, h, w, 3) uint8, got {images.shape}", p)
    if len(labels) != len(images) or not np.isin(labels, (0, 1)).all():
        raise ConfigError("windows need one 0/1 label each", p)
    return images, labels.astype(np.int64), np.asarray(slides).astype(str).astype(object)


def _score(detector: Callable[[np.ndarray], np.ndarray], images: np.ndarray,
           batch_size: int) -> np.ndarray:
    out = []
    for i in range(0, len(images), batch_size):
        batch = images[i : i + batch_size]
        s = np.asarray(detector(batch), dtype=np.float64).reshape(-1)
        if s.size != len(batch) or not np.isfinite(s).all():
            raise ConfigError(
                f"the detector must return one finite score per window ({len(batch)} windows, "
                f"got {s.size} values)"
            )
        out.append(s)
    return np.concatenate(out) if out else np.zeros(0)


def auc_vs_blur(
    detector: Callable[[np.ndarray], np.ndarray],
    images: np.ndarray,
    labels: np.ndarray,
    slides: np.ndarray,
    *,
    classes: Sequence[int] = tuple(range(NUM_CLASSES)),
    n_boot: int = 500,
    seed: int = 0,
    batch_size: int = 64,
) -> list[dict[str, Any]]:
    """Blur every window with bokeh of class ``c`` (radius drawn per window), re-score,
    and report the AUC (with a slide-level bootstrap interval) for each ``c``.

    References: Kohlberger et al. 2019, Figure 11 (blue curve): synthetic bokeh blur
    of each strength added to all patches.
    """
    from convfocus.synthesis.defocus import apply_blur, sample_blur_param

    out = []
    for c in classes:
        if not 0 <= c < NUM_CLASSES:
            raise ConfigError(f"class {c} outside 0..{NUM_CLASSES - 1}")
        rng = np.random.default_rng([seed, c])
        radii = np.array([sample_blur_param(c, rng) for _ in range(len(images))])
        blurred = np.stack([apply_blur(img, "bokeh", r) for img, r in zip(images, radii)])
        scores = _score(detector, blurred, batch_size)
        ci = metrics.bootstrap_auc(labels, scores, slides, rng, n_boot=n_boot)
        out.append({"class": int(c), "mean_radius_px": float(radii.mean()),
                    "auc": ci.estimate, "ci_low": ci.low, "ci_high": ci.high,
                    "n_boot_valid": ci.n_valid})
        log.debug("class %d: AUC %.3f", c, ci.estimate)
    return out


def _plot_detector(path: Path, buckets: list[dict[str, Any]] | None,
                   sweep: list[dict[str, Any]] | None) -> Path:
    fig, (ax,) = _new_figure(1, width=6.5)
    if sweep:
        x = np.array([r["class"] for r in sweep])
        ax.plot(x, [r["auc"] for r in sweep], "-o", color="tab:blue", ms=3,
                label="synthetic bokeh blur (experiment 2)")
        lo = np.array([np.nan if r["ci_low"] is None else r["ci_low"] for r in sweep], float)
        hi = np.array([np.nan if r["ci_high"] is None else r["ci_high"] for r in sweep], float)
        ax.fill_between(x, lo, hi, color="tab:blue", alpha=0.15, lw=0)
    if buckets:
        centres = np.array([(b["classes"][0] + b["classes"][1]) / 2 for b in buckets])
        auc = np.array([b["auc"] for b in buckets], float)
        lo = np.array([b["ci_low"] for b in buckets], float)
        hi = np.array([b["ci_high"] for b in buckets], float)
        ax.errorbar(centres, auc, yerr=[auc - lo, hi - auc], fmt="ko", ecolor="0.6",
                    elinewidth=6, capsize=0, label="predicted OOF bucket (experiment 1)")
        for b, xc, y in zip(buckets, centres, np.where(np.isfinite(lo), lo, auc)):
            if math.isfinite(y):
                ax.annotate(f"n={b['n_windows']}", (xc, y - 0.02), ha="center", va="top",
                            fontsize=7)
    ax.axhline(0.5, color="0.7", lw=0.8, ls=":")
    ax.set(xlim=(-1, NUM_CLASSES), ylim=(0.0, 1.02), xlabel="OOF class",
           ylabel="detector ROC AUC", title="Detector AUC vs focus quality")
    ax.legend(loc="lower left", fontsize=8, frameon=False)
    return _write_figure(path, fig)


def evaluate_detector(
    out: str | Path,
    *,
    scores: str | Path | None = None,
    tiles: str | Path | None = None,
    detector: str | Callable[[np.ndarray], np.ndarray] | None = None,
    windows: str | Path | None = None,
    classes: Sequence[int] = tuple(range(NUM_CLASSES)),
    n_boot: int = 500,
    seed: int = 0,
    example: bool = False,
) -> dict[str, Any]:
    """``convfocus evaluate detector``: the impact of focus on a detector's AUC.

    Experiment 1 (``scores``): AUC per OOF bucket with slide-level bootstrap
    intervals. Experiment 2 (``detector`` + ``windows``): AUC vs added bokeh blur
    of each class. With ``example``, both run on generated example data with the
    demonstration detector (not a cancer detector). Writes ``detector.json``,
    ``detector.png`` and ``detector.md``.

    References: Kohlberger et al. 2019, Figure 11.
    """
    o = Path(out)
    if example:
        from convfocus.evaluation.detector_data import make_detector_example

        ex = make_detector_example(o / "example-data", seed=seed)
        scores = scores or ex.scores_csv
        windows = windows or ex.windows_npz
        detector = detector or "convfocus.evaluation.detector:score_windows"
    if scores is None and (detector is None or windows is None):
        raise ConfigError("give --scores (experiment 1) and/or --detector with --windows "
                          "(experiment 2), or --example")
    if (detector is None) != (windows is None):
        raise ConfigError("experiment 2 needs both --detector and --windows")
    result: dict[str, Any] = {"command": "detector", "settings": {
        "n_boot": n_boot, "seed": seed, "example": example,
        "buckets": [f"{lo}-{hi}" for lo, hi in metrics.OOF_BUCKETS], "level": 0.95}}
    md = "# Detector AUC vs focus quality\n\n"
    buckets = sweep = None
    if scores is not None:
        table = read_detector_scores(scores, tiles=tiles)
        buckets = auc_by_bucket(table, np.random.default_rng(seed), n_boot=n_boot)
        overall = metrics.bootstrap_auc(table.label, table.score, table.slide,
                                        np.random.default_rng(seed), n_boot=n_boot)
        result["experiment1"] = {
            "scores": str(scores), "buckets": buckets,
            "all": {"auc": overall.estimate, "ci_low": overall.low, "ci_high": overall.high,
                    "n_windows": int(table.score.size),
                    "n_slides": int(np.unique(table.slide).size)},
        }
        md += "## Experiment 1: real OOF (predicted class buckets)\n\n" + markdown_table(
            ["OOF classes", "AUC", "95 % CI", "windows", "tumour", "slides"],
            [[b["bucket"], b["auc"], f"{_fmt(b['ci_low'])}-{_fmt(b['ci_high'])}",
              b["n_windows"], b["n_tumour"], b["n_slides"]] for b in buckets]
            + [["all", overall.estimate, f"{_fmt(overall.low)}-{_fmt(overall.high)}",
                int(table.score.size), int(table.label.sum()),
                int(np.unique(table.slide).size)]],
        ) + "\n"
    if detector is not None and windows is not None:
        fn = load_detector(detector) if isinstance(detector, str) else detector
        images, labels, slides = read_labelled_windows(windows)
        sweep = auc_vs_blur(fn, images, labels, slides, classes=classes, n_boot=n_boot,
                            seed=seed)
        result["experiment2"] = {
            "detector": detector if isinstance(detector, str) else repr(detector),
            "windows": str(windows), "n_windows": len(images),
            "n_slides": int(np.unique(slides).size), "blur": "bokeh", "by_class": sweep,
        }
        md += "## Experiment 2: synthetic bokeh blur added to all windows\n\n" + markdown_table(
            ["class", "mean radius (px)", "AUC", "95 % CI"],
            [[str(r["class"]), r["mean_radius_px"], r["auc"],
              f"{_fmt(r['ci_low'])}-{_fmt(r['ci_high'])}"] for r in sweep],
        ) + "\n"
    if example:
        md += ("The example detector and data are for demonstration only; the detector "
               "is a texture score, not a cancer detector.\n")
    _plot_detector(o / "detector.png", buckets, sweep)
    _write_bytes(o / "detector.md", md.encode())
    _write_json(o / "detector.json", result)
    return result


# --- public benchmarks -------------------------------------------------------------------------

_BENCH_COLUMNS = {
    "focuspath": ("file", "slide", "strip", "slice", "position", "score", "z_level"),
    "tcga-focus": ("path", "organ", "split", "label"),
}


def read_benchmark_list(kind: str, path: str | Path) -> list[dict[str, str]]:
    """Rows of a FocusPath or TCGA@Focus label list (CSV, with or without a header).

    FocusPath: ``file,slide,strip,slice,position,score,z_level``; TCGA@Focus:
    ``path,organ,split,label`` (label 0 in focus, 1 out of focus).
    """
    if kind not in _BENCH_COLUMNS:
        raise ConfigError(f"unknown benchmark {kind!r}; choose one of {', '.join(BENCHMARKS)}")
    p = Path(path)
    cols = _BENCH_COLUMNS[kind]
    try:
        lines = list(csv.reader(io.StringIO(p.read_text(encoding="utf-8-sig"))))
    except OSError as exc:
        raise ConfigError(f"cannot read list: {exc.strerror or exc}", p) from None
    lines = [ln for ln in lines if ln and any(c.strip() for c in ln)]
    if lines and [c.strip().lower() for c in lines[0][: len(cols)]] == list(cols):
        lines = lines[1:]
    rows = []
    for n, ln in enumerate(lines, 1):
        if len(ln) < len(cols):
            raise ConfigError(f"line {n}: {len(ln)} fields, a {kind} list has {len(cols)}", p)
        rows.append(dict(zip(cols, (c.strip() for c in ln))))
    if not rows:
        raise ConfigError("the list is empty", p)
    numeric = ("z_level",) if kind == "focuspath" else ("label",)
    for n, row in enumerate(rows, 1):
        for key in numeric:
            try:
                float(row[key])
            except ValueError:
                raise ConfigError(f"line {n}: {key} {row[key]!r} is not a number", p) from None
    return rows


def patch_windows(rgb: np.ndarray, *, window_px: int = 139, stride_px: int = 128) -> np.ndarray:
    """All ``window_px`` windows of a patch at ``stride_px``, the grid centred: ``(n, w, w, 3)``."""
    h, w = rgb.shape[:2]
    if h < window_px or w < window_px:
        raise ValueError(f"patch {w} x {h} is smaller than one {window_px} px window")
    ny = (h - window_px) // stride_px + 1
    nx = (w - window_px) // stride_px + 1
    oy = (h - (window_px + (ny - 1) * stride_px)) // 2
    ox = (w - (window_px + (nx - 1) * stride_px)) // 2
    return np.stack([
        rgb[oy + i * stride_px : oy + i * stride_px + window_px,
            ox + j * stride_px : ox + j * stride_px + window_px]
        for i in range(ny) for j in range(nx)
    ])


def grade_patch(
    grader: Any, rgb: np.ndarray, *, image_mpp: float | None = None
) -> tuple[float, float]:
    """Mean and max predicted class over a patch's windows.

    The patch is resampled from ``image_mpp`` to the model's pixel size when both are
    known and differ by more than 2 %.
    """
    spec = getattr(grader, "spec", None)
    window = int(getattr(spec, "window_px", 139))
    stride = int(getattr(spec, "stride_px", 128))
    model_mpp = getattr(spec, "mpp", None)
    img = np.ascontiguousarray(rgb[..., :3], dtype=np.uint8)
    if image_mpp and model_mpp and abs(image_mpp / model_mpp - 1) > 0.02:
        import cv2

        f = image_mpp / model_mpp
        size = (max(window, round(img.shape[1] * f)), max(window, round(img.shape[0] * f)))
        img = np.asarray(cv2.resize(img, size, interpolation=cv2.INTER_AREA if f < 1
                                    else cv2.INTER_CUBIC), dtype=np.uint8)
    probs = np.asarray(grader.predict_windows(patch_windows(img, window_px=window,
                                                            stride_px=stride)))
    classes = probs.argmax(axis=1)
    return float(classes.mean()), float(classes.max())


def _read_rgb(path: Path) -> np.ndarray:
    from convfocus.io.slide import read_image

    return read_image(path)


def _focuspath_metrics(
    rows: Sequence[dict[str, str]], score: np.ndarray, rng: np.random.Generator, *,
    n_folds: int, infocus_max_abs_z: float,
) -> dict[str, Any]:
    abs_z = np.abs(np.array([float(r["z_level"]) for r in rows]))
    slides = np.array([r["slide"] for r in rows], dtype=object)
    folds = metrics.group_folds(slides, rng, n_folds=n_folds)
    per_fold = []
    for k in range(int(folds.max()) + 1):
        sel = folds == k
        per_fold.append({"fold": k, "n": int(sel.sum()),
                         "srcc": metrics.spearman(abs_z[sel], score[sel]).r,
                         "plcc": metrics.pearson(abs_z[sel], score[sel]).r})
    srcc = np.array([f["srcc"] for f in per_fold], float)
    plcc = np.array([f["plcc"] for f in per_fold], float)
    oof = (abs_z > infocus_max_abs_z).astype(int)
    return {
        "srcc": metrics.spearman(abs_z, score).r, "plcc": metrics.pearson(abs_z, score).r,
        "srcc_folds_mean": float(np.nanmean(srcc)) if np.isfinite(srcc).any() else math.nan,
        "srcc_folds_std": float(np.nanstd(srcc)) if np.isfinite(srcc).any() else math.nan,
        "plcc_folds_mean": float(np.nanmean(plcc)) if np.isfinite(plcc).any() else math.nan,
        "plcc_folds_std": float(np.nanstd(plcc)) if np.isfinite(plcc).any() else math.nan,
        "folds": per_fold,
        "roc_auc": metrics.roc_auc(oof, score), "pr_auc": metrics.pr_auc(oof, score),
        "n_in_focus": int((oof == 0).sum()), "n_out_of_focus": int(oof.sum()),
    }


def _tcga_metrics(rows: Sequence[dict[str, str]], score: np.ndarray) -> dict[str, Any]:
    label = np.array([int(float(r["label"])) for r in rows])
    return {"roc_auc": metrics.roc_auc(label, score), "pr_auc": metrics.pr_auc(label, score),
            "n_in_focus": int((label == 0).sum()), "n_out_of_focus": int(label.sum())}


def evaluate_benchmark(
    kind: str,
    list_path: str | Path,
    images: str | Path,
    out: str | Path,
    *,
    grader: Any = None,
    model: str | Path | None = None,
    device: str = "cpu",
    image_mpp: float | None = None,
    infocus_max_abs_z: float = 1.0,
    n_folds: int = 10,
    split: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """``convfocus evaluate benchmark``: FocusPath or TCGA@Focus, as the field reports.

    Each patch gets the mean and the max predicted class over its windows; both are
    reported. FocusPath: SRCC and PLCC (Pearson, no fitted mapping) against ``|z|``,
    overall and over folds split by slide (``min(n_folds, slides)`` folds), plus
    ROC-AUC / PR-AUC of in focus (``|z| <= infocus_max_abs_z``) vs not. TCGA@Focus:
    ROC-AUC and PR-AUC of out of focus (label 1). Patches missing under ``images``
    are skipped and counted. Writes ``benchmark-<kind>.json``, ``.png`` and ``.md``.

    References: Published numbers from FocusLiteNN (MICCAI 2020), Table 1.
    """
    rows = read_benchmark_list(kind, list_path)
    if split is not None:
        if kind != "tcga-focus":
            raise ConfigError("--split applies to tcga-focus only")
        rows = [r for r in rows if r["split"] == split]
        if not rows:
            raise ConfigError(f"no rows with split {split!r}", list_path)
    if grader is None:
        from convfocus.grading.infer import load_grader

        grader = load_grader(model, device=device)
    root = Path(images)
    key = "file" if kind == "focuspath" else "path"
    present, mean_cls, max_cls, missing = [], [], [], []
    for r in rows:
        path = root / r[key]
        if not path.is_file():
            missing.append(r[key])
            continue
        m, x = grade_patch(grader, _read_rgb(path), image_mpp=image_mpp)
        present.append(r)
        mean_cls.append(m)
        max_cls.append(x)
    if not present:
        raise ConfigError(f"none of the {len(rows)} listed images is under {root}", list_path)
    if missing:
        log.warning("%d of %d listed images are missing (first: %s)", len(missing), len(rows),
                    missing[0])
    scores = {"mean": np.array(mean_cls), "max": np.array(max_cls)}
    results: dict[str, Any] = {}
    for name, s in scores.items():
        if kind == "focuspath":
            results[name] = _focuspath_metrics(present, s, np.random.default_rng(seed),
                                               n_folds=n_folds,
                                               infocus_max_abs_z=infocus_max_abs_z)
        else:
            results[name] = _tcga_metrics(present, s)
    result = {
        "command": "benchmark", "benchmark": kind, "list": str(list_path), "images": str(root),
        "n_listed": len(rows), "n_graded": len(present), "n_missing": len(missing),
        "settings": {"image_mpp": image_mpp, "seed": seed, "split": split,
                     "n_folds": n_folds, "infocus_max_abs_z": infocus_max_abs_z,
                     "score": "mean and max predicted class over the patch's windows",
                     "plcc": "Pearson on raw scores (no logistic mapping)"},
        "results": results, "published": PUBLISHED_BENCHMARKS[kind],
        "patches": [{key: r[key], "mean_class": m, "max_class": x}
                    for r, m, x in zip(present, mean_cls, max_cls)],
    }
    _plot_benchmark(Path(out) / f"benchmark-{kind}.png", kind, present, scores)
    _write_bytes(Path(out) / f"benchmark-{kind}.md", _benchmark_markdown(result).encode())
    _write_json(Path(out) / f"benchmark-{kind}.json", result)
    return result


def _benchmark_markdown(result: Mapping[str, Any]) -> str:
    kind, res = result["benchmark"], result["results"]
    pub = PUBLISHED_BENCHMARKS[kind]
    if kind == "focuspath":
        header = ["method", "SRCC", "PLCC", "SRCC folds", "ROC-AUC", "PR-AUC"]
        rows = [[f"convfocus ({name} class)", r["srcc"], r["plcc"],
                 (f"{_fmt(r['srcc_folds_mean'])} ± {_fmt(r['srcc_folds_std'])} "
                  f"({len(r['folds'])} folds)"), r["roc_auc"], r["pr_auc"]]
                for name, r in res.items()]
        rows += [[f"{m} (published)", v, "-", "-", "-", "-"] for m, v in pub["srcc"].items()]
        note = (f"In focus: |z| <= {result['settings']['infocus_max_abs_z']:g} (a setting); "
                "correlations are with |z|.")
    else:
        header = ["method", "ROC-AUC", "PR-AUC"]
        rows = [[f"convfocus ({name} class)", r["roc_auc"], r["pr_auc"]]
                for name, r in res.items()]
        rows += [[f"{m} (published)", v, "-"] for m, v in pub["roc_auc"].items()]
        note = "Positive class: out of focus (label 1)."
    title = {"focuspath": "FocusPath", "tcga-focus": "TCGA@Focus"}[kind]
    return (f"# {title}\n\n" + markdown_table(header, rows)
            + f"\n{result['n_graded']} of {result['n_listed']} listed patches graded "
            f"({result['n_missing']} missing). {note} Published: FocusLiteNN, MICCAI 2020, "
            "Table 1.\n")


def _plot_benchmark(path: Path, kind: str, rows: Sequence[dict[str, str]],
                    scores: Mapping[str, np.ndarray]) -> Path:
    fig, axes = _new_figure(len(scores))
    for ax, (name, s) in zip(axes, scores.items()):
        if kind == "focuspath":
            z = np.array([float(r["z_level"]) for r in rows])
            ax.scatter(z, s, s=6, alpha=0.5)
            zs = np.unique(z)
            ax.plot(zs, [s[z == v].mean() for v in zs], "k-", lw=1.5, label="mean")
            ax.set(xlabel="z level", ylabel=f"{name} predicted class")
            ax.legend(frameon=False, fontsize=8)
        else:
            label = np.array([int(float(r["label"])) for r in rows])
            bins = np.linspace(0, NUM_CLASSES - 1, 30)
            for v, lab in ((0, "in focus"), (1, "out of focus")):
                ax.hist(s[label == v], bins=bins, alpha=0.6, label=lab)
            ax.set(xlabel=f"{name} predicted class", ylabel="patches")
            ax.legend(frameon=False, fontsize=8)
        ax.set_title(f"{kind}: {name} class per patch")
    return _write_figure(path, fig)


# --- ablation ----------------------------------------------------------------------------------

ABLATION_PRESETS = tuple(PAPER_TABLE2)


def _table2(get: Callable[[str, str, int, str], Any], test_sets: Sequence[str]) -> str:
    """Rows config1..5 of a Table-2-shaped Markdown table; ``get(config, metric, k, ts)``."""
    metrics_ = ("spearman", "slope", "intercept")
    header = ["#", "description", "blur"] + [
        f"{m.capitalize() if m == 'spearman' else m} {ts}" for m in metrics_ for ts in test_sets
    ]
    rows = []
    for name in ABLATION_PRESETS:
        t2 = PAPER_TABLE2[name]
        rows.append([name.removeprefix("config"), t2["description"], t2["blur"]]
                    + [get(name, m, k, ts) for m in metrics_ for k, ts in enumerate(test_sets)])
    return markdown_table(header, rows)


def _ablation_markdown(stats: Mapping[str, Mapping[str, Any]], test_sets: Sequence[str]) -> str:
    def ours(name: str, metric: str, k: int, ts: str) -> Any:
        return stats.get(name, {}).get(ts, {}).get(metric)

    def paper(name: str, metric: str, k: int, ts: str) -> Any:
        return PAPER_TABLE2[name][metric][k]

    return ("# Ablation (shaped like Table 2)\n\n## This evaluation\n\n"
            + _table2(ours, test_sets)
            + "\n## Paper (Kohlberger et al. 2019, Table 2)\n\n"
            + _table2(paper, PAPER_TEST_SETS))


def evaluate_ablation(
    manifest: str | Path,
    out: str | Path,
    *,
    models: Mapping[str, str | Path] | None = None,
    tiles_root: str | Path | None = None,
    train_pool: str | Path | None = None,
    steps: int | None = None,
    device: str = "cpu",
    mpp: float | None = None,
    group_by: str = "test_set",
    n_per_grade: int = 3000,
    seed: int = 0,
) -> dict[str, Any]:
    """``convfocus evaluate ablation``: the five presets on one evaluation set.

    Each configuration ``config1``..``config5`` is taken from ``models`` (name -> model
    path), from existing scan outputs ``tiles_root/<config>/<stem>/``, or trained
    from ``train_pool`` with :mod:`convfocus.training.train` presets (``steps`` to shorten).
    Each is evaluated with :func:`evaluate_grades` into ``out/<config>/``; writes
    ``ablation.json`` and ``ablation.md`` (shaped like the paper's Table 2).

    References: Kohlberger et al. 2019, Table 2.
    """
    o = Path(out)
    chosen: dict[str, dict[str, Any]] = {}
    unknown = set(models or {}) - set(ABLATION_PRESETS)
    if unknown:
        raise ConfigError(f"unknown configuration(s) {', '.join(sorted(unknown))}; "
                          f"use {', '.join(ABLATION_PRESETS)}")
    for name in ABLATION_PRESETS:
        if models and name in models:
            chosen[name] = {"model": models[name]}
        elif tiles_root is not None and (Path(tiles_root) / name).is_dir():
            chosen[name] = {"tiles": Path(tiles_root) / name}
        elif train_pool is not None:
            from convfocus.training.train import preset_config, train

            cfg = preset_config(name, steps=steps)
            log.info("training %s", name)
            chosen[name] = {"model": train(Path(train_pool), o / "models" / name, cfg,
                                           name=name, device=device)}
    if not chosen:
        raise ConfigError("no configuration to evaluate: give --model NAME=PATH, --tiles-root "
                          "or --train-pool")
    per_config: dict[str, dict[str, Any] | None] = {}
    test_sets: list[str] = []
    for name in ABLATION_PRESETS:
        if name not in chosen:
            per_config[name] = None
            continue
        res = evaluate_grades(
            manifest, o / name, tiles=chosen[name].get("tiles"), model=chosen[name].get("model"),
            mpp=mpp, device=device, group_by=group_by, n_per_grade=n_per_grade, seed=seed,
        )
        per_config[name] = res["test_sets"]
        test_sets += [t for t in res["test_sets"] if t not in test_sets]
    stats = {n: v for n, v in per_config.items() if v is not None}
    result = {
        "command": "ablation", "manifest": str(manifest), "test_sets": test_sets,
        "configs": {
            n: None if v is None else {
                "source": {k: str(s) for k, s in chosen[n].items()},
                **{ts: {k: v[ts][k] for k in ("spearman", "p_value", "slope", "intercept")}
                   for ts in v},
            } for n, v in per_config.items()
        },
        "paper": PAPER_TABLE2,
        "settings": {"n_per_grade": n_per_grade, "seed": seed, "group_by": group_by,
                     "steps": steps},
    }
    _write_bytes(o / "ablation.md", _ablation_markdown(stats, test_sets).encode())
    _write_json(o / "ablation.json", result)
    return result
