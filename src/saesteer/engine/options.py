"""The fast engine's switches, passed explicitly (no module globals to patch).

Every optimisation can be turned off, one field each, so that the benchmark's ablation table measures each
one; every combination gives the same tokens in float32 (``tests/test_fast_engine.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from saesteer.errors import SaesteerError


@dataclass(frozen=True)
class FastOptions:
    """How the fast engine runs (never what it computes: float32 tokens are the same for every setting)."""

    pack_weights: bool = True
    """CPU: pre-pack weights into oneDNN's layout (off: plain ``F.linear``)."""
    unembed_screen: bool = True
    """float32 greedy on CPU: screen the logits with a bfloat16 unembedding and an error bound (exact)."""
    topk_screen_stride: int | None = None
    """Delta clamps on TopK SAEs: bound the k-th largest pre-activation from every ``stride``-th latent.
    None: automatic (at most 16, keeping at least 64 k latents); 1 turns the bound off."""
    share_prefixes: bool = True
    """Rows with equal token prefixes compute the blocks below the first edit once per group."""
    share_max_groups: float = 0.85
    """Decode steps share lower blocks when the distinct prefixes are at most this fraction of the rows."""
    rescore: int = 8
    """Lower-precision greedy: how many top candidates are re-scored in float32 (0 or 1: none)."""
    static_steps: bool | None = None
    """Decode with static shapes (captured as a CUDA graph on GPU). None: on CUDA when every edit is fused."""
    batch_size: int | None = None
    """Rows per chunk; None chooses from free memory."""

    def __post_init__(self):
        if self.batch_size is not None and self.batch_size < 1:
            raise SaesteerError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.topk_screen_stride is not None and self.topk_screen_stride < 1:
            raise SaesteerError(f"topk_screen_stride must be at least 1, got {self.topk_screen_stride}")
        if not 0 <= self.share_max_groups <= 1:
            raise SaesteerError(f"share_max_groups must be in [0, 1], got {self.share_max_groups}")
