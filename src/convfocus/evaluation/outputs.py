"""An evaluation's outputs: JSON, Markdown and PNG files written atomically, Markdown
tables, number formats, and matplotlib figures drawn without pyplot (Agg canvas).

JSON holds every number, ``null`` where one is undefined (NaN); Markdown tables show
3 decimals and ``-`` for a missing number.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from convfocus.io.atomic import write_bytes_atomic, write_json_atomic


def write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` atomically (temporary name, then rename), creating the folder."""
    return write_bytes_atomic(path, data, parents=True)


def write_json(path: Path, obj: Any) -> Path:
    """Write ``obj`` as JSON atomically; numpy values become numbers, NaN ``null``."""
    return write_json_atomic(path, obj, parents=True)


def write_figure(path: Path, fig: Any) -> Path:
    """Write a matplotlib Figure as a PNG (110 dpi) atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return write_bytes(path, buf.getvalue())


def new_figure(ncols: int = 1, *, width: float = 5.5, height: float = 4.5) -> tuple:
    """A matplotlib Figure with ``ncols`` axes (Agg canvas, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def fmt(value: Any, digits: int = 3) -> str:
    """A number for a table: ``digits`` decimals, scientific when smaller, ``-`` when
    missing or not finite, integers as they are."""
    if value is None:
        return "-"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    v = float(value)
    if not math.isfinite(v):
        return "-"
    if v != 0 and abs(v) < 10 ** -digits:
        return f"{v:.1e}"
    return f"{v:.{digits}f}"


def fmt_p(value: Any) -> str:
    """A p-value: 3 decimals, scientific below 0.001, ``< 1e-300`` where it underflows."""
    if value is None or not math.isfinite(float(value)):
        return "-"
    v = float(value)
    return "< 1e-300" if v == 0 else f"{v:.1e}" if v < 1e-3 else f"{v:.3f}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table; numbers with 3 decimals, missing as ``-``."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [c if isinstance(c, str) else fmt(c) for c in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
