"""SAE clamps computed from packed weights, and the chains of edits applied at each hook site.

An edit that is a latent clamp (``fn.latent_clamp()``, a ``steering.clamp.LatentClamp``) in a mode of
:data:`FUSED_MODES`, whose SAE has a fused form (``SAE.fused_encoder``), is swapped for a :class:`FusedClamp`:
same result, less work. Any other edit (a clamp on an SAE without a fused form, a
reconstruct clamp on an elementwise SAE, any callable) is called with ``[B, T, d]`` as usual, so it runs
the SAE's own maths.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from saesteer.engine.options import FastOptions
from saesteer.engine.packs import SAEPack, sae_pack
from saesteer.engine.topk_screen import topk_members
from saesteer.errors import SaesteerError
from saesteer.models.hook_sites import hook_site
from saesteer.steering.clamp import LatentClamp

FUSED_MODES = ("delta", "reconstruct")
"""The steering modes :class:`FusedClamp` computes; a clamp in any other mode runs as the plain edit (exact)."""


class FusedClamp:
    """A latent clamp (``steering.clamp.LatentClamp``) computed from packed weights.

    ``x' = x + sum_j (v_j - z_j) W_dec[j]`` (delta, de-normalised by the SAE) or ``denormalize(x_hat_n(z) +
    sum_j (v_j - z_j) W_dec[j])`` (reconstruct), where ``z_j`` is latent j's activation. A delta clamp needs
    only the clamped latents' ``z_j``; for TopK SAEs :mod:`engine.topk_screen` decides most tokens without the
    full encode. The clamped latents' own pre-activations are computed exactly, in float32.
    """

    def __init__(self, clamp: LatentClamp, pack: SAEPack, static: bool = False):
        self.clamp, self.pack = clamp, pack
        self.static = static  # no value-dependent branches (CUDA graphs): always the full encode
        self._rows = None  # per-row gathers (latent columns, directions), built on first use

    @staticmethod
    def can_fuse(clamp: LatentClamp) -> bool:
        """True when the clamp's SAE has a fused form this class computes: TopK (both modes) or an
        elementwise activation in delta mode (a reconstruct clamp there needs the dense decode anyway)."""
        if clamp.mode not in FUSED_MODES:
            return False  # e.g. add mode: it needs no encode, the clamp itself is cheap
        enc = clamp.sae.fused_encoder()
        return enc is not None and (enc.k is not None or clamp.mode == "delta")

    def as_static(self) -> "FusedClamp":
        new = FusedClamp(self.clamp, self.pack, static=True)
        new._rows = self._per_row()
        return new

    def select_rows(self, index: Tensor) -> "FusedClamp":
        new = FusedClamp(self.clamp.select_rows(index), self.pack, self.static)
        if self._rows is not None and self.clamp.per_row:
            new._rows = tuple(t[index.to(t.device)] for t in self._rows)
        elif not self.clamp.per_row:
            new._rows = self._rows
        return new

    def _per_row(self):
        """``idx, val, mask [R, m]``, encoder columns ``[R, m, d]`` and biases ``[R, m]``, directions
        ``[R, m, d]`` (R = rows, or 1 for a clamp shared by every row)."""
        if self._rows is None:
            enc, c = self.pack.enc, self.clamp
            cols = enc.W_enc.t()[c.idx].to(torch.float32)
            self._rows = (c.idx, c.val.to(torch.float32), c.mask, cols, enc.b_enc[c.idx].to(torch.float32),
                          enc.W_dec[c.idx])
        return self._rows

    def __call__(self, act: Tensor) -> Tensor:
        return self.shared(act, None)

    def shared(self, x_groups: Tensor, group: Tensor | None) -> Tensor:
        """``x_groups [G, T, d]`` -> clamped ``[B, T, d]`` for rows whose group is ``group [B]`` (None: G == B)."""
        p, c, sae = self.pack, self.clamp, self.pack.sae
        in_dtype = x_groups.dtype
        G, T, d = x_groups.shape
        B = G if group is None else group.numel()
        if c.per_row and c.idx.shape[0] != B:
            raise SaesteerError(f"per-row clamps were given for {c.idx.shape[0]} rows but the batch has {B} rows")

        def rows(t: Tensor) -> Tensor:  # group tensor [G, ...] -> row tensor [B, ...]
            return t if group is None else t.index_select(0, group)

        x = x_groups.to(p.sae_dtype)
        stats = sae.norm_stats(x)
        x_in = sae.normalize(x, stats)
        if p.enc.input_bias is not None:
            x_in = x_in - p.enc.input_bias
        row_stats = None if stats is None else tuple(rows(t) for t in stats)
        idx, val, mask, cols, bias_j, dirs = (t.expand(B, *t.shape[1:]) for t in self._per_row())
        # exact pre-activations of each row's clamped latents: [B, T, m]
        pre_j = torch.baddbmm(bias_j.unsqueeze(1), rows(x_in).to(torch.float32), cols.transpose(1, 2))
        recon = None
        if p.k is not None:
            z_j, recon = topk_members(p, x_in, pre_j, idx, mask, group, want_recon=c.mode == "reconstruct",
                                      static=self.static)
        else:
            z_j = p.enc.elementwise(pre_j, idx.unsqueeze(1))
        coef = torch.where(mask.unsqueeze(1), val.unsqueeze(1) - z_j, torch.zeros_like(z_j))  # [B, T, m]
        delta = torch.bmm(coef.to(dirs.dtype), dirs)  # [B, T, d]
        if c.mode == "reconstruct":
            out = sae.denormalize(rows(recon) + delta, row_stats)
        else:
            scale = sae.output_scale(row_stats)
            out = rows(x) + (delta if scale is None else delta * scale)
        return out.to(in_dtype)


class SiteChain:
    """The edits at one hook site, applied in order; each result is cast back to the site's dtype."""

    def __init__(self, fns: list):
        self.fns = fns
        if fns and hasattr(fns[0], "shared"):
            self.shared = self._shared

    def __call__(self, x: Tensor) -> Tensor:
        for fn in self.fns:
            y = fn(x)
            if y is not None and y is not x:
                x = y.to(x.dtype)
        return x

    def _shared(self, x_groups: Tensor, group: Tensor) -> Tensor:
        x = self.fns[0].shared(x_groups, group)
        return SiteChain(self.fns[1:])(x)

    def select_rows(self, index: Tensor) -> "SiteChain":
        return SiteChain([select_rows(fn, index) for fn in self.fns])

    def as_static(self) -> "SiteChain":
        """The same edits with no value-dependent branches (fused clamps always run the full encode)."""
        return SiteChain([fn.as_static() if isinstance(fn, FusedClamp) else fn for fn in self.fns])


def select_rows(fn, index: Tensor):
    """``fn`` restricted to batch rows ``index`` when it keeps per-row state (``select_rows``), else ``fn``."""
    if hasattr(fn, "select_rows"):
        new = fn.select_rows(index)
        return fn if new is None else new
    return fn


def resolve_edits(model: nn.Module, edits, dtype: torch.dtype,
                  options: FastOptions = FastOptions()) -> list[tuple[int, str, object]]:
    """``[(layer, kind, fn)]`` in the given order; latent clamps with a fused form are swapped for it."""
    out = []
    for name, fn in edits:
        site = hook_site(model, name)  # same one-line errors as the reference engine
        latent = fn.latent_clamp() if hasattr(fn, "latent_clamp") else None
        if latent is not None and FusedClamp.can_fuse(latent):
            pack_dtype = dtype if latent.sae.dtype == torch.float32 else latent.sae.dtype
            fn = FusedClamp(latent, sae_pack(latent.sae, pack_dtype, options))
        out.append((site.layer, site.kind, fn))
    return out


def chains(resolved: list[tuple[int, str, object]]) -> dict:
    """``{(layer, kind): SiteChain}`` from resolved edits."""
    sites: dict = {}
    for layer, kind, fn in resolved:
        sites.setdefault((layer, kind), []).append(fn)
    return {key: SiteChain(fns) for key, fns in sites.items()}


__all__ = ["FUSED_MODES", "FusedClamp", "SiteChain", "select_rows", "resolve_edits", "chains"]
