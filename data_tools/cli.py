"""Moved to :mod:`avssl.cli.prep` (every console entry point lives under ``avssl/cli``). This alias keeps old imports
(``compose_prep_config``, ``config_to_dict``, ``main``) working."""

from avssl.cli.prep import compose_prep_config, config_to_dict, main

__all__ = ["compose_prep_config", "config_to_dict", "main"]
