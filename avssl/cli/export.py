"""``avssl-export CKPT --out DIR``: write one encoder bundle per modality from a training checkpoint.

Each bundle (``DIR/<modality>/``) holds ``model.safetensors`` (encoder, projection head, joint layer if any) and
``config.json`` (format version, rebuild config, preprocessing, provenance). Load one with
``avssl.load_encoder(DIR, "audio")``; no Lightning needed.

``--format timm`` writes instead a timm ``VisionTransformer`` state dict per encoder
(``DIR/<modality>/timm_model.safetensors`` and ``timm_config.json`` with the timm keyword arguments), from a checkpoint
or a bundle export, where timm can represent the encoder (2-D ViTs, e.g. the audio ViT; timm has no video ViT).

Bundles are written atomically (a temporary folder beside the target, then renamed). ``DIR/<modality>`` may be
absent, empty, or a bundle written before (replaced); any other folder or file there is refused, untouched.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="avssl-export", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="Lightning checkpoint (.ckpt) written by avssl-train (--format timm: or a bundle export)")
    p.add_argument(
        "--out",
        required=True,
        help="output folder; bundles go to OUT/video and OUT/audio (an existing bundle there is replaced; any "
        "other non-empty folder is refused)",
    )
    p.add_argument("--modality", choices=["video", "audio", "both"], default=None,
                   help="which encoder(s) (default: both; audio with --format timm)")
    p.add_argument("--format", choices=["bundle", "timm"], default="bundle",
                   help="bundle (default): avssl bundles; timm: timm VisionTransformer state dicts")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from avssl.export import ExportError, export_checkpoint, export_timm

    choice = args.modality or ("audio" if args.format == "timm" else "both")
    modalities = ("video", "audio") if choice == "both" else (choice,)
    try:
        if args.format == "timm":
            written = export_timm(args.checkpoint, args.out, modalities)
        else:
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
