"""Deterministic splits by recording session: a session (never a single recording) goes to one split.

Each group is placed by a hash of ``seed:group`` mapped to [0, 1) and compared with the cumulative split fractions,
so the assignment of a session never depends on which other sessions exist: adding data or processing shards
independently never moves a session. Held-out children go wholly to ``heldout_split``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence


def hash_unit(seed: int | str, key: str) -> float:
    """A deterministic number in [0, 1) for ``key``."""
    h = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64


def assign_split(group: str, fractions: Mapping[str, float], seed: int | str = 0, child: str | None = None,
                 heldout_children: Sequence[str] = (), heldout_split: str = "test") -> str:
    """Split of a session ``group`` (see module docstring). ``fractions`` need not sum to 1 (normalised)."""
    if child is not None and child in set(heldout_children):
        return heldout_split
    items = [(k, float(v)) for k, v in fractions.items() if float(v) > 0]
    total = sum(v for _, v in items)
    if not items or total <= 0:
        raise ValueError(f"split fractions must contain a positive value, got {dict(fractions)}")
    u = hash_unit(seed, group) * total
    acc = 0.0
    for name, v in items:
        acc += v
        if u < acc:
            return name
    return items[-1][0]
