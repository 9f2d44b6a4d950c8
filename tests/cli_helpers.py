"""Helpers for tests that run convfocus as a user does: its command line in this process,
or code in a fresh interpreter (shared by tests/, tests/grading)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

from convfocus.cli import main


def scan(capsys: pytest.CaptureFixture[str], model: Path, out: Path, *inputs: Path | str,
         extra: tuple[str, ...] = ()) -> tuple[int, str, str]:
    """``convfocus scan INPUTS --out OUT --model MODEL EXTRA``: exit code, stdout, stderr."""
    capsys.readouterr()
    rc = main(["scan", *map(str, inputs), "--out", str(out), "--model", str(model), *extra])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def imported_by(code: str, names: Iterable[str], cwd: Path) -> list[str]:
    """Which of the packages ``names`` a fresh interpreter has imported after running
    ``code`` (which must succeed), sorted."""
    wanted = sorted(set(names))
    probe = (f"{code}\nimport json, sys\n"
             f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & "
             f"set({wanted!r}))))\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=False, cwd=cwd, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])
