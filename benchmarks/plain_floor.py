"""The plain-PyAV floor's frame choice, shared by the benchmarks that compare avssl's reader with plain PyAV
(bench_media.py, bench_raw_decode.py): from decoded frames in presentation order, the one on screen at each
target instant, with no bookkeeping beyond that. Deliberately independent of avssl's own cutter."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def frames_on_screen(decoded: Iterable[Any], targets: Sequence[float], origin: float = 0.0) -> list[Any]:
    """For each target (seconds, non-decreasing) the last decoded frame whose time ``pts * time_base - origin``
    is at or before it (the first frame when none is yet; the last one for targets past the end). Stops
    decoding once every target is placed."""
    last, chosen, k = None, [], 0
    for f in decoded:
        t = float(f.pts * f.time_base - origin)
        while k < len(targets) and targets[k] < t:
            chosen.append(last if last is not None else f)
            k += 1
        last = f
        if k >= len(targets):
            break
    while k < len(targets):
        chosen.append(last)
        k += 1
    return chosen
