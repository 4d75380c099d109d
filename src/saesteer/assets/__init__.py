"""Files shipped inside the package: the tiny real model stories260K and a TopK SAE trained for it.

They make every command work on a machine with no network (``--model stories260K --sae stories260K``);
see the README and LICENSE beside each folder for source, licence and how the SAE was made.
"""

from __future__ import annotations

from pathlib import Path

EMBEDDED_NAME = "stories260K"
"""The name that selects the embedded model (``--model``) or its SAE (``--sae``), in any letter case."""

MODEL_DIR = Path(__file__).parent / "stories260K"
SAE_DIR = Path(__file__).parent / "sae_stories260K"
EMBEDDED_HOOK = "blocks.2.hook_resid_post"
EMBEDDED_PROMPT = "Once upon a time"
"""A prompt in the style of the stories the model was trained on."""


def is_embedded(name) -> bool:
    """Whether ``name`` is the embedded pair's name (``stories260K``, any case)."""
    return isinstance(name, str) and name.lower() == EMBEDDED_NAME.lower()


def model_path(name: str) -> str:
    """``stories260K`` -> the embedded model folder; any other name unchanged."""
    return str(MODEL_DIR) if is_embedded(name) else name


def sae_path(spec):
    """``stories260K`` -> the embedded SAE folder; any other spec unchanged."""
    return str(SAE_DIR) if is_embedded(spec) else spec
