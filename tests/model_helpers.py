"""Helpers for tests that build networks (shared by tests/training and tests/grading)."""

from __future__ import annotations

import torch

from convfocus.training.model import ConvFocusNet


def randomise_bn(net: ConvFocusNet, seed: int = 0) -> ConvFocusNet:
    """Random BatchNorm statistics and affine terms, so eval mode is not an identity."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.25)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.2)
    return net.eval()
