"""TopK membership of the clamped latents, with as little of the full encode as can be proven exact.

A delta clamp needs only ``z_j`` of its clamped latents, and for TopK that is nonzero only when ``pre_j``
reaches the k-th largest pre-activation of its token. The k-th largest over every ``stride``-th latent is a
lower bound ``L`` on the true k-th largest, so ``pre_j < L`` (with margins for rounding) proves ``z_j = 0``;
the full encode runs only for the tokens where that test is inconclusive. Ties at the k-th value follow the
SAE's own rule (``saes.base.topk_keep``: exactly k latents, the lowest indices among the tied).
"""

from __future__ import annotations

import torch
from torch import Tensor

from saesteer.engine.kernels import blocked, dot_error_coefficient
from saesteer.engine.packs import SAEPack
from saesteer.saes.base import topk_keep


def screen_unsure(p: SAEPack, x_in: Tensor, flat_c: Tensor, pre_j: Tensor, mask: Tensor, tokens: Tensor) -> Tensor:
    """``[B, T]``: row tokens whose clamped latents the strided bound cannot prove inactive.

    Both the bound and ``pre_j`` carry rounding error: per dot product at most ``c |x| max|w|`` plus the
    output rounding ``u_out |value|`` (``kernels.dot_error_coefficient``); the margin doubles it for safety.
    """
    low = blocked(p.screen, flat_c, p.row_block).topk(p.k, dim=-1, sorted=False).values.min(dim=-1).values
    low = low.to(torch.float32)
    K = x_in.shape[-1]
    c_low, u_out = dot_error_coefficient(K, p.dtype)
    c_exact, _ = dot_error_coefficient(K, torch.float32)
    scale = x_in.reshape(-1, K).norm(dim=-1).to(torch.float32) * p.col_norm_max
    margin = 2.0 * ((c_low + c_exact) * scale + (u_out + 2.0 ** -23) * (low.abs() + 1.0))
    return ((pre_j >= (low - margin)[tokens].unsqueeze(-1)) & mask.unsqueeze(1)).any(dim=-1)


def _tie_keep(pre: Tensor, rows: Tensor, k: int) -> Tensor:
    """The SAE's TopK mask (``topk_keep``, ties to the lowest indices) for rows ``rows`` of ``pre``."""
    return topk_keep(pre.index_select(0, rows), k)


def _kept_indices(pre: Tensor, top, k: int, tie_rows: Tensor, static: bool) -> Tensor:
    """``[n, k]`` indices of the latents TopK keeps, by the SAE's tie rule."""
    if static:  # branchless: every row by the tie rule (exactly k ones per row, so topk finds them)
        return topk_keep(pre, k, branchless=True).to(torch.float32).topk(k, dim=-1).indices
    indices = top.indices[:, :k]
    if bool(tie_rows.any()):
        rows = tie_rows.nonzero().flatten()
        indices = indices.clone()
        indices[rows] = _tie_keep(pre, rows, k).to(torch.float32).topk(k, dim=-1).indices
    return indices


def topk_members(p: SAEPack, x_in: Tensor, pre_j: Tensor, idx: Tensor, mask: Tensor, group: Tensor | None, *,
                 want_recon: bool, static: bool):
    """TopK activations ``z_j [B, T, m]`` of the clamped latents ``idx [B, m]``, and (``want_recon``) the
    normalised reconstruction ``[G, T, d]`` of every group token. ``x_in [G, T, d]``: encoder inputs;
    ``pre_j``: the clamped latents' exact pre-activations; ``group [B]``: each row's group (None: G == B)."""
    G, T, d = x_in.shape
    B, m = idx.shape
    flat_c = x_in.reshape(G * T, d).to(p.dtype)
    device = x_in.device
    grp = torch.arange(G, device=device) if group is None else group
    tokens = grp.view(B, 1) * T + torch.arange(T, device=device).view(1, T)  # [B, T] group token
    todo = None  # None: every token gets the full encode
    if not (want_recon or p.screen is None or static):
        unsure = screen_unsure(p, x_in, flat_c, pre_j, mask, tokens)
        if not bool(unsure.any()):
            p.screened_tokens += G * T
            return torch.zeros_like(pre_j), None
        todo = torch.unique(tokens[unsure])  # group tokens that need the full encode
        p.screened_tokens += G * T - todo.numel()
    sel = flat_c if todo is None else flat_c.index_select(0, todo)
    pre = blocked(p.encoder, sel, p.row_block)  # [n, d_sae]
    n, D = pre.shape
    top = pre.topk(min(p.k + 1, D), dim=-1, sorted=True)
    kth = top.values[:, p.k - 1]
    tie_rows = top.values[:, p.k] == kth if p.k < D else torch.zeros(n, dtype=torch.bool, device=device)
    where = torch.full((G * T,), -1, dtype=torch.long, device=device)
    where[torch.arange(G * T, device=device) if todo is None else todo] = torch.arange(n, device=device)
    pos = where[tokens]  # [B, T]: row of ``pre`` for each row token, -1 where the screen decided
    have = pos >= 0
    safe = pos.clamp(min=0)
    vals = pre.view(-1).take((safe * D).unsqueeze(-1) + idx.unsqueeze(1))  # [B, T, m] clamped latents' pre
    kth_r = kth[safe].unsqueeze(-1)
    member = (vals > kth_r) | ((vals == kth_r) & ~tie_rows[safe].unsqueeze(-1))
    tied = (vals == kth_r) & tie_rows[safe].unsqueeze(-1) & have.unsqueeze(-1)
    kept = None
    if static or bool(tied.any()):  # a clamped latent tied at the k-th value: the SAE's tie rule decides
        kept = _kept_indices(pre, top, p.k, tie_rows, static)
        by_rule = (kept[safe].unsqueeze(-2) == idx.view(B, 1, m, 1)).any(dim=-1)
        member = torch.where(tied, by_rule, member)
    member = member & have.unsqueeze(-1)
    if p.dtype == torch.float32:
        value = vals.to(torch.float32)
    else:
        value = pre_j  # membership from the lower-precision encode, the value exact
    z_j = torch.where(member, torch.relu(value), torch.zeros_like(pre_j))
    recon = None
    if want_recon:
        if kept is None:
            kept = _kept_indices(pre, top, p.k, tie_rows, static)
        W_dec = p.enc.W_dec
        weights = torch.relu(pre.gather(1, kept).to(W_dec.dtype))
        recon = torch.nn.functional.embedding_bag(kept, W_dec, per_sample_weights=weights, mode="sum")
        recon = (recon + p.enc.b_dec).view(G, T, d)
    return z_j, recon
