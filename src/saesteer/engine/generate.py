"""Batched generation over the unmodified Hugging Face forward: the reference semantics.

Prompts of different lengths are left-padded with an attention mask and position ids, so each row gives
the tokens it would give alone. Greedy decoding takes the argmax; sampling uses temperature and top-p
with one random generator per row (seeded from ``(seed, row)``), so a row's text does not depend on
what else is in the batch. Rows that emit EOS leave the batch (their KV cache rows and per-row edit
state are dropped), and the loop ends when every row is done.

The engine knows nothing of tokenizers: it takes and returns token ids.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from saesteer.errors import SaesteerError
from saesteer.models.hook_sites import EditFn
from saesteer.steering.hooks import hooks


@dataclass(frozen=True)
class GenerationConfig:
    """How to continue a prompt."""

    max_new_tokens: int = 10
    temperature: float = 0.0
    """0 means greedy (argmax); above 0, sample from softmax(logits / temperature)."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p."""
    seed: int | None = None
    """Seed for sampling; row r uses a generator seeded from (seed, r)."""
    stop_at_eos: bool = True
    use_cache: bool = True
    """False recomputes the whole sequence at every step (slow; the check that caching changes nothing)."""

    def __post_init__(self):
        if self.max_new_tokens < 0:
            raise SaesteerError("max_new_tokens must be >= 0")
        if not (self.temperature >= 0 and self.temperature < float("inf")):
            raise SaesteerError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise SaesteerError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


class _RowTracked:
    """Wraps an edit fn so per-row state follows rows as they leave the batch."""

    def __init__(self, fn: EditFn):
        self.fn = fn

    def __call__(self, act: Tensor):
        return self.fn(act)

    def select_rows(self, index: Tensor) -> None:
        if hasattr(self.fn, "select_rows"):
            self.fn = self.fn.select_rows(index)


def left_pad(prompts: Sequence[Sequence[int]], pad_token_id: int, device) -> tuple[Tensor, Tensor]:
    """``[B, L]`` ids and attention mask, prompts aligned to the right."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise SaesteerError("every prompt needs at least one token (the BOS token, by default)")
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
        mask[b, width - len(p):] = 1
    return ids.to(device), mask.to(device)


def positions_from_mask(mask: Tensor) -> Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)


def row_generators(seed: int | None, rows: int) -> list[torch.Generator]:
    base = 0 if seed is None else int(seed)
    gens = []
    for r in range(rows):
        g = torch.Generator()
        g.manual_seed((base * 1_000_003 + r * 7_919 + 12_345) % (2**63))
        gens.append(g)
    return gens


def check_finite(values: Tensor, step: int) -> None:
    """Refuse to go on when the logits (or the last hidden states) of any row are inf/NaN: their argmax
    would be token 0 ("!!!!!!!!!!" in GPT-2), a result that means nothing and must not be stored.

    An inf or NaN anywhere makes the sum inf or NaN, so a finite sum settles it with one cheap reduction (over
    a 50k vocabulary the elementwise test costs as much as the unembedding); only a sum that is not finite
    (which large finite values can also give, by overflow) gets the elementwise test."""
    if not bool(torch.isfinite(values.sum())) and not bool(torch.isfinite(values).all()):
        raise SaesteerError(f"the model's outputs became infinite or NaN at new token {step + 1}, usually because a"
                            " clamp value is too large for the model's dtype; use smaller values")


def first_argmax(logits: Tensor, chunk: int = 64) -> Tensor:
    """``logits.argmax(-1)`` for ``[B, V]``, the first index on ties, several times faster over a large vocabulary.

    ``argmax`` costs several times a max-reduction. Here one reduction gives every ``chunk``-wide block's max; the
    first block whose max is the row's max holds the row's first maximal index, found by an argmax over that
    block alone.
    """
    b, V = logits.shape
    n_full = V // chunk
    if n_full < 2:
        return logits.argmax(dim=-1)
    block_max = logits[:, : n_full * chunk].view(b, n_full, chunk).amax(dim=-1)
    if V > n_full * chunk:
        block_max = torch.cat([block_max, logits[:, n_full * chunk:].amax(dim=-1, keepdim=True)], dim=1)
    block = block_max.argmax(dim=-1)
    cols = block[:, None] * chunk + torch.arange(chunk, device=logits.device)
    vals = logits.gather(1, cols.clamp(max=V - 1)).masked_fill(cols >= V, float("-inf"))
    return block * chunk + vals.argmax(dim=-1)


def select_next(logits: Tensor, config: GenerationConfig, generators: list[torch.Generator] | None) -> Tensor:
    """Next token per row from ``logits [B, V]``: argmax, or a temperature/top-p sample per row."""
    if config.greedy:
        return first_argmax(logits)
    scaled = logits.float() if config.temperature == 1 else logits.float() / config.temperature  # x / 1 == x
    probs = torch.softmax(scaled, dim=-1)
    if config.top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < config.top_p  # the token that crosses top_p stays
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
    # Inverse-CDF sampling: one uniform draw per row from that row's generator (fast, and independent
    # of batch composition).
    u = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in generators]).to(logits.device)
    return inverse_cdf(probs, u)


CDF_BLOCK_BYTES = 2 << 20
"""Rows of float64 cumulative sums built at a time by :func:`inverse_cdf` (they stay in the CPU's cache)."""


def inverse_cdf(probs: Tensor, u: Tensor) -> Tensor:
    """Per row of ``probs [B, V]``, the first token whose float64 cumulative sum reaches ``u`` times the row's
    total. Rows are independent, so they are done a few at a time: over a 50k vocabulary the float64 sums of
    a whole batch do not fit in the cache and cost twice as much (same values either way)."""
    rows = max(1, CDF_BLOCK_BYTES // (8 * probs.shape[-1])) if probs.device.type == "cpu" else probs.shape[0]
    picked = []
    for i in range(0, probs.shape[0], rows):
        cdf = probs[i:i + rows].double().cumsum(-1)
        picked.append(torch.searchsorted(cdf, (u[i:i + rows] * cdf[:, -1])[:, None]).squeeze(-1))
    return torch.cat(picked).clamp(max=probs.shape[-1] - 1)


def _cache_kwarg(model: nn.Module) -> str:
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


@torch.no_grad()
def generate_ids(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    config: GenerationConfig = GenerationConfig(),
    *,
    edits: Sequence[tuple[str, EditFn]] = (),
    eos_token_id: int | None = None,
    pad_token_id: int = 0,
    on_step: Callable[[Tensor, Tensor], None] | None = None,
) -> list[list[int]]:
    """Generate up to ``max_new_tokens`` ids per prompt; each row is cut after its first EOS (kept).

    ``edits`` are ``(hook_name, fn)`` pairs applied at every computed position. ``on_step(rows, tokens)`` is
    called after every step with the original row indices still running and their new tokens (streaming).
    """
    model.eval()
    device = next(model.parameters()).device
    n = len(prompts)
    ids, mask = left_pad(prompts, pad_token_id, device)
    tracked = [(name, _RowTracked(fn)) for name, fn in edits]
    generators = None if config.greedy else row_generators(config.seed, n)
    out: list[list[int]] = [[] for _ in range(n)]
    active = torch.arange(n, device=device)
    cache_kw = _cache_kwarg(model)
    with hooks(model, tracked):
        cache = None
        step_ids = ids
        for step in range(config.max_new_tokens):
            logits, cache = _next_logits(model, config, ids, mask, step_ids, cache, cache_kw)
            check_finite(logits, step)
            gens = None if generators is None else [generators[int(r)] for r in active]
            nxt = select_next(logits, config, gens)
            for r, t in zip(active.tolist(), nxt.tolist()):
                out[r].append(t)
            if on_step is not None:
                on_step(active.clone(), nxt.clone())
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            mask = torch.cat([mask, torch.ones_like(nxt)[:, None]], dim=1)
            step_ids = nxt[:, None]
            if config.stop_at_eos and eos_token_id is not None:
                keep = (nxt != eos_token_id).nonzero().flatten()
                if keep.numel() == 0:
                    break
                if keep.numel() < nxt.numel():
                    active, ids, mask, step_ids = active[keep], ids[keep], mask[keep], step_ids[keep]
                    _drop_rows(cache, tracked, keep)
    return out


def _next_logits(model: nn.Module, config: GenerationConfig, ids: Tensor, mask: Tensor, step_ids: Tensor, cache,
                 cache_kw: str):
    """The last position's logits ``[B, V]`` (through the KV cache, created on the first step, or a full
    forward without it) and the cache."""
    positions = positions_from_mask(mask)
    if not config.use_cache:
        result = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False)
        return result.logits[:, -1, :], cache
    if cache is None:
        from transformers import DynamicCache

        cache = DynamicCache(config=model.config)
        step_pos = positions
    else:
        step_pos = positions[:, -1:]
    result = model(input_ids=step_ids, attention_mask=mask, position_ids=step_pos, use_cache=True,
                   **{cache_kw: cache})
    return result.logits[:, -1, :], cache


def _drop_rows(cache, tracked, keep: Tensor) -> None:
    """Rows ``keep`` stay in the KV cache and in every edit's per-row state."""
    if cache is not None:
        cache.batch_select_indices(keep)
    for _, fn in tracked:
        fn.select_rows(keep)


@torch.no_grad()
def full_forward_argmax(model: nn.Module, prompt: Sequence[int], max_new_tokens: int, *, edits=(), eos_token_id=None) -> list[int]:
    """Step-by-step argmax over full forward passes of one unpadded sequence: the ground truth for tests."""
    device = next(model.parameters()).device
    seq = list(prompt)
    out = []
    with hooks(model, edits):
        for _ in range(max_new_tokens):
            logits = model(input_ids=torch.tensor([seq], device=device), use_cache=False).logits[0, -1]
            t = int(logits.argmax())
            out.append(t)
            seq.append(t)
            if eos_token_id is not None and t == eos_token_id:
                break
    return out
