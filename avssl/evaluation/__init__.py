"""Evaluation of pretrained encoders: metrics on embeddings, probes, media-level tasks and plots.

- ``metrics``: ``cross_modal_retrieval``, ``recall_at_k``, ``offset_classification``, ``offset_grid``, ``roc_auc``;
- ``probes``: ``linear_probe``, ``knn_classify``, ``evaluate_probes``;
- ``embed``: ``EncoderPair`` (video + audio encoders of one bundle/checkpoint), ``embed_windows``,
  ``offset_similarities``;
- ``run``: the ``avssl-eval`` tasks (``evaluate_offsets``, ``evaluate_retrieval``, ``evaluate_probes_on_items``,
  ``finetune``, ``run_evaluation``); ``extract``: ``avssl-extract``; ``plots``: PNG figures.
"""

from avssl.evaluation.metrics import (
    cross_modal_retrieval,
    offset_classification,
    offset_grid,
    recall_at_k,
    roc_auc,
)
from avssl.evaluation.probes import evaluate_probes, knn_classify, linear_probe

__all__ = [
    "cross_modal_retrieval",
    "offset_classification",
    "offset_grid",
    "recall_at_k",
    "roc_auc",
    "evaluate_probes",
    "knn_classify",
    "linear_probe",
]
