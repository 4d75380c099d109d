"""Gated SAEs (Rajamanoharan et al. 2024), as SAELens and dictionary_learning save them.

One encoder matrix serves two paths: the gate ``x_enc + b_gate > 0`` says which latents fire, the magnitude
``relu(exp(r_mag) * x_enc + b_mag)`` says how much, with ``x_enc = (x_n - b_dec) @ W_enc``. Decode is the plain
``z @ W_dec + b_dec``. ``b_enc`` holds ``b_gate``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from saesteer.errors import SaesteerError
from saesteer.saes.base import SAE, NormStats, SAEConfig


class GatedSAE(SAE):
    """An :class:`SAE` whose activation is a gate times a ReLU magnitude (``cfg.activation == "gated"``)."""

    activations = ("gated",)

    def __init__(self, cfg: SAEConfig, W_enc: Tensor, b_gate: Tensor, W_dec: Tensor, b_dec: Tensor,
                 *, b_mag: Tensor, r_mag: Tensor):
        super().__init__(cfg, W_enc, b_gate, W_dec, b_dec)
        for name, value in (("b_mag", b_mag), ("r_mag", r_mag)):
            if tuple(value.shape) != (cfg.d_sae,):
                raise SaesteerError(
                    f"SAE weight {name} has shape {tuple(value.shape)}, expected {(cfg.d_sae,)}; the file is"
                    " corrupt or its config does not match its weights"
                )
        self.b_mag = nn.Parameter(b_mag.detach().clone(), requires_grad=False)
        self.r_mag = nn.Parameter(r_mag.detach().clone(), requires_grad=False)

    @property
    def plain_maths(self) -> bool:
        return False

    def encode_with_stats(self, x: Tensor) -> tuple[Tensor, NormStats]:
        x = x.to(self.dtype)
        stats = self.norm_stats(x)
        x_n = self.normalize(x, stats)
        if self.cfg.apply_b_dec_to_input:
            x_n = x_n - self.b_dec
        x_enc = x_n @ self.W_enc
        gate = (x_enc + self.b_enc) > 0
        magnitude = torch.relu(x_enc * self.r_mag.exp() + self.b_mag)
        return magnitude * gate, stats

    def encode_pre_act(self, x: Tensor, stats: NormStats | str = "compute") -> Tensor:
        """The magnitude path's pre-activations (what fires is decided by the gate)."""
        if isinstance(stats, str):
            stats = self.norm_stats(x.to(self.dtype))
        x_n = self.normalize(x.to(self.dtype), stats)
        if self.cfg.apply_b_dec_to_input:
            x_n = x_n - self.b_dec
        return (x_n @ self.W_enc) * self.r_mag.exp() + self.b_mag

    def activate(self, pre: Tensor) -> Tensor:
        raise SaesteerError("a gated SAE's latents need the gate: use encode(), not activate()")
