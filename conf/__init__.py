"""Hydra configs of avssl (shipped in the wheel). Importing this package registers the typed schemas, so
``hydra.initialize_config_module("avssl.conf")`` + ``compose("train")`` works without importing anything else."""

from avssl.config import register_configs

register_configs()
