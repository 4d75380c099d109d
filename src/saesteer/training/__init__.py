"""TopK SAE training (OpenAI v5 recipe) on activations collected from a model.

* ``activations``: activations at a hook site, from text the model samples itself or from given text.
* ``topk``: ``train_topk_sae(acts, d_sae=..., k=...) -> (SAE, TrainStats)``; save the SAE with
  ``saesteer.saes.save_sae`` (SAELens format).
* ``config``: ``TrainConfig`` and ``DataConfig``, the training and data settings declared once (keywords,
  ``train-sae`` options).
"""

from saesteer.training.activations import (collect_activations, file_activations, ids_activations, sample_activations,
                                          text_activations)
from saesteer.training.config import DataConfig, TrainConfig
from saesteer.training.topk import StepInfo, TrainStats, evaluate_sae, train_topk_sae

__all__ = [
    "sample_activations",
    "text_activations",
    "file_activations",
    "ids_activations",
    "collect_activations",
    "train_topk_sae",
    "evaluate_sae",
    "TrainStats",
    "StepInfo",
    "TrainConfig",
    "DataConfig",
]
