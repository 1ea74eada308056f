"""Errors raised by the data layer. Every message names the file it concerns."""

from __future__ import annotations

import os


class MediaError(Exception):
    """Base class for every problem with a media file. ``path`` is the file concerned."""

    def __init__(self, path: str | os.PathLike[str] | None, problem: str):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class MediaNotFound(MediaError, FileNotFoundError):
    """The file does not exist or cannot be opened for reading."""


class DecodeError(MediaError):
    """The file exists but its container or streams cannot be decoded."""


class MissingStreamError(MediaError):
    """The file has no stream of a kind that the caller needs (e.g. no audio)."""


class InvalidWindow(MediaError, ValueError):
    """The requested window is malformed or lies wholly outside the file."""


__all__ = ["MediaError", "MediaNotFound", "DecodeError", "MissingStreamError", "InvalidWindow"]
