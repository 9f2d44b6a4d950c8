"""One error hierarchy; the CLI turns these into one clear line each."""

from __future__ import annotations

from pathlib import Path


class ConvFocusError(Exception):
    """Base class of every expected failure (bad input, bad settings, disk)."""

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else str(path)
        self.message = message
        super().__init__(f"{self.path}: {message}" if self.path else message)


class SlideReadError(ConvFocusError):
    """A slide or image cannot be opened or read (missing, corrupt, unsupported)."""


class UnsupportedFormatError(SlideReadError):
    """No reader knows this file format."""


class NoTissueError(ConvFocusError):
    """The slide has no tissue to grade (blank glass, or smaller than one window)."""


class PixelSizeError(ConvFocusError):
    """The pixel size is missing or implausible and was not given with --mpp."""


class OutputError(ConvFocusError):
    """Outputs cannot be written (unwritable folder, full disk)."""


class ModelError(ConvFocusError):
    """A model file or spec is missing, inconsistent or cannot be loaded."""


class AnnotationError(ConvFocusError):
    """An annotation file (GeoJSON) is malformed or inconsistent with its slide."""


class ConfigError(ConvFocusError):
    """An invalid setting (argument out of range, unknown preset or profile)."""


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal: SIGINT (Ctrl-C) or SIGTERM.

    A :class:`KeyboardInterrupt`, so every cleanup that one triggers runs for both;
    ``signum`` is the signal, ``message`` what was kept (filled in by the batch).
    """

    def __init__(self, signum: int = 2, message: str = "") -> None:
        self.signum = int(signum)
        self.message = message
        super().__init__(message)


def cause(exc: BaseException) -> str:
    """A library's exception as the short cause in an error line: the first line of its
    message, never a Python exception name (error lines are for people reading them)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else "no detail given"
