"""Small helpers: atomic writes, stable hashing."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from avssl.data.atomic import write_text_atomic


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to a temporary file next to ``path`` and rename it into place."""
    return write_text_atomic(path, text)


def stable_hash(obj: Any) -> str:
    """SHA-1 of the canonical JSON of ``obj`` (for config keys and split assignment)."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
