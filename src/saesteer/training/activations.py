"""Collect activations at one hook site as training data for an SAE: a float32 tensor ``[N, d_in]``.

Two sources:

* ``sample_activations``: text the model samples itself (temperature 1 from BOS, rows of ``seq_len``
  positions), through the generation engine (``saesteer.engine.generate_ids``: batched, KV-cached). The
  activations are read at the hook *while* generating, so the model is run once per token.
* ``text_activations`` / ``file_activations``: given documents, tokenised, cut into windows that each
  start with BOS, right-padded per batch, and run through the model once; the forward pass stops at
  the hook (the layers above it and the unembedding are never computed).

Which positions are kept:

* padding positions are dropped (they are not text);
* BOS positions (every position whose token is BOS, including a BOS the model samples between stories)
  are dropped by default. OpenAI excluded nothing, but the BOS residual is an outlier (at
  ``blocks.2.hook_resid_post`` of stories260K its norm is about 1.8x a typical token's, and it is the same
  vector in every row at position 0): it would spend latents and skew the data-based initialisation on a
  position that carries no text. ``keep_bos=True`` keeps them.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from saesteer.engine import GenerationConfig, generate_ids
from saesteer.errors import SaesteerError
from saesteer.models.hook_sites import site_width
from saesteer.models.loading import as_loaded
from saesteer.steering.hooks import hooks
from saesteer.training.config import DataConfig

__all__ = ["sample_activations", "text_activations", "file_activations", "ids_activations", "collect_activations",
           "held_out"]

HELD_OUT_SEED = 1_000_003
"""Added to the seed of the self-sampled training text for the held-out text (another sample, same model)."""


class _StopForward(Exception):
    """Raised by the recording hook once the activation is captured: nothing above the hook is needed."""


def _loaded(model, tokenizer=None):
    return as_loaded(model, tokenizer)


def _check_hook(module, hook_name: str) -> int:
    return site_width(module, hook_name)  # one-line SaesteerError for unknown names or layers


def _progress(total: int, desc: str, enabled: bool):
    return tqdm(total=total, desc=desc, unit="tok", unit_scale=True, disable=not enabled, dynamic_ncols=True)


# --------------------------------------------------------------------------- self-generated text

class _GenerationRecorder:
    """Edit fn + ``on_step`` pair for one ``generate_ids`` call over prompts that are all ``[BOS]``.

    The engine calls the edit with ``[B, 1, d]`` for the token fed at each step (first BOS, then the token
    sampled at the step before, which ``on_step`` reports), so each call's tokens are known without a
    second forward pass. Kept rows are copied into ``out`` from ``filled`` on.
    """

    def __init__(self, out: Tensor, filled: int, rows: int, bos: int, keep_bos: bool, bar):
        self.out, self.filled, self.rows = out, filled, rows
        self.bos, self.keep_bos, self.bar = bos, keep_bos, bar
        self.fed = torch.full((rows,), bos, dtype=torch.long)
        self.calls = 0

    def on_step(self, rows: Tensor, tokens: Tensor) -> None:
        if rows.numel() != self.rows:
            raise SaesteerError("the generation engine dropped rows while sampling activations; report this bug")
        self.fed = tokens.to("cpu", torch.long)

    def __call__(self, act: Tensor):
        if act.dim() != 3 or act.shape[0] != self.rows or act.shape[1] != 1:
            raise SaesteerError(
                f"the generation engine passed a {tuple(act.shape)} activation, expected [{self.rows}, 1, d];"
                " report this bug"
            )
        self.calls += 1
        act = act[:, 0].detach().to("cpu", torch.float32)
        if not self.keep_bos:
            act = act[self.fed != self.bos]
        n = min(act.shape[0], self.out.shape[0] - self.filled)
        self.out[self.filled:self.filled + n] = act[:n]
        self.filled += n
        self.bar.update(n)
        return None


def sample_activations(
    model,
    hook_name: str,
    n_tokens: int,
    *,
    seq_len: int = 128,
    batch_size: int = 512,
    temperature: float = 1.0,
    seed: int = 0,
    keep_bos: bool = False,
    progress: bool = True,
) -> Tensor:
    """Activations ``[n_tokens, d]`` (float32, CPU) at ``hook_name`` on text the model samples itself.

    Each row starts at BOS and samples ``seq_len`` tokens at ``temperature`` (the model runs on positions
    ``0..seq_len-1``); ``batch_size`` rows are sampled at a time. Sampling goes on past an end-of-text
    token, as in training on packed documents. The same ``seed`` gives the same tokens and activations.
    Result rows are ordered by batch, then position, then row (training shuffles them anyway).
    ``model``: a ``LoadedModel``, a model path/name, or an HF causal LM (its config must name a BOS id).
    """
    lm = _loaded(model)
    module = lm.model
    if n_tokens < 1:
        raise SaesteerError(f"n_tokens must be at least 1, got {n_tokens}")
    if seq_len < 2:
        raise SaesteerError(f"seq_len must be at least 2, got {seq_len}")
    if batch_size < 1:
        raise SaesteerError(f"batch_size must be at least 1, got {batch_size}")
    if not temperature > 0:
        raise SaesteerError(f"sampling activations needs a temperature above 0, got {temperature}")
    if lm.bos_token_id is None:
        raise SaesteerError("this model has no start token (neither BOS nor end-of-text) to sample from; use"
                            " text_activations()")
    max_pos = getattr(getattr(module, "config", None), "max_position_embeddings", None)
    if max_pos is not None and seq_len > max_pos:
        raise SaesteerError(f"seq_len {seq_len} exceeds the model's {max_pos} positions")
    width = _check_hook(module, hook_name)
    kept_per_row = seq_len if keep_bos else seq_len - 1
    out = torch.empty(n_tokens, width, dtype=torch.float32)
    filled, call = 0, 0
    config = GenerationConfig(max_new_tokens=seq_len, temperature=temperature, stop_at_eos=False)
    with _progress(n_tokens, f"sampling {hook_name}", progress) as bar:
        while filled < n_tokens:
            rows = min(batch_size, -(-(n_tokens - filled) // kept_per_row))
            rec = _GenerationRecorder(out, filled, rows, lm.bos_token_id, keep_bos, bar)
            # One seed per call: the engine seeds row r from (seed, r), so equal seeds would repeat rows.
            cfg = replace(config, seed=seed * 65_537 + call)
            generate_ids(module, [[lm.bos_token_id]] * rows, cfg, edits=[(hook_name, rec)],
                         on_step=rec.on_step, pad_token_id=lm.pad_token_id, batch_size=rows)
            if rec.calls != seq_len:
                raise SaesteerError(
                    f"the generation engine ran {rec.calls} steps, expected {seq_len}; report this bug"
                )
            filled, call = rec.filled, call + 1
    return out


# --------------------------------------------------------------------------- given text

def _run_to_hook(module, hook_name: str, batches, bos: int | None, keep_bos: bool, progress: bool) -> Tensor:
    """Run ``(ids [b, t], mask [b, t])`` batches up to the hook; keep unmasked (and non-BOS) positions."""
    device = next(module.parameters()).device
    keeps = [mask.bool() if keep_bos or bos is None else mask.bool() & (ids != bos) for ids, mask in batches]
    captured: list[Tensor] = []

    def grab(act: Tensor):
        captured.append(act.detach())
        raise _StopForward

    out: list[Tensor] = []
    bar = _progress(sum(int(k.sum()) for k in keeps), f"activations {hook_name}", progress)
    with bar, torch.inference_mode(), hooks(module, [(hook_name, grab)]):
        for (ids, mask), keep in zip(batches, keeps):
            captured.clear()
            try:
                module(input_ids=ids.to(device), attention_mask=mask.long().to(device), use_cache=False)
            except _StopForward:
                pass
            if not captured:
                raise SaesteerError(f"the forward pass never reached hook {hook_name!r}")
            picked = captured[0].to("cpu", torch.float32)[keep]
            out.append(picked)
            bar.update(picked.shape[0])
    return torch.cat(out)


def ids_activations(
    model,
    ids: Tensor,
    hook_name: str,
    *,
    attention_mask: Tensor | None = None,
    batch_size: int = 64,
    keep_bos: bool = False,
    progress: bool = True,
) -> Tensor:
    """Activations ``[N, d]`` (float32, CPU) at ``hook_name`` for token ids ``[B, T]`` (right-padded).

    Positions where ``attention_mask`` is 0 are dropped, and BOS positions unless ``keep_bos``; rows are
    run ``batch_size`` at a time, and each forward pass stops at the hook.
    """
    lm = _loaded(model)
    _check_hook(lm.model, hook_name)
    if ids.dim() != 2 or ids.shape[0] == 0 or ids.shape[1] == 0:
        raise SaesteerError(f"token ids must be a non-empty [batch, positions] tensor, got {tuple(ids.shape)}")
    mask = torch.ones_like(ids) if attention_mask is None else attention_mask
    if mask.shape != ids.shape:
        raise SaesteerError("attention_mask must have the shape of the token ids")
    batches = [(ids[s:s + batch_size], mask[s:s + batch_size]) for s in range(0, ids.shape[0], batch_size)]
    return _run_to_hook(lm.model, hook_name, batches, lm.bos_token_id, keep_bos, progress)


def _windows(docs: Iterable[Sequence[int]], bos: int | None, seq_len: int) -> list[list[int]]:
    """Cut each document into rows of at most ``seq_len`` tokens, each starting with BOS (when there is one)."""
    step = seq_len - 1 if bos is not None else seq_len
    rows = []
    for doc in docs:
        for start in range(0, len(doc), step):
            piece = list(doc[start:start + step])
            rows.append(([bos] if bos is not None else []) + piece)
    return rows


def text_activations(
    model,
    texts: Iterable[str],
    hook_name: str,
    *,
    tokenizer=None,
    seq_len: int = 128,
    batch_size: int = 64,
    keep_bos: bool = False,
    progress: bool = True,
) -> Tensor:
    """Activations ``[N, d]`` (float32, CPU) at ``hook_name`` over the tokens of ``texts`` (documents).

    Each document is tokenised without special tokens and cut into windows of ``seq_len`` positions, each
    starting with BOS (so a long document loses its context at window starts). Rows are sorted by length
    and right-padded per batch; padding and (by default) BOS positions are dropped.
    """
    if isinstance(texts, (str, bytes)):
        raise SaesteerError("texts must be a list of documents; use file_activations() for a file")
    lm = _loaded(model, tokenizer)
    if seq_len < 2:
        raise SaesteerError(f"seq_len must be at least 2, got {seq_len}")
    docs = [lm.encode(t, prepend_bos=False) for t in texts if t]
    rows = sorted(_windows(docs, lm.bos_token_id, seq_len), key=len)
    if not rows:
        raise SaesteerError("the texts contain no tokens")
    _check_hook(lm.model, hook_name)
    batches = []  # similar lengths together (rows are sorted), each batch as wide as its longest row
    for start in range(0, len(rows), batch_size):
        group = rows[start:start + batch_size]
        ids = torch.full((len(group), len(group[-1])), lm.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(group):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        batches.append((ids, mask))
    return _run_to_hook(lm.model, hook_name, batches, lm.bos_token_id, keep_bos, progress)


def file_activations(
    model,
    path: str | os.PathLike,
    hook_name: str,
    *,
    separator: str | None = None,
    tokenizer=None,
    seq_len: int = 128,
    batch_size: int = 64,
    keep_bos: bool = False,
    progress: bool = True,
) -> Tensor:
    """``text_activations`` over a UTF-8 text file; ``separator`` splits it into documents (None: one)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise SaesteerError(f"text file {str(path)!r} does not exist")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SaesteerError(f"text file {str(path)!r} is not UTF-8 text") from None
    docs = [d for d in (text.split(separator) if separator else [text]) if d.strip()]
    if not docs:
        raise SaesteerError(f"text file {str(path)!r} is empty")
    return text_activations(model, docs, hook_name, tokenizer=tokenizer, seq_len=seq_len, batch_size=batch_size,
                            keep_bos=keep_bos, progress=progress)


# --------------------------------------------------------------------------- train-sae's data

def held_out(acts: Tensor, n: int) -> tuple[Tensor, Tensor | None]:
    """``(training, held-out tail of n rows)``; no held-out part when it would take over half of ``acts``."""
    if n <= 0 or n * 2 > acts.shape[0]:
        return acts, None
    return acts[:-n], acts[-n:]


def collect_activations(model, hook_name: str, config: DataConfig | None = None, *, seed: int = 0,
                        progress: bool = True, **settings) -> tuple[Tensor, Tensor | None, dict]:
    """``(training activations, held-out activations or None, source)`` as ``saesteer train-sae`` collects them.

    From ``text_file`` (the held-out part is its end), else from text the model samples (the held-out part is
    another sample, seed ``seed + HELD_OUT_SEED``). ``source`` says which, for the training record. The
    settings are a :class:`DataConfig` and/or its fields as keywords.
    """
    c = DataConfig.build(config, settings, caller="collect_activations")
    if c.text_file:
        acts = file_activations(model, c.text_file, hook_name, separator=c.separator, seq_len=c.seq_len,
                                progress=progress)
        acts, held = held_out(acts, c.eval_tokens)
        return acts[:c.tokens], held, {"text": str(c.text_file), "separator": c.separator}
    acts = sample_activations(model, hook_name, c.tokens, seq_len=c.seq_len, temperature=c.temperature, seed=seed,
                              progress=progress)
    held = (sample_activations(model, hook_name, c.eval_tokens, seq_len=c.seq_len, temperature=c.temperature,
                               seed=seed + HELD_OUT_SEED, progress=progress) if c.eval_tokens else None)
    return acts, held, {"self_generate": True, "temperature": c.temperature}
