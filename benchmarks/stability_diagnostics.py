"""Why a run's validation loss rises while its accuracy rises: re-validate every epoch checkpoint of a run several
ways and print what changes (docs/results.md, "Learning benchmark on other media").

    python benchmarks/stability_diagnostics.py RUN_DIR [--json OUT.json]

RUN_DIR is an ``avssl-train`` output folder trained with ``callbacks.checkpoint.save_top_k=-1`` (one checkpoint
per epoch). For each checkpoint, on the run's own validation clips and batches (its ``config.json``):

- ``loss``: the validation loss as training logged it (encoders in eval mode: BatchNorm running statistics);
- ``loss_bn_batch``: the same batches with BatchNorm on batch statistics (train mode, no update kept);
- ``loss_cross_video``: negatives from other files only (``cross_video``): what same-file negatives add;
- ``loss_distinct``: the same clips re-batched so that no batch holds two clips of one file;
- ``same_file_pairs``: pairs of clips of one file per validation batch; ``temperature``; ``sync_acc``.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
from pathlib import Path
from typing import Any

import torch

from avssl.lit.datamodule import AVDataModule
from avssl.lit.module import AVSSLModule
from avssl.objectives.contrastive import sync_infonce
from avssl.objectives.metrics import sync_acc


def _embed(module: AVSSLModule, batch: dict[str, Any], bn_batch: bool) -> tuple[torch.Tensor, torch.Tensor]:
    model: Any = copy.deepcopy(module.model) if bn_batch else module.model
    model.train(bn_batch)
    with torch.no_grad():
        return model.embed(batch["video"], batch["audio"])


def _file_ids(paths: list[str]) -> torch.Tensor:
    names = sorted(set(paths))
    return torch.tensor([names.index(p) for p in paths])


def evaluate(ckpt: Path, dm: AVDataModule) -> dict[str, float]:
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    hp = saved["hyper_parameters"]
    module = AVSSLModule(**{k: hp[k] for k in ("model", "objective", "optimizer", "preprocessing", "compile",
                                               "seed", "avssl_version") if k in hp})
    module.load_state_dict(saved["state_dict"])
    module.eval()
    temp = float(next(m for m in module.model.modules() if m.__class__.__name__ == "LearnableTemperature")())
    sums: dict[str, float] = {}
    n = 0
    clips: list[dict[str, Any]] = []
    for batch in dm.val_dataloader():
        b = int(batch["video"].shape[0])
        ids = _file_ids(list(batch["path"]))
        a, v = _embed(module, batch, False)
        ab, vb = _embed(module, batch, True)
        out = {
            "loss": sync_infonce(a, v, temp)[0],
            "loss_bn_batch": sync_infonce(ab, vb, temp)[0],
            "loss_cross_video": sync_infonce(a, v, temp, "cross_video", video_ids=ids)[0],
            "sync_acc": sync_acc(a, v)["sync_acc"],
            "same_file_pairs": torch.tensor(float(sum(int(c) * (int(c) - 1) // 2 for c in torch.bincount(ids)))),
        }
        for k, x in out.items():
            sums[k] = sums.get(k, 0.0) + float(x) * b
        n += b
        for i in range(b):
            clips.append({"a": a[i], "v": v[i], "path": batch["path"][i]})
    res = {k: s / n for k, s in sums.items()}
    # re-batch: deal the clips round-robin by file so no batch holds two clips of one file where avoidable
    by_file: dict[str, list[dict[str, Any]]] = {}
    for c in clips:
        by_file.setdefault(c["path"], []).append(c)
    order = [c for j in range(max(len(x) for x in by_file.values())) for x in by_file.values() if j < len(x)]
    bs = int(dm.cfg["val_batch_size"])
    tot, cnt = 0.0, 0
    for i in range(0, len(order), bs):
        group = order[i : i + bs]
        if len(group) < 2:
            continue
        a = torch.stack([c["a"] for c in group])
        v = torch.stack([c["v"] for c in group])
        tot += float(sync_infonce(a, v, temp)[0]) * len(group)
        cnt += len(group)
    res["loss_distinct"] = tot / max(cnt, 1)
    res["temperature"] = temp
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir")
    p.add_argument("--json", help="also write the table here")
    args = p.parse_args()
    run = Path(args.run_dir)
    cfg = json.loads((run / "config.json").read_text())
    dm = AVDataModule(cfg["data"], seed=int(cfg["seed"]))
    dm.setup("validate")
    ckpts = sorted(run.glob("checkpoints/best-epoch*.ckpt"), key=lambda c: int(re.findall(r"\d+", c.name)[-1]))
    rows = []
    keys = ("loss", "loss_bn_batch", "loss_cross_video", "loss_distinct", "sync_acc", "same_file_pairs",
            "temperature")
    print("epoch " + " ".join(f"{k:>16}" for k in keys))
    for c in ckpts:
        r = {"epoch": int(re.findall(r"\d+", c.name)[-1]), **evaluate(c, dm)}
        rows.append(r)
        print(f"{r['epoch']:5d} " + " ".join(f"{r[k]:16.3f}" for k in keys), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
