"""The Python API in one object: a model, an SAE at its hook, and the practical session's steps.

``Steerer`` composes the parts (model loading, hook sites, SAE, clamping, the engine); each step is a
short method returning plain data.

>>> st = Steerer("gpt2-small", "openai:v5_32k/resid_post_mlp/6")       # doctest: +SKIP
>>> st.generate("Happiness is", clamps={123: 20}).text                  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import torch
from torch import Tensor

from saesteer import assets
from saesteer.engine import GenerationConfig, generate_ids
from saesteer.errors import SaesteerError
from saesteer.evaluation.reconstruction import ReconstructionStats, reconstruction_stats, top_active
from saesteer.models.hook_sites import hook_site
from saesteer.models.loading import LoadedModel, as_loaded
from saesteer.saes import load_sae
from saesteer.saes.base import SAE
from saesteer.steering.clamp import FeatureClamp, as_clamps
from saesteer.steering.hooks import make_clamp, record, resolve_hook_name


def check_hook_override(sae: SAE, hook: str, force: bool) -> None:
    """Refuse to read an SAE at another hook than the one it was trained at, unless forced."""
    if sae.hook_name and hook != sae.hook_name and not force:
        raise SaesteerError(f"this SAE was trained at {sae.hook_name}, not {hook}; its features mean nothing"
                            " elsewhere: drop --hook, or pass --force-hook (force_hook=True) to use it anyway")


def draw_seed(seed: int | None, temperature: float) -> int | None:
    """The seed to sample with: the one given, else a fresh one from torch's generator; None when greedy."""
    if temperature <= 0:
        return seed
    if seed is None:
        return int(torch.randint(0, 2**31 - 1, ()).item())
    return int(seed)


@dataclass
class Generation:
    """One generated continuation: ids and text of the prompt and of the new tokens only."""

    prompt: str | None
    prompt_tokens: list[int]
    tokens: list[int]
    text: str
    clamps: list[FeatureClamp] = field(default_factory=list)
    mode: str = "delta"
    seed: int | None = None
    """The sampling seed used (drawn when none was given); None for greedy decoding."""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["clamps"] = [c.to_dict() for c in self.clamps]
        return d


@dataclass
class ForwardResult:
    """One forward pass of a prompt: the next predicted token and the activation at the hook."""

    prompt_tokens: list[int]
    next_token_id: int
    next_token: str
    activation: Tensor
    """``[positions, d]`` at the hook site."""


@dataclass
class ReconstructionReport:
    """Reconstruction of one prompt's activations at the hook, with the most active features."""

    prompt: str
    hook: str
    next_token: str
    stats: ReconstructionStats
    top_features: list[tuple[int, float]]
    """The most active latents at the last position."""

    def to_dict(self) -> dict:
        return {
            "prompt": self.prompt,
            "hook": self.hook,
            "next_token": self.next_token,
            **self.stats.to_dict(),
            "top_features": [{"feature": f, "value": v} for f, v in self.top_features],
        }


class Steerer:
    """A model and an SAE, ready to record, reconstruct and steer.

    ``model``: a name (``gpt2-small``), hub id, local HF directory, ``LoadedModel`` or ``nn.Module`` (then pass
    ``tokenizer``). ``sae``: a spec (``openai:v5_32k/resid_post_mlp/6``, ``saelens:REPO/FOLDER``), a local path,
    an ``SAE`` object, or None (recording and free-form edits only). ``hook``: the hook site, when the SAE does
    not name one or to override it.
    """

    def __init__(self, model="gpt2-small", sae=None, *, hook: str | None = None, tokenizer=None,
                 device: str | None = "cpu", dtype=None, engine: str = "auto", force_hook: bool = False):
        self.lm: LoadedModel = as_loaded(model, tokenizer, device=device, dtype=dtype)
        self.sae_name = str(sae) if isinstance(sae, (str, bytes)) or hasattr(sae, "__fspath__") else None
        if self.sae_name is not None:
            sae = load_sae(assets.sae_path(self.sae_name), device=self.lm.device)
        if isinstance(sae, SAE) and hook:
            check_hook_override(sae, hook, force_hook)
            sae = sae.with_hook(hook)
        self.sae: SAE | None = sae.to(self.lm.device) if sae is not None else None
        self.hook_name = resolve_hook_name(self.sae, hook) if self.sae is not None else hook
        if self.hook_name:
            hook_site(self.lm.model, self.hook_name)  # validate early, with a clear message
            if self.sae is not None:
                make_clamp(self.lm.model, self.sae, [], hook_name=self.hook_name)  # width check
        self.engine = engine

    def __repr__(self) -> str:
        params = sum(p.numel() for p in self.lm.model.parameters())
        sae = "no SAE" if self.sae is None else f"SAE {self.sae_name or 'object'} ({self.sae.d_sae} latents)"
        return (f"Steerer(model {self.lm.name!r} ({params:,} parameters, {self.lm.device}), {sae},"
                f" hook {self.hook_name!r}, engine {self.engine!r})")

    # ----------------------------------------------------------------- helpers
    @property
    def model(self):
        return self.lm.model

    def need_sae(self) -> SAE:
        """The SAE, or a one-line error saying how to give one."""
        if self.sae is None:
            raise SaesteerError("this needs an SAE; pass sae= (CLI: --sae SPEC_OR_PATH)")
        return self.sae

    def need_hook(self) -> str:
        """The hook site, or a one-line error saying how to choose one."""
        if not self.hook_name:
            raise SaesteerError("no hook site chosen; pass hook= (CLI: --hook blocks.L.hook_resid_post)")
        return self.hook_name


    def tokens(self, prompt: str | None, *, prepend_bos: bool = True) -> list[int]:
        """Prompt ids; ``None`` or ``""`` means the BOS token alone."""
        return self.lm.encode(prompt or "", prepend_bos=prepend_bos)

    def check_prompt(self, prompt: str | None, *, max_new_tokens: int = 0, prepend_bos: bool = True) -> list[int]:
        """The prompt's ids; a one-line error (before any work) when it is not valid text or, with
        ``max_new_tokens`` more, does not fit in the model's positions."""
        ids = self.tokens(prompt, prepend_bos=prepend_bos)
        self.lm.check_fits(len(ids), max_new_tokens)
        return ids

    # ----------------------------------------------------------------- steps
    @torch.no_grad()
    def run(self, prompt: str, *, prepend_bos: bool = True, hook: str | None = None) -> ForwardResult:
        """Run a prompt once; return the next predicted token and the activation at the hook."""
        name = hook or self.need_hook()
        ids = self.check_prompt(prompt, prepend_bos=prepend_bos)
        with record(self.lm.model, name) as rec:
            logits = self.lm.model(input_ids=torch.tensor([ids], device=self.lm.device)).logits
        nxt = int(logits[0, -1].argmax())
        text = self.lm.continuation(ids, [nxt]) or self.lm.token_strings([nxt])[0]  # a special token: its name
        return ForwardResult(ids, nxt, text, rec[name][0])

    def reconstruct(self, prompt: str, *, top_n: int = 10, prepend_bos: bool = True) -> ReconstructionReport:
        """Reconstruct the prompt's activations with the SAE and measure the quality.

        Stats skip the BOS position, whose activation is an outlier no SAE is trained to reconstruct.
        """
        sae = self.need_sae()
        run = self.run(prompt, prepend_bos=prepend_bos)
        skip = 1 if prepend_bos and len(run.prompt_tokens) > 1 else 0
        stats = reconstruction_stats(sae, run.activation, skip_first=skip)
        return ReconstructionReport(prompt, self.hook_name, run.next_token, stats,
                                    top_active(sae, run.activation[-1], top_n))

    def _edits(self, clamps, rows, mode, edit: Callable | None):
        edits = []
        if edit is not None:
            edits.append((self.need_hook(), edit))
        if clamps is not None or rows is not None:
            edits.append(make_clamp(self.lm.model, self.need_sae(), clamps, rows=rows, mode=mode,
                                    hook_name=self.hook_name))
        return edits

    def generate_many(self, prompts: Sequence[str | None], *, clamps=None, rows=None, mode: str = "delta",
                      edit: Callable | None = None, max_new_tokens: int = 10, temperature: float = 0.0,
                      top_p: float = 1.0, seed: int | None = None, prepend_bos: bool = True,
                      stop_at_eos: bool = True, dtype=None, batch_size: int | None = None,
                      on_step=None) -> list[Generation]:
        """Generate a continuation for each prompt (``None`` = BOS alone), in one batch.

        Sampling (``temperature > 0``) without a ``seed`` draws one from torch's random generator (so
        ``torch.manual_seed`` fixes it and repeated calls differ); each ``Generation`` reports the seed used.
        Generation stops at the end-of-text token unless ``stop_at_eos=False``. ``clamps`` are shared by every row; ``rows`` gives each row its own clamp set; ``edit`` is any
        function of the activation at the hook, applied before the clamps.
        """
        seed = draw_seed(seed, temperature)
        config = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                  seed=seed, stop_at_eos=stop_at_eos)
        if rows is not None and len(rows) != len(prompts):
            raise SaesteerError(f"rows gives {len(rows)} clamp sets for {len(prompts)} prompts")
        ids = [self.check_prompt(p, max_new_tokens=max_new_tokens, prepend_bos=prepend_bos) for p in prompts]
        edits = self._edits(clamps, rows, mode, edit)
        out = generate_ids(self.lm.model, ids, config, edits=edits, eos_token_id=self.lm.eos_token_id,
                           pad_token_id=self.lm.pad_token_id, on_step=on_step, engine=self.engine, dtype=dtype,
                           batch_size=batch_size)
        results = []
        for b, (prompt, p_ids, new) in enumerate(zip(prompts, ids, out)):
            row_clamps = as_clamps(rows[b]) if rows is not None else as_clamps(clamps)
            results.append(Generation(prompt, p_ids, new, self.lm.continuation(p_ids, new), row_clamps, mode,
                                      seed))
        return results

    def generate(self, prompt: str | None = None, **kwargs) -> Generation:
        """One continuation of ``prompt`` (BOS alone when None); keywords as ``generate_many``."""
        return self.generate_many([prompt], **kwargs)[0]

    def batch_features(self, features: Sequence[int], value: float | Sequence[float], *, prompt: str | None = None,
                       mode: str = "delta", max_new_tokens: int = 10, **kwargs) -> list[Generation]:
        """One row per feature, row b clamping ``features[b]`` to ``value`` (or to ``value[b]`` when it is a
        sequence, e.g. each feature's own scale): the practical session's Q9."""
        values = [value] * len(features) if isinstance(value, (int, float)) else list(value)
        if len(values) != len(features):
            raise SaesteerError(f"{len(values)} values for {len(features)} features")
        rows = [[FeatureClamp(int(f), float(v))] for f, v in zip(features, values)]
        return self.generate_many([prompt] * len(rows), rows=rows, mode=mode, max_new_tokens=max_new_tokens,
                                  **kwargs)
