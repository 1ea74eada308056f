"""``avssl-train``: Hydra app that pretrains audio and video encoders (configs in ``avssl/conf``).

With no arguments it generates the demo dataset (cached), pretrains on it on CPU and prints the checkpoint path and
the validation metrics. Examples::

    avssl-train seed=1
    avssl-train experiment=masked_av model=vit
    avssl-train -m experiment=sync_contrastive,sync_masked model=cnn,vit
    avssl-train data=manifest data.path=/data/prep/manifest.csv trainer=gpu
"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from avssl.config import register_configs

register_configs()
log = logging.getLogger("avssl.train")


def _job_output_dir() -> str | None:
    """Hydra's output folder of this job (only read here, inside the app; configs never refer to it)."""
    from hydra.core.hydra_config import HydraConfig

    try:
        return str(HydraConfig.get().runtime.output_dir)
    except ValueError:
        return None


@hydra.main(config_path="pkg://avssl.conf", config_name="train", version_base="1.3")
def _app(cfg: DictConfig) -> float | None:
    from avssl.lit.run import train

    out = train(cfg, output_dir=cfg.output_dir or _job_output_dir())
    lines = [f"output dir: {out.output_dir}", f"checkpoint (last): {out.last_checkpoint}",
             f"checkpoint (best): {out.best_checkpoint}", f"time: {out.seconds:.1f} s", "validation metrics:"]
    lines += [f"  {k} = {v:.4f}" for k, v in out.metrics.items()]
    print("\n".join(lines), flush=True)
    return out.metrics.get(out.monitor or "")  # the value a sweeper optimises


def main() -> None:
    """Console-script entry point."""
    _app()


if __name__ == "__main__":
    main()
