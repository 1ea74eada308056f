"""``avssl-eval``: Hydra app evaluating pretrained encoders (configs in ``avssl/conf/eval``).

Tasks: zero-shot sync-offset classification (``offset_acc``), cross-modal retrieval, linear probe + kNN, and
fine-tuning. Writes ``results.json`` and PNG plots into the job folder. Examples::

    avssl-eval checkpoint=export/               # demo data, default tasks
    avssl-eval checkpoint=last.ckpt data.source=folder data.path=/data/clips tasks=[retrieval,probe]
    avssl-eval experiment=finetune_demo checkpoint=export/
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from avssl.evaluation.config import register_eval_schema

register_eval_schema()
log = logging.getLogger("avssl.eval")


def _job_output_dir() -> str | None:
    from hydra.core.hydra_config import HydraConfig

    try:
        return str(HydraConfig.get().runtime.output_dir)
    except ValueError:
        return None


def evaluate(cfg: DictConfig | dict[str, Any], output_dir: str | None = None) -> dict[str, Any]:
    """Run the evaluation a composed ``eval`` config describes; returns the results (also in results.json)."""
    from avssl.evaluation.run import run_evaluation

    plain: dict[str, Any] = (
        OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)  # type: ignore[assignment]
    )
    plain.pop("hydra", None)
    out = output_dir or plain.get("output_dir") or "outputs/eval"
    return run_evaluation(plain, out)


@hydra.main(config_path="pkg://avssl.conf.eval", config_name="eval", version_base="1.3")
def _app(cfg: DictConfig) -> None:
    from avssl.evaluation.run import summary_lines

    out_dir = cfg.output_dir or _job_output_dir()
    results = evaluate(cfg, out_dir)
    for line in summary_lines(results):
        print(line)
    print(f"results: {out_dir}/results.json")


def main() -> None:
    try:
        _app()
    except (ValueError, FileNotFoundError) as e:  # configuration or data problems: one clear line
        print(f"avssl-eval: error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
