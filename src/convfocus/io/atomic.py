"""Atomic writes: a file or folder appears whole under its name, or not at all.

Everything convfocus writes goes through here. A file is written under a temporary
name in the same folder, then renamed over its final name (:func:`os.replace`, atomic
on one file system): a reader sees the old file or the new one, never half of one, and
a crash leaves the old file as it was. A folder of outputs is built the same way
(:func:`atomic_folder`) and then replaces the old folder whole.

Temporary names follow one scheme, ``.{name}.{pid}.{thread}.{kind}``: hidden, unique to
the writing process and thread (so concurrent writers never share one), in the folder
of the final name. ``kind`` is ``tmp`` for what is being written and ``old`` for a
folder being replaced. A failed write removes its temporary file; what a killed
process leaves behind, :func:`remove_stale` removes.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from convfocus.errors import OutputError

__all__ = [
    "atomic_folder",
    "is_temp_name",
    "make_folder",
    "publish_folder",
    "remove_stale",
    "temp_path",
    "to_jsonable",
    "write_atomic",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_text_atomic",
]

_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.(?P<thread>\d+)\.(?P<kind>tmp|old)$")


def temp_path(path: str | os.PathLike[str], kind: str = "tmp") -> Path:
    """The temporary name of ``path`` for this process and thread, in the same folder.

    ``kind``: ``tmp`` (being written) or ``old`` (a folder being replaced).
    """
    if kind not in ("tmp", "old"):
        raise ValueError(f"kind must be 'tmp' or 'old', got {kind!r}")
    p = Path(path)
    return p.with_name(f".{p.name}.{os.getpid()}.{threading.get_ident()}.{kind}")


def is_temp_name(name: str) -> bool:
    """True when ``name`` is a temporary name of :func:`temp_path` (of any process)."""
    return _TEMP_NAME.match(name) is not None


def _cause(exc: OSError) -> str:
    """``No space left on device`` rather than ``[Errno 28] ...`` or a bare ``28``."""
    if exc.strerror:
        return exc.strerror
    if exc.errno:
        return os.strerror(exc.errno)
    return str(exc) or type(exc).__name__


def _discard(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def make_folder(path: str | os.PathLike[str]) -> Path:
    """Create the folder ``path`` and its parents (nothing when it exists); returns it.

    Raises
    ------
    OutputError
        The folder cannot be made, naming it and the cause (a parent that is a file, no
        permission, a full disk, ...).
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (OSError, ValueError) as exc:
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()),
                       None)
        why = (f"{blocker} is a file, not a folder" if blocker is not None
               else _cause(exc) if isinstance(exc, OSError) else str(exc))
        raise OutputError(f"cannot create folder: {why}", path) from None
    return path


def _make_parent(path: Path) -> None:
    make_folder(path.parent)


def write_atomic(
    path: str | os.PathLike[str], write: Callable[[Path], object], *, parents: bool = False
) -> Path:
    """Write a file through ``write(tmp)``, which writes the whole file at the path it
    is given (a PNG encoder, ``np.save`` to an open file, ``torch.save``, ...); then
    rename it to ``path``. Returns ``path``.

    ``parents``: create missing parent folders first. On any failure the temporary file
    is removed and an existing ``path`` is left as it was.

    Raises
    ------
    OutputError
        The file cannot be written (full disk, no permission, missing folder, ...).
    """
    path = Path(path)
    if parents:
        _make_parent(path)
    tmp = temp_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        _discard(tmp)
        raise OutputError(f"cannot write: {_cause(exc)}", path) from exc
    except BaseException:
        _discard(tmp)
        raise
    return path


def write_bytes_atomic(
    path: str | os.PathLike[str], data: bytes, *, parents: bool = False
) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`write_atomic`)."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    return write_atomic(path, write, parents=parents)


def write_text_atomic(
    path: str | os.PathLike[str], text: str, *, parents: bool = False
) -> Path:
    """Write ``text`` as UTF-8 atomically, line ends as given."""
    return write_bytes_atomic(path, text.encode("utf-8"), parents=parents)


def write_json_atomic(path: str | os.PathLike[str], obj: Any, *, parents: bool = False) -> Path:
    """Write ``obj`` as indented UTF-8 JSON atomically (:func:`to_jsonable` first: numpy
    values become numbers, NaN ``null``)."""
    text = json.dumps(to_jsonable(obj), indent=2, allow_nan=False, ensure_ascii=False)
    return write_text_atomic(path, text + "\n", parents=parents)


def to_jsonable(obj: Any) -> Any:
    """A copy of ``obj`` that :func:`json.dumps` accepts: numpy values to Python, tuples
    to lists, paths to strings, NaN and infinities to ``None``."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, PurePath):
        return str(obj)
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    if hasattr(obj, "to_dict"):
        return to_jsonable(obj.to_dict())
    raise TypeError(f"cannot store {type(obj).__name__} in JSON")


# --- folders -------------------------------------------------------------------------------------


def publish_folder(tmp: str | os.PathLike[str], final: str | os.PathLike[str]) -> None:
    """Rename the finished folder ``tmp`` to ``final``, replacing an existing ``final``
    whole: the old folder is renamed away first and removed once the new one is in place
    (put back if that rename fails). Raises :class:`OSError`."""
    tmp, final = Path(tmp), Path(final)
    if not final.exists():
        os.replace(tmp, final)
        return
    old = temp_path(final, "old")
    os.replace(final, old)
    try:
        os.replace(tmp, final)
    except BaseException:
        os.replace(old, final)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_folder(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Build a folder under its temporary name; publish it as ``final`` when the block
    ends without an error (:func:`publish_folder`), remove it when the block fails.

    ``final``'s parent must exist. Raises :class:`OSError` when the folder cannot be made
    or published; an error inside the block propagates after the temporary folder is
    gone.
    """
    final = Path(final)
    tmp = temp_path(final)
    _discard(tmp)
    tmp.mkdir()
    try:
        yield tmp
        publish_folder(tmp, final)
    except BaseException:
        _discard(tmp)
        raise


def remove_stale(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files and folders in ``folder`` that processes which are gone
    left behind (killed mid-write). Returns what was removed."""
    removed: list[Path] = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        m = _TEMP_NAME.match(p.name)
        if m is None:
            continue
        pid = int(m["pid"])
        if pid != os.getpid() and not _pid_alive(pid):
            _discard(p)
            removed.append(p)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    except OverflowError:  # not a pid at all
        return False
    return True
