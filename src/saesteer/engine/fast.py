"""The fast decoder: the reference engine's semantics in a tight decode loop over pre-packed weights.

What it does, and why (one module per job):

* It re-runs the model's forward itself (``gpt2_decoder``, ``llama_decoder``) on the Hugging Face
  module's own weights, packed once per (model, dtype, device) into the fastest layout (``packs``; oneDNN
  on CPU), with a preallocated KV cache (``kvcache``) and attention written as batched matmuls.
* Rows are processed in chunks (``batching``: sized from the cache and free memory unless given), shortest
  prompts first; within a chunk, prompts are left-padded as in the reference engine, and rows leave the
  batch at EOS (their cache rows are compacted away and ``select_rows`` is called on edit functions that
  have it).
* Edits run at the TransformerLens sites between the decoder's parts. SAE clamps whose SAE has a fused
  form take it (``fused_clamp``, ``topk_screen``); any other callable is called with ``[B, T, d]``.
* Rows with the same token prefix (every row of a sweep, at its BOS step) compute the blocks below the
  first edit once per group, including the SAE encode of a clamp placed right at that boundary.
* The next token (``token_choice``): float32 greedy is exact (on CPU a bfloat16 screen with a rigorous
  error bound, then float32 scores of the few candidates); bfloat16 greedy re-scores its top candidates in
  float32; sampling uses the reference engine's sampler.

Every optimisation is a field of ``options.FastOptions``. ``generate_ids_fast`` is what the dispatcher in
``engine/__init__`` calls; the result equals ``engine.generate.generate_ids`` (same tokens in float32).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from saesteer.engine.batching import CPU_MAX_BATCH, choose_batch_size
from saesteer.engine.fused_clamp import FusedClamp, chains, resolve_edits, select_rows
from saesteer.engine.generate import GenerationConfig, check_finite, left_pad, positions_from_mask, row_generators
from saesteer.engine.kernels import Decoder, Share, neg_inf_bias
from saesteer.engine.options import FastOptions
from saesteer.engine.packs import clear_cache, decoder_for, supports, unsupported_reason
from saesteer.engine.token_choice import ScreenStats, next_tokens
from saesteer.errors import SaesteerError

__all__ = ["supports", "unsupported_reason", "generate_ids_fast", "decoder_for", "clear_cache", "choose_batch_size",
           "FastOptions", "CPU_MAX_BATCH"]


def _groups(keys: Tensor) -> tuple[Tensor, Tensor, int]:
    """Group equal rows of ``keys [B, ...]``: (first row of each group [G], group of each row [B], G)."""
    _, inverse = torch.unique(keys, dim=0 if keys.dim() > 1 else None, return_inverse=True)
    G = int(inverse.max()) + 1 if inverse.numel() else 0
    B = keys.shape[0]
    rep = torch.full((G,), B, dtype=torch.long, device=keys.device)
    rep.scatter_reduce_(0, inverse, torch.arange(B, device=keys.device), reduce="amin")
    return rep, inverse, G


@torch.no_grad()
def generate_ids_fast(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    config: GenerationConfig = GenerationConfig(),
    *,
    edits: Sequence[tuple[str, Callable]] = (),
    eos_token_id: int | None = None,
    pad_token_id: int = 0,
    on_step: Callable[[Tensor, Tensor], None] | None = None,
    dtype: torch.dtype | str | None = None,
    options: FastOptions = FastOptions(),
    batch_size: int | None = None,
    share_prefixes: bool | None = None,
    rescore: int | None = None,
    static_steps: bool | None = None,
) -> list[list[int]]:
    """``engine.generate.generate_ids`` on the fast decoder; see the module docstring.

    ``dtype``: compute dtype (default: the model's). ``options``: the engine's switches
    (:class:`FastOptions`); ``batch_size``, ``share_prefixes``, ``rescore`` and ``static_steps`` override
    the fields of the same names. ``static_steps`` decodes with static shapes, captured as a CUDA graph on
    GPU (default: on CUDA when every edit is a fused SAE clamp or there are none; on CPU it runs eagerly).
    """
    given = {"batch_size": batch_size, "share_prefixes": share_prefixes, "rescore": rescore,
             "static_steps": static_steps}
    options = replace(options, **{k: v for k, v in given.items() if v is not None})
    model = getattr(model, "model", model) if not isinstance(model, nn.Module) else model
    model.eval()
    n = len(prompts)
    if n == 0:
        return []
    if any(len(p) == 0 for p in prompts):
        raise SaesteerError("every prompt needs at least one token (the BOS token, by default)")
    dec = decoder_for(model, dtype, options)
    resolved = resolve_edits(model, edits, dec.dtype, options)
    out: list[list[int]] = [[] for _ in range(n)]
    if config.max_new_tokens == 0:
        return out
    longest = max(len(p) for p in prompts)
    _check_positions(dec, longest, config.max_new_tokens)
    static = _static_steps(options, dec, resolved)
    batch_size = options.batch_size
    if batch_size is None:
        sae_width = max([fn.pack.enc.W_dec.shape[0] for _, _, fn in resolved if isinstance(fn, FusedClamp)] + [0])
        batch_size = choose_batch_size(dec, n, longest, config.max_new_tokens, sae_width=sae_width)
    generators = None if config.greedy else row_generators(config.seed, n)
    order = sorted(range(n), key=lambda r: len(prompts[r]))
    cache = None
    for start in range(0, n, batch_size):
        chunk = order[start:start + batch_size]
        index = torch.tensor(chunk, dtype=torch.long, device=dec.device)
        chunk_edits = [(layer, kind, select_rows(fn, index)) for layer, kind, fn in resolved]
        run = _Chunk(dec, [prompts[r] for r in chunk], chunk, config, chunk_edits, cache, options, static)
        cache = None  # the chunk holds the only reference: a cache too small for it is freed first
        run.generate(eos_token_id, pad_token_id, on_step, generators, out, options.rescore)
        cache, run = run.cache, None
    return out


def _check_positions(dec: Decoder, longest: int, max_new_tokens: int) -> None:
    """Refuse a prompt and continuation longer than the model's positions."""
    if dec.max_positions is not None and longest + max_new_tokens - 1 > dec.max_positions:
        raise SaesteerError(
            f"prompt ({longest} tokens) + max_new_tokens ({max_new_tokens}) exceed the model's"
            f" {dec.max_positions} positions"
        )


def _static_steps(options: FastOptions, dec: Decoder, resolved) -> bool:
    """Whether to decode with static shapes: as asked, else on CUDA when every edit is a fused SAE clamp."""
    all_fused = all(isinstance(fn, FusedClamp) for _, _, fn in resolved)
    if options.static_steps is None:
        return dec.device.type == "cuda" and all_fused
    if options.static_steps and not all_fused:
        raise SaesteerError("static_steps needs every edit to be an SAE clamp (other callables may not be static)")
    return options.static_steps


class _Chunk:
    """One chunk of rows: prefill, then one decode step per token (eager, static, or a CUDA graph)."""

    def __init__(self, dec: Decoder, prompts, rows: list[int], config: GenerationConfig, edits, cache,
                 options: FastOptions, static: bool):
        self.dec, self.prompts, self.config = dec, prompts, config
        self.row_ids = torch.tensor(rows, dtype=torch.long, device=dec.device)  # original row of each batch row
        self.edits = edits
        self.chains = chains(edits)
        self.boundary = dec.first_edit_boundary(self.chains)
        self.share_ok = options.share_prefixes and self.boundary > 0 and not static
        self.share_max_groups = options.share_max_groups
        self.lazy_exit = static or all(isinstance(fn, FusedClamp) for _, _, fn in edits)
        self.static = static
        self.cache = cache
        self.graph = None
        self.screen_stats = ScreenStats()

    def generate(self, eos_token_id, pad_token_id, on_step, generators, out, rescore: int) -> None:
        dec, config = self.dec, self.config
        device = dec.device
        ids, mask = left_pad(self.prompts, pad_token_id, device)
        B, W = ids.shape
        steps = config.max_new_tokens
        self.W = W
        max_len = W + steps - 1 if steps > 1 else W
        old, self.cache = self.cache, None
        if old is not None and not old.fits(dec.n_layers, B, dec.n_kv_heads, max_len, dec.head_dim, dec.dtype,
                                            device):
            old = None  # freed before the new buffers are taken
        self.cache = dec.new_cache(B, max_len, old)
        old = None
        positions = positions_from_mask(mask)  # [B, W]
        valid = mask.bool()
        # prefill mask: causal, pads hidden (a pad position sees itself only, so nothing is all -inf)
        causal = torch.ones(W, W, dtype=torch.bool, device=device).tril_()
        eye = torch.eye(W, dtype=torch.bool, device=device)
        prefill_bias = neg_inf_bias((causal & valid[:, None, :]) | eye).unsqueeze(1)  # [B, 1, W, W]
        self.key_bias = torch.zeros(B, self.cache.max_len, dtype=torch.float32, device=device)
        self.key_bias[:, :W] = neg_inf_bias(valid)
        self.next_pos = positions[:, -1] + 1  # [B]
        self.group = None
        share = None
        if self.share_ok:
            rep, self.group, G = _groups(torch.cat([ids, mask], dim=1))
            if G < B:
                share = Share(rep, self.group, self.boundary)
        h_last = dec.forward(ids, positions, self.cache, 0, prefill_bias, self.chains, share)
        self.cache.length = W

        alive = torch.ones(B, dtype=torch.bool, device=device)
        for step in range(steps):
            check_finite(h_last, step)
            gens = None if generators is None else [generators[int(r)] for r in self.row_ids.tolist()]
            nxt = next_tokens(dec, h_last, config, gens, rescore, self.screen_stats)
            live = None if bool(alive.all()) else alive.nonzero().flatten()
            live_rows = self.row_ids if live is None else self.row_ids[live]
            live_tok = nxt if live is None else nxt[live]
            for r, t in zip(live_rows.tolist(), live_tok.tolist()):
                out[r].append(t)
            if on_step is not None:
                on_step(live_rows.clone(), live_tok.clone())
            if step == steps - 1:
                break
            if config.stop_at_eos and eos_token_id is not None:
                alive &= nxt != eos_token_id
                n_alive = int(alive.sum())
                if n_alive == 0:
                    break
                n_dead = alive.numel() - n_alive
                if n_dead and not self.static and (not self.lazy_exit or n_dead * 16 >= alive.numel()):
                    keep = alive.nonzero().flatten()
                    self._compact(keep)
                    nxt, alive = nxt[keep], alive[keep]
            h_last = self._static_step(nxt, step) if self.static else self._step(nxt, step)

    def _compact(self, keep: Tensor) -> None:
        """Rows ``keep`` stay (cache rows, positions, masks, groups, edit state); the others leave."""
        self.cache.select_rows(keep)
        self.next_pos, self.key_bias, self.row_ids = self.next_pos[keep], self.key_bias[keep], self.row_ids[keep]
        if self.group is not None:
            self.group = self.group[keep]
        self.chains = {k: ch.select_rows(keep) for k, ch in self.chains.items()}

    def _step(self, nxt: Tensor, step: int) -> Tensor:
        """Eager decode step: the cache is read up to the filled length; equal prefixes share lower blocks."""
        S = self.W + step + 1
        share = None
        if self.share_ok and self.group is not None:
            rep, group, G = _groups(self.group * (self.dec.vocab_size + 1) + nxt)
            self.group = group
            if G <= self.share_max_groups * nxt.numel():
                share = Share(rep, group, self.boundary)
            elif G == nxt.numel():
                self.group = None  # every row is on its own from here on
        bias = self.key_bias[:, None, None, :S]
        h = self.dec.forward(nxt[:, None], self.next_pos[:, None], self.cache, self.W + step, bias, self.chains, share)
        self.cache.length = S
        self.next_pos = self.next_pos + 1
        return h

    # ---- static shapes: every step has the same shapes, so on CUDA it is captured once and replayed
    def _static_step(self, nxt: Tensor, step: int) -> Tensor:
        if step == 0:
            self._static_setup()
        self.tok.copy_(nxt)
        if self.graph is not None:
            self.graph.replay()
            h = self.h_out
        else:
            h = self._static_body()
        self.cache.length = self.W + step + 1
        return h

    def _static_setup(self) -> None:
        dec, cache, W = self.dec, self.cache, self.W
        B = self.row_ids.numel()
        cache.k[:, :B, :, :, W:].zero_()  # unwritten slots are masked; zeros keep 0 * garbage out of attention
        cache.v[:, :B, :, W:].zero_()
        self.tok = torch.zeros(B, dtype=torch.long, device=dec.device)
        self.pos = self.next_pos.clone()
        self.slot = torch.tensor(W, dtype=torch.long, device=dec.device)
        self.bias = self.key_bias.clone()
        self.bias[:, W:] = -math.inf
        self.bias = self.bias[:, None, None, :]  # [B, 1, 1, max_len]
        self.static_chains = {k: ch.as_static() for k, ch in self.chains.items()}
        if dec.device.type == "cuda":
            self._capture()

    def _static_body(self) -> Tensor:
        self.bias.index_fill_(3, self.slot, 0.0)
        h = self.dec.forward_static(self.tok[:, None], self.pos[:, None], self.cache, self.slot, self.bias,
                                    self.static_chains)
        self.pos.add_(1)
        self.slot.add_(1)
        return h

    def _capture(self) -> None:
        """Capture one static step as a CUDA graph (after warm-up runs on a side stream); on any failure,
        keep stepping eagerly with the same static shapes."""
        saved = (self.pos.clone(), self.slot.clone(), self.bias.clone())
        try:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):
                    self._static_body()
            torch.cuda.current_stream().wait_stream(stream)
            self._restore(saved)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.h_out = self._static_body()
            self.graph = graph
        except Exception:  # capture is an optimisation: fall back to eager static steps
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.graph = None
        self._restore(saved)

    def _restore(self, saved) -> None:
        self.pos.copy_(saved[0])
        self.slot.copy_(saved[1])
        self.bias.copy_(saved[2])
