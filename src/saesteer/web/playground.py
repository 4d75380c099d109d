"""The playground's generation: the prompt continued unsteered and with clamps, possibly on features of
several served SAEs at once (each clamped at its own hook site, in one generation).

With the clamps of one SAE it is exactly ``Steerer.generate(prompt, clamps=...)`` of that SAE, so both texts
equal what ``saesteer generate`` prints for the same options (sampling included: both draw from the same
seeded stream). Greedy ``delta``/``add`` requests generate both rows in one batch (a row with no clamps is
left exactly unchanged in those modes), so they stream side by side; other settings generate them one after
the other.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

from saesteer.engine import GenerationConfig, generate_ids
from saesteer.steerer import draw_seed
from saesteer.steering.clamp import FeatureClamp, clamp_mode
from saesteer.steering.hooks import make_clamp
from saesteer.web.errors import InputError


class Playground:
    """The served SAEs' steerers (one model) behind ``/api/generate``."""

    def __init__(self, steerers: Sequence):
        self.steerers = list(steerers)
        self.lm = self.steerers[0].lm

    def check_clamps(self, clamps) -> dict[int, list[FeatureClamp]]:
        """The request's clamps by SAE (validated against each SAE's width; each feature at most once)."""
        by_sae: dict[int, list[FeatureClamp]] = {}
        seen = set()
        for i, c in enumerate(clamps):
            if c.sae >= len(self.steerers):
                raise InputError(("body", "clamps", i, "sae"), f"unknown SAE {c.sae}: {len(self.steerers)} are"
                                                               " served (see /api/info)")
            d_sae = self.steerers[c.sae].sae.d_sae
            if not 0 <= c.feature < d_sae:
                raise InputError(("body", "clamps", i, "feature"),
                                 f"unknown feature {c.feature}: this SAE has features 0..{d_sae - 1}")
            if (c.sae, c.feature) in seen:
                raise InputError(("body", "clamps", i, "feature"), f"feature {c.feature} is clamped twice")
            seen.add((c.sae, c.feature))
            by_sae.setdefault(c.sae, []).append(FeatureClamp(c.feature, float(c.value)))
        return by_sae

    def _many(self, prompts, rows_by_sae: dict[int, list], on_step, kw) -> list[tuple[list[int], list[int], str]]:
        """``(prompt ids, new ids, text)`` per prompt, row ``b`` clamping ``rows_by_sae[s][b]`` of SAE ``s``."""
        if len(rows_by_sae) <= 1:  # one SAE (or none): exactly that SAE's Steerer
            s, rows = next(iter(rows_by_sae.items()), (0, None))
            gens = self.steerers[s].generate_many(prompts, rows=rows, on_step=on_step, **kw)
            return [(g.prompt_tokens, g.tokens, g.text) for g in gens]
        st = self.steerers[0]
        config = GenerationConfig(max_new_tokens=kw["max_new_tokens"], temperature=kw["temperature"],
                                  top_p=kw["top_p"], seed=draw_seed(kw["seed"], kw["temperature"]))
        ids = [st.tokens(p) for p in prompts]
        self.lm.check_fits(max(map(len, ids)), kw["max_new_tokens"])
        edits = [make_clamp(self.lm.model, self.steerers[s].sae, rows=rows, mode=kw["mode"],
                            hook_name=self.steerers[s].hook_name) for s, rows in sorted(rows_by_sae.items())]
        out = generate_ids(self.lm.model, ids, config, edits=edits, eos_token_id=self.lm.eos_token_id,
                           pad_token_id=self.lm.pad_token_id, on_step=on_step, engine=st.engine)
        return [(p, new, self.lm.continuation(p, new)) for p, new in zip(ids, out)]

    def generate(self, req, by_sae: dict[int, list[FeatureClamp]], check: Callable,
                 emit: Callable | None = None) -> dict:
        """The unsteered and steered continuations (``GenerateResponse`` fields); ``emit(event)`` after each
        step with both texts so far."""
        t0 = time.perf_counter()
        seed = draw_seed(req.seed, req.temperature)  # one seed for both texts, reported so they can be redone
        kw = dict(mode=req.mode, max_new_tokens=req.max_new_tokens, temperature=req.temperature, top_p=req.top_p,
                  seed=seed)
        prompt_ids = self.steerers[0].tokens(req.prompt)
        toks: dict[str, list[int]] = {"unsteered": [], "steered": []}
        step = [0]

        def on_step_for(names: list[str]):
            def on_step(rows, tokens):
                check()
                for r, t in zip(rows.tolist(), tokens.tolist()):
                    toks[names[r]].append(int(t))
                if emit is not None:
                    emit({"event": "step", "step": step[0],
                          **{n: {"text": self.lm.continuation(prompt_ids, toks[n]), "n_tokens": len(toks[n])}
                             for n in toks}})
                step[0] += 1
            return on_step

        if req.temperature == 0 and clamp_mode(req.mode).keeps_unclamped:  # an empty row is the unsteered run
            base, steered = self._many([req.prompt, req.prompt], {s: [[], c] for s, c in by_sae.items()},
                                       on_step_for(["unsteered", "steered"]), kw)
        else:
            (base,) = self._many([req.prompt], {}, on_step_for(["unsteered"]), kw)
            (steered,) = self._many([req.prompt], {s: [c] for s, c in by_sae.items()}, on_step_for(["steered"]), kw)
        return {
            "prompt": req.prompt, "prompt_tokens": base[0],
            "clamps": [{"sae": s, **c.to_dict()} for s, cs in sorted(by_sae.items()) for c in cs],
            "mode": req.mode, "max_new_tokens": req.max_new_tokens, "temperature": req.temperature,
            "top_p": req.top_p, "seed": seed,
            "unsteered": {"tokens": base[1], "text": base[2]},
            "steered": {"tokens": steered[1], "text": steered[2]},
            "elapsed_s": round(time.perf_counter() - t0, 4),
        }
