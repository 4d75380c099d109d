"""What the web app asks of the model and the SAE: checks on the request thread, work on the worker thread.

The work reuses the library: ``Steerer.generate_many`` for the playground, ``evaluation.compare`` for
strength curves, ``evaluation.feature_card`` / ``feature_facts`` for feature pages. Every model call gets
the job's ``check`` as (part of) its ``on_step`` callback, so a request past its time limit stops within one
generation step.

One Service per served SAE; the playground's generation, which may clamp several SAEs at once, is
``web.playground``.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from saesteer.errors import SaesteerError
from saesteer.evaluation.compare import compare
from saesteer.evaluation.feature_card import feature_card
from saesteer.evaluation.feature_facts import FactsTable, logit_lens, model_fingerprint, sae_fingerprint
from saesteer.evaluation.text_metrics import Targets, hits
from saesteer.saes.base import SAE, SAEConfig
from saesteer.steering.clamp import FeatureClamp
from saesteer.web.errors import InputError
from saesteer.web.histogram import ReferenceActivations
from saesteer.web.results_index import ResultsIndex
from saesteer.web.schemas import MAX_PROMPT_TOKENS

NEURONPEDIA = "https://www.neuronpedia.org"
LENS_TOKENS = 12


class _Checked:
    """A Steerer whose generation calls also call ``check`` at every step (to stop at the time limit)."""

    def __init__(self, steerer, check: Callable):
        self._steerer = steerer
        self._check = check

    def __getattr__(self, name):
        return getattr(self._steerer, name)

    def generate_many(self, prompts, **kwargs):
        inner = kwargs.get("on_step")

        def on_step(rows, tokens):
            self._check()
            if inner is not None:
                inner(rows, tokens)

        kwargs["on_step"] = on_step
        return self._steerer.generate_many(prompts, **kwargs)

    def generate(self, prompt=None, **kwargs):
        return self.generate_many([prompt], **kwargs)[0]


class Service:
    """The steerer being served and the results folders, behind the app's endpoints."""

    def __init__(self, steerer, results: ResultsIndex):
        if steerer.sae is None:
            raise SaesteerError("the web app needs an SAE; pass --sae")
        self.st = steerer
        self.lm = steerer.lm
        self.sae = steerer.sae
        self.hook = steerer.hook_name
        self.results = results
        config = getattr(self.lm.model, "config", None)
        self.max_positions = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
        self.neuronpedia_id = self.sae.cfg.extra.get("neuronpedia_id")
        self.reference = ReferenceActivations(self.lm.model, self.sae, self.hook)
        self._facts_lock = threading.Lock()
        self._facts: tuple | None = None

    # ----------------------------------------------------------------- facts
    @property
    def d_sae(self) -> int:
        return self.sae.d_sae

    def info(self) -> dict:
        return {"model": self.lm.name, "sae": self.sae.cfg.source or "", "hook": self.hook, "d_sae": self.d_sae,
                "neuronpedia_id": self.neuronpedia_id}

    def neuronpedia_url(self, feature: int) -> str | None:
        return f"{NEURONPEDIA}/{self.neuronpedia_id}/{feature}" if self.neuronpedia_id else None

    # ----------------------------------------------------------------- checks (request thread)
    def check_feature(self, feature: int, loc: tuple) -> int:
        if not 0 <= feature < self.d_sae:
            raise InputError(loc, f"unknown feature {feature}: this SAE has features 0..{self.d_sae - 1}")
        return feature

    def prompt_tokens(self, prompt: str | None, max_new_tokens: int) -> list[int]:
        """The prompt's ids (BOS first), checked against the token limits."""
        try:
            ids = self.st.tokens(prompt)
        except SaesteerError as exc:
            raise InputError(("body", "prompt"), str(exc)) from None
        if len(ids) > MAX_PROMPT_TOKENS:
            raise InputError(("body", "prompt"),
                             f"the prompt has {len(ids)} tokens; at most {MAX_PROMPT_TOKENS} are allowed")
        if self.max_positions is not None and len(ids) + max_new_tokens > self.max_positions:
            raise InputError(("body", "max_new_tokens"),
                             f"the prompt's {len(ids)} tokens plus max_new_tokens={max_new_tokens} exceed the"
                             f" model's {self.max_positions} positions")
        return ids

    # ----------------------------------------------------------------- work (worker thread)
    def facts(self):
        """``(FactsTable, folder label)`` from the first results folder whose feature facts belong to this
        model, SAE and hook; ``(None, None)`` when none does. Looked up once."""
        with self._facts_lock:
            if self._facts is None:
                self._facts = self._find_facts()
            return self._facts

    def _find_facts(self):
        fingerprints = None
        for folder in self.results.folders:
            if not FactsTable.exists(folder.facts_dir):
                continue
            try:
                table = FactsTable.load(folder.facts_dir)
            except (OSError, ValueError, KeyError):
                continue
            if fingerprints is None:
                fingerprints = (model_fingerprint(self.lm.model), sae_fingerprint(self.sae))
            meta = table.meta
            if (meta.get("model_fingerprint"), meta.get("sae_fingerprint")) == fingerprints \
                    and meta.get("hook") == self.hook and len(table) == self.d_sae:
                return table, folder.label
        return None, None

    def lens(self, feature: int, n: int = LENS_TOKENS) -> tuple[list[dict], list[dict]]:
        """Top and bottom logit-lens tokens of one feature (``feature_facts.logit_lens`` on that feature alone)."""
        s = self.sae
        one = SAE(SAEConfig(d_in=s.d_in, d_sae=1, hook_name=self.hook), s.W_enc[:, feature:feature + 1],
                  s.b_enc[feature:feature + 1], s.W_dec[feature:feature + 1], s.b_dec)
        got = logit_lens(self.lm.model, one, self.hook, n=n)

        def scores(ids, vals):
            return [{"id": int(i), "text": self.lm.decode([int(i)]), "value": float(v)}
                    for i, v in zip(ids[0].tolist(), vals[0].tolist())]

        return scores(got["lens_top_ids"], got["lens_top_vals"]), scores(got["lens_bottom_ids"], got["lens_bottom_vals"])

    def feature(self, feature: int, sweeps: list[dict]) -> dict:
        """The feature page's data (``FeatureResponse`` fields)."""
        table, label = self.facts()
        out = {"feature": feature, "d_sae": self.d_sae, "hook": self.hook,
               "neuronpedia_url": self.neuronpedia_url(feature),
               "decoder_norm": float(self.sae.W_dec[feature].detach().float().norm()),
               "facts_from": label, "max_activation": None, "frequency": None, "firing_words": [],
               "firing_tokens": [], "contexts": []}
        if table is not None:
            card = feature_card(self.st, feature, values=(), facts=table, n_tokens=LENS_TOKENS)
            tok = lambda ts: [{"id": t.id, "text": t.text, "value": t.value} for t in ts]  # noqa: E731
            out.update(lens_top=tok(card.promoted), lens_bottom=tok(card.suppressed),
                       max_activation=card.max_activation, frequency=card.frequency,
                       firing_words=list(card.firing_words), firing_tokens=tok(card.firing_tokens),
                       contexts=[{"activation": c.activation, "before": c.before, "token": c.token,
                                  "after": c.after} for c in card.contexts],
                       histogram=self.reference.histogram(table.tensors["reference_tokens"], feature))
        else:
            out["lens_top"], out["lens_bottom"] = self.lens(feature)
        best = [r for s in sweeps for r in s["rows"][:1] if r["value"] is not None]
        best.sort(key=lambda r: (-(r["metrics"].get("steer") or 0.0), -(r["metrics"].get("score") or 0.0)))
        out["sweeps"] = sweeps
        # the latent value itself: ``clamp`` where the sweep's values were relative to the max activation
        clamp = best[0]["metrics"].get("clamp") if best else None
        out["suggested_value"] = clamp if clamp is not None else (best[0]["value"] if best else None)
        return out

    def curve(self, req, check: Callable) -> dict:
        """A strength curve (``CompareResponse`` fields) by ``evaluation.compare``."""
        t0 = time.perf_counter()
        table, _ = self.facts()
        cmp = compare(_Checked(self.st, check), req.prompt, req.feature, values=list(req.values),
                      temperature=req.temperature, top_p=req.top_p, seed=req.seed,
                      max_new_tokens=req.max_new_tokens, mode=req.mode,
                      facts=table if table is not None else False, cards=False)
        result = cmp.prompts[0]
        if table is not None:
            lens_ids = table.targets(req.feature).lens_ids
            words = sorted(table.targets(req.feature).words)
        else:
            lens_ids = frozenset(t["id"] for t in self.lens(req.feature)[0])
            words = []
        lens_only = Targets.of(lens_ids=lens_ids)

        def point(value, c) -> dict:
            return {"value": value, "tokens": list(c.tokens), "text": c.text, "differs": bool(c.differs),
                    "kl": float(c.kl_mean), "fluency": c.fluency, "fluency_drop": c.fluency_drop,
                    "repetition": float(c.repetition), "distinct": float(c.distinct),
                    "hits_lens": int(c.hits_lens) if c.hits_lens is not None else hits(c.tokens, c.text, lens_only).lens,
                    "hits_words": c.hits_words, "score": c.score}

        return {
            "feature": req.feature, "prompt": req.prompt, "prompt_tokens": result.prompt_tokens, "mode": req.mode,
            "max_new_tokens": req.max_new_tokens, "temperature": req.temperature, "top_p": req.top_p,
            "seed": req.seed, "unsteered": point(None, result.baseline.continuations[0]),
            "points": [point(s.value, s.continuations[0]) for s in result.settings],
            "lens_tokens": [self.lm.decode([t]) for t in sorted(lens_ids)], "firing_words": words,
            "elapsed_s": round(time.perf_counter() - t0, 4),
        }
