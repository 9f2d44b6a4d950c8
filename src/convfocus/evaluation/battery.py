"""The grader's validation battery (``convfocus check-model``): one blur scale on every tissue.

Every check runs on real tissue held out from training (the pool's validation sources,
the textureless check image, the real z-stack, the TCGA@Focus pair). A check is
*required* (the command exits non-zero when it fails) or *reported* (a figure to read).

Required gates:

- calibration: per held-out source, the mean class at each bokeh class; the spread
  across sources (10th-90th percentile) averaged over classes 4-24 is at most 3;
- sharp held-out tissue: mean class at most 2 on every held-out source scanned within
  1.5x of the model's pixel size (a 20x source brought to 0.25 µm/px is itself blurred by
  its upsampling, so its class 0 is reported, not gated);
- real z-stack: the mean class is lowest at plane 0 (+-1) and rises on both sides
  (Spearman of |plane| vs mean class at least 0.95 on each side);
- orientation per window: at least 95 % of windows within +-1 class under the 8
  flips and rotations;
- textureless sharp tissue (held out): mean class at most 5;
- real defocus: the TCGA@Focus out-of-focus patch grades at least 8 classes above its
  in-focus twin;
- synthetic validation: exact, +-1, +-3 and Spearman not below the reference figures
  (those of the first shipped grader).

Reported: the blur response of scikit-image's IHC image and the magnification
sensitivity of sharp tissue.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from convfocus import MODEL_MPP, NUM_CLASSES
from convfocus.grading.tiling import tissue_windows
from convfocus.synthesis.defocus import SynthesisParams, class_centre_px, synthesize

#: Reference synthetic-validation figures that a new grader must not fall below: those of
#: the first shipped grader (convfocus 0.1) on this battery's own synthetic set (held-out
#: sources of the v2 pool; on its own, smaller validation set it scored 22.7 / 50.8 / 89.2 %
#: and 0.975).
SYNTHETIC_FLOOR = {"exact": 0.233, "within1": 0.552, "within3": 0.900, "spearman": 0.969}

#: Classes whose interval-centre bokeh radius the blur-response check applies.
BLUR_STEPS = (0, 4, 8, 12, 16, 20, 24, 28)


@dataclass(frozen=True)
class Gates:
    """Thresholds of the required checks (a setting each)."""

    calibration_spread: float = 3.0
    calibration_classes: tuple[int, int] = (4, 24)
    sharp_max: float = 2.0
    zstack_plane_tolerance: int = 1
    zstack_spearman: float = 0.95
    orientation_share: float = 0.95
    textureless_max: float = 5.0
    real_oof_difference: float = 8.0
    synthetic_floor: Mapping[str, float] = field(default_factory=lambda: dict(SYNTHETIC_FLOOR))


@dataclass(frozen=True)
class HeldOut:
    """A held-out real source at the model's pixel size."""

    name: str
    rgb: np.ndarray
    mpp: float = MODEL_MPP  # the source's own pixel size before resampling

    @property
    def upsampled(self) -> bool:
        return self.mpp > 1.5 * MODEL_MPP


# --- windows ------------------------------------------------------------------------------------


def classes_of(grader: Any, windows: np.ndarray) -> np.ndarray:
    """Argmax class of each window."""
    if len(windows) == 0:
        return np.zeros(0, np.int64)
    return np.asarray(grader.predict_windows(windows)).argmax(1)


def mean_class(grader: Any, windows: np.ndarray) -> float:
    c = classes_of(grader, windows)
    return float(c.mean()) if c.size else float("nan")


def scanner_blur(rgb: np.ndarray, c: int, *, noise_s_8bit: float = 0.2,
                 jpeg_quality: int = 80, seed: int = 0) -> np.ndarray:
    """``rgb`` blurred to class ``c``'s centre radius, with a scanner's noise and JPEG."""
    if c == 0:
        return rgb
    p = SynthesisParams(c, class_centre_px(c), noise_s_8bit, jpeg_quality, seed)
    return synthesize(rgb, p)


# --- the checks ---------------------------------------------------------------------------------


def calibration(grader: Any, sources: Sequence[HeldOut], *, gates: Gates = Gates(),
                classes: Iterable[int] = range(NUM_CLASSES)) -> dict[str, Any]:
    """Per source, the mean class at each bokeh class; the spread across sources."""
    cls = list(classes)
    table: dict[str, list[float]] = {}
    for s in sources:
        table[s.name] = [round(mean_class(grader, tissue_windows(scanner_blur(s.rgb, c))), 2)
                         for c in cls]
    m = np.array(list(table.values()), dtype=np.float64)  # (sources, classes)
    spread = np.nanpercentile(m, 90, axis=0) - np.nanpercentile(m, 10, axis=0)
    lo, hi = gates.calibration_classes
    sel = [i for i, c in enumerate(cls) if lo <= c <= hi]
    mean_spread = float(np.nanmean(spread[sel])) if sel else float("nan")
    sharp = {n: v[cls.index(0)] for n, v in table.items()} if 0 in cls else {}
    gated = {s.name for s in sources if not s.upsampled}
    return {
        "classes": cls, "mean_class": table,
        "spread_p10_p90": [round(float(x), 2) for x in spread],
        "mean_spread": round(mean_spread, 2),
        "pass": bool(mean_spread <= gates.calibration_spread),
        "sharp": {"mean_class": sharp,
                  "upsampled_not_gated": sorted(set(sharp) - gated),
                  "pass": bool(gated) and all(v <= gates.sharp_max for n, v in sharp.items()
                                              if n in gated)},
    }


def orientation(grader: Any, sources: Sequence[HeldOut], *, gates: Gates = Gates()
                ) -> dict[str, Any]:
    """Share of (window, orientation) pairs within +-1 class of the window as stored."""
    within = total = 0
    worst = 0
    per_source = {}
    for s in sources:
        wins = tissue_windows(s.rgb)
        if len(wins) == 0:
            continue
        base = classes_of(grader, wins)
        ok = n = 0
        for k in range(4):
            for flip in (False, True):
                if k == 0 and not flip:
                    continue
                t = np.rot90(wins, k, axes=(1, 2))
                t = np.ascontiguousarray(t[:, :, ::-1] if flip else t)
                d = np.abs(classes_of(grader, t) - base)
                ok += int((d <= 1).sum())
                n += d.size
                worst = max(worst, int(d.max()))
        per_source[s.name] = round(ok / n, 4)
        within += ok
        total += n
    share = within / total if total else float("nan")
    return {"share_within_1": round(share, 4), "per_source": per_source,
            "max_difference": worst, "pass": bool(share >= gates.orientation_share)}


def zstack(grader: Any, folder: Path, *, gates: Gates = Gates()) -> dict[str, Any]:
    """The real z-stack (``plane+00.png`` best focus): minimum at 0, a V on both sides."""
    from convfocus.io.images import read_image
    from convfocus.metrics import spearman

    planes: dict[int, float] = {}
    for p in sorted(folder.glob("plane*.png")):
        m = re.fullmatch(r"plane([+-]\d+)\.png", p.name)
        if m:
            rgb = read_image(p)[..., :3]
            planes[int(m.group(1))] = mean_class(grader, tissue_windows(rgb, min_tissue=0.0))
    z = np.array(sorted(planes))
    c = np.array([planes[k] for k in z])
    z_min = int(z[int(np.argmin(c))])
    rho = {}
    for side, sel in (("below", z <= 0), ("above", z >= 0)):
        r = spearman(np.abs(z[sel]), c[sel]).r if sel.sum() >= 3 else float("nan")
        rho[side] = round(float(r), 3) if np.isfinite(r) else float("nan")
    ok = (abs(z_min) <= gates.zstack_plane_tolerance
          and all(np.isfinite(r) and r >= gates.zstack_spearman for r in rho.values()))
    return {"planes": [int(k) for k in z], "mean_class": [round(float(x), 2) for x in c],
            "plane_min": z_min, "spearman": rho, "pass": bool(ok)}


def real_oof(grader: Any, folder: Path, *, gates: Gates = Gates()) -> dict[str, Any] | None:
    from convfocus.io.images import read_image

    ins, outs = sorted(folder.glob("*infocus*.png")), sorted(folder.glob("*outfocus*.png"))
    if not ins or not outs:
        return None
    a = mean_class(grader, tissue_windows(read_image(ins[0])[..., :3]))
    b = mean_class(grader, tissue_windows(read_image(outs[0])[..., :3]))
    return {"in_focus": round(a, 2), "out_of_focus": round(b, 2), "difference": round(b - a, 2),
            "pass": bool(b - a >= gates.real_oof_difference)}


def textureless(grader: Any, rgb_at_model_mpp: np.ndarray, rgb_as_stored: np.ndarray, *,
                gates: Gates = Gates()) -> dict[str, Any]:
    m = mean_class(grader, tissue_windows(rgb_at_model_mpp))
    m_raw = mean_class(grader, tissue_windows(rgb_as_stored))
    return {"mean_class_at_model_mpp": round(m, 2), "mean_class_as_stored": round(m_raw, 2),
            "pass": bool(max(m, m_raw) <= gates.textureless_max)}


def synthetic(grader: Any, patches: np.ndarray, *, gates: Gates = Gates(),
              per_class: int = 40, seed: int = 1234) -> dict[str, Any]:
    """Accuracy on a fixed synthetic set cut from held-out patches (default synthesis)."""
    from convfocus.metrics import classification_metrics
    from convfocus.synthesis.defocus import SynthesisConfig
    from convfocus.training.dataset import validation_set

    xs, ys = validation_set(patches, SynthesisConfig(), per_class=per_class, seed=seed)
    res = dict(classification_metrics(ys, grader.predict_windows(xs).argmax(1)))
    res["floor"] = dict(gates.synthetic_floor)
    res["pass"] = bool(all(res[k] >= v - 1e-9 for k, v in gates.synthetic_floor.items()))
    return res


def blur_response(grader: Any, rgb: np.ndarray, steps: tuple[int, ...] = BLUR_STEPS) -> dict:
    """Mean class of one image blurred to each class's centre radius (reported)."""
    means = [mean_class(grader, tissue_windows(scanner_blur(rgb, c))) for c in steps]
    return {"classes": list(steps), "mean_class": [round(m, 2) for m in means],
            "monotonic": all(b > a for a, b in pairwise(means))}


def magnification(grader: Any, rgb: np.ndarray, factors: Sequence[float] = (0.5, 1.0, 2.0)
                  ) -> dict[str, float]:
    """Mean class of sharp tissue rescaled by each factor (x2 = pixels twice as small)."""
    from convfocus.io.images import resize

    return {f"x{f:g}": round(mean_class(grader, tissue_windows(
        rgb if f == 1 else resize(rgb, scale=f))), 2) for f in factors}


#: Pixel-size ratios (slide / model) at which :func:`sharp_floor` measures the class of sharp
#: tissue enlarged to the model's pixel size.
FLOOR_RATIOS = (1.5, 2.0, 3.0, 4.0, 6.0, 8.0)


def sharp_floor(grader: Any, sources: Sequence[HeldOut],
                ratios: Sequence[float] = FLOOR_RATIOS) -> dict[str, Any]:
    """The class sharp tissue grades at when a slide's pixels are ``ratio`` times the
    model's and a scan enlarges it: each held-out source reduced to the coarser pixels
    (area) and enlarged back (Lanczos, the scan's resize); the median over sources and
    its range. The report's coarse-slide note quotes these (``grading.report.SHARP_FLOOR``)."""
    from convfocus.io.images import resize

    rows = []
    for r in ratios:
        means = []
        for s in sources:
            h, w = s.rgb.shape[:2]
            small = resize(s.rgb, (max(1, round(w / r)), max(1, round(h / r))))
            means.append(mean_class(grader, tissue_windows(resize(small, (w, h)))))
        m = np.array([x for x in means if np.isfinite(x)])
        if m.size == 0:  # no source has tissue windows
            rows.append({"ratio": r, "median": None, "min": None, "max": None, "n": 0})
            continue
        rows.append({"ratio": r, "median": round(float(np.median(m)), 1),
                     "min": round(float(m.min()), 1), "max": round(float(m.max()), 1),
                     "n": int(m.size)})
    return {"sources": len(sources), "ratios": rows}


# --- held-out material --------------------------------------------------------------------------


def held_out_sources(shared_data: Path | None) -> list[HeldOut]:
    """The pool's validation sources at the model's pixel size (scikit-image's IHC always)."""
    from skimage import data

    from convfocus.io.images import read_image
    from convfocus.training.pool import DEFAULT_VALIDATION, KNOWN_MPP, manifest_mpp, resample_to

    ihc_mpp = KNOWN_MPP["skimage-ihc.png"] or MODEL_MPP
    out = [HeldOut("skimage-ihc.png", resample_to(data.immunohistochemistry(), ihc_mpp), ihc_mpp)]
    if shared_data is None or not shared_data.is_dir():
        return out
    mpps: dict[str, float | None] = dict(KNOWN_MPP)
    mpps.update(manifest_mpp(shared_data / "infocus-40x"))
    paths = {p.name: p for p in [*(shared_data / "infocus").glob("*"),
                                 *(shared_data / "infocus-40x").glob("*/*.png")]}
    for name in DEFAULT_VALIDATION:
        mpp = mpps.get(name)
        if name == "skimage-ihc.png" or name not in paths or not mpp:
            continue
        out.append(HeldOut(name, resample_to(read_image(paths[name])[..., :3], mpp), mpp))
    return out


def held_out_patches(sources: Sequence[HeldOut], *, patch_px: int = 300, per_source: int = 12,
                     seed: int = 0) -> np.ndarray:
    """Up to ``per_source`` tissue patches of each held-out source (the synthetic set)."""
    from convfocus.training.pool import cut_patches

    rng = np.random.default_rng(seed)
    out = []
    for s in sources:
        cands = cut_patches(s.rgb, patch_px=patch_px, stride_px=patch_px // 2)
        if len(cands) > per_source:
            cands = [cands[i] for i in sorted(rng.choice(len(cands), per_source, replace=False))]
        out += [s.rgb[y : y + patch_px, x : x + patch_px] for x, y, *_ in cands]
    return np.stack(out) if out else np.zeros((0, patch_px, patch_px, 3), np.uint8)


# --- the battery --------------------------------------------------------------------------------


REQUIRED = ("calibration", "sharp", "zstack", "orientation", "textureless", "real_oof",
            "synthetic")


def run_battery(grader: Any, shared_data: Path | None = None, *, gates: Gates = Gates()
                ) -> dict[str, Any]:
    """Every check; ``result["failed"]`` names the required checks that failed, and
    ``result["skipped"]`` those that could not run (their data absent)."""
    from convfocus.io.images import read_image
    from convfocus.training.pool import KNOWN_MPP, resample_to

    sources = held_out_sources(shared_data)
    spec = grader.spec
    res: dict[str, Any] = {
        "model": {"name": spec.name, "version": spec.version, "arch": spec.arch},
        "held_out_sources": [s.name for s in sources],
        "gates": {k: (dict(v) if isinstance(v, Mapping) else v)
                  for k, v in gates.__dict__.items()},
    }
    cal = calibration(grader, sources, gates=gates)
    res["sharp"] = cal.pop("sharp")
    res["calibration"] = cal
    res["orientation"] = orientation(grader, sources, gates=gates)
    res["synthetic"] = synthetic(grader, held_out_patches(sources), gates=gates)
    res["blur_response_ihc"] = blur_response(grader, sources[0].rgb)
    res["magnification_ihc"] = magnification(grader, sources[0].rgb)
    res["sharp_floor"] = sharp_floor(grader, sources)
    if shared_data is not None and shared_data.is_dir():
        zs = shared_data / "real-zstack" / "smear"
        if zs.is_dir():
            res["zstack"] = zstack(grader, zs, gates=gates)
        ro = real_oof(grader, shared_data / "real-oof", gates=gates)
        if ro is not None:
            res["real_oof"] = ro
        vl = shared_data / "infocus" / "histolab-very-low-nuclei-score-level0.png"
        if vl.is_file():
            raw = read_image(vl)[..., :3]
            res["textureless"] = textureless(
                grader, resample_to(raw, KNOWN_MPP.get(vl.name) or MODEL_MPP), raw, gates=gates)
    res["failed"] = [k for k in REQUIRED if k in res and not res[k]["pass"]]
    res["skipped"] = [k for k in REQUIRED if k not in res]
    return res


def figures(res: Mapping[str, Any]) -> dict[str, tuple[float, int]]:
    """Every gated figure of a battery result as ``name -> (value, direction)``, direction
    +1 where higher is better and -1 where lower is better."""
    out: dict[str, tuple[float, int]] = {}
    if "calibration" in res:
        out["calibration spread"] = (res["calibration"]["mean_spread"], -1)
    if "sharp" in res:
        sh = res["sharp"]
        out["sharp, worst source"] = (max((v for n, v in sh["mean_class"].items()
                                           if n not in sh["upsampled_not_gated"]),
                                          default=float("nan")), -1)
    if "zstack" in res:
        z = res["zstack"]
        out["z-stack, distance of the minimum from plane 0"] = (abs(z["plane_min"]), -1)
        out["z-stack, Spearman below"] = (z["spearman"]["below"], +1)
        out["z-stack, Spearman above"] = (z["spearman"]["above"], +1)
    if "orientation" in res:
        out["orientation, windows within +-1"] = (res["orientation"]["share_within_1"], +1)
    if "textureless" in res:
        t = res["textureless"]
        out["textureless"] = (max(t["mean_class_at_model_mpp"], t["mean_class_as_stored"]), -1)
    if "real_oof" in res:
        out["TCGA@Focus difference"] = (res["real_oof"]["difference"], +1)
    if "synthetic" in res:
        for k in ("exact", "within1", "within3", "spearman"):
            out[f"synthetic {k}"] = (res["synthetic"][k], +1)
    return out


def compare(res: Mapping[str, Any], ref: Mapping[str, Any], *, tolerance: float = 1e-3
            ) -> list[tuple[str, float, float, str]]:
    """``(figure, ours, reference, verdict)`` for every gated figure of either result:
    ``better``, ``same`` (within ``tolerance``: the battery rounds to 0.01 classes and 0.001
    of Spearman), ``worse``, or ``n/a`` where one side lacks the figure or it is not a
    number (ours missing or NaN where the reference has one counts as ``worse``)."""
    ours, theirs = figures(res), figures(ref)
    nan = float("nan")
    rows = []
    for name in {**ours, **theirs}:  # ours first, then those only the reference has
        (v, sign), r = ours.get(name, (nan, 0)), theirs.get(name, (nan, 0))[0]
        if not np.isfinite(r):
            word = "n/a"
        elif not np.isfinite(v):
            word = "worse"
        else:
            d = sign * (v - r)
            word = "better" if d > tolerance else "worse" if d < -tolerance else "same"
        rows.append((name, float(v), float(r), word))
    return rows


def summary_rows(res: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """``(check, figure, verdict)`` rows for the terminal and the model card."""
    def verdict(key: str) -> str:
        if key not in res:
            return "skipped (data absent)"
        return "pass" if res[key]["pass"] else "FAIL"

    rows = []
    if "calibration" in res:
        rows.append(("calibration spread (classes 4-24, P10-P90)",
                     f"{res['calibration']['mean_spread']:.2f} (<= 3)", verdict("calibration")))
    fig = figures(res)
    if "sharp" in res:
        rows.append(("sharp held-out tissue, worst source at 40x-35x",
                     f"{fig['sharp, worst source'][0]:.2f} (<= 2)", verdict("sharp")))
    if "zstack" in res:
        z = res["zstack"]
        rows.append(("real z-stack: minimum plane, Spearman below / above",
                     f"{z['plane_min']:+d}, {z['spearman']['below']} / {z['spearman']['above']}",
                     verdict("zstack")))
    if "orientation" in res:
        rows.append(("orientation: windows within +-1",
                     f"{100 * res['orientation']['share_within_1']:.1f} % (>= 95 %)",
                     verdict("orientation")))
    if "textureless" in res:
        rows.append(("textureless sharp tissue", f"{fig['textureless'][0]:.2f} (<= 5)",
                     verdict("textureless")))
    if "real_oof" in res:
        rows.append(("TCGA@Focus out-of-focus minus in-focus",
                     f"{res['real_oof']['difference']:.2f} (>= 8)", verdict("real_oof")))
    if "synthetic" in res:
        s = res["synthetic"]
        rows.append(("synthetic: exact / +-1 / +-3 / Spearman",
                     (f"{100 * s['exact']:.1f} / {100 * s['within1']:.1f} / "
                     f"{100 * s['within3']:.1f} % / {s['spearman']:.3f}"), verdict("synthetic")))
    return rows

