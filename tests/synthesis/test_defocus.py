"""Semi-synthetic defocus: class intervals, seeded sampling, kernels, borders, noise, JPEG."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import numpy as np
import pytest

from convfocus.synthesis.defocus import (
    SPECTRAL_MIN_HALF_WIDTH,
    SynthesisConfig,
    SynthesisParams,
    _blur_cosine,
    _pad,
    add_poisson_noise,
    apply_blur,
    blur_valid,
    class_centre_px,
    class_interval,
    disk_kernel,
    gaussian_kernel,
    jpeg_roundtrip,
    kernel_half_width,
    sample_blur_param,
    sample_synthesis,
    synthesize,
    use_cosine_route,
)

STEP = 3.0 / 28.0


@pytest.fixture(scope="module")
def tissue() -> np.ndarray:
    """A 300 x 300 crop of real tissue (scikit-image's IHC image)."""
    from skimage import data

    return np.ascontiguousarray(data.immunohistochemistry()[100:400, 150:450])


def grad_energy(img: np.ndarray) -> float:
    x = img.astype(np.float64)
    return float((np.diff(x, axis=0) ** 2).mean() + (np.diff(x, axis=1) ** 2).mean())


# --- class intervals (SPEC §3) -------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "s", "top"), [("gaussian", 0.926, 132.0), ("bokeh", 1.4, 200.0)])
def test_exponential_intervals_are_the_paper_formulae(kind: str, s: float, top: float) -> None:
    assert class_interval(0, kind=kind) == (0.0, 0.0)
    for c in range(1, 29):
        lo, hi = class_interval(c, kind=kind)
        assert lo == pytest.approx(s * math.exp((c - 1) * STEP), rel=1e-12)
        assert hi == pytest.approx(s * math.exp(c * STEP), rel=1e-12)
    assert class_interval(29, kind=kind) == pytest.approx((s * math.exp(3.0), top), rel=1e-12)


def test_class_intervals_tile_the_range() -> None:
    for kind in ("gaussian", "bokeh"):
        for spacing in ("exponential", "linear"):
            bounds = [class_interval(c, kind=kind, spacing=spacing) for c in range(1, 30)]
            for (_, hi), (lo, _) in itertools.pairwise(bounds):
                assert lo == pytest.approx(hi, rel=1e-12)


def test_linear_variant_spreads_the_same_range_evenly() -> None:
    s = 1.4
    width = (s * math.exp(3.0) - s) / 28
    for c in range(1, 29):
        lo, hi = class_interval(c, spacing="linear")
        assert lo == pytest.approx(s + (c - 1) * width, rel=1e-12)
        assert hi - lo == pytest.approx(width, rel=1e-9)
    assert class_interval(29, spacing="linear") == pytest.approx((s * math.exp(3.0), 200.0))


@pytest.mark.parametrize("spacing", ["exponential", "linear"])
def test_class_centre_lies_inside_its_interval_and_grows(spacing: str) -> None:
    centres = [class_centre_px(c, spacing=spacing) for c in range(30)]
    assert centres[0] == 0.0
    for c in range(1, 30):
        lo, hi = class_interval(c, spacing=spacing)
        assert lo < centres[c] < hi
    assert all(b > a for a, b in itertools.pairwise(centres))
    # the paper's exponential centres: 1.4 e^((c - 0.5) 3/28) for classes 1..28
    assert class_centre_px(16) == pytest.approx(1.4 * math.exp(15.5 * STEP), rel=1e-12)
    assert class_centre_px(16, spacing="linear") != pytest.approx(class_centre_px(16))


@pytest.mark.parametrize("bad", [{"c": 30}, {"c": -1}, {"c": 3, "kind": "box"},
                                 {"c": 3, "spacing": "log"}])
def test_interval_rejects_bad_arguments(bad: dict) -> None:
    with pytest.raises(ValueError):
        class_interval(**bad)


# --- sampling ------------------------------------------------------------------------------------


def test_sampling_is_seeded_and_inside_the_interval() -> None:
    for c in range(30):
        a = [sample_blur_param(c, np.random.default_rng(7)) for _ in range(3)]
        assert a[0] == a[1] == a[2]
        lo, hi = class_interval(c)
        draws = [sample_blur_param(c, np.random.default_rng(i)) for i in range(50)]
        assert all(lo <= d <= hi for d in draws)
    assert sample_blur_param(0, np.random.default_rng(0)) == 0.0


def test_sample_synthesis_reproducible_and_in_range() -> None:
    cfg = SynthesisConfig()
    runs = [[sample_synthesis(c, np.random.default_rng(3), cfg) for c in range(30)]
            for _ in range(2)]
    assert runs[0] == runs[1]
    rng = np.random.default_rng(11)
    ps = [sample_synthesis(int(rng.integers(0, 30)), rng, cfg) for _ in range(400)]
    lo, hi = cfg.noise_s_8bit
    assert all(lo <= p.noise_s_8bit <= hi for p in ps)
    assert all(70 <= p.jpeg_quality <= 90 for p in ps)
    # log-uniform: the median S is near the geometric mean of the bounds
    assert np.median([p.noise_s_8bit for p in ps]) == pytest.approx(math.sqrt(lo * hi), rel=0.25)
    bare = SynthesisConfig(noise=False, jpeg=False)
    p = sample_synthesis(5, np.random.default_rng(0), bare)
    assert (p.noise_s_8bit, p.jpeg_quality) == (0.0, 0)
    p0 = sample_synthesis(0, np.random.default_rng(0), cfg.with_(degrade_class0=False))
    assert (p0.blur, p0.noise_s_8bit, p0.jpeg_quality) == (0.0, 0.0, 0)


# --- kernels -------------------------------------------------------------------------------------


@pytest.mark.parametrize("r", [0.3, 1.4, 1.6, 2.37, 7.9, 28.1, 200.0])
def test_disk_kernel_normalised_and_symmetric(r: float) -> None:
    k = disk_kernel(r).astype(np.float64)
    assert k.sum() == pytest.approx(1.0, abs=1e-5)
    assert k.shape == (2 * kernel_half_width("bokeh", r) + 1,) * 2
    for t in (k[::-1], k[:, ::-1], k.T):
        np.testing.assert_allclose(k, t, atol=1e-9)
    assert (k >= 0).all()


def test_disk_kernel_matches_brute_force_supersampling() -> None:
    # regression: the fast kernel (samples only where the circle crosses a pixel) must equal
    # 4 x 4 supersampling of every pixel
    for r in (0.7, 1.4, 2.37, 9.6, 31.3):
        half = kernel_half_width("bokeh", r)
        yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
        sub = (np.arange(4) + 0.5) / 4 - 0.5
        cover = sum(((xx + dx) ** 2 + (yy + dy) ** 2 <= r * r).astype(float)
                    for dy in sub for dx in sub)
        np.testing.assert_allclose(disk_kernel(r), cover / cover.sum(), atol=1e-7)


@pytest.mark.parametrize("sigma", [0.5, 0.926, 3.0, 40.0])
def test_gaussian_kernel_normalised_and_symmetric(sigma: float) -> None:
    g = gaussian_kernel(sigma).astype(np.float64)
    assert g.sum() == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(g, g[::-1], atol=1e-9)
    assert len(g) == 2 * kernel_half_width("gaussian", sigma) + 1


def test_anti_aliased_radii_of_neighbouring_classes_differ(tissue: np.ndarray) -> None:
    a, b = disk_kernel(1.4), disk_kernel(1.6)
    a = np.pad(a, (b.shape[0] - a.shape[0]) // 2)  # 5 x 5 and 7 x 7: compare on one grid
    assert np.abs(a - b).max() > 0.01
    assert not np.array_equal(apply_blur(tissue, "bokeh", 1.4), apply_blur(tissue, "bokeh", 1.6))


# --- blur ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["bokeh", "gaussian"])
def test_more_blur_never_raises_gradient_energy(tissue: np.ndarray, kind: str) -> None:
    # metamorphic, on real tissue: class c + 1 is never sharper than class c
    energy = [grad_energy(apply_blur(tissue, kind, class_centre_px(c, kind=kind)))
              for c in range(30)]
    assert all(b < a for a, b in itertools.pairwise(energy)), energy


@pytest.mark.parametrize(("kind", "p"), [("bokeh", 1.4), ("bokeh", 9.0), ("bokeh", 200.0),
                                         ("gaussian", 0.9), ("gaussian", 30.0),
                                         ("gaussian", 132.0)])
def test_constant_image_stays_constant(kind: str, p: float) -> None:
    img = np.full((300, 300, 3), (181, 92, 140), np.uint8)
    out = apply_blur(img, kind, p)
    assert out.dtype == np.uint8 and out.shape == img.shape
    assert np.array_equal(out, img)


def test_radius_200_leaves_no_frame(tissue: np.ndarray) -> None:
    # zero padding gives a frame 23 levels darker than the mean, white padding 13 brighter,
    # edge replication 1.3 darker (measured on this patch); mirroring keeps the mean colour
    out = apply_blur(tissue.astype(np.float32), "bokeh", 200.0)
    lum = out.mean(axis=2)
    ring = np.concatenate([lum[:3].ravel(), lum[-3:].ravel(), lum[:, :3].ravel(),
                           lum[:, -3:].ravel()])
    assert abs(ring.mean() - lum.mean()) < 0.5
    assert np.abs(out.mean(axis=(0, 1)) - tissue.mean(axis=(0, 1))).max() < 0.05
    for side in (lum, lum[::-1], lum.T, lum.T[::-1]):  # no step at the border
        assert np.abs(side[0] - 2 * side[1] + side[2]).max() < 0.1
    as_uint8 = apply_blur(tissue, "bokeh", 200.0)
    assert as_uint8.dtype == np.uint8
    assert np.abs(as_uint8.astype(np.float32) - out).max() <= 0.5 + 1e-3


@pytest.mark.parametrize(("kind", "p"), [("bokeh", 1.4), ("bokeh", 4.4), ("bokeh", 5.6),
                                         ("bokeh", 60.0), ("bokeh", 150.0), ("gaussian", 2.0),
                                         ("gaussian", 8.0), ("gaussian", 40.0)])
def test_cosine_route_equals_spatial_mirror_blur(tissue: np.ndarray, kind: str, p: float) -> None:
    # the large kernels reach past this crop several times (repeated reflection)
    x = tissue[:60, :70].astype(np.float32)
    m = kernel_half_width(kind, p)
    spatial = blur_valid(_pad(x, m), kind, p)
    np.testing.assert_allclose(_blur_cosine(x, kind, p), spatial, atol=2e-3)


def test_cosine_route_is_taken_for_large_kernels() -> None:
    shape = (300, 300, 3)
    assert not use_cosine_route("bokeh", 1.4, shape)
    assert use_cosine_route("bokeh", 200.0, shape)
    assert use_cosine_route("gaussian", 132.0, shape)
    r_first = SPECTRAL_MIN_HALF_WIDTH["bokeh"] - 0.5
    assert use_cosine_route("bokeh", r_first, shape)
    assert not use_cosine_route("bokeh", r_first - 1.0, shape)
    assert use_cosine_route("bokeh", 6.0, (8, 300, 3))  # kernel wider than the image


@pytest.mark.parametrize("blur", [0.0, 2.2, 13.0, 150.0])
def test_synthesized_crop_equals_crop_of_whole_patch(tissue: np.ndarray, blur: float) -> None:
    params = SynthesisParams(cls=1, blur=blur, noise_s_8bit=0.0, jpeg_quality=0, seed=0)
    whole = synthesize(tissue, params)
    for x, y in ((0, 0), (80, 40), (161, 161)):
        crop = synthesize(tissue, params, crop=(x, y, 139))
        assert crop.shape == (139, 139, 3)
        assert np.abs(crop.astype(int) - whole[y : y + 139, x : x + 139]).max() <= 1


def test_synthesize_is_reproducible(tissue: np.ndarray) -> None:
    cfg = SynthesisConfig()
    p = sample_synthesis(17, np.random.default_rng(5), cfg)
    a, b = synthesize(tissue, p, config=cfg), synthesize(tissue, p, config=cfg)
    assert a.dtype == np.uint8 and a.shape == tissue.shape
    assert np.array_equal(a, b)


def test_fold_layer_is_sharper_but_at_most_the_gap_nearer_focus() -> None:
    rng = np.random.default_rng(3)
    plain = [sample_synthesis(c, rng) for c in range(30)]
    assert all(p.fold_weight == 0 for p in plain)
    cfg = SynthesisConfig(fold_prob=1.0)
    gap_px = cfg.fold_gap_um / 0.25
    sharp_layers = 0
    for c in range(30):
        for _ in range(20):
            p = sample_synthesis(c, rng, cfg)
            assert cfg.fold_weight[0] <= p.fold_weight <= cfg.fold_weight[1]
            assert p.blur - gap_px - 1e-9 <= p.fold_blur <= p.blur + 1e-9
            sharp_layers += p.fold_blur == 0
            if c == 0 or c >= 23:  # class 23 starts beyond the gap (radius 15 px)
                assert (p.fold_blur == 0) == (c == 0)
    assert sharp_layers > 20 * 1  # moderately blurred patches do carry sharp layers


def test_fold_multiplies_transmittance_of_the_second_layer(tissue: np.ndarray) -> None:
    """Optical densities add: T = T_patch * T_overlay ** w (darker, never brighter)."""
    base = SynthesisParams(cls=12, blur=6.0, noise_s_8bit=0.0, jpeg_quality=0, seed=0)
    overlay = np.ascontiguousarray(np.rot90(tissue))
    alone = synthesize(tissue, base, overlay=overlay).astype(np.float64)
    for w in (0.2, 0.6):
        fold = replace(base, fold_weight=w, fold_blur=0.0)
        got = synthesize(tissue, fold, overlay=overlay).astype(np.float64)
        want = alone * np.power(np.maximum(overlay, 1) / 255.0, w)
        assert np.abs(got - want).max() <= 1.5
        assert (got <= alone + 1).all()
    # without an overlay image the fold parameters are ignored
    assert np.array_equal(synthesize(tissue, replace(base, fold_weight=0.5)), alone)


def test_fold_examples_keep_the_label_of_the_dominant_layer() -> None:
    from convfocus.training.dataset import make_example

    patches = np.stack([np.full((300, 300, 3), v, np.uint8) for v in (200, 120)])
    cfg = SynthesisConfig(fold_prob=1.0, noise=False, jpeg=False)
    rng = np.random.default_rng(0)
    img, c, blur = make_example(patches, rng, cfg, None, cls=9, index=0)
    assert c == 9 and blur > 0
    assert img.mean() < 200 - 2  # darkened by whichever overlying layer was drawn


def test_density_scales_optical_density_before_the_blur(tissue: np.ndarray) -> None:
    from convfocus.synthesis.defocus import scale_density

    assert scale_density(tissue, 1.0) is tissue
    od = lambda im: -np.log((im.astype(np.float64) + 0.5) / 256.0)
    for d in (0.5, 2.0, 3.7):
        got = scale_density(tissue, d)
        mask = (tissue < 245) & (got > 10)  # away from 8-bit clipping and rounding
        assert np.allclose(od(got)[mask], d * od(tissue)[mask], rtol=0.05, atol=0.02)
    flat = np.full((300, 300, 3), 128, np.uint8)
    plain = SynthesisParams(cls=5, blur=2.0, noise_s_8bit=0.0, jpeg_quality=0, seed=0)
    dark = replace(plain, density=2.0)
    assert synthesize(flat, plain).mean() == pytest.approx(128, abs=1)
    assert synthesize(flat, dark).mean() == pytest.approx(64, abs=1)  # (128/256)^2 * 256
    # blur after density: equal to blurring the darkened tissue
    want = synthesize(scale_density(tissue, 2.0), plain)
    assert np.array_equal(synthesize(tissue, dark), want)


def test_density_drawn_only_when_asked_and_log_uniform() -> None:
    rng = np.random.default_rng(0)
    assert all(sample_synthesis(c, rng).density == 1.0 for c in range(30))
    cfg = SynthesisConfig(density_prob=1.0)
    ds = np.array([sample_synthesis(7, rng, cfg).density for _ in range(2000)])
    lo, hi = cfg.density_range
    assert ds.min() >= lo and ds.max() <= hi
    assert np.median(ds) == pytest.approx(math.sqrt(lo * hi), rel=0.1)


def test_veil_lowers_contrast_before_noise_so_noise_keeps_its_strength(tissue: np.ndarray) -> None:
    plain = SynthesisParams(cls=8, blur=3.0, noise_s_8bit=0.0, jpeg_quality=0, seed=4)
    veiled = replace(plain, veil=0.3)
    a = synthesize(tissue, plain).astype(np.float64)
    b = synthesize(tissue, veiled).astype(np.float64)
    assert b.mean() == pytest.approx(a.mean(), abs=1.0)
    spread = lambda im: (im - im.mean(axis=(0, 1))).std()  # about each channel's mean
    assert spread(b) == pytest.approx(0.3 * spread(a), rel=0.03)
    # noise is added after the veil: its strength does not shrink with the contrast
    noisy = replace(veiled, noise_s_8bit=0.5)
    resid = synthesize(tissue, noisy).astype(np.float64) - b
    resid_plain = synthesize(tissue, replace(plain, noise_s_8bit=0.5)).astype(np.float64) - a
    assert resid.std() == pytest.approx(resid_plain.std(), rel=0.15)
    rng = np.random.default_rng(1)
    assert all(sample_synthesis(c, rng).veil == 1.0 for c in range(30))
    cfg = SynthesisConfig(veil_prob=1.0)
    vs = [sample_synthesis(0, rng, cfg).veil for _ in range(200)]  # class 0 too
    assert min(vs) >= cfg.veil_range[0] and max(vs) <= cfg.veil_range[1] and len(set(vs)) > 100


# --- noise and JPEG ------------------------------------------------------------------------------


@pytest.mark.parametrize(("x", "s"), [(0.6, 1e-3), (0.02, 1e-3), (0.3, 0.5 / 255)])
def test_noise_keeps_mean_and_has_variance_x_s(x: float, s: float) -> None:
    img = np.full((200, 200, 3), x, np.float32)
    out = add_poisson_noise(img, s, np.random.default_rng(0))
    assert out.dtype == np.float32 and out.shape == img.shape
    n = out.size
    assert out.mean() == pytest.approx(x, abs=4 * math.sqrt(x * s / n))
    assert out.var() == pytest.approx(x * s, rel=0.05)


def test_dark_values_get_exact_poisson_counts() -> None:
    s = 1e-3
    img = np.full((50, 50, 3), 0.01, np.float32)  # 10 counts: below the normal approximation
    out = add_poisson_noise(img, s, np.random.default_rng(1))
    counts = out / s
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-3)
    assert (out >= 0).all()
    assert np.array_equal(add_poisson_noise(img, 0.0, np.random.default_rng(1)), img)


def test_jpeg_error_falls_with_quality(tissue: np.ndarray) -> None:
    err = [float(((jpeg_roundtrip(tissue, q).astype(float) - tissue) ** 2).mean())
           for q in (30, 70, 80, 90, 100)]
    assert all(b < a for a, b in itertools.pairwise(err)), err
    out = jpeg_roundtrip(tissue, 80)
    assert out.dtype == np.uint8 and out.shape == tissue.shape


def test_vary_stain_identity_and_dab_turns_eosin_brown():
    from skimage import data

    from convfocus.synthesis.defocus import vary_stain

    ihc = data.immunohistochemistry()[:200, :200]
    assert vary_stain(ihc, (1.0, 1.0, 0.0)) is ihc
    # unmixing and remixing with factors 1 loses at most rounding
    same = vary_stain(ihc, (1.0, 1.0 + 1e-9, 0.0))
    assert np.abs(same.astype(int) - ihc.astype(int)).max() <= 2
    he = np.full((8, 8, 3), (230, 120, 190), np.uint8)  # eosin pink
    brown = vary_stain(he, (1.0, 1.0, 1.0))
    r, g, b = brown[0, 0].astype(int)
    assert r > g > b  # DAB brown: red over green over blue
    pale = vary_stain(he, (0.5, 0.5, 0.0))
    dark = vary_stain(he, (2.0, 2.0, 0.0))
    assert pale.mean() > he.mean() > dark.mean()


def test_stain_variation_off_draws_the_paper_parameters():
    from convfocus.synthesis.defocus import SynthesisConfig, sample_synthesis

    a = sample_synthesis(7, np.random.default_rng(3), SynthesisConfig())
    b = sample_synthesis(7, np.random.default_rng(3), SynthesisConfig(stain_prob=0.0))
    assert a == b and a.stain == (1.0, 1.0, 0.0)
    c = sample_synthesis(7, np.random.default_rng(3), SynthesisConfig(stain_prob=1.0))
    assert c.stain != (1.0, 1.0, 0.0) and c.blur == a.blur
