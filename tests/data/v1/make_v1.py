"""Write the format-1 artefacts of tests/data/v1 (run from a worktree of commit ffd9ef3; see README.md)."""

import json
import sys
from pathlib import Path

import torch

WORKTREE = "/tmp/v1wt"


def main(out: str) -> None:
    sys.path[:0] = [WORKTREE, f"{WORKTREE}/tests"]
    from test_export import fake_checkpoint

    import avssl
    from avssl import export as ex

    torch.manual_seed(0)
    fake_checkpoint(Path(out) / "v1.ckpt", "cnn")
    ex.export_checkpoint(f"{out}/v1.ckpt", f"{out}/bundle_v1")
    torch.manual_seed(1)
    v, a = torch.randn(2, 3, 4, 32, 32), torch.randn(2, 1, 48, 32)
    ev = avssl.load_encoder(f"{out}/bundle_v1", "video").eval()
    ea = avssl.load_encoder(f"{out}/bundle_v1", "audio").eval()
    with torch.no_grad():
        torch.save({"video_in": v, "audio_in": a, "video_emb": ev(v), "audio_emb": ea(a)}, f"{out}/expected.pt")
    print(json.loads(Path(f"{out}/bundle_v1/video/config.json").read_text())["format_version"])


if __name__ == "__main__":
    main(sys.argv[1])
