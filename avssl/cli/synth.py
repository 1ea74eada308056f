"""``avssl-synth``: write the second synthetic media set (:mod:`avssl.data_tools.synth`): recordings with sparse
events, visual and auditory distractors, in several containers, frame rates and sample rates; a folder that
``avssl-train data=folder data.path=OUT`` trains on (the learning benchmark, ``benchmarks/bench_learning.py``)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from avssl.data_tools.synth import CONTAINERS, FAMILIES, make_synth_dataset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="avssl-synth",
        description="Write synthetic recordings (sparse audio-visual events, distractors, several containers) "
                    "under OUT/<family>/<id>.<ext>, with events.json (event times on the file clock) and "
                    f"params.json. Families (the labels): {', '.join(FAMILIES)}.",
    )
    parser.add_argument("out", help="folder to create (an existing folder is kept only if it holds a synth "
                                    "dataset of the same parameters)")
    # no defaults here: the generator's own (make_synth_dataset) are the one place they live
    parser.add_argument("--num-videos", type=int, help="recordings to write (default 64)")
    parser.add_argument("--duration", type=float, help="seconds per recording (default 10)")
    parser.add_argument("--seed", type=int, help="random seed (default 0)")
    parser.add_argument("--containers", help="comma-separated subset and order of "
                                             f"{','.join(c.name for c in CONTAINERS)} (default: all), dealt "
                                             "round-robin over the recordings")
    args = parser.parse_args(argv)
    kwargs: dict[str, Any] = {k: v for k, v in (("num_videos", args.num_videos), ("duration", args.duration),
                                                ("seed", args.seed)) if v is not None}
    if args.containers:
        kwargs["containers"] = [c.strip() for c in args.containers.split(",") if c.strip()]
    start = time.time()
    try:
        out = make_synth_dataset(args.out, **kwargs)
    except (OSError, ValueError) as exc:
        print(f"avssl-synth: {exc}", file=sys.stderr)
        return 2
    print(f"avssl-synth: {out} ({time.time() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
