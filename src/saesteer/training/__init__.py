"""TopK SAE training (OpenAI v5 recipe) on activations collected from a model.

* ``activations``: activations at a hook site, from text the model samples itself or from given text.
* ``topk``: ``train_topk_sae(acts, d_sae=..., k=...) -> (SAE, TrainStats)``; save the SAE with
  ``saesteer.saes.save_sae`` (SAELens format).
* ``config``: ``TrainConfig``, the training settings declared once (keywords, ``train-sae`` options).
"""

from saesteer.training.activations import file_activations, ids_activations, sample_activations, text_activations
from saesteer.training.config import TrainConfig
from saesteer.training.topk import StepInfo, TrainStats, evaluate_sae, train_topk_sae

__all__ = [
    "sample_activations",
    "text_activations",
    "file_activations",
    "ids_activations",
    "train_topk_sae",
    "evaluate_sae",
    "TrainStats",
    "StepInfo",
    "TrainConfig",
]
