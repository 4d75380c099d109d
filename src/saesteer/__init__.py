"""saesteer: steer language models through the features of sparse autoencoders.

The main entry points:

* ``Steerer(model, sae)``: record, reconstruct, generate and clamp in a few calls.
* ``load_model``, ``load_sae``: the pieces on their own.
* ``record``, ``edit``, ``clamp``, ``hooks``: context managers that add hooks and always remove them.
* ``generate_ids`` and ``GenerationConfig``: the generation engine over token ids.
"""

__version__ = "0.1.0"

import os as _os

# Idle OpenMP threads sleep instead of spinning. On a small machine shared with other work, spinning made
# every model call 10-25x slower. It must be set before torch starts its thread pool; users can override it.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from saesteer.engine import GenerationConfig, generate_ids
from saesteer.errors import SaesteerError
from saesteer.models.loading import LoadedModel, load_model, wrap_model
from saesteer.saes import load_sae
from saesteer.saes.base import SAE, SAEConfig
from saesteer.steerer import Generation, Steerer
from saesteer.steering.clamp import FeatureClamp, SAEClamp
from saesteer.steering.hooks import clamp, edit, hooks, record

__all__ = [
    "SAE", "SAEConfig", "SAEClamp", "FeatureClamp", "Generation", "GenerationConfig", "LoadedModel",
    "SaesteerError", "Steerer", "clamp", "edit", "generate_ids", "hooks", "load_model", "load_sae", "record",
    "wrap_model",
]
