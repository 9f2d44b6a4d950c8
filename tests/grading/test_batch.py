"""Batch scanning: inputs, resume after a kill, the index, local worker processes and a Dask
cluster. Every way of running a batch must give byte-identical tiles.csv files."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from convfocus.errors import ConfigError
from convfocus.grading.batch import Progress, run_batch
from convfocus.grading.jobs import SlideJob, expand_inputs
from convfocus.grading.scan import ScanOptions, is_complete
from convfocus.io.atomic import is_temp_name
from convfocus.io.images import write_pyramidal_tiff

# --- expand_inputs -----------------------------------------------------------------------------


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_expand_files_keeps_order_and_drops_duplicates(tmp_path: Path):
    a, b = _touch(tmp_path / "a.svs"), _touch(tmp_path / "b.tif")
    missing = tmp_path / "missing.ndpi"
    jobs = expand_inputs([b, a, str(b), missing])
    assert [j.path for j in jobs] == [b, a, missing]  # a missing file is kept: scanning says so
    assert all(j.mpp is None for j in jobs)


def test_expand_folder_finds_slides_recursively(tmp_path: Path):
    root = tmp_path / "slides"
    found = [_touch(root / "b.svs"), _touch(root / "a.ndpi"), _touch(root / "sub" / "c.tiff")]
    _touch(root / "notes.txt")
    _touch(root / ".hidden" / "d.svs")
    _touch(root / ".e.svs")
    jobs = expand_inputs([root])
    assert sorted(j.path for j in jobs) == sorted(found)
    assert [j.path for j in jobs] == sorted(j.path for j in jobs)


def test_a_folder_holding_a_dicom_wsi_is_one_job(tmp_path: Path):
    """It was one job per .dcm instance plus one for the folder."""
    root = tmp_path / "slides"
    a = _touch(root / "a.svs")
    for name in ("level-0.dcm", "level-1.dcm", "label.dcm"):
        _touch(root / "case-7" / name)
    assert [j.path for j in expand_inputs([root])] == [a, root / "case-7"]
    assert [j.path for j in expand_inputs([root / "case-7"])] == [root / "case-7"]


def test_expand_csv_manifest_with_mpp(tmp_path: Path):
    a, b = _touch(tmp_path / "data" / "a.svs"), _touch(tmp_path / "data" / "b.tif")
    manifest = tmp_path / "list.csv"
    manifest.write_text("slide,mpp,note\ndata/a.svs,0.5,x\ndata/b.tif,,y\n")
    jobs = expand_inputs([manifest])
    assert jobs == [SlideJob(a.resolve(), 0.5), SlideJob(b.resolve(), None)]
    other = tmp_path / "paths.csv"
    other.write_text(f"path\n{a}\n")
    assert expand_inputs([other]) == [SlideJob(a.resolve(), None)]


@pytest.mark.parametrize("text, why", [
    ("file\na.svs\n", "'slide' or 'path' column"),
    ("slide,mpp\n", "no rows"),
])
def test_bad_manifest(tmp_path: Path, text: str, why: str):
    manifest = tmp_path / "m.csv"
    manifest.write_text(text)
    with pytest.raises(ConfigError, match=why):
        expand_inputs([manifest])


def test_a_bad_manifest_row_fails_alone(tmp_path: Path):
    """A bad mpp aborted the whole batch; an empty slide cell said 'no slides in this
    folder'."""
    a, b = _touch(tmp_path / "a.svs"), _touch(tmp_path / "b.svs")
    manifest = tmp_path / "m.csv"
    manifest.write_text("slide,mpp\na.svs,fast\n,0.5\nb.svs,0.5\n,\n")
    jobs = expand_inputs([manifest])
    assert [j.path for j in jobs] == [a.resolve(), manifest, b.resolve()]  # the empty row: gone
    assert jobs[2] == SlideJob(b.resolve(), 0.5)
    bad_mpp, empty = jobs[0].error, jobs[1].error
    assert bad_mpp is not None and empty is not None
    assert str(manifest) in bad_mpp and "line 2" in bad_mpp and "'fast' is not a number" in bad_mpp
    assert str(manifest) in empty and "line 3" in empty and "cell is empty" in empty
    assert "no slides" not in empty


def test_duplicate_rows_are_scanned_once_and_said_in_one_line(tmp_path: Path, caplog):
    """They vanished silently."""
    a, b = _touch(tmp_path / "a.svs"), _touch(tmp_path / "b.svs")
    manifest = tmp_path / "m.csv"
    manifest.write_text("slide,mpp\na.svs,\nb.svs,\na.svs,\n")
    with caplog.at_level(logging.WARNING, logger="convfocus"):
        jobs = expand_inputs([manifest, a])
    assert [j.path for j in jobs] == [a.resolve(), b.resolve()]
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert "a.svs" in lines[0] and "m.csv line 2" in lines[0] and "m.csv line 4" in lines[0]
    assert "b.svs" not in lines[0]


def test_a_bad_manifest_row_does_not_stop_the_batch(batch_dir: Path, opts: ScanOptions,
                                                   tmp_path: Path):
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"slide,mpp\n{batch_dir / 'slide-a.tif'},\"0,25\"\n"
                        f"{batch_dir / 'slide-b.tif'},\n")
    results = run_batch(expand_inputs([manifest]), tmp_path / "out", opts, quiet=True)
    assert [r.status for r in results] == ["failed", "done"]
    assert "line 2" in (results[0].error or "") and "not a number" in (results[0].error or "")
    rows = _index_rows(tmp_path / "out")
    assert [(r["name"], r["status"]) for r in rows] == [("slide-a", "failed"), ("slide-b", "done")]


# --- a small batch -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def batch_dir(tmp_path_factory: pytest.TempPathFactory, tissue_rgb: np.ndarray) -> Path:
    """Three small slides (768 x 512 px, 0.25 µm/px) cut from different parts of the generated
    tissue, glass included; one has a blurred patch."""
    from convfocus.synthesis.defocus import apply_blur

    d = tmp_path_factory.mktemp("batch-slides")
    a = np.ascontiguousarray(tissue_rgb[128:640, 128:896])
    b = np.ascontiguousarray(tissue_rgb[1024:1536, 1280:2048][:, ::-1])
    c = np.ascontiguousarray(tissue_rgb[600:1112, 700:1468])
    c[100:400, 200:500] = apply_blur(c[100:400, 200:500], "bokeh", 8.0)
    for name, img in (("slide-a", a), ("slide-b", b), ("slide-c", c)):
        write_pyramidal_tiff(d / f"{name}.tif", img, mpp=0.25)
    return d


STEMS = ["slide-a", "slide-b", "slide-c"]


@pytest.fixture(scope="module")
def opts(fixture_model: Path) -> ScanOptions:
    return ScanOptions(model=str(fixture_model))


@pytest.fixture(scope="module")
def reference(batch_dir: Path, opts: ScanOptions, tmp_path_factory) -> Path:
    """Output root of an uninterrupted one-process run."""
    out = tmp_path_factory.mktemp("reference")
    results = run_batch(expand_inputs([batch_dir]), out, opts, quiet=True)
    assert [r.status for r in results] == ["done"] * 3, [r.error for r in results]
    return out


def _assert_same_tiles(out: Path, reference: Path, stems=STEMS) -> None:
    for stem in stems:
        assert is_complete(out / stem), stem
        got, want = (out / stem / "tiles.csv").read_bytes(), (reference / stem / "tiles.csv")
        assert got == want.read_bytes(), f"{stem}/tiles.csv differs"


def _leftovers(out: Path) -> list[str]:
    return [p.name for p in out.iterdir() if is_temp_name(p.name)]


def _index_rows(out: Path) -> list[dict[str, str]]:
    with open(out / "index.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_index_lists_every_slide_with_its_verdict(reference: Path):
    rows = _index_rows(reference)
    assert [r["name"] for r in rows] == STEMS
    assert all(r["status"] == "done" and r["error"] == "" for r in rows)
    # the test slides hold less tissue than a histology verdict needs
    assert all(r["verdict"] in {"pass", "review", "rescan", "insufficient-tissue"} for r in rows)
    assert [r["report"] for r in rows] == [f"{s}/report.html" for s in STEMS]
    html = (reference / "index.html").read_text(encoding="utf-8")
    for stem, r in zip(STEMS, rows, strict=True):
        assert stem in html and f"{stem}/report.html" in html and r["verdict"] in html


def test_index_lists_failed_slides_too(batch_dir: Path, opts: ScanOptions, tmp_path: Path):
    broken = tmp_path / "broken.svs"
    broken.write_bytes(b"not a slide")
    results = run_batch([SlideJob(broken)], tmp_path / "out", opts, quiet=True)
    assert [r.status for r in results] == ["failed"]
    (row,) = _index_rows(tmp_path / "out")
    assert row["name"] == "broken" and row["verdict"] == "error" and row["status"] == "failed"
    assert row["input"] == str(broken) and "broken.svs" in row["error"]


def test_index_columns_and_names_do_not_depend_on_which_row_failed(
        batch_dir: Path, opts: ScanOptions, tmp_path: Path):
    """The columns came in another order when the first row failed, and a failed row kept
    its file's extension in the name column while the others had the stem."""
    broken = tmp_path / "broken.svs"
    broken.write_bytes(b"not a slide")
    good = batch_dir / "slide-a.tif"
    headers = []
    for k, jobs in enumerate(([SlideJob(broken), SlideJob(good)],
                              [SlideJob(good), SlideJob(broken)])):
        out = tmp_path / f"out{k}"
        run_batch(jobs, out, opts, quiet=True)
        headers.append((out / "index.csv").read_text().splitlines()[0])
        rows = {r["name"]: r for r in _index_rows(out)}
        assert set(rows) == {"broken", "slide-a"}
        assert rows["broken"]["input"] == str(broken) and rows["slide-a"]["input"] == str(good)
    assert headers[0] == headers[1]
    assert headers[0].startswith("name,input,status,verdict,") and headers[0].endswith(",error")


def test_a_second_batch_merges_into_the_index(reference: Path, batch_dir: Path,
                                              opts: ScanOptions, tmp_path: Path):
    """A second batch into the same folder dropped the first batch's rows."""
    out = tmp_path / "out"
    run_batch([SlideJob(batch_dir / "slide-a.tif"), SlideJob(batch_dir / "slide-b.tif")], out,
              opts, quiet=True)
    first = _index_rows(out)
    missing = tmp_path / "slide-z.svs"
    run_batch([SlideJob(batch_dir / "slide-c.tif"), SlideJob(missing),
               SlideJob(batch_dir / "slide-a.tif")], out, opts, resume=True, quiet=True)
    rows = _index_rows(out)
    assert [r["name"] for r in rows] == ["slide-a", "slide-b", "slide-c", "slide-z"]
    assert [r["status"] for r in rows] == ["skipped", "done", "done", "failed"]
    assert rows[1] == first[1]  # slide-b: as the first batch wrote it
    assert rows[0]["verdict"] == first[0]["verdict"] and rows[0]["report"] == "slide-a/report.html"
    html = (out / "index.html").read_text(encoding="utf-8")
    assert all(s in html for s in ("slide-a", "slide-b", "slide-c", "slide-z"))
    assert html.count("%</td>") >= 3  # the OOF share of the first batch's rows is a number


def test_resume_skips_complete_and_redoes_incomplete(reference: Path, batch_dir: Path,
                                                     opts: ScanOptions, tmp_path: Path):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    (out / "slide-b" / "summary.json").unlink()  # written last: the folder is incomplete
    (out / "slide-b" / "tiles.csv").write_text("stale\n")
    # left by a killed run whose process is gone: a folder being written, one being replaced
    (out / ".slide-c.999999999.1.tmp").mkdir()
    (out / ".slide-a.999999999.1.old").mkdir()
    before = {p: p.stat().st_mtime_ns for p in (out / "slide-a").iterdir()}
    results = run_batch(expand_inputs([batch_dir]), out, opts, resume=True, quiet=True)
    assert [r.status for r in results] == ["skipped", "done", "skipped"]
    assert {p: p.stat().st_mtime_ns for p in (out / "slide-a").iterdir()} == before
    _assert_same_tiles(out, reference)
    assert _leftovers(out) == []
    assert [r["status"] for r in _index_rows(out)] == ["skipped", "done", "skipped"]


@pytest.mark.timeout(240)
def test_resume_rescans_a_slide_made_with_other_settings(
        reference: Path, batch_dir: Path, opts: ScanOptions, fixture_model: Path, tmp_path: Path):
    """--resume with another --profile, --mpp or model kept the old outputs silently."""
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    jobs = expand_inputs([batch_dir])

    def resume(o: ScanOptions, js: list[SlideJob] = jobs) -> tuple[list[str], list[str]]:
        err = io.StringIO()
        results = run_batch(js, out, o, resume=True,
                            progress=Progress(len(js), stream=err, out=io.StringIO()))
        notes = [ln for ln in err.getvalue().splitlines() if "rescanning" in ln]
        return [r.status for r in results], notes

    summary = json.loads((out / "slide-a" / "summary.json").read_text())
    settings = summary["settings"]
    assert settings["profile"] == "histology" and settings["mpp"] == 0.25
    assert settings["mpp_source"] == "metadata" and len(settings["model"]["sha256"]) == 64
    assert {"native", "window_px", "stride_px", "min_tissue", "precision", "dense"} <= set(settings)
    assert resume(opts) == (["skipped"] * 3, [])

    cytology = replace(opts, profile="cytology")
    status, notes = resume(cytology)
    assert status == ["done"] * 3
    assert notes == [f"{s}: rescanning, profile histology -> cytology" for s in STEMS]
    assert json.loads((out / "slide-b" / "summary.json").read_text())["settings"][
        "profile"] == "cytology"
    assert resume(cytology) == (["skipped"] * 3, [])

    one = [SlideJob(batch_dir / "slide-a.tif", mpp=0.3)]
    status, notes = resume(cytology, one)
    assert status == ["done"] and notes == [
        "slide-a: rescanning, mpp 0.25 (metadata) -> 0.3 (--mpp)"]
    one = [SlideJob(batch_dir / "slide-a.tif")]
    assert resume(cytology, one) == (["done"], [
        "slide-a: rescanning, mpp 0.3 (--mpp) -> the file's own"])

    model = tmp_path / "model" / "m"
    shutil.copytree(fixture_model.parent, model.parent)
    spec = json.loads(model.with_suffix(".json").read_text())
    assert resume(replace(cytology, model=str(model)), one) == (["skipped"], [])  # same files
    spec["version"] = "1"
    model.with_suffix(".json").write_text(json.dumps(spec))
    assert resume(replace(cytology, model=str(model)), one) == (["done"], [
        "slide-a: rescanning, model fixture 0 -> fixture 1"])
    spec["metrics"] = {"note": "retrained"}  # the same name and version, other files
    model.with_suffix(".json").write_text(json.dumps(spec))
    assert resume(replace(cytology, model=str(model)), one) == (["done"], [
        "slide-a: rescanning, model fixture 1: its files changed"])

    summary = json.loads((out / "slide-c" / "summary.json").read_text())
    del summary["settings"]  # a scan made before settings were recorded
    (out / "slide-c" / "summary.json").write_text(json.dumps(summary))
    one = [SlideJob(batch_dir / "slide-c.tif")]
    assert resume(cytology, one) == (["done"], [
        "slide-c: rescanning, no settings recorded (an older scan)"])


@pytest.mark.timeout(240)
def test_killed_batch_resumes_to_the_same_outputs(reference: Path, batch_dir: Path,
                                                  fixture_model: Path, tmp_path: Path, capsys):
    """SIGKILL the console script once the first slide's folder appears, then --resume."""
    from convfocus.cli import main

    exe = Path(sys.executable).with_name("convfocus")
    if not exe.is_file():
        pytest.skip(f"console script not installed beside {sys.executable}")
    out = tmp_path / "out"
    args = ["scan", str(batch_dir), "--out", str(out), "--model", str(fixture_model), "-q"]
    proc = subprocess.Popen([str(exe), *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        while not any((out / s).is_dir() for s in STEMS):
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "no output folder within 180 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        if proc.stderr:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    done_before = [s for s in STEMS if (out / s).is_dir()]
    assert 1 <= len(done_before) < len(STEMS)
    assert all(is_complete(out / s) for s in done_before)  # a folder appears only when whole
    assert not (out / "index.csv").exists()

    capsys.readouterr()
    assert main([*args, "--resume"]) == 0
    _assert_same_tiles(out, reference)
    assert _leftovers(out) == []
    status = {r["name"]: r["status"] for r in _index_rows(out)}
    assert status == {s: "skipped" if s in done_before else "done" for s in STEMS}


# --- other engines -----------------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_two_worker_processes_give_the_same_tiles(reference: Path, batch_dir: Path,
                                                  opts: ScanOptions, tmp_path: Path):
    out = tmp_path / "out"
    jobs = [SlideJob(batch_dir / f"{s}.tif") for s in STEMS[1:]]  # one slide per worker
    results = run_batch(jobs, out, opts, workers=2, quiet=True)
    assert [r.status for r in results] == ["done"] * 2, [r.error for r in results]
    _assert_same_tiles(out, reference, STEMS[1:])
    assert [r["name"] for r in _index_rows(out)] == STEMS[1:]


@pytest.fixture
def dask_cluster():
    """A real two-process Dask cluster on loopback; skipped where it cannot start here."""
    try:
        from distributed import LocalCluster
    except ImportError as exc:
        pytest.skip(f"dask.distributed not importable: {exc}")
    try:
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                               host="127.0.0.1", dashboard_address=None, silence_logs=40)
    except Exception as exc:  # noqa: BLE001 - any failure to start means: not here
        pytest.skip(f"cannot start a Dask LocalCluster in this environment: "
                    f"{type(exc).__name__}: {exc}")
    try:
        yield cluster
    finally:
        cluster.close(timeout=30)


@pytest.mark.timeout(240)
def test_dask_scheduler_gives_the_same_tiles(reference: Path, batch_dir: Path, opts: ScanOptions,
                                             tmp_path: Path, dask_cluster, monkeypatch):
    assert dask_cluster.scheduler_address.startswith("tcp://127.0.0.1:")
    monkeypatch.chdir(tmp_path)  # relative paths must reach the workers as absolute ones
    rel = Path(os.path.relpath(batch_dir, tmp_path))
    out = tmp_path / "out"
    jobs = [SlideJob(rel / f"{s}.tif") for s in STEMS[:2]]  # one slide per worker
    results = run_batch(jobs, Path("out"), opts, scheduler=dask_cluster.scheduler_address,
                        quiet=True)
    assert [r.status for r in results] == ["done"] * 2, [r.error for r in results]
    _assert_same_tiles(out, reference, STEMS[:2])
    assert [r["name"] for r in _index_rows(out)] == STEMS[:2]



# --- what the terminal shows -------------------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_one_slide_shows_its_progress_on_a_terminal(batch_dir: Path, opts: ScanOptions,
                                                    tmp_path: Path):
    """A single slide ran in silence."""
    err, out = _Terminal(), io.StringIO()
    progress = Progress(1, stream=err, out=out)
    results = run_batch([SlideJob(batch_dir / "slide-c.tif")], tmp_path / "out", opts,
                        progress=progress)
    assert [r.status for r in results] == ["done"]
    shown = err.getvalue()
    frames = [f.strip() for f in shown.split("\r") if f.strip()]
    assert frames and all("slide-c" in f and "ETA" in f for f in frames), frames
    assert "opening" in frames[0] and "writing outputs" in frames[-1]
    assert shown.endswith("\r") and not shown.split("\r")[-2].strip()  # the line is cleared
    (line,) = out.getvalue().splitlines()
    assert line.startswith("slide-c: ") and line.endswith(str(tmp_path / "out" / "slide-c" /
                                                                "report.html"))


def test_progress_counts_regions_and_slides():
    err = _Terminal()
    progress = Progress(3, stream=err, out=io.StringIO())
    progress.start(0, "slide-a")
    time.sleep(0.15)
    progress.step(0, 5, 20)
    progress.close()
    frames = [f.strip() for f in err.getvalue().split("\r") if f.strip()]
    assert frames[-1].startswith("[#-") and " 0/3 " in frames[-1]  # a quarter of a third
    assert frames[-1].endswith("slide-a 25 %") and "ETA" in frames[-1]


def test_a_log_line_does_not_run_into_the_status_line():
    err = _Terminal()
    handler = logging.StreamHandler(err)
    logging.getLogger().addHandler(handler)
    try:
        progress = Progress(2, stream=err, out=io.StringIO())
        progress.start(0, "slide-a")
        logging.getLogger("convfocus.test").warning("slide-a: no pixel size in metadata")
        progress.close()
    finally:
        logging.getLogger().removeHandler(handler)
    before, _, _ = err.getvalue().partition("slide-a: no pixel size")
    assert before.endswith("\r") and not before.rsplit("\r", 2)[-2].strip(), repr(before)


def test_each_slide_prints_its_verdict_and_the_batch_a_summary(batch_dir: Path,
                                                               fixture_model: Path,
                                                               tmp_path: Path, capsys):
    """No verdict was printed, only the report's path at the very end."""
    from convfocus.cli import main

    out = tmp_path / "out"
    args = ["scan", str(batch_dir / "slide-a.tif"), "--out", str(out), "--model",
            str(fixture_model)]
    capsys.readouterr()
    assert main(args) == 0
    (line,) = capsys.readouterr().out.splitlines()
    summary = json.loads((out / "slide-a" / "summary.json").read_text())
    verdict = summary["verdict"]["verdict"]
    assert line.startswith(f"slide-a: {verdict.upper()} (histology): ")
    assert f"{100 * summary['oof_share']:.1f} % of {summary['tissue_area_mm2']:.2f} mm² tissue" \
        in line
    assert f"mean class {summary['mean_class']:.1f}" in line
    assert line.endswith(f"-> {out / 'slide-a' / 'report.html'}")

    assert main([*args[:2], str(batch_dir / "slide-b.tif"), *args[2:], "--resume"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("slide-a: ") and "kept from an earlier scan" in lines[0]
    assert lines[1].startswith("slide-b: ")
    assert lines[2].startswith("2 slides in ") and lines[2].endswith(f"-> {out / 'index.html'}")
    assert "kept from an earlier scan" in lines[2]

    assert main([*args, "--resume", "-q"]) == 0
    assert capsys.readouterr() == ("", "")
