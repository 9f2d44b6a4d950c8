"""Atomic writes: whole files or none, the old file kept on failure, no temporary left."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from convfocus.errors import OutputError
from convfocus.io.atomic import (
    atomic_folder,
    is_temp_name,
    publish_folder,
    remove_stale,
    temp_path,
    write_atomic,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)

DEAD_PID = 999_999_999  # above any pid_max: no such process


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_bytes_text_and_json_land_whole(tmp_path: Path) -> None:
    assert write_json_atomic(tmp_path / "a.json", {"x": float("nan"), "y": np.int64(3),
                                                   "z": (1.5, np.float32(2))}) == tmp_path / "a.json"
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": None, "y": 3, "z": [1.5, 2.0]}
    write_text_atomic(tmp_path / "b.html", "<p>é</p>\r\n")
    assert (tmp_path / "b.html").read_bytes() == "<p>é</p>\r\n".encode()  # line ends as given
    write_text_atomic(tmp_path / "b.html", "second")
    assert (tmp_path / "b.html").read_text() == "second"
    write_bytes_atomic(tmp_path / "c.bin", b"\x00\xff")
    assert _names(tmp_path) == ["a.json", "b.html", "c.bin"]


def test_temporary_name_is_hidden_beside_the_file_and_per_thread(tmp_path: Path) -> None:
    tmp = temp_path(tmp_path / "summary.json")
    assert tmp.parent == tmp_path and tmp.name.startswith(".summary.json.")
    assert tmp.name.endswith(".tmp") and is_temp_name(tmp.name)
    assert is_temp_name(temp_path(tmp_path / "x", "old").name)
    assert not is_temp_name("summary.json") and not is_temp_name(".summary.json")
    other: list[Path] = []
    t = threading.Thread(target=lambda: other.append(temp_path(tmp_path / "summary.json")))
    t.start()
    t.join()
    assert other[0] != tmp


def test_a_failing_writer_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"old")

    def half_then_crash(tmp: Path) -> None:
        tmp.write_bytes(b"new, but only ha")
        raise RuntimeError("exporter crashed")

    with pytest.raises(RuntimeError, match="exporter crashed"):
        write_atomic(path, half_then_crash)
    assert path.read_bytes() == b"old"
    assert _names(tmp_path) == ["model.onnx"]

    def disk_full(tmp: Path) -> None:
        tmp.write_bytes(b"n")
        raise OSError(28, "No space left on device")

    with pytest.raises(OutputError, match="No space left on device") as err:
        write_atomic(path, disk_full)
    assert err.value.path == str(path)
    assert path.read_bytes() == b"old"
    assert _names(tmp_path) == ["model.onnx"]


def test_a_failing_rename_leaves_no_temporary(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()  # a folder cannot be replaced by a file
    with pytest.raises(OutputError):
        write_bytes_atomic(tmp_path / "taken", b"x")
    assert _names(tmp_path) == ["taken"]


def test_missing_folder_is_an_error_unless_parents_asked_for(tmp_path: Path) -> None:
    with pytest.raises(OutputError):
        write_text_atomic(tmp_path / "missing" / "c.html", "x")
    assert not (tmp_path / "missing").exists()
    write_text_atomic(tmp_path / "missing" / "deeper" / "c.html", "x", parents=True)
    assert (tmp_path / "missing" / "deeper" / "c.html").read_text() == "x"
    (tmp_path / "a-file").write_text("")
    with pytest.raises(OutputError, match="cannot create folder"):
        write_text_atomic(tmp_path / "a-file" / "c.html", "x", parents=True)


def test_writer_callback_gets_a_path_it_may_write_by_any_library(tmp_path: Path) -> None:
    arr = np.arange(12, dtype=np.int16).reshape(3, 4)

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as fh:  # np.save to a path would append ".npy"
            np.save(fh, arr)

    write_atomic(tmp_path / "classmap.npy", save)
    assert np.array_equal(np.load(tmp_path / "classmap.npy"), arr)
    assert _names(tmp_path) == ["classmap.npy"]


def test_concurrent_writers_and_readers_see_whole_files_only(tmp_path: Path) -> None:
    path = tmp_path / "shared.bin"
    payloads = [bytes([i]) * (256 << 10) for i in range(8)]  # 256 kB each
    write_bytes_atomic(path, payloads[0])
    seen: set[bytes] = set()
    errors: list[BaseException] = []
    stop = threading.Event()

    def writer(i: int) -> None:
        try:
            for _ in range(10):
                write_bytes_atomic(path, payloads[i])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def reader() -> None:
        while not stop.is_set():
            seen.add(path.read_bytes())

    r = threading.Thread(target=reader)
    r.start()
    writers = [threading.Thread(target=writer, args=(i,)) for i in range(len(payloads))]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    r.join()
    assert errors == []
    assert seen <= set(payloads)  # never a torn or half-written file
    assert path.read_bytes() in payloads
    assert _names(tmp_path) == ["shared.bin"]


# --- folders -------------------------------------------------------------------------------------


def test_folder_is_published_whole_and_replaces_the_old_one(tmp_path: Path) -> None:
    final = tmp_path / "slide"
    final.mkdir()
    (final / "stale.csv").write_text("from an older run")
    with atomic_folder(final) as tmp:
        assert tmp.parent == tmp_path and is_temp_name(tmp.name)
        assert not (final / "new.csv").exists()
        (tmp / "new.csv").write_text("new")
    assert _names(final) == ["new.csv"]  # the old folder went whole, not merged
    assert _names(tmp_path) == ["slide"]


def test_a_failing_folder_keeps_the_old_one_and_leaves_no_temporary(tmp_path: Path) -> None:
    final = tmp_path / "slide"
    final.mkdir()
    (final / "summary.json").write_text("old")
    with pytest.raises(OSError, match="disk full"), atomic_folder(final) as tmp:
        (tmp / "tiles.csv").write_text("half")
        raise OSError("disk full")
    assert (final / "summary.json").read_text() == "old"
    assert _names(tmp_path) == ["slide"]


def test_publish_puts_the_old_folder_back_when_the_rename_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from convfocus.io import atomic

    final, tmp = tmp_path / "pool", tmp_path / ".pool.new"
    final.mkdir()
    (final / "keep").write_text("old")
    tmp.mkdir()
    real = atomic.os.replace

    def refuse_new(src, dst):  # type: ignore[no-untyped-def]
        if Path(src) == tmp:
            raise OSError(13, "Permission denied")
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", refuse_new)
    with pytest.raises(OSError):
        publish_folder(tmp, final)
    assert (final / "keep").read_text() == "old"


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path: Path) -> None:
    dead_dir = tmp_path / f".slide-c.{DEAD_PID}.1.tmp"
    dead_old = tmp_path / f".slide-a.{DEAD_PID}.1.old"
    dead_file = tmp_path / f".index.csv.{DEAD_PID}.7.tmp"
    mine = temp_path(tmp_path / "slide-b")
    for d in (dead_dir, dead_old, mine):
        d.mkdir()
        (d / "tiles.csv").write_text("half")
    dead_file.write_text("half")
    (tmp_path / ".hidden-but-not-ours").write_text("keep")
    assert sorted(remove_stale(tmp_path)) == sorted([dead_dir, dead_old, dead_file])
    assert _names(tmp_path) == sorted([".hidden-but-not-ours", mine.name])
    assert remove_stale(tmp_path / "missing") == []


def test_written_files_get_the_usual_permissions(tmp_path: Path) -> None:
    """PNGs were written through mkstemp and came out readable by their owner only."""
    import os

    umask = os.umask(0o022)
    os.umask(umask)
    write_bytes_atomic(tmp_path / "thumbnail.png", b"x")
    assert (tmp_path / "thumbnail.png").stat().st_mode & 0o777 == 0o666 & ~umask
