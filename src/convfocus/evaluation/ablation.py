"""``convfocus evaluate ablation``: the five training presets on one evaluation set,
as the paper's Table 2.

Each configuration is graded with :func:`convfocus.evaluation.grades.evaluate_grades`.
Presets without a model or scan outputs are trained by a ``train_preset`` function
passed in (:func:`convfocus.training.ablation.train_preset`, which needs PyTorch), so
that evaluation itself never imports torch. Writes ``ablation.json`` and ``ablation.md``.

References: Kohlberger et al., J Pathol Inform 2019 (ConvFocus), Table 2.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from convfocus.errors import ConfigError
from convfocus.evaluation.grades import PAPER_TABLE2, PAPER_TEST_SETS, evaluate_grades
from convfocus.evaluation.outputs import markdown_table, write_bytes, write_json

ABLATION_PRESETS = tuple(PAPER_TABLE2)


class PresetTrainer(Protocol):
    """Trains one preset on an in-focus pool into a folder and returns the model's path,
    as :func:`convfocus.training.ablation.train_preset` does."""

    def __call__(self, preset: str, pool: Path, out: Path, *, steps: int | None,
                 device: str) -> Path: ...


def _table2(get: Callable[[str, str, int, str], Any], test_sets: Sequence[str]) -> str:
    """Rows config1..5 of a Table-2-shaped Markdown table; ``get(config, metric, k, ts)``."""
    metrics_ = ("spearman", "slope", "intercept")
    header = ["#", "description", "blur"] + [
        f"{m.capitalize() if m == 'spearman' else m} {ts}" for m in metrics_ for ts in test_sets
    ]
    rows = []
    for name in ABLATION_PRESETS:
        t2 = PAPER_TABLE2[name]
        rows.append([name.removeprefix("config"), t2["description"], t2["blur"]]
                    + [get(name, m, k, ts) for m in metrics_ for k, ts in enumerate(test_sets)])
    return markdown_table(header, rows)


def _ablation_markdown(stats: Mapping[str, Mapping[str, Any]], test_sets: Sequence[str]) -> str:
    def ours(name: str, metric: str, k: int, ts: str) -> Any:
        return stats.get(name, {}).get(ts, {}).get(metric)

    def paper(name: str, metric: str, k: int, ts: str) -> Any:
        return PAPER_TABLE2[name][metric][k]

    return ("# Ablation (shaped like Table 2)\n\n## This evaluation\n\n"
            + _table2(ours, test_sets)
            + "\n## Paper (Kohlberger et al. 2019, Table 2)\n\n"
            + _table2(paper, PAPER_TEST_SETS))


def evaluate_ablation(
    manifest: str | Path,
    out: str | Path,
    *,
    models: Mapping[str, str | Path] | None = None,
    tiles_root: str | Path | None = None,
    train_pool: str | Path | None = None,
    steps: int | None = None,
    device: str = "cpu",
    mpp: float | None = None,
    group_by: str = "test_set",
    n_per_grade: int = 3000,
    seed: int = 0,
    train_preset: PresetTrainer | None = None,
) -> dict[str, Any]:
    """``convfocus evaluate ablation``: the five presets on one evaluation set.

    Each configuration ``config1``..``config5`` is taken from ``models`` (name -> model
    path), from existing scan outputs ``tiles_root/<config>/<stem>/``, or trained
    from ``train_pool`` by ``train_preset`` (``steps`` to shorten), e.g.
    :func:`convfocus.training.ablation.train_preset`.
    Each is evaluated with :func:`evaluate_grades` into ``out/<config>/``; writes
    ``ablation.json`` and ``ablation.md`` (shaped like the paper's Table 2).

    References: Kohlberger et al. 2019, Table 2.
    """
    o = Path(out)
    chosen: dict[str, dict[str, Any]] = {}
    unknown = set(models or {}) - set(ABLATION_PRESETS)
    if unknown:
        raise ConfigError(f"unknown configuration(s) {', '.join(sorted(unknown))}; "
                          f"use {', '.join(ABLATION_PRESETS)}")
    for name in ABLATION_PRESETS:
        if models and name in models:
            chosen[name] = {"model": models[name]}
        elif tiles_root is not None and (Path(tiles_root) / name).is_dir():
            chosen[name] = {"tiles": Path(tiles_root) / name}
        elif train_pool is not None:
            if train_preset is None:
                raise ConfigError(f"{name} has no model or scan outputs, and training it "
                                  "needs train_preset (convfocus.training.ablation)")
            chosen[name] = {"model": train_preset(name, Path(train_pool), o / "models" / name,
                                                  steps=steps, device=device)}
    if not chosen:
        raise ConfigError("no configuration to evaluate: give --model NAME=PATH, --tiles-root "
                          "or --train-pool")
    per_config: dict[str, dict[str, Any] | None] = {}
    test_sets: list[str] = []
    for name in ABLATION_PRESETS:
        if name not in chosen:
            per_config[name] = None
            continue
        res = evaluate_grades(
            manifest, o / name, tiles=chosen[name].get("tiles"), model=chosen[name].get("model"),
            mpp=mpp, device=device, group_by=group_by, n_per_grade=n_per_grade, seed=seed,
        )
        per_config[name] = res["test_sets"]
        test_sets += [t for t in res["test_sets"] if t not in test_sets]
    stats = {n: v for n, v in per_config.items() if v is not None}
    result = {
        "command": "ablation", "manifest": str(manifest), "test_sets": test_sets,
        "configs": {
            n: None if v is None else {
                "source": {k: str(s) for k, s in chosen[n].items()},
                **{ts: {k: v[ts][k] for k in ("spearman", "p_value", "slope", "intercept")}
                   for ts in v},
            } for n, v in per_config.items()
        },
        "paper": PAPER_TABLE2,
        "settings": {"n_per_grade": n_per_grade, "seed": seed, "group_by": group_by,
                     "steps": steps},
    }
    write_bytes(o / "ablation.md", _ablation_markdown(stats, test_sets).encode())
    write_json(o / "ablation.json", result)
    return result
