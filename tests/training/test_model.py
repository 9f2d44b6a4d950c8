"""The networks, timm-style: shapes, finiteness, gradients, depths, cost, dense = per window."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from convfocus import NUM_CLASSES
from convfocus.training.model import ARCHS, build_model, multiply_adds, stem_depths
from model_helpers import randomise_bn

WINDOW, STRIDE = 139, 128




def tissue_batch(n: int, size: int) -> torch.Tensor:
    """(n, 3, size, size) normalised crops of real tissue (scikit-image's IHC image)."""
    from skimage import data

    ihc = data.immunohistochemistry()
    big = np.tile(ihc, (-(-size // 512) + 1, -(-size // 512) + 1, 1))
    crops = [big[17 * i : 17 * i + size, 29 * i : 29 * i + size] for i in range(n)]
    x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255.0
    return (x - 0.5) / 0.5


@pytest.mark.parametrize("arch", ARCHS)
def test_output_shape_and_finite(arch: str) -> None:
    torch.manual_seed(0)
    net = build_model(arch).eval()
    with torch.no_grad():
        out = net(tissue_batch(3, WINDOW))
    assert out.shape == (3, NUM_CLASSES)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_every_parameter_gets_a_gradient(arch: str) -> None:
    torch.manual_seed(0)
    net = build_model(arch).train()
    loss = torch.nn.functional.cross_entropy(net(tissue_batch(4, WINDOW)),
                                             torch.tensor([0, 7, 19, 29]))
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_depths_two_readings_of_depth_multiplier() -> None:
    # TF-slim: max(int(d * 0.1), min_depth=16); literal: int(d * 0.1)
    assert stem_depths("paper") == (16, 16, 16)
    assert stem_depths("lite") == (3, 3, 6)
    assert stem_depths("large") == (16, 16, 32, 40, 96)
    convs = [m for m in build_model("lite").modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [3, 3, 6]
    with pytest.raises(ValueError):
        build_model("resnet")


def test_multiply_adds() -> None:
    paper, lite = multiply_adds(build_model("paper")), multiply_adds(build_model("lite"))
    assert paper == pytest.approx(23e6, rel=0.05)
    assert lite == pytest.approx(1.5e6, rel=0.05)
    assert 14 < paper / lite < 17
    # depthwise 3x3 per channel + pointwise 16 -> 16, twice, on 67² maps, after Conv2d_1a
    dw = 69**2 * 3 * 16 * 9 + 2 * 67**2 * (16 * 9 + 16 * 16) + 16 * 30
    assert multiply_adds(build_model("dw16")) == dw
    assert multiply_adds(build_model("w8")) == 69**2 * 3 * 8 * 9 + 2 * 67**2 * 64 * 9 + 8 * 30


def test_feature_geometry() -> None:
    # 139 -> 69 -> 67 -> 67 -> 33 features; one 128 px step = 32 feature cells
    net = build_model("paper")
    assert net.feature_size(WINDOW) == 33
    with torch.no_grad():
        f = net.forward_features(torch.zeros(1, 3, WINDOW + STRIDE, WINDOW + STRIDE))
    assert f.shape[-1] == 33 + STRIDE // net.total_stride


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_dense_equals_per_window(arch: str) -> None:
    torch.manual_seed(1)
    net = randomise_bn(build_model(arch))
    rows = cols = 9
    side = STRIDE * rows + (WINDOW - STRIDE)
    x = tissue_batch(2, side)
    with torch.no_grad():
        dense = net.forward_dense(x, WINDOW, STRIDE)  # (2, 30, rows, cols)
        wins = torch.stack([x[:, :, r * STRIDE : r * STRIDE + WINDOW,
                              c * STRIDE : c * STRIDE + WINDOW]
                            for r in range(rows) for c in range(cols)], dim=1)
        per = net(wins.reshape(-1, 3, WINDOW, WINDOW)).reshape(2, rows, cols, NUM_CLASSES)
    assert dense.shape == (2, NUM_CLASSES, rows, cols)
    dense = dense.permute(0, 2, 3, 1)
    same = (dense.argmax(-1) == per.argmax(-1)).float().mean().item()
    assert same >= 0.995
    pd, pp = dense.softmax(-1), per.softmax(-1)
    assert (pd - pp).abs().max().item() < 0.05  # only the window edges' padding differs


@pytest.mark.parametrize("arch", ["paper", "large", "dw16", "lite"])
def test_channels_last_computes_the_same_network(arch):
    """Training runs in channels-last where it is faster (``training_memory_format``); the
    network it computes, and so the exported model, must not depend on the layout."""
    torch.manual_seed(0)
    net = build_model(arch).eval()
    x = torch.rand(4, 3, 139, 139)
    ref = net(x)
    nhwc = torch.channels_last
    out = net.to(memory_format=nhwc)(x.contiguous(memory_format=nhwc))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_a_network_trained_in_channels_last_saves_and_loads_as_the_same_model(tmp_path):
    from convfocus.training.checkpoint import load_model, save_model
    from convfocus.types import ModelSpec

    torch.manual_seed(0)
    net = build_model("dw16").to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    x = torch.rand(8, 3, 139, 139).contiguous(memory_format=torch.channels_last)
    torch.nn.functional.cross_entropy(net(x), torch.randint(0, 30, (8,))).backward()
    opt.step()
    net.eval()
    ref = net(x).detach()
    save_model(tmp_path / "m", net, ModelSpec(name="m", version="0", arch="dw16"), onnx=False)
    loaded, _ = load_model(tmp_path / "m.json")
    torch.testing.assert_close(loaded(x.contiguous()), ref, rtol=1e-4, atol=1e-4)
