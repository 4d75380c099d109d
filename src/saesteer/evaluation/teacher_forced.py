"""Teacher-forced passes over generated text: the next-token distributions with and without clamps, and their KL."""

from __future__ import annotations

import inspect
from typing import Sequence

import torch

from saesteer.errors import SaesteerError
from saesteer.models.hook_sites import vocab_size
from saesteer.steering.clamp import SAEClamp, as_clamps
from saesteer.steering.hooks import hooks


def accepts(model, name: str) -> bool:
    """Whether ``model.forward`` takes a keyword ``name``."""
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


@torch.no_grad()
def continuation_log_probs(model, prompt: list[int], conts: list[list[int]], pad_token_id: int,
                            edits=()) -> torch.Tensor:
    """Log-softmax ``[B, max_len, V]`` of the next-token distribution before each continuation token,
    teacher-forced (right-padded rows; positions past a row's length are junk)."""
    device = next(model.parameters()).device
    width = max(len(c) for c in conts)
    ids = torch.full((len(conts), len(prompt) + width), pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, c in enumerate(conts):
        seq = prompt + list(c)
        ids[b, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[b, :len(seq)] = 1
    kwargs = {"input_ids": ids.to(device), "attention_mask": mask.to(device), "use_cache": False}
    keep = width + 1
    if accepts(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = keep
    with hooks(model, edits):
        logits = model(**kwargs).logits
    # The last ``width + 1`` positions start at len(prompt) - 1, which predicts the first continuation token.
    logits = logits[:, -keep:-1] if logits.shape[1] >= keep else logits[:, len(prompt) - 1:-1]
    return torch.log_softmax(logits.float(), dim=-1)


@torch.no_grad()
def next_token_kl(lm, sae, hook: str, prompt_tokens: Sequence[int], continuations: Sequence[Sequence[int]],
                  rows: Sequence, *, mode: str = "delta", max_logits: int = 1 << 24) -> list[list[float]]:
    """``KL(p_steered || p_unsteered)`` (nats) at every generated position of each continuation.

    Row ``b`` continues ``prompt_tokens`` with ``continuations[b]``; its steered distribution clamps
    ``rows[b]`` (anything ``as_clamps`` takes, e.g. ``{feature: value}``; ``[]`` clamps nothing) at ``hook``
    in ``mode``, at every position, as generation does. Both distributions are teacher-forced along the
    given (steered) text: position ``t`` conditions on the prompt and continuation tokens ``< t``.
    Direction and meaning: see the module docstring. Values are clipped at 0 (float round-off).
    """
    model = getattr(lm, "model", lm)
    pad = int(getattr(lm, "pad_token_id", 0) or 0)
    prompt = [int(t) for t in prompt_tokens]
    if len(rows) != len(continuations):
        raise SaesteerError(f"{len(rows)} clamp sets for {len(continuations)} continuations")
    out: list[list[float]] = [[] for _ in continuations]
    todo = [i for i, c in enumerate(continuations) if len(c) > 0]
    if not todo:
        return out
    vocab = vocab_size(model)
    width = max(len(continuations[i]) for i in todo) + 1
    per_call = max(1, max_logits // (width * vocab))
    for s in range(0, len(todo), per_call):
        chunk = todo[s:s + per_call]
        conts = [[int(t) for t in continuations[i]] for i in chunk]
        lp_u = continuation_log_probs(model, prompt, conts, pad)
        edit = SAEClamp(sae, rows=[as_clamps(rows[i]) for i in chunk], mode=mode)
        lp_s = continuation_log_probs(model, prompt, conts, pad, edits=[(hook, edit)])
        kl = (lp_s.exp() * (lp_s - lp_u)).sum(-1).clamp(min=0)  # [B, max_len]
        del lp_u, lp_s
        for b, i in enumerate(chunk):
            out[i] = [float(v) for v in kl[b, :len(conts[b])]]
    return out
