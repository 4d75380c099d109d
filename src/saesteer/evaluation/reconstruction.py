"""How well an SAE reconstructs activations: MSE, fraction of variance explained, cosine, L0."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from saesteer.saes.base import SAE


@dataclass
class ReconstructionStats:
    """Reconstruction quality over a set of tokens (averaged over tokens)."""

    n_tokens: int
    mse: float
    """Mean over tokens and dimensions of (x - x_hat)^2."""
    variance_explained: float
    """1 - sum (x - x_hat)^2 / sum (x - mean_x)^2, the mean taken over the tokens given."""
    cosine: float
    """Mean cosine similarity between x and x_hat."""
    l0: float
    """Mean number of active (non-zero) latents per token."""
    activation_norm: float
    """Mean L2 norm of x."""

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def reconstruction_stats(sae: SAE, acts: Tensor, *, skip_first: int = 0) -> ReconstructionStats:
    """Stats over ``acts [..., d_in]`` (flattened to tokens); ``skip_first`` drops leading positions.

    With a single token, variance explained is measured against zero (there is no mean to subtract).
    """
    if skip_first:
        acts = acts[..., skip_first:, :]
    x = acts.reshape(-1, acts.shape[-1]).to(sae.dtype)
    z, stats = sae.encode_with_stats(x)
    x_hat = sae.decode(z, stats)
    err = (x - x_hat).pow(2)
    centre = x.mean(0, keepdim=True) if x.shape[0] > 1 else torch.zeros_like(x[:1])
    total = (x - centre).pow(2).sum()
    return ReconstructionStats(
        n_tokens=int(x.shape[0]),
        mse=float(err.mean()),
        variance_explained=float(1 - err.sum() / total) if total > 0 else float("nan"),
        cosine=float(torch.nn.functional.cosine_similarity(x, x_hat, dim=-1).mean()),
        l0=float((z != 0).sum(-1).float().mean()),
        activation_norm=float(x.norm(dim=-1).mean()),
    )


@torch.no_grad()
def top_active(sae: SAE, act: Tensor, n: int = 10) -> list[tuple[int, float]]:
    """The ``n`` most active latents of one activation vector ``[d_in]``: ``[(feature, value), ...]``."""
    z, _ = sae.encode_with_stats(act.reshape(1, -1))
    values, idx = z[0].topk(min(n, sae.d_sae))
    return [(int(i), float(v)) for i, v in zip(idx, values) if v != 0]
