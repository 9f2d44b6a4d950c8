"""Calibration: the Fourier-domain blur difference, the scale fit, the noise estimator, the CLI."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from convfocus.synthesis.defocus import apply_blur
from convfocus.training.calibrate import (
    BlurDifference,
    block_noise_sigma,
    calibrate_blur,
    calibration_table,
    noise_by_intensity,
    write_calibration,
)


@pytest.fixture(scope="module")
def patches() -> np.ndarray:
    """Eight 64 x 64 crops of real tissue (small, so that the fit is quick)."""
    from skimage import data

    ihc = data.immunohistochemistry()
    return np.stack([ihc[y : y + 64, x : x + 64] for y in (40, 200) for x in (0, 120, 260, 400)])


@pytest.mark.parametrize(("sigma", "r"), [(0.8, 1.4), (3.0, 5.0), (9.0, 20.0), (60.0, 90.0)])
def test_fourier_difference_equals_spatial(patches: np.ndarray, sigma: float, r: float) -> None:
    x = patches.astype(np.float32)
    g = np.stack([apply_blur(p, "gaussian", sigma) for p in x]).astype(np.float64)
    d = np.stack([apply_blur(p, "bokeh", r) for p in x]).astype(np.float64)
    direct = float(((g - d) ** 2).sum())
    assert BlurDifference(patches).ssd(sigma, r) == pytest.approx(direct, rel=1e-4)


def test_fit_is_a_minimum(patches: np.ndarray) -> None:
    diff = BlurDifference(patches)
    for r in (1.6, 6.0, 25.0):
        s = diff.fit_sigma(r)
        best = diff.ssd(s, r)
        assert best < diff.ssd(0.9 * s, r) and best < diff.ssd(1.1 * s, r)
        assert 0.45 < s / r < 0.7


def test_calibrate_blur_reports_the_full_fit(patches: np.ndarray, tmp_path: Path) -> None:
    res = calibrate_blur(patches)
    assert [f.cls for f in res.classes] == list(range(1, 29))
    assert res.bokeh_scale == 1.4 and res.bokeh_max == 200.0
    assert res.gauss_scale == pytest.approx(res.ratio * 1.4, abs=1e-3)
    assert 0.45 < res.ratio < 0.7
    for f in res.classes:
        assert f.rms_at_fit <= f.rms_at_ratio + 1e-6
    ks = [k for k, _ in res.ratio_curve]
    best_k = ks[int(np.argmin([v for _, v in res.ratio_curve]))]
    assert abs(best_k - res.ratio) <= 0.03
    text = calibration_table(res)
    assert "0.9260" in text and "132.0" in text  # the paper's numbers, beside ours
    json_path, png_path = write_calibration(tmp_path, res, patches[0])
    assert json_path.read_text().startswith("{")
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_noise_estimator_recovers_sigma_on_a_ramp() -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:256, 0:256]
    ramp = (60 + 0.3 * xx + 0.2 * yy).astype(np.float64)  # linear: invisible to the estimator
    img = np.stack([ramp] * 3, axis=2) + rng.normal(0, 2.0, (256, 256, 3))
    _, sig = block_noise_sigma(img)
    assert np.median(sig) == pytest.approx(2.0, rel=0.05)
    curve = noise_by_intensity([img], percentile=50)
    assert np.nanmax(np.abs(curve - 2.0)) < 0.15


def test_synthetic_noise_is_in_the_measured_range() -> None:
    # the default S range gives noise of the size measured on real scans (0.5-1.1 levels
    # after JPEG; docs/paper-fidelity.md) and far below the paper's literal S
    from convfocus.synthesis.defocus import SynthesisConfig, add_poisson_noise, jpeg_roundtrip

    flat = np.full((128, 128, 3), 170 / 255, np.float32)
    lo, hi = SynthesisConfig().noise_s_8bit

    def measured(s8: float, q: int) -> float:
        x = add_poisson_noise(flat, s8 / 255, np.random.default_rng(0))
        out = jpeg_roundtrip(np.clip(x * 255 + 0.5, 0, 255).astype(np.uint8), q)
        return float(np.median(block_noise_sigma(out)[1]))

    assert measured(lo, 80) < 0.6
    assert 0.7 < measured(hi, 80) < 2.0
    assert measured(2.55, 80) > 5.0  # the paper's smallest S, 0.01 on [0, 1]
    assert math.isfinite(measured(math.sqrt(lo * hi), 90))


def test_cli_calibrate_on_an_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from skimage import data

    from convfocus.cli import main
    from convfocus.io.images import write_png

    img = write_png(tmp_path / "ihc.png", data.immunohistochemistry()[:320, :320])
    assert main(["calibrate", str(img), "--mpp", "0.25", "--per-source", "1"]) == 0
    out = capsys.readouterr().out
    assert "Gaussian scale" in out and "paper" in out
    assert main(["calibrate", str(tmp_path / "missing.png")]) == 2
