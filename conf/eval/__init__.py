"""Hydra configs of ``avssl-eval`` (``eval.yaml`` and the ``experiment`` group). Importing this package registers
the typed schema (``avssl.evaluation.config.EvalConfig``) that ``eval.yaml`` names first in its defaults."""

from avssl.evaluation.config import register_eval_schema

register_eval_schema()
