"""Bad input at the command line: one clear line on stderr naming the file and the cause, a
non-zero exit code, no traceback, and no partial output folder; a batch goes on past a failed
slide."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import scan
from convfocus.cli import main
from convfocus.io.atomic import is_temp_name
from convfocus.io.images import write_pyramidal_tiff

# --- helpers -----------------------------------------------------------------------------------


def _assert_one_clear_line(rc: int, err: str, names: str, *causes: str) -> str:
    assert rc != 0
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert names in line, line
    assert any(c.lower() in line.lower() for c in causes), line
    return line


def _assert_no_partial_output(out: Path, stem: str) -> None:
    if not out.exists():
        return
    names = [p.name for p in out.iterdir()]
    assert stem not in names, names
    assert not [n for n in names if is_temp_name(n)], names


@pytest.fixture(scope="module")
def good_slide(tmp_path_factory: pytest.TempPathFactory, tissue_rgb: np.ndarray) -> Path:
    """A small valid slide (1024 x 768 px of tissue, 0.25 µm/px)."""
    path = tmp_path_factory.mktemp("good") / "good-slide.tif"
    return write_pyramidal_tiff(path, np.ascontiguousarray(tissue_rgb[:768, :1024]), mpp=0.25)


# --- one bad input: one line ---------------------------------------------------------------------


def _missing(tmp: Path) -> tuple[Path, tuple[str, ...]]:
    return tmp / "missing.svs", ("no such file",)


def _empty_folder(tmp: Path) -> tuple[Path, tuple[str, ...]]:
    d = tmp / "no-slides-here"
    d.mkdir()
    (d / "notes.txt").write_text("nothing to scan\n")
    return d, ("no slides",)


def _text_file(tmp: Path) -> tuple[Path, tuple[str, ...]]:
    p = tmp / "readme.txt"
    p.write_text("this is not a slide\n")
    return p, ("unsupported format",)


def _random_svs(tmp: Path) -> tuple[Path, tuple[str, ...]]:
    p = tmp / "noise.svs"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    return p, ("not a valid .svs", "corrupt")


def _tiny_slide(tmp: Path, tissue: np.ndarray) -> tuple[Path, tuple[str, ...]]:
    p = tmp / "tiny.tif"
    write_pyramidal_tiff(p, np.ascontiguousarray(tissue[600:700, 600:700]), mpp=0.25)
    return p, ("smaller than one window",)


def _no_pixel_size(tmp: Path, tissue: np.ndarray) -> tuple[Path, tuple[str, ...]]:
    """A two-level tiled TIFF without resolution tags or vendor metadata."""
    import tifffile

    p = tmp / "no-mpp.tif"
    lv0 = np.ascontiguousarray(tissue[:1024, :1024])
    with tifffile.TiffWriter(p) as tw:
        tw.write(lv0, tile=(256, 256), photometric="rgb", compression="jpeg", subifds=1,
                 metadata=None)
        tw.write(np.ascontiguousarray(lv0[::2, ::2]), tile=(256, 256), photometric="rgb",
                 compression="jpeg", subfiletype=1, metadata=None)
    return p, ("no pixel size", "--mpp")


def _cut_svs(tmp: Path, tissue: np.ndarray) -> tuple[Path, tuple[str, ...]]:
    """An Aperio SVS copied only in part (its first 55 %)."""
    whole = write_pyramidal_tiff(tmp / "whole.svs", np.ascontiguousarray(tissue[:1024, :1024]),
                                 mpp=0.25, aperio=True)
    p = tmp / "cut.svs"
    data = whole.read_bytes()
    p.write_bytes(data[: int(len(data) * 0.55)])
    whole.unlink()
    return p, ("truncated file",)


CASES = ["missing", "empty-folder", "text-file", "random-bytes-svs", "tiny", "no-pixel-size",
         "cut-svs"]  # a blank slide is a QC result, not bad input (tests/test_qc_results.py)


@pytest.mark.parametrize("case", CASES)
def test_bad_input_gives_one_clear_line(case: str, tmp_path: Path, tissue_rgb: np.ndarray,
                                        fixture_model: Path, capsys):
    make = {
        "missing": _missing, "empty-folder": _empty_folder, "text-file": _text_file,
        "random-bytes-svs": _random_svs,
        "tiny": lambda t: _tiny_slide(t, tissue_rgb),
        "no-pixel-size": lambda t: _no_pixel_size(t, tissue_rgb),
        "cut-svs": lambda t: _cut_svs(t, tissue_rgb),
    }[case]
    path, causes = make(tmp_path)
    out = tmp_path / "out"
    rc, stdout, err = scan(capsys, fixture_model, out, path)
    _assert_one_clear_line(rc, err, path.name, *causes)
    assert stdout == ""
    _assert_no_partial_output(out, path.stem if path.is_file() else path.name)


def test_broken_svs_from_shared_data(shared_data: Path, tmp_path: Path, fixture_model: Path,
                                     capsys):
    broken = shared_data / "slides" / "broken.svs"
    if not broken.is_file():
        pytest.skip(f"{broken} not present")
    rc, _, err = scan(capsys, fixture_model, tmp_path / "out", broken)
    _assert_one_clear_line(rc, err, "broken.svs", "not a valid .svs", "corrupt")
    _assert_no_partial_output(tmp_path / "out", "broken")


def test_shared_slide_without_pixel_size(shared_data: Path, tmp_path: Path, fixture_model: Path,
                                         capsys):
    """The TCGA frozen section stores no pixel size: ask for --mpp rather than guess."""
    slide = shared_data / "slides" / "tcga-cr-7395-01a-01-ts1.svs"
    if not slide.is_file():
        pytest.skip(f"{slide} not present")
    rc, _, err = scan(capsys, fixture_model, tmp_path / "out", slide)
    _assert_one_clear_line(rc, err, slide.name, "--mpp")
    _assert_no_partial_output(tmp_path / "out", slide.stem)


def test_missing_model(tmp_path: Path, good_slide: Path, capsys):
    model = tmp_path / "no-such-model"
    rc, _, err = scan(capsys, model, tmp_path / "out", good_slide)
    _assert_one_clear_line(rc, err, "no-such-model", "model not found")
    assert not (tmp_path / "out").exists()


# --- output problems ---------------------------------------------------------------------------


def _permission_bits_stop_writes(folder: Path) -> bool:
    probe = folder / ".probe"
    try:
        probe.write_text("")
    except OSError:
        return True
    probe.unlink()
    return False


def test_output_path_below_a_regular_file(tmp_path: Path, good_slide: Path,
                                          fixture_model: Path, capsys):
    """An output folder nobody can create, root included."""
    (tmp_path / "file.txt").write_text("a regular file\n")
    out = tmp_path / "file.txt" / "sub"
    rc, _, err = scan(capsys, fixture_model, out, good_slide)
    _assert_one_clear_line(rc, err, str(out), "not a directory", "cannot create")
    assert (tmp_path / "file.txt").read_text() == "a regular file\n"


def test_unwritable_folder_with_permission_bits(tmp_path: Path, good_slide: Path,
                                                fixture_model: Path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if not _permission_bits_stop_writes(locked):
            pytest.skip("running as root: permission bits do not stop writes "
                        "(test_output_path_below_a_regular_file covers an unwritable output)")
        rc, _, err = scan(capsys, fixture_model, locked, good_slide)
        _assert_one_clear_line(rc, err, "locked", "not writable", "permission denied")
        _assert_no_partial_output(locked, good_slide.stem)
    finally:
        locked.chmod(0o700)


def _enospc() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_while_writing_outputs(tmp_path: Path, good_slide: Path, fixture_model: Path,
                                         capsys, monkeypatch):
    """The disk fills up after some outputs are written: one line, no partial folder."""
    import convfocus.grading.outputs as outputs_mod

    real_save = np.save
    calls = []

    def save_then_fail(file, arr, *a, **kw):  # classmap.npy is written, probs.npy is not
        calls.append(Path(getattr(file, "name", file)).name)  # a file or its temporary name
        if len(calls) > 1:
            raise _enospc()
        return real_save(file, arr, *a, **kw)

    monkeypatch.setattr(outputs_mod.np, "save", save_then_fail)
    out = tmp_path / "out"
    rc, _, err = scan(capsys, fixture_model, out, good_slide)
    monkeypatch.undo()
    assert len(calls) == 2 and "classmap.npy" in calls[0] and "probs.npy" in calls[1]
    line = _assert_one_clear_line(rc, err, good_slide.stem, "no space left on device")
    assert f".{good_slide.stem}." not in line  # not the temporary folder
    _assert_no_partial_output(out, good_slide.stem)


def test_full_disk_in_an_image_writer(tmp_path: Path, good_slide: Path, fixture_model: Path,
                                      capsys, monkeypatch):
    """A writer that raises its own OutputError naming a file in the temporary folder: the
    line names the slide's output folder, not the temporary one."""
    from convfocus.errors import OutputError
    from convfocus.io import images

    def full(path, *a, **kw):
        raise OutputError(f"cannot write: {os.strerror(errno.ENOSPC)}", path)

    monkeypatch.setattr(images, "write_png", full)
    out = tmp_path / "out"
    rc, _, err = scan(capsys, fixture_model, out, good_slide)
    line = _assert_one_clear_line(rc, err, str(out / good_slide.stem), "no space left on device")
    assert f".{good_slide.stem}." not in line  # not the temporary folder
    _assert_no_partial_output(out, good_slide.stem)


# --- several inputs ----------------------------------------------------------------------------


def test_one_failure_does_not_stop_the_batch(tmp_path: Path, good_slide: Path,
                                             fixture_model: Path, capsys):
    broken = tmp_path / "broken.svs"
    broken.write_bytes(b"II*\x00" + b"\x00" * 200)
    out = tmp_path / "out"
    rc, stdout, err = scan(capsys, fixture_model, out, broken, good_slide)
    assert rc == 1
    assert "Traceback" not in err
    from convfocus.grading.scan import is_complete

    assert is_complete(out / good_slide.stem)
    verdict, summary = stdout.strip().splitlines()  # the good slide's verdict, the batch's
    assert verdict.startswith(f"{good_slide.stem}: ")
    assert verdict.endswith(str(out / good_slide.stem / "report.html"))
    assert summary.startswith("2 slides in ") and "1 failed" in summary
    lines = err.strip().splitlines()
    assert "1 of 2 slides failed" in lines[-2]
    assert "broken.svs" in lines[-1] and "corrupt" in lines[-1]
    _assert_no_partial_output(out, "broken")
    index = (out / "index.csv").read_text()
    assert "broken," in index and "broken.svs" in index and good_slide.stem in index


def test_failures_are_listed_after_the_progress_lines(tmp_path: Path, good_slide: Path,
                                                      fixture_model: Path, capsys):
    out = tmp_path / "out"
    good = tmp_path / "again.tif"
    good.write_bytes(good_slide.read_bytes())
    rc, _, err = scan(capsys, fixture_model, out, tmp_path / "missing-1.svs", good,
                       tmp_path / "missing-2.svs")
    assert rc == 1
    lines = err.strip().splitlines()
    assert len(lines) == 3 + 3  # a progress line per slide, then the failures
    assert all(ln.startswith("[") for ln in lines[:3])
    assert "2 of 3 slides failed" in lines[3]
    assert "missing-1.svs" in lines[4] and "missing-2.svs" in lines[5]


# --- the real console script -------------------------------------------------------------------


def test_console_script_bad_input(tmp_path: Path, fixture_model: Path):
    exe = Path(sys.executable).with_name("convfocus")
    if not exe.is_file():
        pytest.skip(f"console script not installed beside {sys.executable}")
    bad = tmp_path / "corrupt.svs"
    bad.write_bytes(b"II*\x00" + b"\x00" * 200)  # a TIFF header and nothing else
    out = tmp_path / "out"
    proc = subprocess.run([str(exe), "scan", str(bad), "--out", str(out), "--model",
                           str(fixture_model)], capture_output=True, text=True, timeout=120,
                          check=False)
    _assert_one_clear_line(proc.returncode, proc.stderr, "corrupt.svs", "corrupt")
    assert proc.stdout == ""
    _assert_no_partial_output(out, "corrupt")


# --- a bad model spec ----------------------------------------------------------------------------


@pytest.mark.parametrize("text, cause", [
    ('{"window_px": 139}', "lacks 'name', 'version', 'arch'"),
    ('{"name": "m", "version": "1"}', "lacks 'arch'"),
    ("{not json", "not valid JSON (line 1, column 2"),
    ("[1, 2]", "must be a JSON object"),
    ('{"name": "m", "version": "1", "arch": "lite", "window_px": "big"}',
     "'window_px' must be a positive integer"),
    ('{"name": "m", "version": "1", "arch": "lite", "mean": [0.5]}',
     "'mean' must be a list of three numbers"),
    ('{"name": "m", "version": "1", "arch": "lite", "mpp": -1}', "'mpp' must be a positive"),
], ids=["fields-missing", "arch-missing", "not-json", "a-list", "window-text", "mean-short",
        "mpp-negative"])
def test_bad_model_spec_gives_one_clear_line(text: str, cause: str, tmp_path: Path,
                                             good_slide: Path, capsys):
    """A spec without its required fields said "ModelSpec.__init__() missing 3 required
    positional arguments"."""
    model = tmp_path / "bad"
    model.with_suffix(".json").write_text(text)
    out = tmp_path / "out"
    rc, stdout, err = scan(capsys, model, out, good_slide)
    line = _assert_one_clear_line(rc, err, "bad.json", cause)
    assert "__init__" not in line and "Error" not in line.split(": error: ", 1)[1]
    assert stdout == ""
    _assert_no_partial_output(out, good_slide.stem)


# --- training commands: an output path under a regular file --------------------------------------


@pytest.mark.parametrize("command", ["patches", "train"])
def test_output_under_a_regular_file_gives_one_clear_line(command: str, tmp_path: Path,
                                                          tissue_rgb: np.ndarray, capsys):
    """`convfocus train` and `convfocus patches` printed a traceback (NotADirectoryError)."""
    from convfocus.io.images import write_png

    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file, not a folder\n")
    out = blocker / "run"
    source = write_png(tmp_path / "tissue.png", np.ascontiguousarray(tissue_rgb[:600, :600]))
    argv = {"patches": ["patches", str(source), "--out", str(out)],
            "train": ["train", "--pool", str(tmp_path), "--out", str(out), "--steps", "1"]}
    capsys.readouterr()
    rc = main(argv[command])
    err = capsys.readouterr().err
    line = _assert_one_clear_line(rc, err, str(out), "is a file, not a folder")
    assert str(blocker) in line and "Error" not in line.split(": error: ", 1)[1]
