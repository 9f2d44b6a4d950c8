"""``convfocus evaluate zstack``: predicted class vs z-level of the same field.

Windows present at every level are compared across z: the mean class should form a
"V" with its minimum at the focal plane. Writes ``zstack.json``, ``zstack.png`` and
``zstack.md``.

References: Kohlberger et al., J Pathol Inform 2019 (ConvFocus), Figure 7.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from convfocus import NUM_CLASSES, metrics
from convfocus.errors import ConfigError
from convfocus.evaluation.inputs import read_manifest, resolve_path, scan_outputs
from convfocus.evaluation.outputs import (
    fmt,
    fmt_p,
    markdown_table,
    new_figure,
    write_bytes,
    write_figure,
    write_json,
)
from convfocus.io.scanout import read_scan_output


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
    fig, (ax, ax2) = new_figure(2)
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
                  f"{fmt(s['below']['spearman'])} / {fmt(s['above']['spearman'])}"))
    ax.legend(loc="upper center", fontsize=8, frameon=False)
    edges = np.r_[z - step / 2, z[-1] + step / 2] if z.size else np.zeros(1)
    ax2.hist(res["_per_window_min"], bins=np.unique(edges), color="0.4")
    ax2.set(xlabel="z of each window's lowest class (µm)", ylabel="windows")
    return write_figure(path, fig)


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
    sources = [resolve_path(mpath.parent, row["path"]) for row in rows]
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
        [[f"z_min = {res['z_min_um']:g} µm", s["below"]["spearman"], fmt_p(s["below"]["p_value"]),
          s["above"]["spearman"], fmt_p(s["above"]["p_value"])],
         ["z = 0", s0["below"]["spearman"], fmt_p(s0["below"]["p_value"]),
          s0["above"]["spearman"], fmt_p(s0["above"]["p_value"])],
         ["paper (z = 0)", 0.999, "< 0.001", 1.0, "< 0.001"]],
    ) + f"\n{res['n_windows']} windows present at all {res['levels']} levels.\n"
    write_bytes(o / "zstack.md", md.encode())
    write_json(o / "zstack.json", result)
    return result
