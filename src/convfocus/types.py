"""Small frozen dataclasses shared across layers."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from convfocus import MODEL_MPP, NUM_CLASSES

#: OOF class buckets (inclusive bounds): the class groups of the detector experiment and
#: of a scan's report. References: Kohlberger et al. 2019, Results and Figure 11:
#: buckets 0-4, 5-9, 10-14, 15-19, 20-29.
OOF_BUCKETS: tuple[tuple[int, int], ...] = ((0, 4), (5, 9), (10, 14), (15, 19), (20, 29))


@dataclass(frozen=True)
class ModelSpec:
    """Everything inference needs to know about a model; stored beside its weights.

    References: window 139 px, stride 128 px at 40x, 30 classes (Kohlberger et al. 2019).
    """

    name: str
    version: str
    arch: str  # "paper" | "lite" | "large"
    num_classes: int = NUM_CLASSES
    window_px: int = 139
    stride_px: int = 128
    mpp: float = MODEL_MPP
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    blur: str = "bokeh"  # blur kernel used to define the classes
    spacing: str = "exponential"
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        known = {f for f in cls.__dataclass_fields__}
        kw = {k: v for k, v in d.items() if k in known}
        for key in ("mean", "std"):
            if key in kw:
                kw[key] = tuple(kw[key])
        return cls(**kw)

