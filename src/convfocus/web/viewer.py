"""Slide viewer: deep-zoom tiles of a scanned slide with the OOF class map as an overlay.

Serves one scan output folder (``OUT/<stem>/``) or a folder of them. Slide tiles come
from the slide itself (``summary.json`` -> ``input``; the scan's thumbnail when the
slide is gone); overlay tiles are rendered from ``classmap.npy`` and the grid in
``summary.json``. The browser side is OpenSeadragon (bundled, see docs/web.md).
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np

from convfocus import NUM_CLASSES
from convfocus.errors import ConfigError, ConvFocusError, PixelSizeError
from convfocus.io.images import resize
from convfocus.types import GridGeometry
from convfocus.web.server import HttpError, Request, Response, query_float, static_file

log = logging.getLogger(__name__)

TILE_PX = 256
JPEG_QUALITY = 85
SUMMARY = "summary.json"
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._ -]{0,127}")
_SEVERITY_KEYS = ("mean_class", "max_class")


def class_colors() -> np.ndarray:
    """(30, 3) uint8 jet colours of the classes, as in heatmap.png."""
    from convfocus.grading.heatmap import class_colors as colors

    return colors(NUM_CLASSES)


# --- tile geometry ---------------------------------------------------------------------------


def dzi_max_level(width: int, height: int) -> int:
    """Highest Deep Zoom level (the full-resolution one)."""
    return max(0, math.ceil(math.log2(max(width, height, 1))))


def dzi_tile_box(width: int, height: int, level: int, col: int, row: int,
                 tile_px: int = TILE_PX) -> tuple[int, int, int, int, int] | None:
    """(l0_x, l0_y, out_w, out_h, downsample) of one Deep Zoom tile; None if outside."""
    max_level = dzi_max_level(width, height)
    if not 0 <= level <= max_level or col < 0 or row < 0:
        return None
    d = 2 ** (max_level - level)
    lw, lh = math.ceil(width / d), math.ceil(height / d)
    tx, ty = col * tile_px, row * tile_px
    if tx >= lw or ty >= lh:
        return None
    return tx * d, ty * d, min(tile_px, lw - tx), min(tile_px, lh - ty), d


def dzi_xml(width: int, height: int, url: str, fmt: str, tile_px: int = TILE_PX) -> str:
    """A Deep Zoom descriptor whose tiles live at ``url{level}/{col}_{row}.{fmt}``."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<Image xmlns="http://schemas.microsoft.com/deepzoom/2008" Url={quoteattr(url)} '
        f'Format="{fmt}" Overlap="0" TileSize="{tile_px}">'
        f'<Size Width="{width}" Height="{height}"/></Image>\n'
    )


# --- pixel sources ---------------------------------------------------------------------------


class _Pixels:
    """Level-0 regions of a slide (or of an image standing in for it), thread-safe."""

    def __init__(self, dims: tuple[int, int], reader: Any | None = None,
                 image: np.ndarray | None = None) -> None:
        self.dims = dims
        self.reader = reader
        self.image = image  # a small full view (thumbnail) for coarse levels / fallback
        self.lock = threading.Lock()
        if reader is not None and image is None:
            self.image = np.ascontiguousarray(reader.get_thumbnail(2048)[..., :3])

    def _from_image(self, l0_x: int, l0_y: int, l0_w: int, l0_h: int,
                    out: tuple[int, int]) -> np.ndarray:
        assert self.image is not None
        ih, iw = self.image.shape[:2]
        sx, sy = iw / self.dims[0], ih / self.dims[1]
        x0, y0 = math.floor(l0_x * sx), math.floor(l0_y * sy)
        x1 = max(x0 + 1, math.ceil((l0_x + l0_w) * sx))
        y1 = max(y0 + 1, math.ceil((l0_y + l0_h) * sy))
        canvas = np.full((y1 - y0, x1 - x0, 3), 255, np.uint8)
        cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, iw), min(y1, ih)
        if cx1 > cx0 and cy1 > cy0:
            canvas[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0] = self.image[cy0:cy1, cx0:cx1]
        return resize(canvas, out)

    def region(self, l0_x: int, l0_y: int, l0_w: int, l0_h: int,
               out: tuple[int, int]) -> np.ndarray:
        """RGB uint8 (out_h, out_w, 3) of a level-0 box; white outside the slide."""
        d = l0_w / out[0]
        if self.reader is None or (self.image is not None
                                   and d >= self.dims[0] / self.image.shape[1]):
            return self._from_image(l0_x, l0_y, l0_w, l0_h, out)
        downs = list(self.reader.level_downsamples)
        level = max((i for i, ds in enumerate(downs) if ds <= d * 1.001), default=0,
                    key=lambda i: downs[i])
        ds = float(downs[level])
        size = (max(1, round(l0_w / ds)), max(1, round(l0_h / ds)))
        with self.lock:
            rgb = self.reader.read_region((int(l0_x), int(l0_y)), level, size)
        return resize(np.ascontiguousarray(rgb[..., :3]), out)

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()


class _LRU:
    """A small thread-safe LRU cache of encoded tiles."""

    def __init__(self, maxsize: int = 512) -> None:
        self.maxsize, self.data, self.lock = maxsize, OrderedDict[Any, bytes](), threading.Lock()

    def get(self, key: Any, make: Callable[[], bytes]) -> bytes:
        with self.lock:
            if key in self.data:
                self.data.move_to_end(key)
                return self.data[key]
        value = make()
        with self.lock:
            self.data[key] = value
            while len(self.data) > self.maxsize:
                self.data.popitem(last=False)
        return value


# --- one scanned slide -----------------------------------------------------------------------


def _number(v: Any) -> float | None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return float(v) if ok else None


def _regions(path: Path) -> list[dict[str, Any]]:
    """Features of oof_regions.geojson as {bbox, centroid, rank, properties}, worst first.

    Order: the file's ``rank`` property when present (regions.py writes it), else the
    highest ``mean_class`` / ``max_class``, then the largest area.
    """
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        feats = data.get("features", []) if isinstance(data, dict) else []
    except (OSError, ValueError, UnicodeDecodeError):
        log.warning("%s: unreadable GeoJSON; no regions listed", path)
        return []
    out: list[tuple[tuple[float, float, float, float], dict[str, Any]]] = []
    for i, f in enumerate(feats if isinstance(feats, list) else []):
        if not isinstance(f, dict) or not isinstance(f.get("geometry"), dict):
            continue
        try:
            pts = np.asarray(_flatten_coords(f["geometry"].get("coordinates")), dtype=float)
        except (TypeError, ValueError):
            continue
        if pts.ndim != 2 or pts.shape[0] == 0 or not np.isfinite(pts).all():
            continue
        x0, y0 = pts[:, 0].min(), pts[:, 1].min()
        x1, y1 = pts[:, 0].max(), pts[:, 1].max()
        raw = f.get("properties")
        props: dict[str, Any] = {
            str(k): v for k, v in (raw.items() if isinstance(raw, dict) else ())
            if isinstance(v, (int, float, str, bool)) or v is None}
        score = next((n for k in _SEVERITY_KEYS if (n := _number(props.get(k))) is not None),
                     0.0)
        area = float((x1 - x0) * (y1 - y0))
        rank = _number(props.get("rank"))
        order = (rank if rank is not None else math.inf, -score, -area, float(i))
        out.append((order, {"id": i, "bbox": [x0, y0, x1 - x0, y1 - y0],
                            "centroid": [(x0 + x1) / 2, (y0 + y1) / 2], "properties": props}))
    out.sort(key=lambda item: item[0])
    return [region for _, region in out]


def _flatten_coords(c: Any) -> list[list[float]]:
    if isinstance(c, (list, tuple)) and c and isinstance(c[0], (int, float)):
        return [list(c[:2])]
    if isinstance(c, (list, tuple)):
        return [p for sub in c for p in _flatten_coords(sub)]
    raise TypeError("bad coordinates")


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_json_safe(x) for x in v]
    return v


class ScanView:
    """Everything the viewer serves about one scan output folder."""

    def __init__(self, folder: Path, *, slide_path: Path | None = None,
                 mpp: float | None = None) -> None:
        self.folder = folder
        self.id = folder.name
        try:
            self.summary = json.loads((folder / SUMMARY).read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError):
            raise ConfigError("unreadable summary.json", folder) from None
        if not isinstance(self.summary, dict):
            raise ConfigError("summary.json is not an object", folder)
        try:
            self.grid = GridGeometry.from_dict(self.summary.get("grid"))
        except ConfigError as exc:
            raise ConfigError(exc.message, folder) from None
        try:
            w, h = (int(v) for v in self.summary["dimensions"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError("summary.json: malformed 'dimensions'", folder) from None
        if w <= 0 or h <= 0:
            raise ConfigError("summary.json: empty 'dimensions'", folder)
        self.dims = (w, h)
        self.classmap = self._load("classmap.npy", (self.grid.rows, self.grid.cols))
        self.probs = self._load("probs.npy", (self.grid.rows, self.grid.cols, NUM_CLASSES),
                                required=False)
        self.regions = _regions(folder / "oof_regions.geojson")
        self.slide_path = slide_path
        self.mpp = mpp  # level-0 pixel size given to the viewer: overrides the stored one
        self.pixels_note: str | None = None  # why the thumbnail stands in, without paths
        self._pixels: _Pixels | None = None
        self._pixels_lock = threading.Lock()
        self.tiles, self.overlays = _LRU(), _LRU()
        self.colors = class_colors()

    def _load(self, name: str, shape: tuple[int, ...], *, required: bool = True):
        path = self.folder / name
        if not path.is_file():
            if required:
                raise ConfigError(f"{name} missing: not a scan output folder", self.folder)
            return None
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError):
            raise ConfigError(f"unreadable {name}", self.folder) from None
        if arr.shape != shape:
            raise ConfigError(f"{name} has shape {arr.shape}, the grid says {shape}",
                              self.folder)
        return arr

    # pixels ------------------------------------------------------------------------------
    @property
    def pixels(self) -> _Pixels:
        with self._pixels_lock:
            if self._pixels is None:
                self._pixels = self._open_pixels()
            return self._pixels

    def _slide_candidates(self) -> list[Path]:
        """Where the slide may be: ``--slide``; else the stored input as an absolute path,
        or relative to the summary's folder, then to the current directory."""
        if self.slide_path is not None:
            return [self.slide_path]
        stored = self.summary.get("input")
        if not isinstance(stored, str) or not stored:
            return []
        p = Path(stored)
        if p.is_absolute():
            return [p]
        return list(dict.fromkeys([self.folder / p, Path.cwd() / p]))

    def _slide_mpp(self) -> float | None:
        """The pixel size to open the slide with; None: the file's own.

        The scan's pixel size (``summary.json`` -> ``mpp``) is used when it did not come
        from the file's metadata: given with ``--mpp``, or assumed for a file with none.
        """
        if self.mpp is not None:
            return self.mpp
        if self.summary.get("mpp_source") in (None, "metadata"):
            return None
        return _number(self.summary.get("mpp"))

    def _open_pixels(self) -> _Pixels:
        from convfocus.io.readers import open_slide

        candidates = self._slide_candidates()
        found = [p for p in candidates if p.exists()]
        mpp, stored = self._slide_mpp(), _number(self.summary.get("mpp"))
        hint = "check --slide" if self.slide_path is not None else "pass --slide FILE"
        problem = f"no slide file recorded in summary.json ({hint})"
        if candidates and not found:
            where = " or ".join(str(p) for p in candidates)
            problem = f"slide file not found: {where} ({hint})"
            self.pixels_note = "slide file not found"
        for path in found:
            try:
                try:
                    reader = open_slide(path, mpp=mpp)
                except PixelSizeError:
                    if mpp is not None or stored is None:
                        raise
                    reader = open_slide(path, mpp=stored)  # the file has none: the scan's
            except ConvFocusError as exc:
                problem = f"cannot open the slide file: {exc}"
                self.pixels_note = f"slide file unreadable ({exc.message})"
                continue
            if tuple(reader.dimensions) != self.dims:
                w, h = reader.dimensions
                problem = (f"{path} is {w} x {h} px, the scan says {self.dims[0]} x "
                           f"{self.dims[1]} (another slide?)")
                self.pixels_note = "the slide file differs in size from the scan"
                reader.close()
                continue
            self.pixels_note = None
            return _Pixels(self.dims, reader=reader)
        thumb = self.folder / "thumbnail.png"
        try:
            reader = open_slide(thumb, mpp=1.0)  # its pixel size does not matter here
            image = reader.get_thumbnail(max(reader.dimensions))
            reader.close()
        except ConvFocusError:
            raise HttpError(404, "neither the slide nor its thumbnail can be read") from None
        self.pixels_note = self.pixels_note or "slide file unavailable"
        log.warning("%s: %s; showing the scan's thumbnail", self.id, problem)
        return _Pixels(self.dims, image=np.ascontiguousarray(image[..., :3]))

    @property
    def source(self) -> str:
        """Where the pixels come from: 'slide' or 'thumbnail'."""
        return "slide" if self.pixels.reader is not None else "thumbnail"

    # tiles --------------------------------------------------------------------------------
    def slide_tile(self, level: int, col: int, row: int) -> bytes:
        box = dzi_tile_box(*self.dims, level, col, row)
        if box is None:
            raise HttpError(404, "no such tile")

        def make() -> bytes:
            import cv2

            x, y, w, h, d = box
            rgb = self.pixels.region(x, y, w * d, h * d, (w, h))
            ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]),
                                   [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            if not ok:
                raise RuntimeError("JPEG encoding failed")
            return buf.tobytes()

        return self.tiles.get((level, col, row), make)

    def overlay_rgba(self, l0_x: float, l0_y: float, d: float, w: int, h: int) -> np.ndarray:
        """RGBA uint8 (h, w, 4): class colours, transparent where there is no tissue."""
        xs = l0_x + (np.arange(w) + 0.5) * d
        ys = l0_y + (np.arange(h) + 0.5) * d
        rows, cols = self.grid.row_of(ys), self.grid.col_of(xs)
        out = np.zeros((h, w, 4), np.uint8)
        vr = (rows >= 0) & (rows < self.grid.rows)
        vc = (cols >= 0) & (cols < self.grid.cols)
        if not vr.any() or not vc.any():
            return out
        cls = np.full((h, w), -1, np.int64)
        cls[np.ix_(vr, vc)] = np.asarray(self.classmap)[np.ix_(rows[vr], cols[vc])]
        tissue = (cls >= 0) & (cls < len(self.colors))
        out[tissue, :3] = self.colors[cls[tissue]]
        out[tissue, 3] = 255
        return out

    def overlay_tile(self, level: int, col: int, row: int) -> bytes:
        box = dzi_tile_box(*self.dims, level, col, row)
        if box is None:
            raise HttpError(404, "no such tile")

        def make() -> bytes:
            import cv2

            x, y, w, h, d = box
            rgba = self.overlay_rgba(x, y, d, w, h)
            ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgba[..., [2, 1, 0, 3]]))
            if not ok:
                raise RuntimeError("PNG encoding failed")
            return buf.tobytes()

        return self.overlays.get((level, col, row), make)

    # data ---------------------------------------------------------------------------------
    def window(self, l0_x: float, l0_y: float) -> dict[str, Any]:
        """Class and probabilities of the window under a level-0 point."""
        row = int(self.grid.row_of(np.array([l0_y]))[0])
        col = int(self.grid.col_of(np.array([l0_x]))[0])
        base: dict[str, Any] = {"x_px": l0_x, "y_px": l0_y, "row": None, "col": None,
                                "class": None, "probabilities": None, "tissue": False}
        if not (0 <= row < self.grid.rows and 0 <= col < self.grid.cols):
            return base
        c = int(self.classmap[row, col])
        base.update(row=row, col=col, window_l0_px=[*self.grid.l0_xy(row, col), self.grid.l0_window_px, self.grid.l0_window_px])
        if c < 0:
            return base
        base.update({"class": c, "tissue": True})
        if self.probs is not None:
            p = np.asarray(self.probs[row, col], dtype=np.float64)
            p = np.where(np.isfinite(p), p, 0.0)
            base["probabilities"] = [round(float(v), 5) for v in p]
            total = float(p.sum())
            if total > 0:
                base["expected_class"] = round(float((p * np.arange(p.size)).sum() / total), 3)
                base["confidence"] = round(float(p.max() / total), 4)
        return base

    def public_summary(self) -> dict[str, Any]:
        """summary.json for the browser (the input reduced to its file name)."""
        s = dict(self.summary)
        if isinstance(s.get("input"), str):
            s["input"] = Path(s["input"]).name
        return _json_safe(s)

    def info(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.summary.get("slide", self.id) if isinstance(
            self.summary.get("slide"), str) else self.id, "dimensions": list(self.dims),
            "mpp": self.mpp if self.mpp is not None else self.summary.get("mpp"),
            "regions": len(self.regions),
            "slide_dzi": f"/slides/{self.id}/slide.dzi",
            "overlay_dzi": f"/slides/{self.id}/overlay.dzi"}

    def close(self) -> None:
        if self._pixels is not None:
            self._pixels.close()


def find_scans(path: Path) -> list[Path]:
    """The scan output folders at ``path``: itself, or its subfolders with a summary.json."""
    if not path.is_dir():
        raise ConfigError("not a folder", path)
    if (path / SUMMARY).is_file():
        return [path]
    found = sorted(p for p in path.iterdir()
                   if p.is_dir() and (p / SUMMARY).is_file() and not p.name.startswith("."))
    if not found:
        raise ConfigError("no scan output here (no summary.json): run `convfocus scan` first",
                          path)
    return found


class ViewerApp:
    """HTTP routes of the slide viewer (see docs/web.md)."""

    title = "convfocus slide viewer"

    def __init__(self, path: str | Path, *, slide_path: str | Path | None = None,
                 mpp: float | None = None) -> None:
        folders = find_scans(Path(path).resolve())
        if slide_path is not None and len(folders) != 1:
            raise ConfigError("--slide needs a single scan output folder", path)
        self.scans: dict[str, ScanView] = {}
        for folder in folders:
            if not _ID_RE.fullmatch(folder.name):
                log.warning("skipped %s: unusual folder name", folder)
                continue
            try:
                self.scans[folder.name] = ScanView(
                    folder, slide_path=None if slide_path is None else Path(slide_path).absolute(),
                    mpp=mpp)
            except ConfigError as exc:
                if len(folders) == 1:
                    raise
                log.warning("skipped: %s", exc)
        if not self.scans:
            raise ConfigError("no readable scan output", path)

    def _scan(self, sid: str) -> ScanView:
        scan = self.scans.get(sid)
        if scan is None:
            raise HttpError(404, "no such slide")
        return scan

    def handle(self, request: Request) -> Response:
        if request.method != "GET":
            raise HttpError(405, "method not allowed")
        path = request.path
        if path in ("/", "/index.html"):
            return static_file("view.html")
        if path.startswith("/static/"):
            return static_file(path[len("/static/"):])
        if path == "/api/slides":
            return Response.json([s.info() for s in self.scans.values()])
        if path == "/api/legend":
            return Response.json({"classes": NUM_CLASSES,
                                  "colors": ["#" + bytes(int(v) for v in c).hex()
                                             for c in class_colors()]})
        m = re.fullmatch(r"/api/slides/([^/]+)/(summary|regions|window)", path)
        if m:
            scan = self._scan(m.group(1))
            if m.group(2) == "summary":
                return Response.json({**scan.public_summary(), "pixels": scan.source,
                                      "pixels_note": scan.pixels_note})
            if m.group(2) == "regions":
                return Response.json(_json_safe(scan.regions[:200]))
            w, h = scan.dims
            x = query_float(request.query, "x", lo=-1e9, hi=1e9)
            y = query_float(request.query, "y", lo=-1e9, hi=1e9)
            if not (0 <= x < w and 0 <= y < h):
                return Response.json({"x_px": x, "y_px": y, "class": None, "tissue": False,
                                      "probabilities": None, "outside": True})
            return Response.json(scan.window(x, y))
        m = re.fullmatch(r"/slides/([^/]+)/(slide|overlay)\.dzi", path)
        if m:
            scan = self._scan(m.group(1))
            kind = m.group(2)
            url = f"/slides/{scan.id}/{'tiles' if kind == 'slide' else 'overlay'}/"
            body = dzi_xml(*scan.dims, url, "jpeg" if kind == "slide" else "png")
            return Response(200, body.encode(), "application/xml; charset=utf-8",
                            {"Cache-Control": "no-cache"})
        m = re.fullmatch(r"/slides/([^/]+)/(tiles|overlay)/(\d{1,2})/(\d{1,6})_(\d{1,6})"
                         r"\.(jpeg|png)", path)
        if m:
            scan = self._scan(m.group(1))
            level, col, row = int(m.group(3)), int(m.group(4)), int(m.group(5))
            if m.group(2) == "tiles" and m.group(6) == "jpeg":
                return Response(200, scan.slide_tile(level, col, row), "image/jpeg",
                                {"Cache-Control": "max-age=3600"})
            if m.group(2) == "overlay" and m.group(6) == "png":
                return Response(200, scan.overlay_tile(level, col, row), "image/png",
                                {"Cache-Control": "max-age=3600"})
        raise HttpError(404, "not found")

    def close(self) -> None:
        for scan in self.scans.values():
            scan.close()
