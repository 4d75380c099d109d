"""The default model and SAE, and the embedded pair that replaces them where they cannot be fetched.

With network (or with both files cached) the defaults are GPT-2 small and OpenAI's v5 32k layer-6 SAE.
Without it, every command that was left on its defaults runs on the embedded stories260K model and its
SAE, and says so in one line, instead of failing after minutes of retries.
"""

from __future__ import annotations

from dataclasses import dataclass

from saesteer import assets, net
from saesteer.saes.openai import parse_spec

DEFAULT_MODEL = "gpt2-small"
DEFAULT_SAE = "openai:v5_32k/resid_post_mlp/6"
DEFAULT_MODEL_REPO = "openai-community/gpt2"


@dataclass(frozen=True)
class Choice:
    """The model and SAE to load, and the one-line reason when they are not the ones asked for."""

    model: str
    sae: str | None
    hook: str | None
    note: str | None = None


def _model_cached(repo: str = DEFAULT_MODEL_REPO) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return all(isinstance(try_to_load_from_cache(repo, f), str) for f in ("config.json", "model.safetensors"))


def _sae_cached(spec: str = DEFAULT_SAE) -> bool:
    return parse_spec(spec).cache_path().is_file()


def why_defaults_unavailable() -> str | None:
    """None when the default model and SAE can be loaded (cached, or their hosts answer); else why not."""
    model_ok, sae_ok = _model_cached(), _sae_cached()
    if model_ok and sae_ok:
        return None
    if net.offline_by_env():
        return "offline (HF_HUB_OFFLINE or SAESTEER_OFFLINE is set)"
    if not model_ok and not net.hub_reachable():
        return f"the Hugging Face hub ({net.hub_url()}) is unreachable"
    if not sae_ok:
        url = parse_spec(DEFAULT_SAE).url()
        if not net.host_reachable(url):
            return "OpenAI's SAE storage is unreachable"
    return None


def choose(model: str, sae: str | None, hook: str | None) -> Choice:
    """The defaults if they can be loaded, else the embedded pair with a note; other choices unchanged."""
    if (model, sae, hook) != (DEFAULT_MODEL, DEFAULT_SAE, None):
        return Choice(model, sae, hook)
    why = why_defaults_unavailable()
    if why is None:
        return Choice(model, sae, hook)
    note = (f"{why}: using the embedded {assets.EMBEDDED_NAME} model and its SAE instead of {DEFAULT_MODEL}"
            f" and {DEFAULT_SAE}")
    return Choice(assets.EMBEDDED_NAME, assets.EMBEDDED_NAME, None, note)
