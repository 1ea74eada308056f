"""One rank of a 2-process CPU DDP run (gloo) of ``avssl.lit.run.train``, for tests/test_ddp_resume.py.

Usage: ``python ddp_driver.py SPEC.json``; SPEC holds ``overrides`` (Hydra overrides of the train config),
``record`` (a JSON-lines file each rank appends one line per training and validation batch to), and optionally
``kill_at`` (the rank SIGKILLs itself before the batch that would make optimizer step ``kill_at + 1``, after the
checkpoint of step ``kill_at`` is written: a pre-empted job), ``weights`` (rank 0 saves the final weights
there) and ``result`` (rank 0 writes the run's metrics and last checkpoint there).

The test starts one process per rank with ``LOCAL_RANK`` / ``NODE_RANK`` / ``MASTER_ADDR`` / ``MASTER_PORT`` set, as
``torchrun`` or SLURM would, so Lightning attaches to them instead of launching processes itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
from typing import Any

import torch


def main(spec_path: str) -> None:
    torch.set_num_threads(1)
    with open(spec_path) as f:
        spec = json.load(f)
    from hydra import compose, initialize_config_module
    from lightning.pytorch.callbacks import Callback

    import avssl.lit.run as run

    record, kill_at = spec["record"], spec.get("kill_at")

    def write(line: dict[str, Any]) -> None:
        with open(record, "a") as f:
            f.write(json.dumps(line) + "\n")
            f.flush()
            os.fsync(f.fileno())

    class Recorder(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # noqa: ANN001
            if kill_at is not None and trainer.global_step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)  # kill -9: no handler, no clean-up

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # noqa: ANN001
            rng = hashlib.sha256(torch.get_rng_state().numpy().tobytes()).hexdigest()[:16]
            write({"stage": "train", "rank": trainer.global_rank, "step": trainer.global_step,
                   "epoch": trainer.current_epoch, "batch_idx": batch_idx, "index": batch["index"].tolist(),
                   "loss": float(outputs["loss"]), "rng": rng})

        def on_train_end(self, trainer, pl_module):  # noqa: ANN001
            if trainer.global_rank == 0 and spec.get("weights"):
                torch.save({k: v.detach().clone() for k, v in pl_module.state_dict().items()}, spec["weights"])

        def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):  # noqa: ANN001
            write({"stage": "val", "rank": trainer.global_rank, "epoch": trainer.current_epoch,
                   "index": batch["index"].tolist(), "starts": batch["segment_starts"][:, 0].tolist()})

    build = run.build_trainer

    def build_with_recorder(cfg: dict[str, Any], output_dir: Any) -> Any:
        trainer = build(cfg, output_dir)
        trainer.callbacks.append(Recorder())  # type: ignore[attr-defined]
        return trainer

    run.build_trainer = build_with_recorder  # type: ignore[assignment]
    with initialize_config_module("avssl.conf", version_base="1.3"):
        cfg = compose("train", overrides=spec["overrides"])
    result = run.train(cfg)
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        with open(spec["result"], "w") as f:
            json.dump({"metrics": result.metrics, "last": result.last_checkpoint}, f)


if __name__ == "__main__":
    main(sys.argv[1])
