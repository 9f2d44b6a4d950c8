"""What a slide is: suffixes and the slides a folder holds (DICOM WSI folders as one)."""

from __future__ import annotations

from pathlib import Path

from convfocus.io.formats import find_slides, is_dicom_folder, supported_suffixes


def test_supported_suffixes() -> None:
    assert {".svs", ".ndpi", ".mrxs", ".tif", ".png", ".jpg"} <= set(supported_suffixes)
    assert all(s.startswith(".") and s == s.lower() for s in supported_suffixes)


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def _dicom_wsi(folder: Path) -> Path:
    for name in ("level-0.dcm", "level-1.dcm", "label.DCM"):
        _touch(folder / name)
    return folder


def test_a_dicom_wsi_inside_a_folder_is_one_slide(tmp_path: Path) -> None:
    """Each of its .dcm instances was listed as a slide too, beside the folder itself."""
    a = _touch(tmp_path / "a.svs")
    wsi = _dicom_wsi(tmp_path / "case-2")
    z = _touch(tmp_path / "sub" / "z.ome.tif")
    assert find_slides([tmp_path]) == sorted([a, wsi, z])


def test_a_dicom_folder_given_is_itself_the_slide(tmp_path: Path) -> None:
    wsi = _dicom_wsi(tmp_path / "case")
    assert is_dicom_folder(wsi)
    assert find_slides([wsi]) == [wsi]
    with_dicomdir = _touch(tmp_path / "dd" / "DICOMDIR").parent
    _touch(with_dicomdir / "IMAGES" / "IM0")
    assert is_dicom_folder(with_dicomdir) and find_slides([with_dicomdir]) == [with_dicomdir]
    assert not is_dicom_folder(tmp_path) and not is_dicom_folder(tmp_path / "missing")


def test_hidden_and_unknown_files_are_left_out(tmp_path: Path) -> None:
    a = _touch(tmp_path / "A.SVS")
    _touch(tmp_path / "notes.txt")
    _touch(tmp_path / ".hidden.svs")
    _touch(tmp_path / ".partial" / "b.svs")
    _dicom_wsi(tmp_path / ".old-dicom")
    assert find_slides([tmp_path]) == [a]


def test_only_the_folders_own_slides_unless_recursive(tmp_path: Path) -> None:
    a = _touch(tmp_path / "a.ndpi")
    wsi = _dicom_wsi(tmp_path / "wsi")
    deep = _touch(tmp_path / "sub" / "deep.svs")
    deep_wsi = _dicom_wsi(tmp_path / "sub" / "wsi2")
    assert find_slides([tmp_path], recursive=False) == sorted([a, wsi])
    assert find_slides([tmp_path]) == sorted([a, wsi, deep, deep_wsi])


def test_files_are_kept_as_given_and_empty_folders_give_nothing(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    given = [tmp_path / "missing.svs", tmp_path / "notes.txt", tmp_path / "empty"]
    assert find_slides(given) == given[:2]
