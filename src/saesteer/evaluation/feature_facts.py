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
text the model samples itself from BOS (``samples`` sequences of ``length`` tokens, temperature 1, seeded).

The cache lives under ``$SAESTEER_CACHE`` (default ``~/.cache/saesteer``) in ``feature_facts/KEY/``, with
``KEY`` a hash of the model's and SAE's fingerprints, the hook, the reference and the settings:
``facts.safetensors`` (tensors) and ``facts.json`` (words, token texts, metadata, written last).

>>> facts = feature_facts(steerer.lm, steerer.sae, steerer.hook_name)      # doctest: +SKIP
>>> facts[123].firing_words, facts[123].lens_top[0].text                    # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from saesteer.evaluation.text_metrics import Targets, content_words, token_words
from saesteer.io import atomic_path, atomic_write_json

FACTS_VERSION = 2
_SAMPLE_CHUNK = 128
"""Rows per sampling call; fixed, so that sampled reference text does not depend on memory or batch size."""


# --------------------------------------------------------------------------- fingerprints
def _digest_tensor(h, name: str, t: Tensor, max_elements: int = 1 << 16) -> None:
    t = t.detach()
    h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
    flat = t.reshape(-1)
    step = max(1, -(-flat.numel() // max_elements))
    sample = flat[::step].contiguous().cpu()
    h.update(sample.view(torch.uint8).numpy().tobytes())


_ARCH_KEYS = ("model_type", "n_head", "num_attention_heads", "num_key_value_heads", "layer_norm_epsilon",
              "rms_norm_eps", "rope_theta", "activation_function", "hidden_act", "scale_attn_weights",
              "scale_attn_by_inverse_layer_idx")


def model_fingerprint(model) -> str:
    """A short hash of a model's architecture constants and weights (names, shapes, dtypes and a strided
    sample of every tensor's values). Equal for the same weights on any device or path; a different
    checkpoint or dtype changes it."""
    h = hashlib.sha256()
    config = getattr(model, "config", None)
    arch = {k: getattr(config, k) for k in _ARCH_KEYS if config is not None and hasattr(config, k)}
    h.update(json.dumps(arch, sort_keys=True, default=str).encode())
    for name, p in model.named_parameters():
        _digest_tensor(h, name, p)
    return h.hexdigest()[:16]


def sae_fingerprint(sae) -> str:
    """A short hash of an SAE's maths (activation, k, normalisation) and weights; the hook is not part of it."""
    h = hashlib.sha256()
    c = sae.cfg
    h.update(json.dumps([c.d_in, c.d_sae, c.activation, c.k, c.normalize, c.apply_b_dec_to_input]).encode())
    for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
        t = getattr(sae, name, None)
        if t is not None:
            _digest_tensor(h, name, t)
    return h.hexdigest()[:16]


def default_cache_dir() -> Path:
    """``$SAESTEER_CACHE`` or ``~/.cache/saesteer`` (read on every call)."""
    env = os.environ.get("SAESTEER_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "saesteer"


# --------------------------------------------------------------------------- reference text
@dataclass
class Reference:
    """Reference token sequences (each starting with BOS, all the same length) and what they are."""

    tokens: Tensor
    """``[n, length + 1]`` int64."""
    description: dict


def _file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def reference_from_text(lm, text: str, *, length: int = 64, source: str = "text") -> Reference:
    """Split ``text`` into chunks of ``length`` tokens, each after a BOS (a short tail is dropped unless it is
    all there is)."""
    from saesteer.errors import SaesteerError

    ids = lm.encode(text, prepend_bos=False) if text else []
    if not ids:
        raise SaesteerError("the reference text is empty; pass a file with some text in it")
    if lm.bos_token_id is None:
        raise SaesteerError("the model has no BOS token, which reference chunks start with")
    length = min(length, len(ids))
    n = len(ids) // length
    rows = [[lm.bos_token_id] + ids[i * length:(i + 1) * length] for i in range(n)]
    desc = {"source": source, "length": length, "sequences": n,
            "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]}
    return Reference(torch.tensor(rows, dtype=torch.long), desc)


def sample_reference(lm, *, samples: int = 256, length: int = 64, seed: int = 0, engine: str = "auto",
                     progress: bool = False) -> Reference:
    """``samples`` sequences of ``length`` tokens that the model samples from BOS (temperature 1, seeded;
    ``stop_at_eos`` off, so all have the same length)."""
    from tqdm.auto import tqdm

    from saesteer.engine import GenerationConfig, generate_ids

    rows: list[list[int]] = []
    bar = tqdm(total=samples, desc="sampling reference text", unit="seq", disable=not progress, leave=False)
    for c, start in enumerate(range(0, samples, _SAMPLE_CHUNK)):
        n = min(_SAMPLE_CHUNK, samples - start)
        config = GenerationConfig(max_new_tokens=length, temperature=1.0, seed=seed * 100_003 + c, stop_at_eos=False)
        out = generate_ids(lm.model, [[lm.bos_token_id]] * n, config, eos_token_id=lm.eos_token_id,
                           pad_token_id=lm.pad_token_id, engine=engine)
        rows.extend([lm.bos_token_id] + list(r) for r in out)
        bar.update(n)
    bar.close()
    desc = {"source": "sampled", "length": length, "sequences": samples, "seed": seed, "temperature": 1.0}
    return Reference(torch.tensor(rows, dtype=torch.long), desc)


def _cached_sample(lm, directory: Path, *, samples: int, length: int, seed: int, engine: str, progress: bool,
                   use_cache: bool) -> Reference:
    """:func:`sample_reference`, kept per model (so facts of another SAE on the same model reuse the text)."""
    from safetensors.torch import load_file, save_file

    name = f"{model_fingerprint(lm.model)}-{samples}x{length}-seed{seed}-v{FACTS_VERSION}.safetensors"
    path = directory / name
    if use_cache and path.is_file():
        try:
            tokens = load_file(str(path))["tokens"].long()
            desc = {"source": "sampled", "length": length, "sequences": samples, "seed": seed, "temperature": 1.0}
            return Reference(tokens, desc)
        except (OSError, ValueError, KeyError):
            pass
    reference = sample_reference(lm, samples=samples, length=length, seed=seed, engine=engine, progress=progress)
    if use_cache:
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file({"tokens": reference.tokens.int().contiguous()}, str(tmp))
    return reference


def reference_key(*, reference_text: str | os.PathLike | None, samples: int, length: int, seed: int) -> dict:
    """What identifies a reference text before it is built (for the cache key)."""
    if reference_text is not None:
        return {"source": "file", "sha256": _file_sha(Path(reference_text)), "length": length}
    return {"source": "sampled", "sequences": samples, "length": length, "seed": seed, "temperature": 1.0}


# --------------------------------------------------------------------------- facts
@dataclass(frozen=True)
class TokenScore:
    """A token with a number: its activation (firing tokens) or its logit (logit lens)."""

    id: int
    text: str
    value: float


@dataclass(frozen=True)
class FeatureFacts:
    """What one feature is about."""

    feature: int
    max_activation: float
    """Its largest activation on the reference text (0 for a feature that never fired there)."""
    frequency: float
    """Share of reference tokens (BOS excluded) on which it is active."""
    firing_tokens: list[TokenScore] = field(default_factory=list)
    """Distinct tokens of its top activations, most active first (value: the activation)."""
    firing_words: list[str] = field(default_factory=list)
    """Distinct content words those tokens belong to, most active first."""
    lens_top: list[TokenScore] = field(default_factory=list)
    """Tokens its decoder direction promotes most (value: the logit)."""
    lens_bottom: list[TokenScore] = field(default_factory=list)
    """Tokens it suppresses most."""

    def targets(self) -> Targets:
        """What counts as on target for this feature in ``text_metrics``."""
        return Targets.of(self.firing_words, [t.id for t in self.firing_tokens], [t.id for t in self.lens_top])

    def to_dict(self) -> dict:
        return asdict(self)


class FactsTable:
    """Facts of every feature of one SAE: ``table[j]`` -> :class:`FeatureFacts`.

    Tensors (``[d_sae, ...]``): ``max_act``, ``frequency``, ``fire_ids``/``fire_vals`` (distinct firing
    tokens, id -1 = none), ``lens_top_ids``/``lens_top_vals``, ``lens_bottom_ids``/``lens_bottom_vals``,
    ``example_index``/``example_vals`` (top activations as flat indices into ``reference_tokens``, -1 = none),
    ``reference_tokens`` ``[n, length + 1]``.
    """

    TENSORS = ("max_act", "frequency", "fire_ids", "fire_vals", "lens_top_ids", "lens_top_vals", "lens_bottom_ids",
               "lens_bottom_vals", "example_index", "example_vals", "reference_tokens")

    def __init__(self, tensors: dict[str, Tensor], words: list[list[str]], token_texts: dict[int, str], meta: dict):
        self.tensors = tensors
        self.words = words
        self.token_texts = token_texts
        self.meta = meta
        self._targets: dict[int, Targets] = {}

    def __len__(self) -> int:
        return int(self.tensors["max_act"].shape[0])

    @property
    def digest(self) -> str:
        """Hash of the content: equal tables give equal digests (checked when sweeps are resumed or merged)."""
        return self.meta["digest"]

    @property
    def max_activation(self) -> Tensor:
        return self.tensors["max_act"]

    def _scores(self, ids_key: str, vals_key: str, j: int) -> list[TokenScore]:
        ids, vals = self.tensors[ids_key][j].tolist(), self.tensors[vals_key][j].tolist()
        return [TokenScore(i, self.token_texts.get(i, ""), v) for i, v in zip(ids, vals) if i >= 0]

    def __getitem__(self, j: int) -> FeatureFacts:
        j = int(j)
        if not 0 <= j < len(self):
            raise IndexError(f"feature {j} is outside [0, {len(self)})")
        return FeatureFacts(
            feature=j,
            max_activation=float(self.tensors["max_act"][j]),
            frequency=float(self.tensors["frequency"][j]),
            firing_tokens=self._scores("fire_ids", "fire_vals", j),
            firing_words=list(self.words[j]),
            lens_top=self._scores("lens_top_ids", "lens_top_vals", j),
            lens_bottom=self._scores("lens_bottom_ids", "lens_bottom_vals", j),
        )

    def targets(self, j: int) -> Targets:
        """``self[j].targets()``, memoised (cheap to call per sweep row)."""
        t = self._targets.get(j)
        if t is None:
            ids = self.tensors["fire_ids"][j].tolist()
            lens = self.tensors["lens_top_ids"][j].tolist()
            t = Targets.of(self.words[j], [i for i in ids if i >= 0], [i for i in lens if i >= 0])
            if len(self._targets) > 100_000:
                self._targets.clear()
            self._targets[j] = t
        return t

    def examples(self, j: int, context: int = 8) -> list[tuple[float, list[int], int]]:
        """Top activations of feature ``j``: ``(activation, tokens around it, index of the token in them)``."""
        ref = self.tensors["reference_tokens"]
        width = ref.shape[1]
        out = []
        for idx, val in zip(self.tensors["example_index"][j].tolist(), self.tensors["example_vals"][j].tolist()):
            if idx < 0:
                continue
            s, p = divmod(idx, width)
            lo = max(0, p - context)
            out.append((val, ref[s, lo:p + 2].tolist(), p - lo))
        return out

    # ------------------------------------------------------------- disk
    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``facts.safetensors`` then ``facts.json`` into ``directory`` (each atomically)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(directory / "facts.safetensors") as tmp:
            save_file({k: v.contiguous() for k, v in self.tensors.items()}, str(tmp))
        atomic_write_json(directory / "facts.json", {
            "meta": self.meta, "words": self.words,
            "token_texts": {str(k): v for k, v in sorted(self.token_texts.items())},
        })
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "FactsTable":
        from safetensors.torch import load_file

        directory = Path(directory)
        info = json.loads((directory / "facts.json").read_text(encoding="utf-8"))
        tensors = load_file(str(directory / "facts.safetensors"))
        return cls(tensors, info["words"], {int(k): v for k, v in info["token_texts"].items()}, info["meta"])

    @staticmethod
    def exists(directory: str | os.PathLike) -> bool:
        d = Path(directory)
        return (d / "facts.json").is_file() and (d / "facts.safetensors").is_file()


def _table_digest(tensors: dict[str, Tensor], words: list[list[str]]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].contiguous()
        h.update(f"{k}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    h.update(json.dumps(words).encode())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- computing
def _residual_directions(model, hook: str, directions: Tensor) -> Tensor:
    """Decoder directions as residual-stream directions (``mlp.hook_post`` goes through the MLP's output)."""
    from saesteer.models.hook_sites import hook_site

    site = hook_site(model, hook)
    if site.kind != "mlp.hook_post":
        return directions
    proj = site._block().get_submodule(site.arch.mlp_out_proj)
    w = proj.weight.to(directions.dtype)
    return directions @ w if type(proj).__name__ == "Conv1D" else directions @ w.T


@torch.no_grad()
def logit_lens(model, sae, hook: str, *, n: int = 16, chunk: int = 1024) -> dict[str, Tensor]:
    """Top and bottom ``n`` tokens of every feature's decoder direction: ``lens_{top,bottom}_{ids,vals}``."""
    W = sae.W_dec
    tops, topv, bots, botv = [], [], [], []
    for s in range(0, W.shape[0], chunk):
        d = _residual_directions(model, hook, W[s:s + chunk].to(next(model.parameters()).dtype))
        from saesteer.models.hook_sites import unembed_directions

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
    from saesteer.steering.hooks import hooks

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


@torch.no_grad()
def firing_stats(model, sae, hook: str, tokens: Tensor, *, skip_ids: Sequence[int] = (), k: int = 32,
                 seqs_per_forward: int = 16, progress: bool = False) -> dict[str, Tensor]:
    """Each feature's ``k`` largest activations over ``tokens [n, T]`` (``example_vals``/``example_index``,
    flat indices, -1 where it fired fewer times), ``max_act`` and ``frequency``. Tokens in ``skip_ids``
    (BOS) are left out."""
    from tqdm.auto import tqdm

    F = sae.d_sae
    n, T = tokens.shape
    k = min(k, n * T)
    dev = sae.device  # the running top-k stays where the SAE is (a GPU sends back [k, F] once, at the end)
    run_vals = torch.zeros(k, F, device=dev)
    run_idx = torch.full((k, F), -1, dtype=torch.long, device=dev)
    active = torch.zeros(F, dtype=torch.long, device=dev)
    counted = 0
    chunk = max(64, (1 << 25) // F)  # tokens per encode: [chunk, F] floats stay near 128 MB
    skip = torch.tensor(sorted(set(int(s) for s in skip_ids)), dtype=torch.long)
    bar = tqdm(total=n, desc="feature activations", unit="seq", disable=not progress, leave=False)
    for s in range(0, n, seqs_per_forward):
        block = tokens[s:s + seqs_per_forward]
        acts = hook_activations(model, hook, block)
        x_all = acts.reshape(-1, acts.shape[-1])
        flat_ids = block.reshape(-1)
        keep_all = ~torch.isin(flat_ids, skip) if skip.numel() else torch.ones_like(flat_ids, dtype=torch.bool)
        for c in range(0, x_all.shape[0], chunk):
            x = x_all[c:c + chunk].to(dev)
            keep = keep_all[c:c + chunk].to(dev)
            z = sae.encode(x).float()
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


def _token_text_fn(lm):
    memo: dict[int, str] = {}

    def text(i: int) -> str:
        s = memo.get(i)
        if s is None:
            s = memo[i] = lm.decode([i])
        return s

    return text, memo


def tokens_in_context(decode, ids: Sequence[int]) -> list[str]:
    """The text each token adds to the decoded sequence (``decode(ids[:i+1])`` minus ``decode(ids[:i])``).

    Decoding tokens one by one loses what depends on context (SentencePiece drops the leading space of
    a lone token, so ``"▁lady"`` alone is ``"lady"``); this keeps it, so words are cut where the text's
    spaces are. A token that leaves a partial character (byte-level BPE) falls back to its lone text.
    """
    out: list[str] = []
    prev = ""
    for i in range(len(ids)):
        cur = decode(ids[:i + 1])
        out.append(cur[len(prev):] if cur.startswith(prev) else decode(ids[i:i + 1]))
        prev = cur
    return out


def compute_facts(lm, sae, hook: str, reference: Reference, *, n_tokens: int = 16, n_words: int = 16,
                  n_lens: int = 16, n_examples: int = 32, progress: bool = False) -> FactsTable:
    """Compute the :class:`FactsTable` of ``sae`` at ``hook`` on ``lm`` (a ``LoadedModel``) and ``reference``."""
    text_of, memo = _token_text_fn(lm)
    tokens = reference.tokens
    skip = [t for t in (lm.bos_token_id,) if t is not None]
    stats = firing_stats(lm.model, sae, hook, tokens, skip_ids=skip, k=n_examples, progress=progress)
    lens = logit_lens(lm.model, sae, hook, n=n_lens)
    # The word of every reference token, computed once per position.
    flat_ids = tokens.reshape(-1).tolist()
    flat_words: list[str | None] = []
    for row in tokens.tolist():
        flat_words.extend(token_words(tokens_in_context(lm.decode, row)))
    ex_idx = stats["example_index"].tolist()
    ex_val = stats["example_vals"].tolist()
    F = sae.d_sae
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
    used = set(fire_ids[fire_ids >= 0].tolist()) | set(lens["lens_top_ids"].reshape(-1).tolist()) | set(
        lens["lens_bottom_ids"].reshape(-1).tolist())
    for t in used:
        text_of(int(t))
    tensors = {"max_act": stats["max_act"], "frequency": stats["frequency"], "fire_ids": fire_ids,
               "fire_vals": fire_vals, **lens, "example_index": stats["example_index"],
               "example_vals": stats["example_vals"], "reference_tokens": tokens.int()}
    tensors = {k: v.contiguous().cpu() for k, v in tensors.items()}
    meta = {"version": FACTS_VERSION, "model": lm.name, "model_fingerprint": model_fingerprint(lm.model),
            "sae": sae.cfg.source, "sae_fingerprint": sae_fingerprint(sae), "hook": hook,
            "reference": reference.description, "d_sae": F,
            "settings": {"n_tokens": n_tokens, "n_words": n_words, "n_lens": n_lens, "n_examples": n_examples},
            "digest": _table_digest(tensors, words)}
    return FactsTable(tensors, words, {int(k): v for k, v in memo.items() if k in used}, meta)


DEFAULT_SETTINGS = {"n_tokens": 16, "n_words": 16, "n_lens": 16, "n_examples": 32}


def facts_key(model, sae, hook: str, *, reference_text: str | os.PathLike | None = None, samples: int = 256,
              length: int = 64, seed: int = 0, **settings) -> tuple[str, dict]:
    """The cache key of these facts (and the full settings): cheap, computed without building the facts."""
    unknown = set(settings) - set(DEFAULT_SETTINGS)
    if unknown:
        raise TypeError(f"unknown settings: {sorted(unknown)}")
    full = {**DEFAULT_SETTINGS, **settings}
    key_obj = {"version": FACTS_VERSION, "model": model_fingerprint(model), "sae": sae_fingerprint(sae),
               "hook": hook, "reference": reference_key(reference_text=reference_text, samples=samples,
                                                        length=length, seed=seed), "settings": full}
    return hashlib.sha256(json.dumps(key_obj, sort_keys=True).encode()).hexdigest()[:24], full


def feature_facts(lm, sae=None, hook: str | None = None, *, reference_text: str | os.PathLike | None = None,
                  samples: int = 256, length: int = 64, seed: int = 0, cache_dir: str | os.PathLike | None = None,
                  use_cache: bool = True, progress: bool = False, engine: str = "auto", **settings) -> FactsTable:
    """The :class:`FactsTable` of ``sae`` at ``hook`` on ``lm``, from the cache or computed (and cached).

    ``lm``: a ``LoadedModel`` or a ``Steerer`` (then ``sae``/``hook`` default to its own).
    ``reference_text``: a text file; None samples ``samples`` x ``length`` tokens from the model (seeded).
    ``settings``: ``n_tokens``, ``n_words``, ``n_lens``, ``n_examples`` (see :func:`compute_facts`).
    """
    from saesteer.errors import SaesteerError

    if hasattr(lm, "lm") and hasattr(lm, "sae"):  # a Steerer
        sae = sae if sae is not None else lm.sae
        hook = hook or lm.hook_name
        lm = lm.lm
    if sae is None or not hook:
        raise SaesteerError("feature facts need an SAE and its hook site")
    if reference_text is not None and not Path(reference_text).is_file():
        raise SaesteerError(f"reference text file not found: {reference_text}")
    key, defaults = facts_key(lm.model, sae, hook, reference_text=reference_text, samples=samples, length=length,
                              seed=seed, **settings)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = folder / "feature_facts" / key
    if use_cache and FactsTable.exists(folder):
        try:
            table = FactsTable.load(folder)
            if table.meta.get("key") == key:
                return table
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache entry is recomputed
    if reference_text is not None:
        text = Path(reference_text).read_text(encoding="utf-8", errors="replace")
        reference = reference_from_text(lm, text, length=length, source=str(reference_text))
    else:
        reference = _cached_sample(lm, folder.parent.parent / "reference", samples=samples, length=length, seed=seed,
                                   engine=engine, progress=progress, use_cache=use_cache)
    table = compute_facts(lm, sae, hook, reference, progress=progress, **defaults)
    table.meta["key"] = key
    if use_cache:
        table.save(folder)
    return table
