"""The settings of TopK SAE training (``TrainConfig``), declared once.

``train_topk_sae(acts, config, **keywords)`` and ``saesteer train-sae`` (its training options and their help
are generated from these fields) both use them; a new training option is one field here, plus its use.
"""

from __future__ import annotations

from dataclasses import dataclass

from saesteer.config import Config, setting


@dataclass(frozen=True)
class TrainConfig(Config):
    """How to train a TopK SAE (OpenAI v5 recipe, AuxK): every field is a keyword of ``train_topk_sae``."""

    name = "training settings"

    d_sae: int = setting(1024, cli_name="--latents", min=1, max=1 << 24, help="SAE width (d_sae).")
    k: int = setting(16, min=1, max=1 << 16, help="Active latents per token (TopK).")
    steps: int | None = setting(None, min=1, cli=False, help="Adam steps (instead of epochs).")
    epochs: float | None = setting(None, min=0, min_open=True, cli_default=2.0,
                                   help="Passes over the training tokens (Python default: 1).")
    batch_size: int = setting(512, min=1, max=1 << 20, help="Tokens per Adam step.")
    lr: float | None = setting(None, min=0, min_open=True,
                               help="Adam learning rate (default: 5 * 2e-4 / sqrt(latents / 16384)).")
    seed: int = setting(0, help="Seed for sampling, initialisation and order.")
    hook_name: str | None = setting(None, cli=False, help="Hook site recorded in the SAE's config.")
    k_aux: int | None = setting(None, min=1, cli=False, help="AuxK latents (default: d_in // 2).")
    aux_coef: float = setting(1 / 32, min=0, cli=False, help="Weight of the AuxK loss.")
    dead_tokens: int | None = setting(
        None, min=1, cli=False,
        help="A latent silent for this many tokens is dead (default: a tenth of the training tokens, <= 10M).")
    warmup_steps: int | None = setting(None, min=0, cli=False, help="Learning-rate warm-up (default: 1% of steps).")
    decay_fraction: float = setting(0.2, min=0, max=1, cli=False,
                                    help="Final fraction of steps over which the learning rate decays to 0.")
