"""``avssl-export CKPT --out DIR``: write one encoder bundle per modality from a training checkpoint.

Each bundle (``DIR/<modality>/``) holds ``model.safetensors`` (encoder, projection head, joint layer if any) and
``config.json`` (format version, rebuild config, preprocessing, provenance). Load one with
``avssl.load_encoder(DIR, "audio")``; no Lightning needed.

Bundles are written atomically (a temporary folder beside the target, then renamed). ``DIR/<modality>`` may be
absent, empty, or a bundle written before (replaced); any other folder or file there is refused, untouched.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="avssl-export", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="Lightning checkpoint (.ckpt) written by avssl-train")
    p.add_argument(
        "--out",
        required=True,
        help="output folder; bundles go to OUT/video and OUT/audio (an existing bundle there is replaced; any "
        "other non-empty folder is refused)",
    )
    p.add_argument("--modality", choices=["video", "audio", "both"], default="both", help="which encoder(s)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from avssl.export import ExportError, export_checkpoint

    modalities = ("video", "audio") if args.modality == "both" else (args.modality,)
    try:
        written = export_checkpoint(args.checkpoint, args.out, modalities)
    except (ExportError, ValueError) as e:
        one_line = " ".join(ln.strip() for ln in str(e).splitlines())  # one line, also for multi-line messages
        print(f"avssl-export: error: {one_line}", file=sys.stderr)
        return 1
    except OSError as e:  # disk full, permissions: the previous bundle, if any, is left as it was
        where = f"{e.filename}: " if e.filename else ""
        print(f"avssl-export: error: {where}{e.strerror or e}", file=sys.stderr)
        return 1
    for modality, path in written.items():
        print(f"{modality}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
