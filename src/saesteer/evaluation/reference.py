"""Reference text for feature facts: token sequences (each after a BOS) cut from a file or sampled from the model."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from saesteer.engine import GenerationConfig, generate_ids
from saesteer.errors import SaesteerError

SAMPLE_CHUNK = 128
"""Rows per sampling call; fixed, so that sampled reference text does not depend on memory or batch size."""


@dataclass
class Reference:
    """Reference token sequences (each starting with BOS, all the same length) and what they are."""

    tokens: Tensor
    """``[n, length + 1]`` int64."""
    description: dict


def file_sha(path: Path) -> str:
    """Short SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def reference_from_text(lm, text: str, *, length: int = 64, source: str = "text") -> Reference:
    """Split ``text`` into chunks of ``length`` tokens, each after a BOS (a short tail is dropped unless it is
    all there is)."""
    ids = lm.encode(text, prepend_bos=False) if text else []
    if not ids:
        raise SaesteerError("the reference text is empty; pass a file with some text in it")
    if lm.bos_token_id is None:
        raise SaesteerError("the model has no start token (neither BOS nor end-of-text), which reference chunks"
                            " start with")
    length = min(length, len(ids))
    n = len(ids) // length
    rows = [[lm.bos_token_id] + ids[i * length:(i + 1) * length] for i in range(n)]
    desc = {"source": source, "length": length, "sequences": n,
            "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]}
    return Reference(torch.tensor(rows, dtype=torch.long), desc)


def sampled_description(*, samples: int, length: int, seed: int, temperature: float) -> dict:
    """What identifies sampled reference text."""
    return {"source": "sampled", "length": length, "sequences": samples, "seed": seed, "temperature": temperature}


def sample_reference(lm, *, samples: int = 256, length: int = 64, seed: int = 0, engine: str = "auto",
                     progress: bool = False, temperature: float = 1.0) -> Reference:
    """``samples`` sequences of ``length`` tokens that the model samples from BOS (at ``temperature``,
    seeded; ``stop_at_eos`` off, so all have the same length)."""
    if lm.bos_token_id is None:
        raise SaesteerError("the model has no start token (neither BOS nor end-of-text) to sample reference text from")
    rows: list[list[int]] = []
    bar = tqdm(total=samples, desc="sampling reference text", unit="seq", disable=not progress, leave=False)
    for c, start in enumerate(range(0, samples, SAMPLE_CHUNK)):
        n = min(SAMPLE_CHUNK, samples - start)
        config = GenerationConfig(max_new_tokens=length, temperature=temperature, seed=seed * 100_003 + c,
                                  stop_at_eos=False)
        out = generate_ids(lm.model, [[lm.bos_token_id]] * n, config, eos_token_id=lm.eos_token_id,
                           pad_token_id=lm.pad_token_id, engine=engine)
        rows.extend([lm.bos_token_id] + list(r) for r in out)
        bar.update(n)
    bar.close()
    desc = sampled_description(samples=samples, length=length, seed=seed, temperature=temperature)
    return Reference(torch.tensor(rows, dtype=torch.long), desc)


def reference_key(*, reference_text: str | os.PathLike | None, samples: int, length: int, seed: int,
                  temperature: float = 1.0) -> dict:
    """What identifies a reference text before it is built (for the cache key)."""
    if reference_text is not None:
        return {"source": "file", "sha256": file_sha(Path(reference_text)), "length": length}
    return {"source": "sampled", "sequences": samples, "length": length, "seed": seed, "temperature": temperature}
