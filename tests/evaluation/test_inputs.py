"""Evaluation inputs: manifests and the scan output folder of each listed slide."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from convfocus.errors import ConfigError
from convfocus.evaluation import inputs


def test_inputs_sharing_a_stem_get_their_own_scan_folders(tmp_path: Path, monkeypatch) -> None:
    roots: list[Path] = []

    def fake_scan(slide: Path, scans: Path, **kwargs: Any) -> Path:
        roots.append(scans)
        return scans / slide.stem

    monkeypatch.setattr(inputs, "_scan", fake_scan)
    slides = [Path("at2/ln-01.svs"), Path("s360/ln-01.ndpi"), Path("at2/ln-02.svs")]
    folders = inputs.scan_outputs(slides, tiles=None, scans=tmp_path)
    assert roots == [tmp_path / "001", tmp_path / "002", tmp_path]
    assert len(set(folders)) == 3
    with pytest.raises(ConfigError, match="share the name 'ln-01'"):
        inputs.scan_outputs(slides, tiles=tmp_path, scans=None)


def test_manifest_rows_and_paths_relative_to_it(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("\ufeffslide , annotations\n a.svs , sub/a.geojson\n,\n",
                                    encoding="utf-8")
    rows = inputs.read_manifest(tmp_path / "m.csv", ("slide", "annotations"))
    assert rows == [{"slide": "a.svs", "annotations": "sub/a.geojson"}]  # stripped, blank dropped
    assert inputs.resolve_path(tmp_path, rows[0]["annotations"]) == tmp_path / "sub" / "a.geojson"
    assert inputs.resolve_path(tmp_path, "/data/b.svs") == Path("/data/b.svs")
    (tmp_path / "empty.csv").write_text("slide,annotations\n")
    with pytest.raises(ConfigError, match="no rows"):
        inputs.read_manifest(tmp_path / "empty.csv", ("slide",))
    with pytest.raises(ConfigError, match="cannot read manifest"):
        inputs.read_manifest(tmp_path / "absent.csv", ("slide",))
