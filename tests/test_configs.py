"""Every avssl-train config composes, struct mode catches typos and wrong types, values are plain after resolve."""

from __future__ import annotations

import importlib.resources
import json

import pytest
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from avssl.config import TrainConfig, register_configs

EXPERIMENTS = ["sync_contrastive", "masked_av", "sync_masked", "sync_small"]
FAMILIES = ["cnn", "vit"]
EXPECTED_WEIGHTS = {
    "sync_contrastive": {"sync": 1.0},
    "masked_av": {"joint_mae": 1.0, "joint_contrastive": 0.01},
    "sync_masked": {"sync": 1.0, "mae_video": 0.5, "mae_audio": 0.5},
    "sync_small": {"sync": 1.0},
}
NEEDS_PATH = {"sync_small"}  # experiments on data=folder: the user names the folder


def _compose(overrides: list[str] | None = None, hydra_cfg: bool = False):
    with initialize_config_module("avssl.conf", version_base="1.3"):
        return compose("train", overrides=overrides or [], return_hydra_config=hydra_cfg)


def _group_options(group: str) -> list[str]:
    root = importlib.resources.files("avssl.conf") / group
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def _chain(exc: BaseException) -> str:
    parts = []
    e: BaseException | None = exc
    while e is not None:
        parts.append(str(e))
        e = e.__cause__ or e.__context__
    return "\n".join(parts)


def test_default_config_is_the_demo_run():
    cfg = _compose()
    assert cfg.data.source == "demo"
    assert cfg.data.num_segments == 4 and cfg.data.val_batch_size == 16
    assert cfg.objective.name == "sync_contrastive"
    assert cfg.callbacks.checkpoint.monitor == "auto"  # the objective's: val/sync_acc for sync (test_objective_plugins)
    assert OmegaConf.is_struct(cfg)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_with_every_family(experiment: str, family: str):
    cfg = _compose([f"experiment={experiment}", f"model={family}",
                    *(["data.path=/some/where"] if experiment in NEEDS_PATH else [])])
    assert cfg.task_name == experiment
    assert cfg.model.family == family
    weights = {k: v for k, v in OmegaConf.to_container(cfg.objective.weights).items() if v}
    assert weights == EXPECTED_WEIGHTS[experiment]
    plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    json.dumps(plain)  # only plain containers of primitives


@pytest.mark.parametrize("group", ["data", "model", "objective", "optimizer", "trainer", "logger", "callbacks",
                                   "experiment", "debug"])
def test_every_option_of_every_group_composes(group: str):
    options = _group_options(group)
    assert options, f"config group {group} is empty"
    for option in options:
        overrides = [f"{group}={option}"]
        if (group == "data" and option != "demo") or (group == "experiment" and option in NEEDS_PATH):
            overrides.append("data.path=/some/where")
        cfg = _compose(overrides)
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


def test_sync_small_is_the_learning_benchmark_recipe():
    """experiment=sync_small carries exactly the settings docs/results.md measured on top of data=folder."""
    cfg = _compose(["experiment=sync_small", "data.path=/some/where"])
    plain = _compose(["data=folder", "data.path=/some/where", "data.num_segments=16", "model.proj_hidden=256",
                      "model.proj_layers=2", "optimizer.lr=2e-3", "optimizer.warmup_fraction=0.2",
                      "objective.sync.negatives=within_video"])
    drop = {"task_name", "tags"}
    assert ({k: v for k, v in OmegaConf.to_container(cfg).items() if k not in drop}
            == {k: v for k, v in OmegaConf.to_container(plain).items() if k not in drop})


def test_debug_options_combine():
    cfg = _compose(["debug=[tiny,fast_dev_run]"])
    assert cfg.trainer.fast_dev_run is True and cfg.data.demo.num_videos == 8


def test_misspelt_key_fails_naming_it():
    with pytest.raises(ConfigCompositionException) as info:
        _compose(["data.batchsize=4"])
    assert "data.batchsize" in _chain(info.value)
    with pytest.raises(ConfigCompositionException) as info:
        _compose(["objective.weights.synch=1.0"])
    assert "synch" in _chain(info.value)


def test_wrong_type_fails_naming_the_key():
    with pytest.raises(ConfigCompositionException) as info:
        _compose(["trainer.max_epochs=many"])
    msg = _chain(info.value)
    assert "max_epochs" in msg and "many" in msg


def test_misspelt_key_in_a_yaml_file_fails(tmp_path):
    """A config file with a key the schema lacks fails at compose time (struct mode from the schema)."""
    register_configs()
    schema = OmegaConf.structured(TrainConfig)
    with pytest.raises(Exception, match="lrr"):
        OmegaConf.merge(schema, OmegaConf.create({"optimizer": {"lrr": 0.1}}))


def test_no_value_needs_a_running_hydra_app():
    cfg = _compose(["experiment=sync_masked"])
    text = OmegaConf.to_yaml(cfg)
    assert "${hydra" not in text
    OmegaConf.resolve(cfg)  # resolves outside any Hydra run


def test_output_dirs_and_launchers():
    cfg = _compose(hydra_cfg=True)
    assert cfg.hydra.job.chdir is False
    assert cfg.hydra.launcher._target_.endswith("BasicLauncher")
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = _compose(["hydra/launcher=slurm"], hydra_cfg=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.timeout_min > 0
