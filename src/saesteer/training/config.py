"""The settings of TopK SAE training (``TrainConfig``) and of its data (``DataConfig``), each declared once.

``train_topk_sae(acts, config, **keywords)``, ``collect_activations(lm, hook, data, **keywords)`` and
``saesteer train-sae`` (its options and their help are generated from these fields) use them; a new training
or data option is one field here, plus its use.
"""

from __future__ import annotations

from dataclasses import dataclass

from saesteer.config import Config, setting
from saesteer.errors import SaesteerError


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


@dataclass(frozen=True)
class DataConfig(Config):
    """Where the training activations come from (text the model samples, or a text file), and how many:
    every field is a keyword of ``collect_activations`` and an option of ``saesteer train-sae``."""

    name = "data settings"

    tokens: int = setting(1_000_000, min=2, max=1 << 34,
                          help="Training tokens (activation vectors); with --text, at most this many of the file's.")
    text_file: str | None = setting(None, cli_name="--text", path="file",
                                    help="UTF-8 text file to take activations from.")
    self_generate: bool = setting(
        False, help="Take activations from text the model samples itself from BOS (the default without --text).")
    separator: str | None = setting(None, help="With --text: split the file into documents at this string.")
    seq_len: int = setting(128, min=2, max=1 << 16, help="Positions per sampled sequence (or per window of --text).")
    temperature: float = setting(1.0, min=0, min_open=True, help="Sampling temperature with --self-generate.")
    eval_tokens: int = setting(
        65_536, min=0, max=1 << 30,
        help="Held-out tokens for the final statistics (sampled with another seed, or the end of --text); "
             "0 measures on the training tokens.")

    def normalise(self) -> None:
        if self.text_file and self.self_generate:
            raise SaesteerError("give --text FILE or --self-generate, not both")
        if self.separator is not None and not self.text_file:
            raise SaesteerError("--separator goes with --text")
