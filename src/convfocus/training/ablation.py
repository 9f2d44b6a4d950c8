"""Training the paper's ablation presets for ``convfocus evaluate ablation --train-pool``.

:func:`train_preset` is what :func:`convfocus.evaluation.ablation.evaluate_ablation` is
given (its ``train_preset`` argument) to train a preset that has neither a model nor scan
outputs; it needs PyTorch, which the evaluation itself never imports.

References: Kohlberger et al., J Pathol Inform 2019 (ConvFocus), Table 2.
"""

from __future__ import annotations

import logging
from pathlib import Path

from convfocus.training.train import preset_config, train

log = logging.getLogger(__name__)


def train_preset(
    preset: str, pool: Path, out: Path, *, steps: int | None = None, device: str = "cpu"
) -> Path:
    """Train the preset ``preset`` (``config1``..``config5``) on the in-focus ``pool`` into
    ``out`` and return the exported model's base path; ``steps`` shortens the run."""
    cfg = preset_config(preset, steps=steps)
    log.info("training %s", preset)
    return train(Path(pool), Path(out), cfg, name=preset, device=device)
