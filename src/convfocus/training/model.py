"""The ConvFocus networks: an Inception-v3 stem truncated at MaxPool_3a_3x3.

Three architectures, all 139 x 139 RGB in, 30 logits out, BatchNorm + ReLU:

- ``paper``: the stem with ``depth_multiplier = 0.1`` under TF-slim semantics,
  ``depth = max(int(d * 0.1), min_depth=16)``: 16 filters in each of the three convs.
- ``lite``: the literal product ``int(d * 0.1)``: 3, 3 and 6 filters.
- ``large``: ablation configuration 5 ("modified Inception"): the stem continued to
  ``MaxPool_5a_3x3`` (Conv2d_3b_1x1, Conv2d_4a_3x3) with ``depth_multiplier = 0.5``
  (16, 16, 32, 40, 96 filters).
- ``w8``: the ``paper`` stem with 8 filters in each conv (a student for ``--model fast``).
- ``dw16``: the ``paper`` stem with Conv2d_2a and 2b depthwise-separable (a 3 x 3 conv per
  channel, then a 1 x 1 conv across the 16 channels, each with BatchNorm + ReLU).

The head averages the final feature map and applies a linear 30-way classifier; as
a convolution (``forward_dense``) the same weights grade every window of a large
region in one pass.

References: Kohlberger et al. 2019, "Network architecture"; Szegedy et al.,
"Rethinking the Inception Architecture", CVPR 2016 (the stem); TF-slim inception_v3.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from convfocus import NUM_CLASSES

ARCHS = ("paper", "lite", "large", "w8", "dw16")


def slim_depth(d: int, multiplier: float, min_depth: int) -> int:
    """TF-slim's ``depth`` function: ``max(int(d * multiplier), min_depth)``."""
    return max(int(d * multiplier), min_depth)


class ConvBN(nn.Module):
    """Conv (no bias) -> BatchNorm -> ReLU, as TF-slim's conv2d with batch_norm."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, padding: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3, momentum=0.003)  # slim decay 0.9997

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


def stem_depths(arch: str) -> tuple[int, ...]:
    """Filters of each conv of the stem for an architecture name."""
    if arch in ("paper", "dw16"):
        return tuple(slim_depth(d, 0.1, 16) for d in (32, 32, 64))
    if arch == "w8":
        return (8, 8, 8)
    if arch == "lite":
        return tuple(slim_depth(d, 0.1, 1) for d in (32, 32, 64))
    if arch == "large":
        return tuple(slim_depth(d, 0.5, 16) for d in (32, 32, 64, 80, 192))
    raise ValueError(f"unknown architecture {arch!r}; expected one of {ARCHS}")


class SepConvBN(nn.Module):
    """Depthwise-separable ConvBN: a k x k conv per channel, then a 1 x 1 conv across them."""

    def __init__(self, cin: int, cout: int, k: int, padding: int = 0) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, k, padding=padding, groups=cin, bias=False)
        self.bn_dw = nn.BatchNorm2d(cin, eps=1e-3, momentum=0.003)
        self.pointwise = ConvBN(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(F.relu(self.bn_dw(self.depthwise(x)), inplace=True))


class ConvFocusNet(nn.Module):
    """Inception-v3 stem + 30-way head.

    ``window`` and ``stride`` describe how a window maps onto the final feature map:
    for ``paper``/``lite`` a 139 px window gives 33 x 33 features and a 128 px shift
    moves them by 32 (``feature_window = 33, feature_stride = 32``).
    """

    def __init__(self, arch: str = "paper", num_classes: int = NUM_CLASSES, dropout: float = 0.0):
        super().__init__()
        self.arch = arch
        d = stem_depths(arch)
        conv = SepConvBN if arch == "dw16" else ConvBN
        layers: list[nn.Module] = [
            ConvBN(3, d[0], 3, stride=2),  # Conv2d_1a_3x3, VALID
            conv(d[0], d[1], 3),  # Conv2d_2a_3x3, VALID
            conv(d[1], d[2], 3, padding=1),  # Conv2d_2b_3x3, SAME
            nn.MaxPool2d(3, stride=2),  # MaxPool_3a_3x3, VALID
        ]
        self.total_stride = 4
        if arch == "large":
            layers += [
                ConvBN(d[2], d[3], 1),  # Conv2d_3b_1x1
                ConvBN(d[3], d[4], 3),  # Conv2d_4a_3x3, VALID
                nn.MaxPool2d(3, stride=2),  # MaxPool_5a_3x3, VALID
            ]
            self.total_stride = 8
        self.features = nn.Sequential(*layers)
        self.num_features = d[-1]
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(self.num_features, num_classes)

    # 139 -> 69 -> 67 -> 67 -> 33 (paper/lite); -> 33 -> 31 -> 15 (large)
    def feature_size(self, window: int = 139) -> int:
        s = (window - 3) // 2 + 1
        s = s - 2
        s = (s - 3) // 2 + 1
        if self.arch == "large":
            s = (s - 2 - 3) // 2 + 1
        return s

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, 3, H, W) normalised -> (N, C, H', W')
        return self.features(x)

    def forward_head(self, f: torch.Tensor) -> torch.Tensor:
        # f: (N, C, h, w) -> (N, num_classes)
        return self.fc(self.dropout(f.mean(dim=(2, 3))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, 3, 139, 139) -> logits (N, 30)
        return self.forward_head(self.forward_features(x))

    def forward_dense(self, x: torch.Tensor, window: int = 139, stride: int = 128) -> torch.Tensor:
        """Logits of every window of a region in one pass of the conv stack.

        x: (N, 3, H, W) with H = stride * rows + (window - stride) -> (N, 30, rows, cols).
        Each window's logits come from average pooling its features (a window of
        ``feature_size`` at step ``stride / total_stride``); padding inside the SAME
        conv differs from per-window inference only at window edges.
        """
        f = self.forward_features(x)
        k = self.feature_size(window)
        s = stride // self.total_stride
        pooled = F.avg_pool2d(f, kernel_size=k, stride=s)  # (N, C, rows, cols)
        w = self.fc.weight[:, :, None, None]
        return F.conv2d(pooled, w, self.fc.bias)


def build_model(arch: str = "paper", num_classes: int = NUM_CLASSES, **kw: float) -> ConvFocusNet:
    """Construct a network by architecture name (``paper``, ``lite`` or ``large``)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {ARCHS}")
    return ConvFocusNet(arch, num_classes=num_classes, **kw)  # type: ignore[arg-type]


def training_memory_format(arch: str) -> torch.memory_format:
    """The activation layout a network trains fastest in on CPU (``bench/train_speed.py``,
    one run: channels-last 1.37-1.64x per training step and 1.8-2.0x per teacher pass for
    the 16-filter networks; 0.93x for ``lite``, whose 3 and 6 channels oneDNN does not
    block well). The weights are the same either way."""
    return torch.contiguous_format if arch == "lite" else torch.channels_last


def multiply_adds(model: ConvFocusNet, window: int = 139) -> int:
    """Multiply-adds of one window's forward pass (convolutions and the classifier)."""
    total = 0
    size = window
    for layer in model.features:
        convs = ([layer.conv] if isinstance(layer, ConvBN) else
                 [layer.depthwise, layer.pointwise.conv] if isinstance(layer, SepConvBN) else [])
        for conv in convs:
            k = int(conv.kernel_size[0])
            pad = conv.padding[0] if isinstance(conv.padding, tuple) else 0
            size = (size + 2 * int(pad) - k) // int(conv.stride[0]) + 1
            total += size * size * conv.in_channels * conv.out_channels * k * k // conv.groups
        if isinstance(layer, nn.MaxPool2d):
            size = (size - 3) // 2 + 1
    return total + model.fc.in_features * model.fc.out_features
