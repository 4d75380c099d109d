"""A feature's activations over the reference text of its feature facts: how often it fires and how
strongly (the feature page's histogram, beside its top contexts).

The hook activations of the reference text are computed once per server (at most ``MAX_TOKENS`` tokens,
the first position of each sequence left out, as the facts' frequency does) and each feature's column is
the SAE's own ``encode`` of them, so TopK and JumpReLU SAEs are counted as they steer.
"""

from __future__ import annotations

import threading

import torch

from saesteer.evaluation.activations import hook_activations

MAX_TOKENS = 4096
BINS = 24
CHUNK = 512


class ReferenceActivations:
    """Hook activations of a reference text, computed on first use (on the model worker thread)."""

    def __init__(self, model, sae, hook: str):
        self.model, self.sae, self.hook = model, sae, hook
        self._acts: torch.Tensor | None = None
        self._key = None
        self._lock = threading.Lock()

    def _activations(self, reference_tokens: torch.Tensor) -> torch.Tensor:
        key = (tuple(reference_tokens.shape), int(reference_tokens.sum()))
        with self._lock:
            if self._acts is None or self._key != key:
                rows = max(1, MAX_TOKENS // max(1, reference_tokens.shape[1] - 1))
                tokens = reference_tokens[:rows]
                acts = [hook_activations(self.model, self.hook, tokens[i:i + 16])[:, 1:]
                        for i in range(0, tokens.shape[0], 16)]
                self._acts = torch.cat(acts).reshape(-1, acts[0].shape[-1])
                self._key = key
            return self._acts

    @torch.no_grad()
    def histogram(self, reference_tokens: torch.Tensor, feature: int, bins: int = BINS) -> dict:
        """``{"tokens", "active", "share", "max", "edges", "counts"}``: counts of the nonzero activations in
        ``bins`` equal bins from 0 to their maximum."""
        acts = self._activations(reference_tokens)
        col = torch.cat([self.sae.encode(acts[i:i + CHUNK].to(self.sae.W_dec.dtype))[:, feature]
                         for i in range(0, acts.shape[0], CHUNK)]).float()
        fired = col[col > 0]
        top = float(fired.max()) if fired.numel() else 0.0
        counts = torch.histc(fired, bins=bins, min=0.0, max=top).long().tolist() if fired.numel() else [0] * bins
        edges = [top * i / bins for i in range(bins + 1)]
        n = int(col.numel())
        return {"tokens": n, "active": int(fired.numel()), "share": fired.numel() / n if n else 0.0, "max": top,
                "edges": edges, "counts": counts}
