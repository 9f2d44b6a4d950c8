"""Class map -> connected OOF regions (GeoJSON), the OOF pattern, and verdict profiles.

A class map is an integer grid ``(rows, cols)`` of OOF classes 0..29 with -1
where there is no tissue, checked once where it is made
(:class:`~convfocus.grading.result.SlideResult`). Everything here is pure.

The paper distinguishes three kinds of OOF in decreasing severity: *global*
(the whole slide, e.g. the scanner focused on coverslip debris), *regional*
(larger tissue areas, e.g. fat or a whole "scan lane") and *local* (single cells
or small spots, since a ~5 µm section is thicker than the depth of field). It also
argues that the clinical use decides how much OOF is acceptable: cytology, which
relies on subcellular detail, needs higher focus quality than diagnoses based on
tissue architecture such as Gleason grading, and even mild OOF hides nuclear
detail needed for lymphoma; detector AUC drops gradually with OOF class.

References: Kohlberger et al., J Pathol Inform 2019, Introduction and Figure 1
(global / regional / local, scan lanes), Discussion (lymphoma), Figure 11
(detector AUC per bucket 0-4, 5-9, 10-14, 15-19, 20-29).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from convfocus import NUM_CLASSES
from convfocus.errors import ConfigError
from convfocus.grading.heatmap import BUCKETS
from convfocus.types import GridGeometry

__all__ = [
    "BUCKETS",
    "NO_TISSUE_REASON",
    "OOF_MIN_CLASS",
    "PROFILES",
    "SEVERITY_COLORS",
    "Profile",
    "bucket_label",
    "bucket_shares",
    "get_profile",
    "oof_pattern",
    "oof_regions",
    "severity_of",
    "verdict",
    "verdict_rank",
]

def label_cells(mask: np.ndarray, *, eight: bool = True
                ) -> tuple[np.ndarray, list[tuple[slice, slice]]]:
    """Connected components of a 2-D bool grid, 8- or 4-connected: int32 labels ``1..n``
    (0 outside), numbered in raster order of each component's first cell as
    ``scipy.ndimage.label`` numbers them, and each component's bounding box as slices.

    OpenCV's labelling: importing ``scipy.ndimage`` cost every scan 0.2-0.35 s.
    """
    m = np.ascontiguousarray(mask, dtype=np.uint8)
    n, lab, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8 if eight else 4,
                                                        ltype=cv2.CV_32S)
    if n <= 1:
        return np.zeros(m.shape, np.int32), []
    found, first = np.unique(lab.ravel(), return_index=True)
    first_of = np.full(n, lab.size, np.int64)
    first_of[found] = first
    order = np.argsort(first_of[1:], kind="stable") + 1  # OpenCV's labels in raster order
    remap = np.zeros(n, np.int32)
    remap[order] = np.arange(1, n, dtype=np.int32)
    boxes = [(slice(int(y), int(y + h)), slice(int(x), int(x + w)))
             for x, y, w, h in stats[order, :4]]
    return remap[lab], boxes

#: Cells of this class and above count as out of focus in regions and the pattern (buckets
#: 10-14 and above; the verdict profiles set their own).
OOF_MIN_CLASS = 10

#: QuPath classification colours of the region severities (RGB).
SEVERITY_COLORS: dict[str, tuple[int, int, int]] = {
    "mild": (255, 200, 0),
    "moderate": (255, 120, 0),
    "severe": (220, 0, 0),
}
_SEVERITY_RANK = {"mild": 0, "moderate": 1, "severe": 2}


# --- buckets -----------------------------------------------------------------------------------


def bucket_label(bucket: tuple[int, int]) -> str:
    """``(10, 14)`` -> ``"10-14"``."""
    return f"{bucket[0]}-{bucket[1]}"


def bucket_shares(
    classmap: np.ndarray, *, buckets: Sequence[tuple[int, int]] = BUCKETS
) -> dict[str, float]:
    """Share of tissue cells (class >= 0) in each bucket, keyed ``"0-4"``, ``"5-9"``, ...

    All shares are 0.0 when there is no tissue; otherwise they sum to 1 when the
    buckets cover all classes.
    """
    cm = np.asarray(classmap)
    tissue = cm[cm >= 0]
    n = tissue.size
    out: dict[str, float] = {}
    for lo, hi in buckets:
        k = int(np.count_nonzero((tissue >= lo) & (tissue <= hi)))
        out[bucket_label((lo, hi))] = k / n if n else 0.0
    return out


# --- regions -----------------------------------------------------------------------------------


def severity_of(mean_class: float, *, edges: tuple[float, float] = (15.0, 20.0)) -> str:
    """Severity of a region from its mean class.

    ``mean < 15`` mild (bucket 10-14), ``15 <= mean < 20`` moderate (bucket 15-19),
    ``mean >= 20`` severe (bucket 20-29); ``edges`` moves the two boundaries.
    """
    if mean_class < edges[0]:
        return "mild"
    if mean_class < edges[1]:
        return "moderate"
    return "severe"


def _trace_rings(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """Closed boundary rings of a boolean cell mask along exact cell edges.

    Vertices are grid corners ``(x, y) = (col, row)``. Each ring is a list of corner
    vertices (only where the direction changes), not repeated at the end, with no
    vertex visited twice. Shells have positive signed (shoelace) area in ``(x, y)``,
    holes negative. Where two cells touch only at a corner the ring turns to stay
    on its own cell, and a ring that still meets itself at a corner is split there,
    so every ring is simple.
    """
    m = np.pad(mask.astype(bool), 1)
    core = m[1:-1, 1:-1]
    r, c = np.nonzero(core & ~m[:-2, 1:-1])  # top edges, heading +x
    edges = [np.stack([c, r, c + 1, r], 1)]
    r, c = np.nonzero(core & ~m[1:-1, 2:])  # right edges, heading +y
    edges.append(np.stack([c + 1, r, c + 1, r + 1], 1))
    r, c = np.nonzero(core & ~m[2:, 1:-1])  # bottom edges, heading -x
    edges.append(np.stack([c + 1, r + 1, c, r + 1], 1))
    r, c = np.nonzero(core & ~m[1:-1, :-2])  # left edges, heading -y
    edges.append(np.stack([c, r + 1, c, r], 1))
    e = np.concatenate(edges).astype(np.int64)
    if e.size == 0:
        return []

    outgoing: dict[tuple[int, int], list[int]] = {}
    for i, (x0, y0, _, _) in enumerate(e.tolist()):
        outgoing.setdefault((x0, y0), []).append(i)
    used = np.zeros(len(e), dtype=bool)
    el = e.tolist()
    rings: list[list[tuple[int, int]]] = []
    for start in range(len(e)):
        if used[start]:
            continue
        path: list[tuple[int, int]] = []
        i = start
        while not used[i]:
            used[i] = True
            x0, y0, x1, y1 = el[i]
            path.append((x0, y0))
            cands = [j for j in outgoing[(x1, y1)] if not used[j]]
            if not cands:
                break
            if len(cands) > 1:  # corner touch: turn right (towards the cell we follow)
                dx, dy = x1 - x0, y1 - y0
                want = (-dy, dx)
                cands = [j for j in cands if (el[j][2] - x1, el[j][3] - y1) == want] or cands
            i = cands[0]
        rings.extend(_split_at_repeats(path))
    return [_drop_collinear(ring) for ring in rings]


def _split_at_repeats(path: list[tuple[int, int]]) -> list[list[tuple[int, int]]]:
    """Split a closed vertex loop into simple loops wherever a vertex repeats."""
    out: list[list[tuple[int, int]]] = []
    stack: list[tuple[int, int]] = []
    where: dict[tuple[int, int], int] = {}
    for v in path:
        if v in where:
            k = where[v]
            loop = stack[k:]
            for u in loop[1:]:
                del where[u]
            del stack[k + 1 :]
            if len(loop) >= 3:
                out.append(loop)
        else:
            where[v] = len(stack)
            stack.append(v)
    if len(stack) >= 3:
        out.append(stack)
    return out


def _drop_collinear(ring: list[tuple[int, int]]) -> list[tuple[int, int]]:
    n = len(ring)
    keep = []
    for k in range(n):
        ax, ay = ring[k - 1]
        bx, by = ring[k]
        cx, cy = ring[(k + 1) % n]
        if (bx - ax) * (cy - by) - (by - ay) * (cx - bx) != 0:
            keep.append(ring[k])
    return keep


def _signed_area(ring: Sequence[tuple[float, float]]) -> float:
    s = 0.0
    n = len(ring)
    for k in range(n):
        x0, y0 = ring[k]
        x1, y1 = ring[(k + 1) % n]
        s += x0 * y1 - x1 * y0
    return s / 2.0


def _inside(pt: tuple[float, float], ring: Sequence[tuple[float, float]]) -> bool:
    """Even-odd ray test; ``pt`` is a cell centre, never on a (grid-corner) ring edge."""
    x, y = pt
    inside = False
    n = len(ring)
    for k in range(n):
        x0, y0 = ring[k]
        x1, y1 = ring[(k + 1) % n]
        if (y0 > y) != (y1 > y) and x < x0 + (y - y0) * (x1 - x0) / (y1 - y0):
            inside = not inside
    return inside


def _hole_probe(ring: list[tuple[int, int]]) -> tuple[float, float]:
    """Centre of a cell just inside a hole ring (to the left of its first edge)."""
    (x0, y0), (x1, y1) = ring[0], ring[1]
    dx, dy = int(np.sign(x1 - x0)), int(np.sign(y1 - y0))
    return (x0 + 0.5 * dx + 0.5 * dy, y0 + 0.5 * dy - 0.5 * dx)


def _polygons(mask: np.ndarray) -> list[list[list[tuple[int, int]]]]:
    """Polygons (shell then holes, in cell-corner coordinates) of a boolean mask."""
    rings = _trace_rings(mask)
    shells = [r for r in rings if _signed_area(r) > 0]
    holes = [r for r in rings if _signed_area(r) < 0]
    areas = [_signed_area(s) for s in shells]
    polys: list[list[list[tuple[int, int]]]] = [[s] for s in shells]
    for h in holes:
        probe = _hole_probe(h)
        owners = [k for k, s in enumerate(shells) if _inside(probe, s)]
        if owners:
            best = min(owners, key=lambda k: areas[k])
            polys[best].append(h)
    return polys


def _ring_to_l0(
    ring: list[tuple[int, int]],
    g: GridGeometry,
    l0_dimensions: tuple[int, int] | None,
) -> list[list[float]]:
    x0, y0 = g.l0_origin_px
    s = g.l0_stride_px
    pts = []
    for cx, cy in ring:
        x = x0 + cx * s
        y = y0 + cy * s
        if l0_dimensions is not None:
            x = min(max(x, 0), l0_dimensions[0])
            y = min(max(y, 0), l0_dimensions[1])
        pts.append([_tidy(x), _tidy(y)])
    pts.append(list(pts[0]))  # closed ring
    return pts


def _tidy(v: float) -> float:
    f = float(v)
    return int(f) if f.is_integer() else round(f, 3)  # type: ignore[return-value]


def oof_regions(
    classmap: np.ndarray,
    grid: GridGeometry,
    *,
    min_class: int = OOF_MIN_CLASS,
    min_cells: int = 2,
    mpp: float | None = None,
    l0_dimensions: tuple[int, int] | None = None,
    severity_edges: tuple[float, float] = (15.0, 20.0),
) -> dict[str, Any]:
    """Connected out-of-focus regions as a QuPath-compatible GeoJSON FeatureCollection.

    Cells with class ``>= min_class`` are OOF; 8-connected OOF cells form a region;
    regions with fewer than ``min_cells`` cells are dropped. The outline follows
    the cells' ``stride x stride`` squares exactly, in level-0 pixels. The geometry
    is a ``Polygon`` (exterior ring first, then one ring per hole, every ring
    closed and simple), or a ``MultiPolygon`` when parts of the region touch only
    at a corner. Features are sorted worst first (severity, then area).

    Parameters
    ----------
    classmap
        ``(rows, cols)`` classes, -1 = no tissue.
    grid
        Where the cells lie on level 0.
    min_class
        Lowest class counted as OOF (default 10: buckets 10-14 and above).
    min_cells
        Smallest region kept, in cells.
    mpp
        Level-0 µm per pixel, for ``area_um2`` (``None`` leaves it ``None``).
    l0_dimensions
        Level-0 ``(width, height)``; coordinates are clipped to the slide.
    severity_edges
        Mean-class boundaries of mild / moderate / severe, see :func:`severity_of`.

    Returns
    -------
    dict
        ``{"type": "FeatureCollection", "features": [...]}``; each feature's
        properties hold ``objectType``, ``classification`` (name ``"OOF <severity>"``
        and colour), ``name``, ``severity``, ``mean_class``, ``max_class``,
        ``n_cells``, ``area_um2``, ``centroid_l0_px``, ``bbox_l0_px`` and QuPath
        ``measurements``.
    """
    cm = np.asarray(classmap)
    if cm.shape != grid.shape:
        raise ValueError(f"class map shape {cm.shape} does not match grid {grid.shape}")
    if min_cells < 1:
        raise ValueError(f"min_cells must be >= 1, got {min_cells}")
    oof = cm >= min_class
    labels, boxes = label_cells(oof)
    cell_um2 = None if mpp is None else (grid.l0_stride_px * mpp) ** 2
    x0, y0 = grid.l0_origin_px
    s = grid.l0_stride_px
    features: list[dict[str, Any]] = []
    for k, sl in enumerate(boxes, start=1):
        sub = labels[sl] == k
        n_cells = int(sub.sum())
        if n_cells < min_cells:
            continue
        classes = cm[sl][sub]
        mean_class = float(classes.mean())
        severity = severity_of(mean_class, edges=severity_edges)
        polys = _polygons(sub)
        r_off, c_off = sl[0].start, sl[1].start
        shifted = [
            [[(x + c_off, y + r_off) for x, y in ring] for ring in poly] for poly in polys
        ]
        coords = [[_ring_to_l0(ring, grid, l0_dimensions) for ring in poly] for poly in shifted]
        geometry: dict[str, Any] = (
            {"type": "Polygon", "coordinates": coords[0]}
            if len(coords) == 1
            else {"type": "MultiPolygon", "coordinates": coords}
        )
        rr, cc = np.nonzero(sub)
        cx = x0 + (float(cc.mean()) + c_off + 0.5) * s
        cy = y0 + (float(rr.mean()) + r_off + 0.5) * s
        bbox = [x0 + sl[1].start * s, y0 + sl[0].start * s, x0 + sl[1].stop * s,
                y0 + sl[0].stop * s]
        if l0_dimensions is not None:
            bbox = [min(max(v, 0), l0_dimensions[i % 2]) for i, v in enumerate(bbox)]
        area = None if cell_um2 is None else round(n_cells * cell_um2, 1)
        props: dict[str, Any] = {
            "objectType": "annotation",
            "classification": {"name": f"OOF {severity}", "color": list(SEVERITY_COLORS[severity])},
            "severity": severity,
            "mean_class": round(mean_class, 2),
            "max_class": int(classes.max()),
            "n_cells": n_cells,
            "area_um2": area,
            "centroid_l0_px": [_tidy(cx), _tidy(cy)],
            "bbox_l0_px": [_tidy(v) for v in bbox],
            "measurements": {
                "OOF mean class": round(mean_class, 2),
                "OOF max class": int(classes.max()),
                "OOF cells": n_cells,
            },
        }
        if area is not None:
            props["measurements"]["OOF area um^2"] = area
        features.append({"type": "Feature", "geometry": geometry, "properties": props})
    features.sort(
        key=lambda f: (
            -_SEVERITY_RANK[f["properties"]["severity"]],
            -f["properties"]["n_cells"],
            -f["properties"]["mean_class"],
        )
    )
    for rank, f in enumerate(features, start=1):
        p = f["properties"]
        p["name"] = f"OOF region {rank} ({p['severity']})"
        p["rank"] = rank
    return {"type": "FeatureCollection", "features": features}


# --- pattern -----------------------------------------------------------------------------------


def _lanes_along(
    oof: np.ndarray,
    tissue: np.ndarray,
    *,
    min_lane_share: float,
    min_length_cells: int,
    min_aspect: float,
    min_contrast: float,
    max_width_share: float,
) -> list[tuple[int, int]]:
    """Bands of columns where OOF runs along the tissue (vertical lanes).

    Returns the bands as inclusive ``(first, last)`` column ranges.
    """
    n_t = tissue.sum(axis=0)
    n_o = (oof & tissue).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(n_t > 0, n_o / np.maximum(n_t, 1), 0.0)
    hot = (frac >= min_lane_share) & (n_t >= min_length_cells)
    tissue_cols = np.flatnonzero(n_t > 0)
    if tissue_cols.size == 0:
        return []
    span = tissue_cols[-1] - tissue_cols[0] + 1
    lanes: list[tuple[int, int]] = []
    labels, boxes = label_cells(hot[None, :], eight=False)
    for k in range(1, len(boxes) + 1):
        idx = np.flatnonzero(labels[0] == k)
        a, b = int(idx[0]), int(idx[-1])
        width = b - a + 1
        if width > max_width_share * span:
            continue
        rows_hit = np.flatnonzero((oof & tissue)[:, a : b + 1].any(axis=1))
        length = int(rows_hit[-1] - rows_hit[0] + 1) if rows_hit.size else 0
        if length < min_length_cells or length < min_aspect * width:
            continue
        lo, hi = max(0, a - width), min(oof.shape[1], b + 1 + width)
        flank = np.r_[lo:a, b + 1 : hi]
        flank = flank[n_t[flank] > 0]
        if flank.size == 0:
            continue
        band_share = n_o[a : b + 1].sum() / n_t[a : b + 1].sum()
        flank_share = n_o[flank].sum() / n_t[flank].sum()
        if band_share - flank_share >= min_contrast:
            lanes.append((a, b))
    return lanes


def oof_pattern(
    classmap: np.ndarray,
    *,
    min_class: int = OOF_MIN_CLASS,
    global_share: float = 0.5,
    regional_min_cells: int = 10,
    lane_min_share: float = 0.6,
    lane_min_length_cells: int = 8,
    lane_min_aspect: float = 3.0,
    lane_min_contrast: float = 0.4,
    lane_max_width_share: float = 0.5,
    grid: GridGeometry | None = None,
) -> dict[str, Any]:
    """Classify the spatial OOF pattern of a slide and look for scan lanes.

    Cells with class ``>= min_class`` are OOF. The pattern, checked in this order:

    - ``"none"``: no OOF tissue cell.
    - ``"global"``: at least ``global_share`` (default 0.5, "most of the tissue") of
      the tissue is OOF.
    - ``"regional"``: some 8-connected OOF region has at least ``regional_min_cells``
      cells (default 10; a cell is 128 px = 32 µm at 40x, so about 0.01 mm², about
      ten times the ~35 µm field of one window).
    - ``"local"``: OOF only in smaller, scattered spots.

    Scan lanes are vertical or horizontal stripes of constant width across the
    slide. Per grid column (or row) the share of its tissue cells that are OOF is
    computed; adjacent columns with share ``>= lane_min_share`` and at least
    ``lane_min_length_cells`` tissue cells form a band. A band is a lane when its
    OOF runs at least ``lane_min_length_cells`` and ``lane_min_aspect`` times its
    width along the stripe, it is at most ``lane_max_width_share`` of the tissue
    extent wide, and its OOF share exceeds that of flanks as wide as the band on
    both sides by ``lane_min_contrast``. When both directions qualify, the one with
    more lane OOF cells wins.

    Parameters
    ----------
    grid
        Optional geometry; adds ``lane_positions_l0_px`` (level-0 x or y ranges).

    Returns
    -------
    dict
        ``pattern``, ``oof_share``, ``oof_cells``, ``tissue_cells``, ``n_regions``,
        ``largest_region_cells``, ``scan_lanes`` (bool), ``lane_direction``
        (``"vertical"``, ``"horizontal"`` or ``None``), ``lane_positions`` (inclusive
        ``[first, last]`` grid columns for vertical lanes, rows for horizontal) and
        the thresholds used.

    References: Kohlberger et al. 2019, Introduction and Figure 1.
    """
    cm = np.asarray(classmap)
    tissue = cm >= 0
    oof = cm >= min_class
    n_tissue = int(tissue.sum())
    n_oof = int(oof.sum())
    share = n_oof / n_tissue if n_tissue else 0.0
    labels, boxes = label_cells(oof)
    largest = int(np.bincount(labels.ravel())[1:].max()) if boxes else 0

    if n_oof == 0:
        pattern = "none"
    elif share >= global_share:
        pattern = "global"
    elif largest >= regional_min_cells:
        pattern = "regional"
    else:
        pattern = "local"

    def find(o: np.ndarray, t: np.ndarray) -> list[tuple[int, int]]:
        return _lanes_along(
            o,
            t,
            min_lane_share=lane_min_share,
            min_length_cells=lane_min_length_cells,
            min_aspect=lane_min_aspect,
            min_contrast=lane_min_contrast,
            max_width_share=lane_max_width_share,
        )

    v_lanes = find(oof, tissue)
    h_lanes = find(oof.T, tissue.T)
    v_cells = sum(int(oof[:, a : b + 1].sum()) for a, b in v_lanes)
    h_cells = sum(int(oof[a : b + 1, :].sum()) for a, b in h_lanes)
    direction: str | None = None
    lanes: list[tuple[int, int]] = []
    if v_lanes and v_cells >= h_cells:
        direction, lanes = "vertical", v_lanes
    elif h_lanes:
        direction, lanes = "horizontal", h_lanes

    out: dict[str, Any] = {
        "pattern": pattern,
        "oof_min_class": min_class,
        "oof_share": share,
        "oof_cells": n_oof,
        "tissue_cells": n_tissue,
        "n_regions": len(boxes),
        "largest_region_cells": largest,
        "scan_lanes": bool(lanes),
        "lane_direction": direction,
        "lane_positions": [[a, b] for a, b in lanes],
        "thresholds": {
            "global_share": global_share,
            "regional_min_cells": regional_min_cells,
            "lane_min_share": lane_min_share,
            "lane_min_length_cells": lane_min_length_cells,
            "lane_min_aspect": lane_min_aspect,
            "lane_min_contrast": lane_min_contrast,
            "lane_max_width_share": lane_max_width_share,
        },
    }
    if grid is not None and lanes:
        origin = grid.l0_origin_px[0] if direction == "vertical" else grid.l0_origin_px[1]
        out["lane_positions_l0_px"] = [
            [_tidy(origin + a * grid.l0_stride_px), _tidy(origin + (b + 1) * grid.l0_stride_px)]
            for a, b in lanes
        ]
    return out


# --- verdicts ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """How much OOF a clinical use tolerates.

    Attributes
    ----------
    name, description
        Identifier and one-line purpose.
    oof_min_class
        Cells at or above this class count as unusable for this use.
    review_share, rescan_share
        Share of tissue cells that are unusable at which the verdict becomes
        ``"review"`` / ``"rescan"``.
    review_region_cells, rescan_region_cells
        Size (cells, 8-connected) of the largest unusable region at which the
        verdict becomes ``"review"`` / ``"rescan"``: regional OOF can hide a lesion
        even when the slide average looks fine.
    min_tissue_mm2
        Least graded tissue (mm²) a verdict rests on; a slide with less gets
        ``"insufficient-tissue"``.

    A profile with every number lower than or equal to another's is never more
    lenient than it on any class map of a slide with enough tissue for both;
    :data:`PROFILES` is ordered that way.
    """

    name: str
    description: str
    review_share: float
    rescan_share: float
    oof_min_class: int
    review_region_cells: int
    rescan_region_cells: int
    min_tissue_mm2: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.review_share <= self.rescan_share:
            raise ConfigError(f"profile {self.name!r}: need 0 <= review_share <= rescan_share")
        if not 1 <= self.review_region_cells <= self.rescan_region_cells:
            raise ConfigError(
                f"profile {self.name!r}: need 1 <= review_region_cells <= rescan_region_cells"
            )
        if not 0 <= self.oof_min_class < NUM_CLASSES:
            raise ConfigError(f"profile {self.name!r}: oof_min_class must be 0..{NUM_CLASSES - 1}")
        if not self.min_tissue_mm2 >= 0.0:
            raise ConfigError(f"profile {self.name!r}: min_tissue_mm2 must be >= 0")


#: Built-in profiles, from most tolerant to strictest (each componentwise <= the previous).
#:
#: - ``histology``: architecture-based diagnosis (e.g. Gleason grading) survives mild
#:   to moderate blur; classes >= 15 count, review at 10 % of tissue or a 100-cell
#:   (~0.1 mm²) region, rescan at 25 % or a 1000-cell (~1 mm²) region.
#: - ``cytology``: nuclear and subcellular detail needs a sharper image (the paper's
#:   cytology-vs-architecture argument); classes >= 10 count, review at 5 % or
#:   25 cells, rescan at 15 % or 250 cells.
#: - ``lymphoma``: even mild OOF hides the nuclear detail lymphoma diagnosis relies on
#:   (paper, Discussion); classes >= 5 count, shares and regions as cytology.
#: - ``ai``: detectors lose AUC gradually from bucket 5-9 on (paper, Figure 11) and
#:   look at one small patch at a time, so any moderately sized spot matters;
#:   classes >= 5 count, review at 2 % or 10 cells, rescan at 10 % or 100 cells.
#:
#: Each verdict needs a least area of graded tissue, ``min_tissue_mm2``: five times the
#: profile's review region (a cell is 32 µm square, about 0.001 mm², at 0.25 µm/px), so
#: that one region just large enough for review is at most a fifth of the tissue and the
#: shares rest on a few hundred windows: histology 0.5 mm² (100-cell region; about the
#: smallest routine specimen, a fragment of an endoscopic biopsy, 1 x 0.5 mm), cytology
#: and lymphoma 0.13 mm² (25 cells), ai 0.05 mm² (10 cells). A 512 px field at 40x
#: (0.016 mm²) is below every one.
#:
#: The numbers are starting points, not validated clinical cut-offs.
PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            name="histology",
            description="architecture-based diagnosis (e.g. Gleason grading): tolerant",
            review_share=0.10,
            rescan_share=0.25,
            oof_min_class=15,
            review_region_cells=100,
            rescan_region_cells=1000,
            min_tissue_mm2=0.5,
        ),
        Profile(
            name="cytology",
            description="nuclear / subcellular detail: needs higher focus quality",
            review_share=0.05,
            rescan_share=0.15,
            oof_min_class=10,
            review_region_cells=25,
            rescan_region_cells=250,
            min_tissue_mm2=0.13,
        ),
        Profile(
            name="lymphoma",
            description="fine nuclear detail: even mild OOF interferes",
            review_share=0.05,
            rescan_share=0.15,
            oof_min_class=5,
            review_region_cells=25,
            rescan_region_cells=250,
            min_tissue_mm2=0.13,
        ),
        Profile(
            name="ai",
            description="input to an AI detector: strict, detector accuracy drops with OOF",
            review_share=0.02,
            rescan_share=0.10,
            oof_min_class=5,
            review_region_cells=10,
            rescan_region_cells=100,
            min_tissue_mm2=0.05,
        ),
    )
}

_VERDICT_RANK = {"pass": 0, "review": 1, "rescan": 2, "insufficient-tissue": 3, "no-tissue": 4}

#: Why a slide with no graded tissue has none, when no ink was found either.
NO_TISSUE_REASON = "no tissue dense enough to grade: glass, fat or very pale tissue"


def get_profile(profile: Profile | str) -> Profile:
    """A :class:`Profile` by name (or the profile itself).

    Raises
    ------
    ConfigError
        If the name is unknown.
    """
    if isinstance(profile, Profile):
        return profile
    try:
        return PROFILES[profile]
    except KeyError:
        known = ", ".join(PROFILES)
        raise ConfigError(f"unknown profile {profile!r}; choose one of: {known}") from None


def _mm2(x: float) -> str:
    """An area for a sentence: ``0.65``, ``0.016``."""
    return f"{x:.2f}" if x >= 0.1 else f"{x:.2g}"


def verdict(
    classmap: np.ndarray,
    profile: Profile | str = "histology",
    *,
    cell_mm2: float | None = None,
    ink_mm2: float = 0.0,
) -> dict[str, Any]:
    """Pass / review / rescan for one slide under a clinical-use profile, or why there is
    none (no-tissue, insufficient-tissue).

    ``rescan`` when the unusable share (class ``>= profile.oof_min_class``) reaches
    ``rescan_share`` or the largest unusable 8-connected region reaches
    ``rescan_region_cells``; else ``review`` at ``review_share`` or
    ``review_region_cells``; else ``pass``. Both measures only grow when a cell's
    class grows, so more blur never gives a better verdict, and a profile with
    lower numbers is never more lenient. The built-in thresholds and the reasons for
    them are listed at :data:`PROFILES`.

    A map with no tissue gives ``no-tissue``; with ``cell_mm2`` (the area one cell
    stands for, mm²) a slide with less graded tissue than ``profile.min_tissue_mm2``
    gives ``insufficient-tissue`` (its share and region are still reported).
    ``ink_mm2``: ink left out of grading, named in the no-tissue reason.

    Returns
    -------
    dict
        ``verdict``, ``profile``, ``reasons`` (human-readable lines),
        ``oof_min_class``, ``oof_share``, ``largest_region_cells``, ``tissue_mm2``
        (None without ``cell_mm2``) and ``min_tissue_mm2``.
    """
    p = get_profile(profile)
    cm = np.asarray(classmap)
    tissue = cm >= 0
    n_tissue = int(tissue.sum())
    area = None if cell_mm2 is None else n_tissue * float(cell_mm2)
    base: dict[str, Any] = {
        "profile": p.name,
        "oof_min_class": p.oof_min_class,
        "tissue_mm2": None if area is None else round(area, 4),
        "min_tissue_mm2": p.min_tissue_mm2,
    }
    if n_tissue == 0:
        reason = NO_TISSUE_REASON
        if ink_mm2 > 0:
            reason = (f"no tissue to grade: only marker ink or other colour that is not "
                      f"stained tissue ({_mm2(ink_mm2)} mm², left out)")
        return {"verdict": "no-tissue", **base, "reasons": [reason], "oof_share": 0.0,
                "largest_region_cells": 0}
    bad = cm >= p.oof_min_class
    share = int(bad.sum()) / n_tissue
    labels, boxes = label_cells(bad)
    largest = int(np.bincount(labels.ravel())[1:].max()) if boxes else 0

    reasons: list[str] = []
    level = "pass"
    what = f"class >= {p.oof_min_class}"
    if share >= p.rescan_share:
        level = "rescan"
        reasons.append(f"{share:.1%} of tissue at {what} (rescan at {p.rescan_share:.0%})")
    elif share >= p.review_share:
        level = "review"
        reasons.append(f"{share:.1%} of tissue at {what} (review at {p.review_share:.0%})")
    if largest >= p.rescan_region_cells:
        level = "rescan"
        reasons.append(
            f"connected region of {largest} cells at {what} "
            f"(rescan at {p.rescan_region_cells})"
        )
    elif largest >= p.review_region_cells:
        if level == "pass":
            level = "review"
        reasons.append(
            f"connected region of {largest} cells at {what} "
            f"(review at {p.review_region_cells})"
        )
    if not reasons:
        reasons.append(
            f"{share:.1%} of tissue at {what}, largest region {largest} cells: "
            f"below review thresholds ({p.review_share:.0%}, {p.review_region_cells} cells)"
        )
    if area is not None and area < p.min_tissue_mm2:
        short = (f"too little tissue for a verdict: {_mm2(area)} mm² graded, a {p.name} "
                 f"verdict needs {p.min_tissue_mm2:g} mm² (glass, fat, very pale tissue and ink "
                 "are not graded)")
        there = f"on the tissue there is: {share:.1%} at {what}, largest region {largest} cells"
        reasons = [short, there]
        level = "insufficient-tissue"
    return {
        "verdict": level,
        **base,
        "reasons": reasons,
        "oof_share": share,
        "largest_region_cells": largest,
    }


def verdict_rank(v: str) -> int:
    """Order of verdicts: pass 0 < review 1 < rescan 2 < insufficient-tissue 3 <
    no-tissue 4 (the last two are not about focus: they sort after it)."""
    return _VERDICT_RANK[v]
