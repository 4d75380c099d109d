"""Sparse autoencoders: the one :class:`SAE` interface, and loading/saving every supported format."""

from saesteer.saes.base import SAE, SAEConfig
from saesteer.saes.registry import load_sae
from saesteer.saes.saelens import save_sae

__all__ = ["SAE", "SAEConfig", "load_sae", "save_sae"]
