"""``avssl-transfer``: the cross-modal transfer experiment as one command (configs in ``avssl/conf/transfer``).

For each arm (sync, sync_masked, masked_video, masked_audio, random) and seed: pretrain with the same encoders,
data, steps and batch size, export, and evaluate with one frozen protocol (linear probe + kNN per modality and
label, majority baseline; zero-shot offset and retrieval where the arm has a shared space). Writes
``results.json``, ``results.md`` and ``plots/`` into the output folder; re-running with the same ``output_dir``
skips finished arm+seed runs. See docs/transfer.md. Examples::

    avssl-transfer experiment=smoke output_dir=transfer_smoke
    avssl-transfer arms=[sync,masked_video] seeds=[0] train.steps=100 output_dir=quick
    avssl-transfer experiment=gpu 'train.extra=["data.path=/data/prep/manifest.csv"]' output_dir=/runs/transfer
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("avssl.transfer")


def _job_output_dir() -> str | None:
    from hydra.core.hydra_config import HydraConfig

    try:
        return str(HydraConfig.get().runtime.output_dir)
    except ValueError:
        return None


def transfer(cfg: DictConfig | dict[str, Any], output_dir: str | None = None) -> dict[str, Any]:
    """Run the experiment a composed ``transfer`` config describes; returns what results.json holds."""
    from avssl.evaluation.transfer import run_transfer

    plain: dict[str, Any] = (
        OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)  # type: ignore[assignment]
    )
    plain.pop("hydra", None)
    out = output_dir or plain.get("output_dir") or "outputs/transfer"
    results = run_transfer(plain, out)
    if plain.get("steps_curve"):
        from avssl.evaluation.transfer import run_steps_curve

        results["steps_curve"] = run_steps_curve(plain, out)
    return results


@hydra.main(config_path="pkg://avssl.conf.transfer", config_name="transfer", version_base="1.3")
def _app(cfg: DictConfig) -> None:
    out_dir = cfg.output_dir or _job_output_dir()
    try:
        results = transfer(cfg, out_dir)
    except (ValueError, FileNotFoundError) as e:  # configuration or data problems: one clear line
        print(f"avssl-transfer: error: {e}", file=sys.stderr)
        sys.exit(1)
    print(results["table"])
    print(f"results: {out_dir}/results.json, table: {out_dir}/results.md, plots: {out_dir}/plots/")
    if "steps_curve" in results:
        print(f"accuracy versus steps: {out_dir}/steps_curve.json, {out_dir}/plots/steps_*.png")


def main() -> None:
    """Console-script entry point."""
    _app()


if __name__ == "__main__":
    main()
