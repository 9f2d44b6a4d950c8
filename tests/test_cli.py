"""The command line: help, the demo, and one-line errors for invalid arguments."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli_helpers import imported_by
from convfocus.cli import main

SUBCOMMANDS = ["scan", "demo", "patches", "calibrate", "train", "evaluate", "sample", "rate",
               "view"]


def _exit_code(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(argv)
    return int(info.value.code or 0)


def test_help_lists_the_subcommands(capsys):
    assert _exit_code(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: convfocus")
    for name in SUBCOMMANDS:
        assert f"    {name}" in out, name


def test_scan_help_lists_its_options(capsys):
    assert _exit_code(["scan", "--help"]) == 0
    out = capsys.readouterr().out
    for opt in ("--out", "--model", "--mpp", "--native", "--profile", "--window", "--stride",
                "--min-tissue", "--workers", "--scheduler", "--resume", "--device"):
        assert opt in out, opt


def test_version(capsys):
    assert _exit_code(["--version"]) == 0
    assert capsys.readouterr().out.startswith("convfocus ")


@pytest.mark.parametrize("argv, names", [
    (["scan", "slide.svs", "--min-tissue", "2"], "--min-tissue"),
    (["scan", "slide.svs", "--stride", "0"], "--stride"),
    (["scan", "slide.svs", "--window", "-5"], "--window"),
    (["scan", "slide.svs", "--mpp", "fine"], "--mpp"),
    (["scan", "slide.svs", "--workers", "0"], "--workers"),
    (["scan", "slide.svs", "--profile", "surgery"], "--profile"),
    (["scan"], "inputs"),
    (["scna", "slide.svs"], "scna"),
])
def test_invalid_arguments_give_one_line(argv: list[str], names: str, capsys, tmp_path: Path,
                                         monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _exit_code(argv) == 2
    cap = capsys.readouterr()
    assert cap.out == ""
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1, cap.err
    assert "error" in lines[0] and names in lines[0]
    assert "Traceback" not in cap.err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_demo_writes_the_report_and_prints_its_path(tmp_path: Path, fixture_model: Path,
                                                    capsys):
    out = tmp_path / "demo-out"
    assert main(["demo", "--out", str(out), "--model", str(fixture_model)]) == 0
    report = out / "demo-slide" / "report.html"
    assert capsys.readouterr().out.strip() == str(report)
    assert report.is_file() and report.stat().st_size > 10_000
    assert (out / "demo-slide.tif").is_file()
    truth = json.loads((out / "demo-truth.json").read_text())
    summary = json.loads((out / "demo-slide" / "summary.json").read_text())
    assert summary["dimensions"] == [truth["width"], truth["height"]]
    assert summary["model"]["name"] == "fixture"


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1000", "0", "-0.25", "0.01"])
def test_impossible_pixel_sizes_are_refused_by_the_parser(value: str, capsys, tmp_path: Path):
    code = _exit_code(["scan", str(tmp_path / "x.svs"), "--mpp", value, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "--mpp" in err and err.count("\n") == 1
    assert not (tmp_path / "index.csv").exists()


@pytest.mark.parametrize("opt,value", [("--window", "10"), ("--window", "5000"),
                                       ("--stride", "1"), ("--stride", "0")])
def test_impossible_windows_are_refused_by_the_parser(opt: str, value: str, capsys,
                                                      tmp_path: Path):
    code = _exit_code(["scan", str(tmp_path / "x.svs"), opt, value, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and opt in err and err.count("\n") == 1


def test_a_scan_imports_neither_scipy_nor_matplotlib(tmp_path: Path):
    """Start-up time: scipy (ndimage 0.2-0.35 s, fft 0.26 s) and matplotlib (0.5 s) are for
    training and evaluation; a scan of real tissue with the shipped model needs neither."""
    import cv2
    from skimage import data

    slide = tmp_path / "ihc.png"
    cv2.imwrite(str(slide), cv2.cvtColor(data.immunohistochemistry(), cv2.COLOR_RGB2BGR))
    code = ("from convfocus.cli import main\n"
            f"assert main(['scan', {str(slide)!r}, '--mpp', '0.35', '--out', "
            f"{str(tmp_path / 'out')!r}]) == 0\n")
    heavy = ("scipy", "matplotlib", "torch", "sklearn", "skimage", "onnx")
    assert imported_by(code, heavy, tmp_path) == []
    assert (tmp_path / "out" / "ihc" / "report.html").is_file()
