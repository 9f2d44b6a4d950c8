"""Rating workbench: raters label sampled patches; the consensus becomes the in-focus pool.

Labels live in SQLite (``DIR/ratings.sqlite``, WAL, one transaction per label), so a
killed server loses nothing that it acknowledged. A rater only ever sees their own
labels. ``export_consensus`` writes the patches that every one of at least
``min_raters`` raters called ``in-focus``, plus agreement statistics.

References: three independent raters; in-focus (>= 75 % of the tissue in focus),
out-focus (>= 75 % out of focus), undecided; consensus = all three in-focus
(Kohlberger et al. 2019).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import re
import shutil
import sqlite3
import time
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from convfocus.errors import ConfigError, OutputError
from convfocus.io.atomic import atomic_folder
from convfocus.training.sampling import MANIFEST_NAME, PATCH_DIR, PatchRecord, read_manifest
from convfocus.web.server import HttpError, Request, Response, safe_child, static_file

log = logging.getLogger(__name__)

LABELS = ("in-focus", "out-focus", "undecided")
DB_NAME = "ratings.sqlite"
POOL_FIELDS = ("patch", "source", "x_px", "y_px", "mpp", "split", "mean_luma")
RATER_MAX_CHARS = 40
RATER_PUNCTUATION = " ._-"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS raters (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE COLLATE NOCASE,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS labels (
    rater_id INTEGER NOT NULL REFERENCES raters(id),
    patch TEXT NOT NULL,
    label TEXT NOT NULL CHECK (label IN ('in-focus', 'out-focus', 'undecided')),
    updated_at REAL NOT NULL,
    PRIMARY KEY (rater_id, patch)
);
CREATE TABLE IF NOT EXISTS label_history (
    id INTEGER PRIMARY KEY,
    rater_id INTEGER NOT NULL REFERENCES raters(id),
    patch TEXT NOT NULL,
    label TEXT NOT NULL,
    at REAL NOT NULL
);
"""


def check_rater(name: object) -> str:
    """A valid rater name, NFC-normalised, outer spaces removed (400 otherwise).

    1-40 characters: Unicode letters (with their combining marks), decimal digits,
    space, ``.``, ``_``, ``-``; it starts with a letter or digit. Control and format
    characters, path separators and other punctuation are refused.
    """
    text = unicodedata.normalize("NFC", name).strip(" ") if isinstance(name, str) else ""
    if not (0 < len(text) <= RATER_MAX_CHARS and _rater_char(text[0], first=True)
            and all(_rater_char(c) for c in text)):
        raise HttpError(400, f"rater name: 1-{RATER_MAX_CHARS} letters, digits, spaces, "
                             "'.', '_' or '-', starting with a letter or digit")
    return text


def _rater_char(c: str, *, first: bool = False) -> bool:
    """A letter or decimal digit; elsewhere also a combining mark or `` ._-``."""
    category = unicodedata.category(c)
    if category[0] == "L" or category == "Nd":
        return True
    return not first and (category[0] == "M" or c in RATER_PUNCTUATION)


def rater_key(name: str) -> str:
    """The identity of a rater name: case and Unicode compatibility forms do not matter."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())


class RatingStore:
    """Labels of one rating folder in SQLite; a fresh connection per call (thread-safe)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            with self._connect() as conn:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise OutputError(f"cannot open the label database: {exc}", self.path) from None

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    def _rater_id(self, conn: sqlite3.Connection, rater: str, *, create: bool) -> int | None:
        # matched in Python: SQLite's NOCASE folds ASCII only ("ZOË" must be "zoë")
        key = rater_key(rater)
        rows = conn.execute("SELECT id, name FROM raters ORDER BY id").fetchall()
        found = next((int(rid) for rid, name in rows if rater_key(name) == key), None)
        if found is None and create:
            cur = conn.execute("INSERT INTO raters (name, created_at) VALUES (?, ?)",
                               (rater, time.time()))
            return int(cur.lastrowid or 0)
        return found

    def register(self, rater: str) -> None:
        """Create the rater if new (names are case-insensitive)."""
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            self._rater_id(conn, rater, create=True)
            conn.execute("COMMIT")
        finally:
            conn.close()

    def set_label(self, rater: str, patch: str, label: str) -> None:
        """Store (or replace) one label in one committed transaction."""
        if label not in LABELS:
            raise ValueError(f"unknown label {label!r}")
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            rid = self._rater_id(conn, rater, create=True)
            now = time.time()
            conn.execute(
                "INSERT INTO labels (rater_id, patch, label, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (rater_id, patch) DO UPDATE SET label = excluded.label, "
                "updated_at = excluded.updated_at", (rid, patch, label, now))
            conn.execute("INSERT INTO label_history (rater_id, patch, label, at) "
                         "VALUES (?, ?, ?, ?)", (rid, patch, label, now))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            conn.close()

    def labels_of(self, rater: str) -> dict[str, str]:
        """patch -> label for one rater."""
        conn = self._connect()
        try:
            rid = self._rater_id(conn, rater, create=False)
            rows = [] if rid is None else conn.execute(
                "SELECT patch, label FROM labels WHERE rater_id = ?", (rid,)).fetchall()
        finally:
            conn.close()
        return dict(rows)

    def all_labels(self) -> dict[str, dict[str, str]]:
        """patch -> {rater: label}, for export only (never served)."""
        conn = self._connect()
        try:
            rows = conn.execute(
                "SELECT l.patch, r.name, l.label FROM labels l "
                "JOIN raters r ON r.id = l.rater_id ORDER BY r.name").fetchall()
        finally:
            conn.close()
        out: dict[str, dict[str, str]] = {}
        for patch, rater, label in rows:
            out.setdefault(patch, {})[rater] = label
        return out


# --- agreement -----------------------------------------------------------------------------


def fleiss_kappa(counts: Sequence[Sequence[int]]) -> float | None:
    """Fleiss' kappa of a subjects x categories count table.

    Subjects may have different numbers of ratings (each needs >= 2); subjects with
    fewer are ignored. None when undefined (no subjects, or one category only).

    References: Fleiss J.L., "Measuring nominal scale agreement among many raters",
    Psychol Bull 1971; per-subject agreement weighted by its own number of raters.
    """
    rows = [list(map(int, r)) for r in counts if sum(r) >= 2]
    if not rows:
        return None
    total = sum(sum(r) for r in rows)
    n_cat = len(rows[0])
    p_j = [sum(r[j] for r in rows) / total for j in range(n_cat)]
    p_e = sum(p * p for p in p_j)
    p_i = [sum(c * (c - 1) for c in r) / (sum(r) * (sum(r) - 1)) for r in rows]
    p_bar = sum(p_i) / len(p_i)
    if p_e >= 1.0 - 1e-12:
        return None
    return (p_bar - p_e) / (1.0 - p_e)


def agreement_stats(labels: dict[str, dict[str, str]], n_patches: int, *,
                    min_raters: int) -> dict[str, Any]:
    """Counts and Fleiss' kappa (three categories, and in-focus vs the rest)."""
    table = [[Counter(v.values())[c] for c in LABELS] for v in labels.values()]
    binary = [[r[0], r[1] + r[2]] for r in table]
    raters = Counter(r for v in labels.values() for r in v)
    per_label = Counter(lab for v in labels.values() for lab in v.values())
    multi = [r for r in table if sum(r) >= 2]
    unanimous = sum(1 for r in multi if max(r) == sum(r))

    def _k(x: float | None) -> float | None:
        return None if x is None else round(x, 6)

    return {
        "categories": list(LABELS),
        "fleiss_kappa": _k(fleiss_kappa(table)),
        "fleiss_kappa_in_focus_vs_rest": _k(fleiss_kappa(binary)),
        "patches": n_patches,
        "patches_rated": len(labels),
        "patches_with_2plus_raters": len(multi),
        "patches_with_min_raters": sum(1 for r in table if sum(r) >= min_raters),
        "patches_unanimous": unanimous,
        "min_raters": min_raters,
        "labels": {c: per_label.get(c, 0) for c in LABELS},
        "raters": dict(sorted(raters.items())),
    }


def consensus_in_focus(labels: dict[str, dict[str, str]], *, min_raters: int = 3) -> set[str]:
    """Patches rated by at least ``min_raters`` raters, every one of them ``in-focus``.

    References: consensus = all three raters in-focus (Kohlberger et al. 2019).
    """
    return {p for p, v in labels.items()
            if len(v) >= min_raters and all(lab == "in-focus" for lab in v.values())}


def validation_sources(sources: Iterable[str], fraction: float = 0.2) -> set[str]:
    """Sources held out for validation: a stable, name-hashed ``fraction`` of them.

    At least one when there are two or more sources, none with a single source
    (patches are split by source, never by patch).
    """
    uniq = sorted(set(sources))
    if len(uniq) < 2 or fraction <= 0:
        return set()
    n = min(len(uniq) - 1, max(1, math.ceil(fraction * len(uniq))))
    ranked = sorted(uniq, key=lambda s: hashlib.sha256(Path(s).name.encode()).hexdigest())
    return set(ranked[:n])


def export_consensus(folder: str | Path, pool: str | Path, *, min_raters: int = 3,
                     val_fraction: float = 0.2) -> dict[str, Any]:
    """Write the consensus in-focus patches to ``pool`` in the layout training reads.

    ``pool/patches/*.png``, ``pool/manifest.csv`` (patch,source,x_px,y_px,mpp,split,
    mean_luma; ``split`` is ``val`` for a name-hashed ``val_fraction`` of the sources)
    and ``pool/agreement.json``. ``pool`` must be new or empty; it is written under a
    temporary name and renamed when complete. Returns the agreement statistics.
    """
    if min_raters < 1:
        raise ConfigError(f"min_raters must be >= 1, got {min_raters}")
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    folder, pool = Path(folder), Path(pool)
    records = read_manifest(folder)
    db = folder / DB_NAME
    if not db.is_file():
        raise ConfigError("no labels yet (ratings.sqlite missing)", folder)
    labels = RatingStore(db).all_labels()
    known = {r.patch for r in records}
    stray = set(labels) - known
    if stray:
        log.warning("%d labelled patches are not in the manifest; ignored", len(stray))
        labels = {p: v for p, v in labels.items() if p in known}
    keep = consensus_in_focus(labels, min_raters=min_raters)
    stats = agreement_stats(labels, len(records), min_raters=min_raters)
    stats["consensus_in_focus"] = len(keep)
    if pool.exists() and (not pool.is_dir() or any(pool.iterdir())):
        raise OutputError("exists and is not an empty folder", pool)
    try:
        pool.parent.mkdir(parents=True, exist_ok=True)
        with atomic_folder(pool) as tmp:  # an empty ``pool`` is replaced
            (tmp / PATCH_DIR).mkdir()
            chosen: list[tuple[PatchRecord, str]] = []
            names: set[str] = set()
            val = validation_sources((r.source for r in records if r.patch in keep),
                                     val_fraction)
            for r in records:
                if r.patch not in keep:
                    continue
                name = Path(r.patch).name
                if name in names:
                    name = f"{len(names):06d}_{name}"
                names.add(name)
                rel = f"{PATCH_DIR}/{name}"
                shutil.copyfile(safe_src(folder, r.patch), tmp / rel)
                chosen.append((PatchRecord(rel, r.source, r.x_px, r.y_px, r.mpp, r.mean_luma),
                               "val" if r.source in val else "train"))
            _write_pool_manifest(tmp / MANIFEST_NAME, chosen)
            stats["split"] = {"train": sum(s == "train" for _, s in chosen),
                              "val": sum(s == "val" for _, s in chosen)}
            (tmp / "agreement.json").write_text(
                json.dumps(stats, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    except OSError as exc:
        raise OutputError(f"cannot write the pool: {exc.strerror or exc}", pool) from None
    return stats


def _write_pool_manifest(path: Path, rows: Sequence[tuple[PatchRecord, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(POOL_FIELDS)
        for r, split in rows:
            writer.writerow([r.patch, r.source, r.x_px, r.y_px, r.mpp, split, r.mean_luma])


def safe_src(folder: Path, rel: str) -> Path:
    """A manifest patch file inside ``folder`` (ConfigError if missing or outside)."""
    try:
        path = safe_child(folder, rel)
    except HttpError:
        raise ConfigError(f"patch path outside the folder: {rel!r}", folder) from None
    if not path.is_file():
        raise ConfigError(f"patch file missing: {rel}", folder)
    return path


# --- the web app ---------------------------------------------------------------------------


class RatingApp:
    """HTTP routes of the workbench (see docs/web.md)."""

    title = "convfocus rating workbench"

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder).resolve()
        self.records = read_manifest(self.folder)
        if not self.records:
            raise ConfigError("the manifest lists no patches", self.folder)
        self.store = RatingStore(self.folder / DB_NAME)

    # routes ---------------------------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        path, method = request.path, request.method
        if method == "GET":
            if path in ("/", "/index.html"):
                return static_file("rate.html")
            if path.startswith("/static/"):
                return static_file(path[len("/static/"):])
            if path == "/api/info":
                return Response.json({"patches": len(self.records), "labels": list(LABELS)})
            if path == "/api/state":
                return Response.json(self._state(request.query))
            m = re.fullmatch(r"/patches/([0-9]{1,9})\.png", path)
            if m:
                return self._patch_png(int(m.group(1)))
        elif method == "POST":
            if path == "/api/session":
                rater = check_rater(request.json().get("rater"))
                self.store.register(rater)
                return Response.json(self._progress(rater))
            if path == "/api/label":
                return Response.json(self._label(request.json()))
        else:
            raise HttpError(405, "method not allowed")
        raise HttpError(404 if method == "GET" else 405, "not found")

    def _index(self, value: object) -> int:
        """A patch index from a JSON body: an integer (not a bool, not a string) in range."""
        if isinstance(value, bool) or not isinstance(value, int):
            raise HttpError(400, "patch index must be an integer")
        if not 0 <= value < len(self.records):
            raise HttpError(404, "no such patch")
        return value

    def _progress(self, rater: str, mine: dict[str, str] | None = None) -> dict[str, Any]:
        mine = self.store.labels_of(rater) if mine is None else mine
        done = sum(1 for r in self.records if r.patch in mine)
        first_open = next((i for i, r in enumerate(self.records) if r.patch not in mine), None)
        return {"rater": rater, "total": len(self.records), "done": done,
                "first_unlabelled": first_open}

    def _state(self, query: dict[str, str]) -> dict[str, Any]:
        rater = check_rater(query.get("rater"))
        mine = self.store.labels_of(rater)
        text = query.get("i", "0")
        if not re.fullmatch(r"[0-9]{1,9}", text):
            raise HttpError(400, "parameter 'i' must be a patch index (0, 1, ...)")
        i = self._index(int(text))
        n = len(self.records)
        nxt = next((j for j in list(range(i + 1, n)) + list(range(i))
                    if self.records[j].patch not in mine), None)
        return {
            **self._progress(rater, mine),
            "index": i,
            "name": Path(self.records[i].patch).name,
            "url": f"/patches/{i}.png",
            "label": mine.get(self.records[i].patch),
            "next_unlabelled": nxt,
        }

    def _label(self, body: dict[str, Any]) -> dict[str, Any]:
        rater = check_rater(body.get("rater"))
        i = self._index(body.get("index"))
        label = body.get("label")
        if label not in LABELS:
            raise HttpError(400, f"label must be one of {', '.join(LABELS)}")
        self.store.set_label(rater, self.records[i].patch, str(label))
        return {"saved": True, "index": i, "label": label, **self._progress(rater)}

    def _patch_png(self, i: int) -> Response:
        i = self._index(i)
        path = safe_child(self.folder, self.records[i].patch)
        if not path.is_file():
            raise HttpError(404, "patch file missing")
        return Response(200, path.read_bytes(), "image/png", {"Cache-Control": "max-age=3600"})

