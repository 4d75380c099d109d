"""Activations of an SAE's features on token sequences, and the logit lens of its decoder directions."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from saesteer.models.hook_sites import hook_site, unembed_directions
from saesteer.saes.base import topk_keep
from saesteer.steering.hooks import hooks


def residual_directions(model, hook: str, directions: Tensor) -> Tensor:
    """Decoder directions as residual-stream directions (``mlp.hook_post`` goes through the MLP's output)."""
    site = hook_site(model, hook)
    if site.kind != "mlp.hook_post":
        return directions
    return directions @ site.mlp_out_weight().to(directions.dtype)


@torch.no_grad()
def logit_lens(model, sae, hook: str, *, n: int = 16, chunk: int = 1024,
               starts: Sequence[int] | None = None) -> dict[str, Tensor]:
    """Top and bottom ``n`` tokens of every feature's decoder direction: ``lens_{top,bottom}_{ids,vals}``.

    ``starts``: only the ``chunk``-row blocks that start there (rows in that order); each block is computed
    exactly as in the full pass."""
    W = sae.W_dec
    tops, topv, bots, botv = [], [], [], []
    for s in (range(0, W.shape[0], chunk) if starts is None else starts):
        d = residual_directions(model, hook, W[s:s + chunk].to(next(model.parameters()).dtype))
        logits = unembed_directions(model, d).float()
        k = min(n, logits.shape[-1])
        t = logits.topk(k, dim=-1)
        b = logits.topk(k, dim=-1, largest=False)
        tops.append(t.indices.int().cpu()), topv.append(t.values.cpu())
        bots.append(b.indices.int().cpu()), botv.append(b.values.cpu())
    return {"lens_top_ids": torch.cat(tops), "lens_top_vals": torch.cat(topv),
            "lens_bottom_ids": torch.cat(bots), "lens_bottom_vals": torch.cat(botv)}


class _Stop(Exception):
    """Raised from the recording hook: nothing above the hook is needed."""


@torch.no_grad()
def hook_activations(model, hook: str, tokens: Tensor) -> Tensor:
    """Activations ``[B, T, d]`` at ``hook`` for ``tokens [B, T]`` (the forward stops at the hook)."""
    captured: list[Tensor] = []

    def grab(act: Tensor):
        captured.append(act.detach())
        raise _Stop

    device = next(model.parameters()).device
    with hooks(model, [(hook, grab)]):
        try:
            model(input_ids=tokens.to(device), use_cache=False)
        except _Stop:
            pass
    return captured[0]


def column_latents(sae, x: Tensor, columns: Tensor | None, *, only_columns: bool = True) -> Tensor:
    """``sae.encode(x)[:, columns]`` (every latent when ``columns`` is None), bit for bit.

    ``only_columns`` with a TopK SAE in its fused form (``SAE.fused_encoder``): the pre-activations are the
    SAE's own, but the activation is formed for ``columns`` only. A token's k-th largest pre-activation comes
    from ``topk(k + 1)``, which also shows ties at the k-th value; tokens with a tie (or a non-finite value
    among those) take the SAE's own tie rule (``topk_keep``) in full. Every other element is the same
    ``relu(pre) * (pre >= kth)`` as ``SAE.activate``, so the result is equal."""
    fused = sae.fused_encoder() if columns is not None and only_columns else None
    if fused is None or fused.k is None or fused.k >= sae.d_sae:
        z = sae.encode(x)
        return z if columns is None else z[:, columns]
    k = fused.k
    pre = sae.encode_pre_act(x, sae.norm_stats(x.to(sae.dtype)))
    top = pre.topk(k + 1, dim=-1).values
    kth = top[:, k - 1:k]
    pre_c = pre[:, columns]
    z = torch.relu(pre_c) * (pre_c >= kth)
    odd = ((top[:, k] == top[:, k - 1]) | ~torch.isfinite(top).all(dim=-1)).nonzero().flatten()
    if odd.numel():
        rows = pre.index_select(0, odd)
        z[odd] = (torch.relu(rows) * topk_keep(rows, k))[:, columns]
    return z


@torch.no_grad()
def reference_activations(model, hook: str, tokens: Tensor, *, seqs_per_forward: int = 16) -> Tensor:
    """Activations ``[n, T, d]`` at ``hook`` for ``tokens [n, T]``, from exactly the forward passes
    :func:`firing_stats` runs (``seqs_per_forward`` sequences each), so its statistics are the same."""
    return torch.cat([hook_activations(model, hook, tokens[s:s + seqs_per_forward])
                      for s in range(0, tokens.shape[0], seqs_per_forward)])


@torch.no_grad()
def firing_stats(model, sae, hook: str, tokens: Tensor, *, skip_ids: Sequence[int] = (), k: int = 32,
                 seqs_per_forward: int = 16, progress: bool = False,
                 columns: Tensor | None = None, only_columns: bool = True,
                 activations: Tensor | None = None) -> dict[str, Tensor]:
    """Each feature's ``k`` largest activations over ``tokens [n, T]`` (``example_vals``/``example_index``,
    flat indices, -1 where it fired fewer times), ``max_act`` and ``frequency``. Tokens in ``skip_ids``
    (BOS) are left out. ``columns``: only these features (rows of the result, in that order), each with
    exactly the numbers of the full pass (every column's running top-k is its own). ``only_columns``: see
    :func:`column_latents` (False: the plain path, every latent formed, then the columns taken).
    ``activations``: the hook's activations on ``tokens`` from :func:`reference_activations` (the same
    forward passes, run earlier); None runs them here."""
    from tqdm.auto import tqdm

    F = sae.d_sae if columns is None else int(columns.numel())
    n, T = tokens.shape
    k = min(k, n * T)
    dev = sae.device  # the running top-k stays where the SAE is (a GPU sends back [k, F] once, at the end)
    run_vals = torch.zeros(k, F, device=dev)
    run_idx = torch.full((k, F), -1, dtype=torch.long, device=dev)
    active = torch.zeros(F, dtype=torch.long, device=dev)
    counted = 0
    chunk = max(64, (1 << 25) // sae.d_sae)  # tokens per encode: [chunk, d_sae] floats stay near 128 MB
    cols = None if columns is None else columns.to(dev)
    skip = torch.tensor(sorted(set(int(s) for s in skip_ids)), dtype=torch.long)
    bar = tqdm(total=n, desc="feature activations", unit="seq", disable=not progress, leave=False)
    for s in range(0, n, seqs_per_forward):
        block = tokens[s:s + seqs_per_forward]
        acts = hook_activations(model, hook, block) if activations is None else activations[s:s + seqs_per_forward]
        x_all = acts.reshape(-1, acts.shape[-1])
        flat_ids = block.reshape(-1)
        keep_all = ~torch.isin(flat_ids, skip) if skip.numel() else torch.ones_like(flat_ids, dtype=torch.bool)
        for c in range(0, x_all.shape[0], chunk):
            x = x_all[c:c + chunk].to(dev)
            keep = keep_all[c:c + chunk].to(dev)
            z = column_latents(sae, x, cols, only_columns=only_columns).float()
            z[~keep] = 0
            z.clamp_(min=0)
            active += (z > 0).sum(0)
            counted += int(keep.sum())
            kk = min(k, z.shape[0])
            v, i = z.topk(kk, dim=0)
            i = i + s * T + c
            i[v <= 0] = -1
            vals = torch.cat([run_vals, v])
            idx = torch.cat([run_idx, i])
            best = vals.topk(k, dim=0)
            run_vals, run_idx = best.values, idx.gather(0, best.indices)
        bar.update(block.shape[0])
    bar.close()
    run_idx[run_vals <= 0] = -1
    run_vals, run_idx, active = run_vals.cpu(), run_idx.cpu(), active.cpu()
    return {
        "example_vals": run_vals.T.contiguous(),
        "example_index": run_idx.T.contiguous().int(),
        "max_act": run_vals[0].clone(),
        "frequency": active.float() / max(counted, 1),
    }
