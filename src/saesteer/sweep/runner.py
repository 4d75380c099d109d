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

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from saesteer.dtypes import dtype_name, parse_dtype
from saesteer.engine import GenerationConfig, generate_ids
from saesteer.errors import SaesteerError
from saesteer.evaluation.feature_facts import (FactsTable, facts_key, feature_facts, model_fingerprint,
                                               sae_fingerprint)
from saesteer.evaluation.readback import attach_readback
from saesteer.evaluation.strength import best_scales
from saesteer.evaluation.text_metrics import TextMetrics, hits, mean_logprob, text_metrics
from saesteer.outputs import check_output_folder
from saesteer.steering.hooks import make_clamp
from saesteer.steering.values import check_value
from saesteer.sweep import store as st
from saesteer.sweep.config import SweepConfig
from saesteer.sweep.folder import SweepRun, features_text
from saesteer.sweep.spec import SweepSpec, parse_features

DEFAULT_ROWS_PER_CALL = 512
"""Rows per ``generate_ids`` call when no batch size is given: large enough for the engines to run
near full speed, small enough that a kill loses little work."""


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


@dataclass
class Baseline:
    """The unsteered continuation every result is compared with."""

    tokens: list[int]
    text: str
    fluency: float | None = None


class Sweep:
    """Clamp each selected feature to each value during generation and measure the continuations.

    ``steerer``: a :class:`saesteer.Steerer` with an SAE. ``config``: a :class:`SweepConfig`; keywords named
    as its fields (``features``, ``values``, ``relative``, ``prompt``, ``max_new_tokens``, ``mode``,
    ``fluency``, ``dtype``, ``batch_size``, ``shard``, ``engine``, ``reference_text``, ...) set or override
    its settings (see :class:`SweepConfig` for each). ``features`` may also be an iterable of ints.
    ``out``: a folder to write and resume (None: results are only yielded). ``facts``: a ready
    ``FactsTable`` (otherwise computed or read from the cache, from ``reference_text`` or text the model
    samples). ``progress``: show a progress bar.

    Drive it with :meth:`run` (the local loop), or, as the Ray driver does, with :meth:`open` and
    :meth:`run_features` (the unit of work) and the returned :class:`SweepRun`.
    """

    def __init__(self, steerer, config: SweepConfig | None = None, *, out: str | os.PathLike | None = None,
                 facts: FactsTable | None = None, progress: bool = False, **settings):
        self.steerer = steerer
        self.sae = steerer.need_sae()
        self.hook = steerer.need_hook()
        self.lm = steerer.lm
        config = SweepConfig.build(config, settings, caller="Sweep")
        self.ranges = parse_features(config.features, self.sae.d_sae)
        self.config = config.replace(features=features_text(self.ranges), dtype=self._dtype_name(config.dtype),
                                     engine=config.engine or steerer.engine)
        """The settings as run: features as ranges, dtype and engine resolved (what the manifest records)."""
        if out is not None:
            check_output_folder(out, "the sweep folder")  # before any work
        self.out = Path(out) if out is not None else None
        self.progress = progress
        self._facts = facts
        self._spec: SweepSpec | None = None
        self._baseline: Baseline | None = None
        self._fluency_memo: dict[tuple[int, ...], float | None] = {}

    # ------------------------------------------------------------- pieces
    @property
    def values(self) -> tuple[float, ...]:
        return self.config.values

    @property
    def engine(self) -> str:
        return self.config.engine

    def _dtype_name(self, dtype) -> str:
        return dtype_name(self.lm.dtype if dtype is None else parse_dtype(dtype))

    @property
    def prompt_tokens(self) -> list[int]:
        return self.steerer.tokens(self.config.prompt)

    def facts_key(self) -> str:
        if self._facts is not None:
            return self._facts.meta.get("key") or self._facts.digest
        c = self.config
        return facts_key(self.lm.model, self.sae, self.hook, reference_text=c.reference_text,
                         samples=c.reference_samples, length=c.reference_length, seed=c.reference_seed,
                         features=self.selected())[0]

    def selected(self) -> list[int]:
        """Every selected feature (all shards'): the feature facts are computed for their blocks only."""
        return [f for a, b in self.ranges for f in range(a, b)]

    @property
    def spec(self) -> SweepSpec:
        """What identifies this sweep (the config's identity fields, the features, model and SAE)."""
        if self._spec is None:
            first, later = self.config.identity()
            self._spec = SweepSpec(
                model_fingerprint=model_fingerprint(self.lm.model), sae_fingerprint=sae_fingerprint(self.sae),
                hook=self.hook, d_sae=self.sae.d_sae, prompt_tokens=tuple(self.prompt_tokens), features=self.ranges,
                facts_key=self.facts_key(), options=later, **first,
                info={"model": self.lm.name, "sae": self.sae.cfg.source, "device": str(self.lm.device),
                      "engine": self.engine},
            )
        return self._spec

    @property
    def has_facts(self) -> bool:
        """Whether the facts are already at hand (given, read or computed)."""
        return self._facts is not None

    @property
    def facts(self) -> FactsTable:
        """The feature facts the metrics (and relative values) use; computed or read from the cache once."""
        if self._facts is None:
            c = self.config
            self._facts = feature_facts(self.lm, self.sae, self.hook, reference_text=c.reference_text,
                                        samples=c.reference_samples, length=c.reference_length, seed=c.reference_seed,
                                        cache_dir=c.cache_dir, progress=self.progress, engine=self.engine,
                                        features=self.selected())
        return self._facts

    @facts.setter
    def facts(self, table: FactsTable) -> None:
        self._facts = table

    def _generate(self, rows: list[list[tuple[int, float]]] | None, n: int) -> list[list[int]]:
        c = self.config
        config = GenerationConfig(max_new_tokens=c.max_new_tokens)
        edits = [] if rows is None else [make_clamp(self.lm.model, self.sae, rows=rows, mode=c.mode,
                                                    hook_name=self.hook)]
        return generate_ids(self.lm.model, [self.prompt_tokens] * n, config, edits=edits,
                            eos_token_id=self.lm.eos_token_id, pad_token_id=self.lm.pad_token_id,
                            engine=self.engine, dtype=c.dtype, batch_size=c.batch_size)

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
            if self.config.fluency:
                b.fluency = self._fluency([tokens])[0]
            self._baseline = b
        return self._baseline

    @baseline.setter
    def baseline(self, b: Baseline) -> None:
        """Compare with another run's baseline (a Ray worker uses the driver's, the one the manifest holds)."""
        self._baseline = b

    def clamp_value(self, feature: int, value: float) -> float:
        if not self.config.relative:
            return value
        return value * float(self.facts.max_activation[feature])

    def check_relative(self, features: Sequence[int]) -> None:
        """Relative values obey the clamp value rule once multiplied by each feature's max activation."""
        if not self.config.relative:
            return
        for f in features:
            for v in self.values:
                check_value(self.clamp_value(f, v), f"relative value {v:g} x feature {f}'s max activation")

    def run_features(self, features: Sequence[int]) -> list[SweepResult]:
        """Results of ``features`` (every value of each) in one batch: the loop's unit of work."""
        values = self.values
        c = self.config
        scales = best_scales(self.steerer, features, self.facts, prompt=c.prompt, max_new_tokens=c.max_new_tokens,
                             mode=c.mode) if c.auto_strength else None
        rows = [[(f, self.clamp_value(f, v) if scales is None else v * scales[f])] for f in features for v in values]
        out = self._generate(rows, len(rows))
        texts = [self.lm.continuation(self.prompt_tokens, t) for t in out]
        base = self.baseline
        flu = self._fluency(out) if self.config.fluency else [None] * len(out)
        results = []
        for r, (toks, text, fl) in enumerate(zip(out, texts, flu)):
            f = features[r // len(values)]
            targets = self.facts.targets(f)
            if r % len(values) == 0:
                base_hits = hits(base.tokens, base.text, targets)
            m = text_metrics(toks, text, base.tokens, base.text, targets, fluency=fl,
                             baseline_fluency=base.fluency, baseline_hits=base_hits)
            results.append(SweepResult(f, values[r % len(values)], rows[r][0][1], list(toks), text, m))
        if self.config.readback:
            attach_readback(results, self.lm, self.sae, self.hook, self.prompt_tokens)
        return results

    def chunk_features(self) -> int:
        """Features per ``run_features`` call: ``batch_size`` rows' worth (whole features)."""
        rows = self.config.batch_size or DEFAULT_ROWS_PER_CALL
        return max(1, rows // len(self.values))

    # ------------------------------------------------------------- the loop
    def open(self) -> SweepRun:
        """Start a run: lock and create or check the folder (``out``), or compute facts and baseline."""
        self.check_relative(self.spec.shard_features())  # before the folder is opened: a refusal leaves nothing
        if self.out is not None:
            return SweepRun.open(self, SweepConfig)
        _ = self.facts  # computed before the clock starts
        _ = self.baseline
        return SweepRun(self.spec.shard_features(), self.spec.n_shard_features())

    def run(self) -> Iterator[SweepResult]:
        """Yield the results of every feature not yet done (all of them without ``out``), batch by batch."""
        from tqdm.auto import tqdm

        with self.open() as run:
            if run.todo:
                run.start(device=str(self.lm.device), engine=self.engine, batch_size=self.config.batch_size)
            bar = tqdm(total=run.total, initial=run.total - len(run.todo), desc="sweep", unit="feat",
                       disable=not self.progress, smoothing=0.1, dynamic_ncols=True)
            try:
                for batch in run.chunks(self.chunk_features()):
                    results = self.run_features(batch)
                    run.record([r.to_record() for r in results])
                    bar.update(len(batch))
                    yield from results
            except SaesteerError as exc:  # refused (e.g. outputs became inf/NaN): say so; rerunning retries
                run.fail(str(exc))
                raise
            finally:
                bar.close()

    def results(self) -> list[SweepResult]:
        """Run to completion; every result of the sweep (with ``out``: including earlier sessions')."""
        if self.out is None:
            return list(self.run())
        for _ in self.run():
            pass
        return [SweepResult.from_record(r) for r in st.load_records(self.out, self.values)]


def sweep(steerer, config: SweepConfig | None = None, **kwargs) -> list[SweepResult]:
    """Run a :class:`Sweep` to completion and return its results (arguments as ``Sweep``)."""
    return Sweep(steerer, config, **kwargs).results()


def load_sweep(directory: str | os.PathLike) -> tuple[dict, list[SweepResult]]:
    """A sweep folder's manifest and results."""
    manifest = st.read_manifest(directory)
    if manifest is None:
        raise SaesteerError(f"{directory} is not a sweep folder (no manifest.json)")
    return manifest, [SweepResult.from_record(r) for r in st.load_records(directory, manifest["sweep"]["values"])]
