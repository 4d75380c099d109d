"""Per-feature facts of an SAE on a model, computed once and cached on disk.

For every feature ``j``:

* **logit lens**: the tokens that its decoder direction promotes most and least, through the model's
  final norm gain and unembedding (``models.hook_sites.unembed_directions``). Directions read at
  ``mlp.hook_post`` are first mapped to the residual stream through the MLP's output projection.
* **firing tokens and words**: the tokens on which it is most active in a reference text, the words
  those tokens belong to (content words only, see ``text_metrics``), its maximum activation there, and
  how often it fires. BOS tokens are skipped (their activation is an outlier no SAE models).
* **examples**: where those top activations are (index into the reference tokens), for feature cards.

The reference text is a file (split into chunks of ``length`` tokens, each after a BOS), or by default
text the model samples itself from BOS (``samples`` sequences of ``length`` tokens, at ``temperature``, 1 by
default, seeded).

The cache lives under ``$SAESTEER_CACHE`` (default ``~/.cache/saesteer``) in ``feature_facts/KEY/``, with
``KEY`` a hash of the model's and SAE's fingerprints, the hook, the reference and the settings:
``facts.safetensors`` (tensors) and ``facts.json`` (words, token texts, metadata, written last).

>>> facts = feature_facts(steerer.lm, steerer.sae, steerer.hook_name)      # doctest: +SKIP
>>> facts[123].firing_words, facts[123].lens_top[0].text                    # doctest: +SKIP

The pieces live in their own modules (``fingerprint``, ``reference``, ``activations``, ``facts_table``,
``token_text``); this one computes the table and caches it. Their public names are re-exported here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from pathlib import Path

import torch
from torch import Tensor

from saesteer.errors import SaesteerError
from saesteer.evaluation.activations import (firing_stats, hook_activations, logit_lens, reference_activations,
                                             residual_directions)
from saesteer.evaluation.facts_table import FACTS_VERSION, FactsTable, FeatureFacts, TokenScore, table_digest
from saesteer.evaluation.fingerprint import model_fingerprint, sae_fingerprint
from saesteer.evaluation.reference import (Reference, reference_from_text, reference_key, sample_reference,
                                           sampled_description)
from saesteer.evaluation.text_metrics import content_words, token_words
from saesteer.evaluation.token_text import token_text_fn, tokens_in_context
from saesteer.io import atomic_path, default_cache_dir

timing_log = logging.getLogger("saesteer.timing")

__all__ = ["DEFAULT_SETTINGS", "FACTS_VERSION", "FactsTable", "FeatureFacts", "Reference", "TokenScore", "compute_facts",
           "default_cache_dir", "facts_key", "feature_facts", "firing_stats", "hook_activations", "logit_lens",
           "model_fingerprint", "reference_from_text", "reference_key", "residual_directions", "sae_fingerprint",
           "sample_reference", "tokens_in_context"]


def _cached_sample(lm, directory: Path, *, samples: int, length: int, seed: int, engine: str, progress: bool,
                   use_cache: bool, temperature: float = 1.0) -> Reference:
    """:func:`sample_reference`, kept per model (so facts of another SAE on the same model reuse the text)."""
    from safetensors.torch import load_file, save_file

    temp = "" if temperature == 1.0 else f"-t{temperature!r}"
    name = f"{model_fingerprint(lm.model)}-{samples}x{length}-seed{seed}{temp}-v{FACTS_VERSION}.safetensors"
    path = directory / name
    if use_cache and path.is_file():
        try:
            tokens = load_file(str(path))["tokens"].long()
            return Reference(tokens, sampled_description(samples=samples, length=length, seed=seed,
                                                         temperature=temperature))
        except (OSError, ValueError, KeyError):
            pass
    reference = sample_reference(lm, samples=samples, length=length, seed=seed, engine=engine, progress=progress,
                                 temperature=temperature)
    if use_cache:
        with _cache_write(directory):
            directory.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                save_file({"tokens": reference.tokens.int().contiguous()}, str(tmp))
    return reference


ACTIVATIONS_CACHE_MAX = 1 << 30
"""Largest hook activations on a reference text (bytes) kept in the cache (GPT-2 small: 51 MB)."""


def _cached_activations(lm, hook: str, tokens: Tensor, directory: Path, width: int) -> Tensor | None:
    """The hook's activations on the reference ``tokens`` (``reference_activations``), kept per (model, hook,
    device, reference text), so that a later SAE at the same hook skips the model's forward; None where they
    would be too large to keep (``firing_stats`` then runs the forward itself). ``width``: the hook's (the
    SAE's ``d_in``)."""
    from safetensors.torch import load_file, save_file

    p = next(lm.model.parameters())
    if tokens.numel() * width * p.element_size() > ACTIVATIONS_CACHE_MAX:
        return None
    text = hashlib.sha256(tokens.long().contiguous().numpy().tobytes()).hexdigest()[:16]
    path = directory / f"{model_fingerprint(lm.model)}-{hook}-{p.device.type}-{text}-v{FACTS_VERSION}.safetensors"
    if path.is_file():
        try:
            return load_file(str(path))["activations"].to(p.device)
        except (OSError, ValueError, KeyError):
            pass
    acts = reference_activations(lm.model, hook, tokens)
    with _cache_write(directory):
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file({"activations": acts.contiguous().cpu()}, str(tmp))
    return acts


@contextlib.contextmanager
def _cache_write(folder: Path):
    """A cache that cannot be written costs the next run time, not this run's result: say so and go on."""
    try:
        yield
    except OSError as exc:
        logging.getLogger("saesteer").warning(f"note: could not cache feature facts in {folder} ({exc.strerror or exc});"
                                              " set SAESTEER_CACHE to a writable folder to reuse them")


BLOCK = 1024
"""Facts are computed in blocks of this many features (the logit lens's chunk): a block is computed the same
way whether alone or with all the others, so facts of some blocks equal the full table's rows."""


def feature_blocks(features, d_sae: int, block: int | None = None) -> list[int] | None:
    """The blocks (of ``block`` features, default :data:`BLOCK`) holding ``features`` (sorted), or None when
    they are all the SAE's blocks (or ``features`` is None)."""
    block = block or BLOCK
    if features is None:
        return None
    blocks = sorted({int(f) // block for f in features})
    return None if len(blocks) == -(-d_sae // block) else blocks


def _scatter(part: Tensor, rows: Tensor, n: int, fill) -> Tensor:
    out = torch.full((n, *part.shape[1:]), fill, dtype=part.dtype)
    out[rows] = part
    return out


@contextlib.contextmanager
def _timed(what: str):
    """Log how long ``what`` took to the ``saesteer.timing`` logger (debug level: the first-sweep benchmark
    turns it on to split a sweep process's time)."""
    t0 = time.perf_counter()
    yield
    timing_log.debug("%s: %.3f s (ended at %.3f)", what, time.perf_counter() - t0, time.time())


def block_rows(blocks: list[int], block: int, d_sae: int) -> Tensor:
    """The features of ``blocks`` (of ``block`` features each), in order."""
    return torch.cat([torch.arange(b * block, min((b + 1) * block, d_sae)) for b in blocks])


def _stats_and_lens(lm, sae, hook: str, tokens: Tensor, *, n_lens: int, n_examples: int, progress: bool,
                    blocks: list[int] | None, block: int,
                    activations: Tensor | None) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Firing statistics and logit lens of every feature, or of ``blocks`` only (other rows empty)."""
    F = sae.d_sae
    skip = [t for t in (lm.bos_token_id,) if t is not None]
    rows = None if blocks is None else block_rows(blocks, block, F)
    with _timed("feature facts, activation statistics"):
        stats = firing_stats(lm.model, sae, hook, tokens, skip_ids=skip, k=n_examples, progress=progress,
                             columns=rows, activations=activations)
    with _timed("feature facts, logit lens"):
        lens = logit_lens(lm.model, sae, hook, n=n_lens, chunk=block,
                          starts=None if blocks is None else [b * block for b in blocks])
    if rows is None:
        return stats, lens
    fills = {"example_vals": 0.0, "example_index": -1, "max_act": 0.0, "frequency": 0.0}
    stats = {k: _scatter(v, rows, F, fills[k]) for k, v in stats.items()}
    lens = {k: _scatter(v, rows, F, -1 if k.endswith("ids") else 0.0) for k, v in lens.items()}
    return stats, lens


def _reference_words(lm, tokens: Tensor) -> list[str | None]:
    """The word of every reference token (flat, row after row), each cut in its row's context."""
    flat_words: list[str | None] = []
    for row in tokens.tolist():
        flat_words.extend(token_words(tokens_in_context(lm.decode, row)))
    return flat_words


def _firing_tokens_and_words(stats: dict[str, Tensor], flat_ids: list[int], flat_words: list[str | None], *,
                             n_tokens: int, n_words: int) -> tuple[Tensor, Tensor, list[list[str]]]:
    """Each feature's distinct tokens (``fire_ids``/``fire_vals``) and content words among its top activations,
    most active first."""
    ex_idx = stats["example_index"].tolist()
    ex_val = stats["example_vals"].tolist()
    F = len(ex_idx)
    fire_ids = torch.full((F, n_tokens), -1, dtype=torch.int32)
    fire_vals = torch.zeros(F, n_tokens)
    words: list[list[str]] = []
    for j in range(F):
        seen_t: dict[int, float] = {}
        seen_w: list[str] = []
        for idx, val in zip(ex_idx[j], ex_val[j]):
            if idx < 0:
                break
            t = flat_ids[idx]
            if t not in seen_t and len(seen_t) < n_tokens:
                seen_t[t] = val
            w = flat_words[idx]
            if w is not None and w not in seen_w and len(seen_w) < n_words and content_words([w]):
                seen_w.append(w)
        if seen_t:
            fire_ids[j, :len(seen_t)] = torch.tensor(list(seen_t.keys()), dtype=torch.int32)
            fire_vals[j, :len(seen_t)] = torch.tensor(list(seen_t.values()))
        words.append(seen_w)
    return fire_ids, fire_vals, words


def compute_facts(lm, sae, hook: str, reference: Reference, *, n_tokens: int = 16, n_words: int = 16,
                  n_lens: int = 16, n_examples: int = 32, progress: bool = False, blocks: list[int] | None = None,
                  block: int | None = None, activations: Tensor | None = None) -> FactsTable:
    """Compute the :class:`FactsTable` of ``sae`` at ``hook`` on ``lm`` (a ``LoadedModel``) and ``reference``.

    ``blocks``: only the features of these blocks of ``block`` features (the first sweep of a new SAE then
    pays for the features it sweeps, not for all of them); the other rows are empty (never fired, no
    tokens) and the computed rows equal the full table's exactly. ``activations``: the hook's activations on
    the reference (``activations.reference_activations``), when already at hand."""
    tokens = reference.tokens
    block = block or BLOCK
    stats, lens = _stats_and_lens(lm, sae, hook, tokens, n_lens=n_lens, n_examples=n_examples, progress=progress,
                                  blocks=blocks, block=block, activations=activations)
    with _timed("feature facts, tokens and words"):
        fire_ids, fire_vals, words = _firing_tokens_and_words(
            stats, tokens.reshape(-1).tolist(), _reference_words(lm, tokens), n_tokens=n_tokens, n_words=n_words)
        used = set(fire_ids[fire_ids >= 0].tolist()) | set(lens["lens_top_ids"].reshape(-1).tolist()) | set(
            lens["lens_bottom_ids"].reshape(-1).tolist())
        used.discard(-1)
        text_of, memo = token_text_fn(lm)
        for t in used:
            text_of(int(t))
    tensors = {"max_act": stats["max_act"], "frequency": stats["frequency"], "fire_ids": fire_ids,
               "fire_vals": fire_vals, **lens, "example_index": stats["example_index"],
               "example_vals": stats["example_vals"], "reference_tokens": tokens.int()}
    tensors = {k: v.contiguous().cpu() for k, v in tensors.items()}
    meta = {"version": FACTS_VERSION, "model": lm.name, "model_fingerprint": model_fingerprint(lm.model),
            "sae": sae.cfg.source, "sae_fingerprint": sae_fingerprint(sae), "hook": hook,
            "reference": reference.description, "d_sae": sae.d_sae,
            "settings": {"n_tokens": n_tokens, "n_words": n_words, "n_lens": n_lens, "n_examples": n_examples},
            "digest": table_digest(tensors, words)}
    if blocks is not None:
        meta["blocks"], meta["block"] = list(blocks), block
    return FactsTable(tensors, words, {int(k): v for k, v in memo.items() if k in used}, meta)


DEFAULT_SETTINGS = {"n_tokens": 16, "n_words": 16, "n_lens": 16, "n_examples": 32}


def facts_key(model, sae, hook: str, *, reference_text: str | os.PathLike | None = None, samples: int = 256,
              length: int = 64, seed: int = 0, temperature: float = 1.0, features=None,
              **settings) -> tuple[str, dict]:
    """The cache key of these facts (and the full settings): cheap, computed without building the facts.
    ``features``: facts of the blocks holding them only (:func:`feature_blocks`); all blocks is the full key."""
    unknown = set(settings) - set(DEFAULT_SETTINGS)
    if unknown:
        raise TypeError(f"unknown settings: {sorted(unknown)}")
    full = {**DEFAULT_SETTINGS, **settings}
    key_obj = {"version": FACTS_VERSION, "model": model_fingerprint(model), "sae": sae_fingerprint(sae),
               "hook": hook, "reference": reference_key(reference_text=reference_text, samples=samples,
                                                        length=length, seed=seed, temperature=temperature),
               "settings": full}
    blocks = feature_blocks(features, sae.d_sae)
    if blocks is not None:
        key_obj["blocks"] = blocks
    return hashlib.sha256(json.dumps(key_obj, sort_keys=True).encode()).hexdigest()[:24], full


def feature_facts(lm, sae=None, hook: str | None = None, *, reference_text: str | os.PathLike | None = None,
                  samples: int = 256, length: int = 64, seed: int = 0, cache_dir: str | os.PathLike | None = None,
                  use_cache: bool = True, progress: bool = False, engine: str = "auto", temperature: float = 1.0,
                  features=None, cache_activations: bool = True, **settings) -> FactsTable:
    """The :class:`FactsTable` of ``sae`` at ``hook`` on ``lm``, from the cache or computed (and cached).

    ``lm``: a ``LoadedModel`` or a ``Steerer`` (then ``sae``/``hook`` default to its own).
    ``reference_text``: a text file; None samples ``samples`` x ``length`` tokens from the model (seeded, at
    ``temperature``).
    ``settings``: ``n_tokens``, ``n_words``, ``n_lens``, ``n_examples`` (see :func:`compute_facts`).
    ``features``: only the blocks of features holding these are computed (the rows of the others are
    empty); the facts of those features equal the full table's.
    ``cache_activations``: keep the hook's activations on the reference text in the cache too, so that another
    SAE at the same hook of the same model skips the model's forward (same facts either way).
    """
    if hasattr(lm, "lm") and hasattr(lm, "sae"):  # a Steerer
        sae = sae if sae is not None else lm.sae
        hook = hook or lm.hook_name
        lm = lm.lm
    if sae is None or not hook:
        raise SaesteerError("feature facts need an SAE and its hook site")
    if reference_text is not None and not Path(reference_text).is_file():
        raise SaesteerError(f"reference text file not found: {reference_text}")
    key, defaults = facts_key(lm.model, sae, hook, reference_text=reference_text, samples=samples, length=length,
                              seed=seed, temperature=temperature, features=features, **settings)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = folder / "feature_facts" / key
    if use_cache and FactsTable.exists(folder):
        try:
            table = FactsTable.load(folder)
            if table.meta.get("key") == key:
                return table
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache entry is recomputed
    with _timed("feature facts, reference text"):
        if reference_text is not None:
            text = Path(reference_text).read_text(encoding="utf-8", errors="replace")
            reference = reference_from_text(lm, text, length=length, source=str(reference_text))
        else:
            reference = _cached_sample(lm, folder.parent.parent / "reference", samples=samples, length=length,
                                       seed=seed, engine=engine, progress=progress, use_cache=use_cache,
                                       temperature=temperature)
    acts = None
    if use_cache and cache_activations:
        with _timed("feature facts, hook activations"):
            acts = _cached_activations(lm, hook, reference.tokens, folder.parent.parent / "activations",
                                       sae.cfg.d_in)
    with _timed("feature facts, computed"):
        table = compute_facts(lm, sae, hook, reference, progress=progress,
                              blocks=feature_blocks(features, sae.d_sae), activations=acts, **defaults)
    table.meta["key"] = key
    if use_cache:
        with _cache_write(folder):
            table.save(folder)
    return table
