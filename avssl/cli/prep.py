"""``avssl-prep``: the Hydra entry point of the preprocessing pipeline (``avssl.data_tools``; config:
conf/prep/prep.yaml, installed as avssl/conf/prep)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from avssl.data_tools.pipeline import PrepResult, run_prep

log = logging.getLogger("avssl.prep")


def config_to_dict(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain containers (what :func:`run_prep` takes), without Hydra's own node."""
    d = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(d, dict)
    d.pop("hydra", None)
    return d  # type: ignore[return-value]


CONFIG_DIR = Path(__file__).resolve().parent.parent / "conf" / "prep"


def compose_prep_config(overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Compose the ``avssl-prep`` config with command-line style ``overrides`` (for notebooks and tests)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR), job_name="avssl-prep"):
        return config_to_dict(compose(config_name="prep", overrides=list(overrides)))


# An absolute folder, not a path relative to this module: Hydra turns a relative ``config_path`` of an installed
# module into the Python package ``avssl.conf.prep`` (which has no __init__.py), so the console script failed.
@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="prep")
def main(cfg: DictConfig) -> PrepResult:
    return run_prep(config_to_dict(cfg), echo=log.info if not cfg.dry_run else print)


if __name__ == "__main__":  # pragma: no cover
    main()
