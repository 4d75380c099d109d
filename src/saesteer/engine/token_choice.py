"""The next token from the fast decoder's final hidden states: exact greedy picks with a cheap screen,
lower-precision greedy with float32 re-scoring, and sampling through the reference engine's sampler."""

from __future__ import annotations

import torch
from torch import Tensor

from saesteer.engine.batching import CPU_ROW_BLOCK, row_block
from saesteer.engine.generate import GenerationConfig, select_next
from saesteer.engine.kernels import Decoder, blocked, dot_error_coefficient

SCREEN_CANDIDATES = 8
"""float32 greedy on CPU: candidates taken from the bfloat16 screen."""


def top_tokens(logits: Tensor, r: int, chunk: int = 64) -> tuple[Tensor, Tensor]:
    """The ``r`` largest logits per row, sorted: ``(values, indices) [b, r]``, equal to ``topk(r)``.

    A full ``topk`` over 50k logits costs several times a max-reduction. Here one reduction gives every
    ``chunk``-wide block's max; the top ``r`` tokens lie in the ``r`` blocks with the largest maxima (a block
    that holds one of them has a max at least that large, and at most ``r`` blocks can beat it), so
    ``topk`` runs over ``r * chunk`` gathered logits only.
    """
    b, V = logits.shape
    n_full = V // chunk
    if n_full <= r:
        return logits.topk(r, dim=-1)
    block_max = logits[:, : n_full * chunk].view(b, n_full, chunk).amax(dim=-1)
    if V > n_full * chunk:
        block_max = torch.cat([block_max, logits[:, n_full * chunk:].amax(dim=-1, keepdim=True)], dim=1)
    blocks = block_max.topk(r, dim=-1, sorted=False).indices  # [b, r]
    cols = (blocks.unsqueeze(-1) * chunk + torch.arange(chunk, device=logits.device)).view(b, r * chunk)
    in_range = cols < V
    vals = logits.gather(1, cols.clamp(max=V - 1))
    vals = vals.masked_fill(~in_range, float("-inf"))
    top = vals.topk(r, dim=-1)
    return top.values, cols.gather(1, top.indices)


def exact_logits(dec: Decoder, h: Tensor, cand: Tensor) -> Tensor:
    """float32 logits of candidate tokens ``cand [b, c]`` for hidden states ``h [b, d]``."""
    w = dec.unembed_weight[cand].to(torch.float32)  # [b, c, d]
    return torch.bmm(w, h.to(torch.float32).unsqueeze(-1)).squeeze(-1)


def pick(cand: Tensor, exact: Tensor) -> Tensor:
    """The candidate with the largest exact logit; on ties the smallest token id, as ``argmax`` does."""
    best = exact.max(dim=-1, keepdim=True).values
    masked = torch.where(exact == best, cand, torch.full_like(cand, torch.iinfo(cand.dtype).max))
    return masked.min(dim=-1).values


def screen_error_bound(K: int, h_norm: Tensor, w_norm_max: float, value: Tensor) -> Tensor:
    """Bound on ``|bfloat16-screened logit - exact logit|`` for width ``K`` (both inputs rounded, float32
    accumulation, output rounded: ``kernels.dot_error_coefficient``), doubled for safety. ``value``: the
    largest magnitude among the screened logits compared."""
    c, u_out = dot_error_coefficient(K, torch.bfloat16)
    return 2.0 * (c * h_norm * w_norm_max + u_out / (1 - u_out) * value)


class ScreenStats:
    """Counts screened rows that needed the full float32 logits; screening stops paying when many do
    (e.g. a trained model with large logits, where the bfloat16 error bound admits many tokens)."""

    def __init__(self):
        self.rows = 0
        self.fallbacks = 0

    @property
    def worth_it(self) -> bool:
        return self.rows < 1024 or self.fallbacks * 5 < self.rows


def greedy_f32(dec: Decoder, h: Tensor, stats: ScreenStats | None = None) -> Tensor:
    """Exact float32 argmax of ``h @ W_U.T`` for final hidden states ``h [B, d]`` (float32).

    On CPU the logits are screened with a bfloat16 unembedding: the top ``SCREEN_CANDIDATES`` are scored in
    float32, and a rigorous bound on the bfloat16 error (:func:`screen_error_bound`) proves that no other
    token can win (else that row gets the full float32 logits).
    """
    screen = dec.unembed_screen
    if screen is None or h.shape[0] == 0 or (stats is not None and not stats.worth_it):
        head = dec.full_unembed()  # argmax per row block: the logits never leave the cache as one tensor
        return blocked(lambda hb: head(hb).argmax(dim=-1), h, row_block(dec.device))
    c = SCREEN_CANDIDATES

    def screened(hb: Tensor) -> Tensor:
        vals, idx = top_tokens(screen(hb.to(torch.bfloat16)), c + 1)  # the (c+1)-th bounds all the others
        cand = idx[:, :c]
        exact = exact_logits(dec, hb, cand)
        tokens = pick(cand, exact)
        best_val = exact.max(dim=-1).values
        outside = vals[:, c].float()
        err = screen_error_bound(hb.shape[1], hb.norm(dim=-1), dec.unembed_row_norm_max,
                                 torch.maximum(outside.abs(), best_val.abs()))
        ok = outside + err < best_val
        if stats is not None:
            stats.rows += ok.numel()
        if not bool(ok.all()):
            bad = (~ok).nonzero().flatten()
            if stats is not None:
                stats.fallbacks += bad.numel()
            tokens[bad] = dec.full_unembed()(hb[bad]).argmax(dim=-1)
        return tokens

    return blocked(screened, h, CPU_ROW_BLOCK)


def greedy_low(dec: Decoder, h: Tensor, rescore: int) -> Tensor:
    """Greedy pick from lower-precision logits; the top ``rescore`` candidates re-scored in float32."""

    def choose(hb: Tensor) -> Tensor:
        logits = dec.unembed(hb.to(dec.dtype))
        if rescore <= 1:
            return logits.max(dim=-1).indices
        cand = top_tokens(logits, rescore)[1]
        return pick(cand, exact_logits(dec, hb, cand))

    return blocked(choose, h, row_block(dec.device))


def next_tokens(dec: Decoder, h_last: Tensor, config: GenerationConfig, generators, rescore: int,
                stats: ScreenStats | None = None) -> Tensor:
    """The next token of every row from the last positions' residuals ``h_last [B, d]``.

    Sampling draws from float32 logits with the reference engine's sampler and per-row generators: the same
    token as the reference loop unless a row's uniform draw falls within the logits' rounding difference of a
    boundary of the cumulative distribution (probability at most the total variation between the two
    distributions, about ``1e-6`` per step in float32; ``tests/test_fast_engine.py`` bounds it)."""
    h = dec.final_norm(h_last)
    if config.greedy:
        if dec.dtype == torch.float32:
            return greedy_f32(dec, h, stats)
        return greedy_low(dec, h, rescore)
    head = dec.full_unembed()
    logits = blocked(lambda hb: head(hb.to(dec.dtype)).float(), h, row_block(dec.device))
    return select_next(logits, config, generators)
