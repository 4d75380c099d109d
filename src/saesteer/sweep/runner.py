"""The sweep loop: clamp every feature to every value, a batch of rows per ``generate_ids`` call.

Each call covers whole features (all their values), so a batch is the unit of work that is either in
``results.jsonl`` or redone. Row ``(f, v)`` clamps feature ``f`` to ``v`` (or ``v * max_activation[f]``
with ``relative``) through ``SAEClamp`` per-row clamps, the same edit ``Steerer.generate(prompt,
clamps={f: v})`` applies, through the same engine dispatcher.

>>> sw = Sweep(steerer, features="0:512", values=[20], out="sweeps/l6")      # doctest: +SKIP
>>> for r in sw.run(): ...                                                     # doctest: +SKIP
>>> table = sw.results()                                                       # doctest: +SKIP
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from saesteer.errors import SaesteerError
from saesteer.evaluation.feature_facts import FactsTable, facts_key, feature_facts
from saesteer.evaluation.readback import attach_readback
from saesteer.evaluation.text_metrics import TextMetrics, hits, mean_logprob, text_metrics
from saesteer.sweep import store as st
from saesteer.sweep.spec import SweepSpec, parse_features, parse_values

DEFAULT_ROWS_PER_CALL = 512
"""Rows per ``generate_ids`` call when no batch size is given: large enough for the engines to run
near full speed, small enough that a kill loses little work."""
MANIFEST_EVERY_S = 30.0


@dataclass
class SweepResult:
    """One feature clamped to one value: the continuation and its metrics."""

    feature: int
    value: float
    """The value as given (a multiple of the feature's max activation when the sweep is relative)."""
    clamp: float
    """The value the latent was clamped to."""
    tokens: list[int]
    text: str
    metrics: TextMetrics

    @property
    def score(self) -> float:
        return self.metrics.score

    def to_record(self) -> dict:
        rec = {"feature": self.feature, "value": self.value, "clamp": _round(self.clamp), "tokens": self.tokens,
               "text": self.text}
        for k, v in self.metrics.to_dict().items():
            if v is None and k.startswith("readback"):
                continue  # not measured: the record keeps the fields it always had
            rec[k] = _round(v) if isinstance(v, float) else v
        return rec

    @classmethod
    def from_record(cls, rec: dict) -> "SweepResult":
        fields = TextMetrics.__dataclass_fields__
        metrics = TextMetrics(**{k: rec.get(k) for k in fields if k in rec})
        return cls(int(rec["feature"]), float(rec["value"]), float(rec.get("clamp", rec["value"])),
                   list(rec["tokens"]), rec["text"], metrics)


def _round(x):
    if x is None or not isinstance(x, float) or not math.isfinite(x):
        return x
    return float(f"{x:.6g}")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def package_versions() -> dict:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in ("saesteer", "torch", "transformers", "safetensors", "numpy"):
        try:
            from importlib.metadata import version

            out[name] = version(name)
        except Exception:  # noqa: BLE001 - a missing distribution is just not reported
            out[name] = None
    return out


def features_text(ranges) -> str:
    return ",".join(f"{a}:{b}" for a, b in ranges)


@dataclass
class Baseline:
    tokens: list[int]
    text: str
    fluency: float | None = None


@dataclass
class _Session:
    started: float = field(default_factory=time.time)
    started_at: str = field(default_factory=_now)
    features: int = 0


class Sweep:
    """Clamp each selected feature to each value during generation and measure the continuations.

    ``steerer``: a :class:`saesteer.Steerer` with an SAE. ``features``: ``"all"``, ``"START:STOP"``, a list of
    ranges/ints as text, or an iterable of ints. ``values``: numbers (or ``"-20,10"`` strings); with
    ``relative`` they are multiples of each feature's max activation on the reference text. ``prompt`` None
    starts from BOS alone. ``dtype``: compute dtype for the engine (``"float32"``/``"bfloat16"``).
    ``batch_size``: rows per generate call (whole features per call). ``shard``: ``(I, N)``. ``out``: a
    folder to write and resume (None: results are only yielded). ``facts``: a ready ``FactsTable``
    (otherwise computed or read from the cache, from ``reference_text`` or text the model samples).
    """

    def __init__(self, steerer, *, features="all", values=(20.0,), relative: bool = False, prompt: str | None = None,
                 max_new_tokens: int = 10, mode: str = "delta", fluency: bool = False, dtype: str | None = None,
                 batch_size: int | None = None, shard: tuple[int, int] = (0, 1), out: str | os.PathLike | None = None,
                 facts: FactsTable | None = None, reference_text: str | os.PathLike | None = None,
                 reference_samples: int = 256, reference_length: int = 64, reference_seed: int = 0,
                 cache_dir: str | os.PathLike | None = None, progress: bool = False, readback: bool = False):
        from saesteer.steering.clamp import MODES

        self.steerer = steerer
        self.sae = steerer._need_sae()
        self.hook = steerer._need_hook()
        self.lm = steerer.lm
        if mode not in MODES:
            raise SaesteerError(f"unknown clamp mode {mode!r}; use one of {', '.join(MODES)}")
        if max_new_tokens < 1:
            raise SaesteerError("max_new_tokens must be at least 1 for a sweep")
        if batch_size is not None and batch_size < 1:
            raise SaesteerError("batch_size must be at least 1")
        self.values = parse_values(values if not isinstance(values, (int, float)) else [values])
        if isinstance(features, str) or features is None:
            self.ranges = parse_features(features, self.sae.d_sae)
        else:
            self.ranges = parse_features(",".join(str(int(f)) for f in features), self.sae.d_sae)
        self.relative = bool(relative)
        self.prompt = prompt or None
        self.max_new_tokens = int(max_new_tokens)
        self.mode = mode
        self.fluency = bool(fluency)
        self.readback = bool(readback)
        self.dtype_name = self._dtype_name(dtype)
        self.batch_size = batch_size
        self.shard = (int(shard[0]), int(shard[1]))
        if not 0 <= self.shard[0] < self.shard[1]:
            raise SaesteerError(f"shard {self.shard} must be (I, N) with 0 <= I < N")
        if out is not None:
            from saesteer.outputs import check_output_folder

            check_output_folder(out, "the sweep folder")  # before any work
        self.out = Path(out) if out is not None else None
        self.progress = progress
        self._facts = facts
        self._reference = dict(reference_text=reference_text, samples=reference_samples, length=reference_length,
                               seed=reference_seed)
        self._cache_dir = cache_dir
        self._spec: SweepSpec | None = None
        self._baseline: Baseline | None = None
        self._fluency_memo: dict[tuple[int, ...], float | None] = {}

    # ------------------------------------------------------------- pieces
    def _dtype_name(self, dtype) -> str:
        import torch

        from saesteer.models.loading import parse_dtype

        if dtype is None:
            return str(self.lm.dtype).replace("torch.", "")
        if isinstance(dtype, torch.dtype):
            return str(dtype).replace("torch.", "")
        parse_dtype(dtype)
        return str(dtype)

    @property
    def prompt_tokens(self) -> list[int]:
        return self.steerer.tokens(self.prompt)

    def facts_key(self) -> str:
        if self._facts is not None:
            return self._facts.meta.get("key") or self._facts.digest
        return facts_key(self.lm.model, self.sae, self.hook, reference_text=self._reference["reference_text"],
                         samples=self._reference["samples"], length=self._reference["length"],
                         seed=self._reference["seed"], features=self._selected())[0]

    def _selected(self) -> list[int]:
        """Every selected feature (all shards'): the feature facts are computed for their blocks only."""
        return [f for a, b in self.ranges for f in range(a, b)]

    @property
    def spec(self) -> SweepSpec:
        if self._spec is None:
            from saesteer.evaluation.feature_facts import model_fingerprint, sae_fingerprint

            self._spec = SweepSpec(
                model_fingerprint=model_fingerprint(self.lm.model), sae_fingerprint=sae_fingerprint(self.sae),
                hook=self.hook, d_sae=self.sae.d_sae, values=self.values, prompt=self.prompt,
                prompt_tokens=tuple(self.prompt_tokens), features=self.ranges, mode=self.mode,
                relative=self.relative, max_new_tokens=self.max_new_tokens, dtype=self.dtype_name,
                fluency=self.fluency, facts_key=self.facts_key(), shard=self.shard, readback=self.readback,
                info={"model": self.lm.name, "sae": self.sae.cfg.source, "device": str(self.lm.device),
                      "engine": self.steerer.engine},
            )
        return self._spec

    @property
    def facts(self) -> FactsTable:
        """The feature facts the metrics (and relative values) use; computed or read from the cache once."""
        if self._facts is None:
            r = self._reference
            self._facts = feature_facts(self.lm, self.sae, self.hook, reference_text=r["reference_text"],
                                        samples=r["samples"], length=r["length"], seed=r["seed"],
                                        cache_dir=self._cache_dir, progress=self.progress, engine=self.steerer.engine,
                                        features=self._selected())
        return self._facts

    def _generate(self, rows: list[list[tuple[int, float]]] | None, n: int) -> list[list[int]]:
        from saesteer.engine import GenerationConfig, generate_ids
        from saesteer.steering.hooks import make_clamp

        config = GenerationConfig(max_new_tokens=self.max_new_tokens)
        edits = [] if rows is None else [make_clamp(self.lm.model, self.sae, rows=rows, mode=self.mode,
                                                    hook_name=self.hook)]
        return generate_ids(self.lm.model, [self.prompt_tokens] * n, config, edits=edits,
                            eos_token_id=self.lm.eos_token_id, pad_token_id=self.lm.pad_token_id,
                            engine=self.steerer.engine, dtype=self.dtype_name, batch_size=self.batch_size)

    def _fluency(self, conts: Sequence[Sequence[int]]) -> list[float | None]:
        """Mean log-probs under the unsteered model, each distinct continuation computed once."""
        todo = [tuple(c) for c in conts if tuple(c) not in self._fluency_memo]
        todo = list(dict.fromkeys(todo))
        if todo:
            lps = mean_logprob(self.lm.model, self.prompt_tokens, todo, pad_token_id=self.lm.pad_token_id)
            if len(self._fluency_memo) > 200_000:
                self._fluency_memo.clear()
            self._fluency_memo.update(zip(todo, lps))
        return [self._fluency_memo[tuple(c)] for c in conts]

    @property
    def baseline(self) -> Baseline:
        """The unsteered continuation (no hook at all), and its fluency when measured."""
        if self._baseline is None:
            tokens = self._generate(None, 1)[0]
            b = Baseline(tokens, self.lm.continuation(self.prompt_tokens, tokens))
            if self.fluency:
                b.fluency = self._fluency([tokens])[0]
            self._baseline = b
        return self._baseline

    def clamp_value(self, feature: int, value: float) -> float:
        if not self.relative:
            return value
        return value * float(self.facts.max_activation[feature])

    def _check_relative(self, features: Sequence[int]) -> None:
        """Relative values obey the clamp value rule once multiplied by each feature's max activation."""
        if not self.relative:
            return
        from saesteer.steering.values import check_value

        for f in features:
            for v in self.values:
                check_value(self.clamp_value(f, v), f"relative value {v:g} x feature {f}'s max activation")

    def run_features(self, features: Sequence[int]) -> list[SweepResult]:
        """Results of ``features`` (every value of each) in one batch: the loop's unit of work."""
        values = self.values
        rows = [[(f, self.clamp_value(f, v))] for f in features for v in values]
        out = self._generate(rows, len(rows))
        texts = [self.lm.continuation(self.prompt_tokens, t) for t in out]
        base = self.baseline
        flu = self._fluency(out) if self.fluency else [None] * len(out)
        results = []
        for r, (toks, text, fl) in enumerate(zip(out, texts, flu)):
            f = features[r // len(values)]
            targets = self.facts.targets(f)
            if r % len(values) == 0:
                base_hits = hits(base.tokens, base.text, targets)
            m = text_metrics(toks, text, base.tokens, base.text, targets, fluency=fl,
                             baseline_fluency=base.fluency, baseline_hits=base_hits)
            results.append(SweepResult(f, values[r % len(values)], rows[r][0][1], list(toks), text, m))
        if self.readback:
            attach_readback(results, self.lm, self.sae, self.hook, self.prompt_tokens)
        return results

    def _chunk_features(self) -> int:
        rows = self.batch_size or DEFAULT_ROWS_PER_CALL
        return max(1, rows // len(self.values))

    # ------------------------------------------------------------- folder
    def _manifest(self, spec: SweepSpec, facts: FactsTable) -> dict:
        b = self.baseline
        return {
            "format": st.FORMAT,
            "fingerprint": spec.fingerprint(),
            "sweep": spec.identity(),
            "model": self.lm.name,
            "sae": self.sae.cfg.source,
            "hook": self.hook,
            "mode": self.mode,
            "values": list(self.values),
            "relative": self.relative,
            "prompt": self.prompt,
            "prompt_tokens": list(spec.prompt_tokens),
            "max_new_tokens": self.max_new_tokens,
            "dtype": self.dtype_name,
            "device": str(self.lm.device),
            "engine": self.steerer.engine,
            "features": features_text(self.ranges),
            "shard": f"{self.shard[0]}/{self.shard[1]}",
            "n_features": spec.n_shard_features(),
            "fluency": self.fluency,
            "facts": {"key": spec.facts_key, "digest": facts.digest, "reference": facts.meta.get("reference"),
                      "settings": facts.meta.get("settings")},
            "baseline": {"tokens": b.tokens, "text": b.text, "fluency": b.fluency},
            "versions": package_versions(),
            "status": "running",
            "started_at": _now(),
            "finished_at": None,
            "done": 0,
            "elapsed_s": 0.0,
            "features_per_second": None,
            "sessions": [],
        }

    def _open_folder(self) -> tuple[dict, st.ResultStore]:
        """Create the folder, or check that it holds this same sweep; return its manifest and store."""
        out = self.out
        spec = self.spec
        existing = st.read_manifest(out)
        if existing is None:
            if out.exists() and any(p.name != st.FACTS for p in out.iterdir()):
                raise SaesteerError(f"{out} exists, is not empty and holds no sweep manifest; pick another --out folder")
            facts = self.facts
            facts.save(out / st.FACTS)
            manifest = self._manifest(spec, facts)
        else:
            manifest = existing
            old = SweepSpec.from_identity(existing["sweep"])
            diffs = old.differences(spec)
            if diffs:
                raise SaesteerError(
                    f"{out} holds a different sweep ({'; '.join(diffs)}); run the command that started it to resume,"
                    " or pick another --out folder")
            digest = existing.get("facts", {}).get("digest")
            if self._facts is None and FactsTable.exists(out / st.FACTS):
                try:
                    table = FactsTable.load(out / st.FACTS)
                    if table.digest == digest:
                        self._facts = table
                except (OSError, ValueError, KeyError):
                    pass
            if self.facts.digest != digest:
                raise SaesteerError(
                    f"the feature facts in {out / st.FACTS} are missing or differ from the ones this sweep started with;"
                    " results would mix two sets of metrics: start a new --out folder")
            b = self.baseline
            if b.tokens != existing["baseline"]["tokens"]:
                raise SaesteerError(
                    f"the unsteered text now differs from the one {out} started with ({b.text!r} vs"
                    f" {existing['baseline']['text']!r}): the model or engine behaves differently; start a new --out folder")
        store = st.ResultStore(out, self.values, set(spec.shard_features()))
        return manifest, store

    # ------------------------------------------------------------- the loop
    def run(self) -> Iterator[SweepResult]:
        """Yield the results of every feature not yet done (all of them without ``out``), batch by batch."""
        from tqdm.auto import tqdm

        spec = self.spec
        todo = spec.shard_features()
        self._check_relative(todo)  # before the folder is opened: a refused sweep leaves nothing behind
        manifest, store = (None, None)
        if self.out is not None:
            manifest, store = self._open_folder()
            todo = [f for f in todo if f not in store.done]
        else:  # compute these before the clock starts
            _ = self.facts
            _ = self.baseline
        total = spec.n_shard_features()
        session = _Session()
        if manifest is not None and todo:
            manifest["status"] = "running"
            manifest.pop("error", None)
            manifest["sessions"].append({"started_at": session.started_at, "ended_at": None, "features": 0,
                                         "seconds": 0.0, "device": str(self.lm.device), "engine": self.steerer.engine,
                                         "batch_size": self.batch_size})
            st.write_manifest(self.out, manifest)
        bar = tqdm(total=total, initial=total - len(todo), desc="sweep", unit="feat", disable=not self.progress,
                   smoothing=0.1, dynamic_ncols=True)
        per = self._chunk_features()
        last_manifest = time.time()
        try:
            for s in range(0, len(todo), per):
                batch = todo[s:s + per]
                results = self.run_features(batch)
                if store is not None:
                    store.append([r.to_record() for r in results])
                session.features += len(batch)
                bar.update(len(batch))
                if manifest is not None and time.time() - last_manifest > MANIFEST_EVERY_S:
                    self._update_manifest(manifest, store, session)
                    st.write_manifest(self.out, manifest)
                    last_manifest = time.time()
                yield from results
        except SaesteerError as exc:  # refused (e.g. outputs became inf/NaN): say so; rerunning retries
            if manifest is not None:
                manifest["status"], manifest["error"] = "failed", str(exc)
            raise
        finally:
            bar.close()
            if store is not None:
                self._close(manifest, store, session, total, bool(todo))

    def _close(self, manifest: dict, store: st.ResultStore, session: _Session, total: int, ran: bool) -> None:
        complete = len(store.done) >= total
        if complete:
            store.finalise()
        else:
            store.close()
        if ran:
            self._update_manifest(manifest, store, session)
        if complete and manifest.get("status") != "complete":
            manifest["status"] = "complete"
            manifest["finished_at"] = _now()
            manifest["done"] = len(store.done)
        elif not ran:
            return
        st.write_manifest(self.out, manifest)

    def _update_manifest(self, manifest: dict, store: st.ResultStore, session: _Session) -> None:
        seconds = time.time() - session.started
        cur = manifest["sessions"][-1]
        prev_seconds = cur["seconds"]
        store.flush_sentences()
        cur.update(ended_at=_now(), features=session.features, seconds=round(seconds, 3))
        manifest["elapsed_s"] = round(manifest.get("elapsed_s", 0.0) + seconds - prev_seconds, 3)
        manifest["done"] = len(store.done)
        computed = sum(x["features"] for x in manifest["sessions"])
        if manifest["elapsed_s"] > 0 and computed:
            manifest["features_per_second"] = round(computed / manifest["elapsed_s"], 3)

    def results(self) -> list[SweepResult]:
        """Run to completion; every result of the sweep (with ``out``: including earlier sessions')."""
        if self.out is None:
            return list(self.run())
        for _ in self.run():
            pass
        return [SweepResult.from_record(r) for r in st.load_records(self.out, self.values)]


def sweep(steerer, **kwargs) -> list[SweepResult]:
    """Run a :class:`Sweep` to completion and return its results (keywords as ``Sweep``)."""
    return Sweep(steerer, **kwargs).results()


def load_sweep(directory: str | os.PathLike) -> tuple[dict, list[SweepResult]]:
    """A sweep folder's manifest and results."""
    manifest = st.read_manifest(directory)
    if manifest is None:
        raise SaesteerError(f"{directory} is not a sweep folder (no manifest.json)")
    return manifest, [SweepResult.from_record(r) for r in st.load_records(directory, manifest["sweep"]["values"])]
