"""OpenAI's GPT-2 small SAEs: ``openai:FAMILY/LOCATION/LAYER`` specs, their URLs, and ``.pt`` state dicts.

The files are ``nn.Module.state_dict()`` pickles (see the reference README): ``encoder.weight
[n_latents, d_model]``, ``latent_bias [n_latents]``, ``decoder.weight [d_model, n_latents]``,
``pre_bias [d_model]``, plus ``activation`` ("TopK"/"ReLU") and ``activation_state_dict``
(``{"k": 32, "postact_fn": "ReLU"}``). They are read only with ``torch.load(weights_only=True)``:
a file that needs arbitrary unpickling is refused, never executed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from saesteer.errors import SaesteerError
from saesteer.saes.base import SAE, SAEConfig
from saesteer.io import default_cache_dir
from saesteer.saes.download import download_file
from saesteer.saes.tensors import read_state_dict

DEFAULT_BASE_URL = "https://openaipublic.blob.core.windows.net/sparse-autoencoder/gpt2-small/"
BASE_URL_ENV = "SAESTEER_OPENAI_BASE_URL"
MODEL_NAME = "gpt2-small"
N_LAYERS = 12

LOCATION_HOOKS = {
    "mlp_post_act": "blocks.{layer}.mlp.hook_post",
    "resid_delta_attn": "blocks.{layer}.hook_attn_out",
    "resid_post_attn": "blocks.{layer}.hook_resid_mid",
    "resid_delta_mlp": "blocks.{layer}.hook_mlp_out",
    "resid_post_mlp": "blocks.{layer}.hook_resid_post",
}
"""OpenAI location -> TransformerLens hook name of block ``layer``."""

NEURONPEDIA_SITES = {
    "resid_post_mlp": "res_post",
    "resid_post_attn": "res_mid",
    "resid_delta_attn": "att",
    "resid_delta_mlp": "mlp",
}
"""v5 location -> Neuronpedia source-set stem (``{layer}-{stem}_{32k|128k}-oai`` of model gpt2-small)."""


@dataclass(frozen=True)
class Family:
    """One release of OpenAI GPT-2 small SAEs."""

    dir_suffix: str
    """Appended to the location to name its folder, e.g. ``_v5_32k`` -> ``resid_post_mlp_v5_32k/``."""
    locations: tuple[str, ...]
    n_latents: int
    k: int | None
    """TopK's k (v5); None for ReLU families, which also do not normalise their inputs."""
    neuronpedia_width: str | None = None


_V5_LOCATIONS = ("resid_delta_attn", "resid_delta_mlp", "resid_post_attn", "resid_post_mlp")
FAMILIES = {
    "v1": Family("", ("mlp_post_act", "resid_delta_mlp"), 32768, None),
    "v4": Family("_v4", ("mlp_post_act", "resid_delta_mlp"), 32768, None),
    "v5_32k": Family("_v5_32k", _V5_LOCATIONS, 32768, 32, "32k"),
    "v5_128k": Family("_v5_128k", _V5_LOCATIONS, 131072, 32, "128k"),
}

SPEC_FORM = "openai:FAMILY/LOCATION/LAYER, e.g. openai:v5_32k/resid_post_mlp/6"
_PATH_PATTERN = re.compile(r"(?P<location>[a-z_]+?)(?P<suffix>_v4|_v5_32k|_v5_128k)?/autoencoders/(?P<layer>\d+)\.pt")


@dataclass(frozen=True)
class OpenAISpec:
    """A parsed, validated ``openai:FAMILY/LOCATION/LAYER``."""

    family: str
    location: str
    layer: int

    @property
    def relative_path(self) -> str:
        """Path under the base URL, e.g. ``resid_post_mlp_v5_32k/autoencoders/6.pt``."""
        return f"{self.location}{FAMILIES[self.family].dir_suffix}/autoencoders/{self.layer}.pt"

    @property
    def hook_name(self) -> str:
        return LOCATION_HOOKS[self.location].format(layer=self.layer)

    @property
    def neuronpedia_id(self) -> str | None:
        width = FAMILIES[self.family].neuronpedia_width
        site = NEURONPEDIA_SITES.get(self.location)
        if width is None or site is None:
            return None
        return f"{MODEL_NAME}/{self.layer}-{site}_{width}-oai"

    def url(self, base_url: str | None = None) -> str:
        base = base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
        return base.rstrip("/") + "/" + self.relative_path

    def cache_path(self, cache_dir: str | os.PathLike | None = None) -> Path:
        """``CACHE/openai/gpt2-small/<path under base>``."""
        root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        return root / "openai" / MODEL_NAME / self.relative_path

    def extra(self) -> dict:
        out = {"format": "openai", "family": self.family, "location": self.location, "layer": self.layer,
               "model_name": MODEL_NAME}
        if self.neuronpedia_id:
            out["neuronpedia_id"] = self.neuronpedia_id
        return out


def parse_spec(spec: str) -> OpenAISpec:
    """``openai:v5_32k/resid_post_mlp/6`` (or without the prefix) -> :class:`OpenAISpec`, or a one-line error."""
    body = spec[len("openai:"):] if spec.startswith("openai:") else spec
    parts = body.strip("/").split("/")
    if len(parts) != 3:
        raise SaesteerError(f"bad OpenAI SAE spec {spec!r}; expected {SPEC_FORM}")
    family, location, layer_text = parts
    if family not in FAMILIES:
        raise SaesteerError(
            f"unknown OpenAI SAE family {family!r} in {spec!r}; choose one of {', '.join(FAMILIES)}"
        )
    allowed = FAMILIES[family].locations
    if location not in allowed:
        raise SaesteerError(
            f"unknown location {location!r} for OpenAI family {family} in {spec!r}; choose one of"
            f" {', '.join(allowed)}"
        )
    if not layer_text.isdigit() or not 0 <= int(layer_text) < N_LAYERS:
        raise SaesteerError(
            f"bad layer {layer_text!r} in {spec!r}; GPT-2 small has layers 0..{N_LAYERS - 1}"
        )
    return OpenAISpec(family, location, int(layer_text))


def spec_from_path(path: str | os.PathLike) -> OpenAISpec | None:
    """Recognise OpenAI's own layout (``resid_post_mlp_v5_32k/autoencoders/6.pt``) in a local path."""
    parts = Path(path).parts
    match = _PATH_PATTERN.fullmatch("/".join(parts[-3:]))
    if not match:
        return None
    family = {None: "v1", "_v4": "v4", "_v5_32k": "v5_32k", "_v5_128k": "v5_128k"}[match["suffix"]]
    try:
        return parse_spec(f"{family}/{match['location']}/{match['layer']}")
    except SaesteerError:
        return None


OPENAI_KEYS = ("encoder.weight", "latent_bias", "decoder.weight", "pre_bias")


def is_openai_state_dict(state: dict) -> bool:
    return all(k in state for k in ("encoder.weight", "decoder.weight"))


def sae_from_state_dict(
    state: dict,
    *,
    source: str,
    hook_name: str | None = None,
    activation: str | None = None,
    k: int | None = None,
    extra: dict | None = None,
) -> SAE:
    """Build an :class:`SAE` from OpenAI keys, transposing into SAELens layout.

    ``W_enc = encoder.weight.T [d_model, n_latents]``, ``W_dec = decoder.weight.T [n_latents, d_model]``,
    ``b_enc = latent_bias``, ``b_dec = pre_bias``. The activation comes from the state dict's
    ``activation`` entry unless ``activation`` ("relu"/"topk") is given (for safetensors files, which
    cannot hold strings); TopK implies layer-norm inputs, as in OpenAI's v5.
    """
    missing = [key for key in OPENAI_KEYS if key not in state]
    if missing:
        raise SaesteerError(f"{source} is not an OpenAI SAE state dict: missing {', '.join(missing)}")
    tensors = {key: state[key] for key in OPENAI_KEYS}
    for key, value in tensors.items():
        if not isinstance(value, Tensor):
            raise SaesteerError(f"{source}: {key} is a {type(value).__name__}, not a tensor")
    if activation is None:
        activation, k = _activation_of(state, source)
    if tensors["encoder.weight"].dim() != 2 or tensors["decoder.weight"].dim() != 2:
        raise SaesteerError(f"{source}: encoder.weight and decoder.weight must be matrices")
    W_enc: Tensor = tensors["encoder.weight"].T.contiguous()  # contiguous: same maths as a saved copy
    W_dec: Tensor = tensors["decoder.weight"].T.contiguous()
    cfg = SAEConfig(
        d_in=int(W_enc.shape[0]),
        d_sae=int(W_enc.shape[1]),
        activation=activation,
        k=k,
        normalize="layer_norm" if activation == "topk" else "none",
        apply_b_dec_to_input=True,
        hook_name=hook_name,
        source=source,
        extra=dict(extra or {"format": "openai"}),
    )
    return SAE(cfg, W_enc, tensors["latent_bias"], W_dec, tensors["pre_bias"])


def _activation_of(state: dict, source: str) -> tuple[str, int | None]:
    """("relu", None) or ("topk", k) from ``activation`` / ``activation_state_dict``; missing means ReLU."""
    name = state.get("activation", "ReLU")
    if name == "ReLU":
        return "relu", None
    if name != "TopK":
        raise SaesteerError(f"{source}: unsupported OpenAI activation {name!r}; saesteer supports ReLU and TopK")
    params = state.get("activation_state_dict") or {}
    if "k" not in params:
        raise SaesteerError(f"{source}: a TopK SAE needs activation_state_dict['k']")
    postact = params.get("postact_fn", "ReLU")
    if postact != "ReLU":
        raise SaesteerError(f"{source}: unsupported TopK post-activation {postact!r}; saesteer supports ReLU")
    k = params["k"]
    return "topk", int(k.item() if isinstance(k, Tensor) else k)


def load_openai_file(path: str | os.PathLike, *, source: str | None = None) -> SAE:
    """A local OpenAI ``.pt``. Its hook is known only if the path follows OpenAI's layout; else None."""
    path = Path(path)
    state = read_state_dict(path)
    known = spec_from_path(path)
    extra = known.extra() if known else {"format": "openai"}
    return sae_from_state_dict(
        state,
        source=source or str(path),
        hook_name=known.hook_name if known else None,
        extra=extra,
    )


def load_openai_spec(
    spec: str,
    *,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> SAE:
    """``openai:FAMILY/LOCATION/LAYER``: download into the cache (once), then load with the family's semantics."""
    parsed = parse_spec(spec)
    path = download_file(parsed.url(), parsed.cache_path(cache_dir), progress=progress)
    state = read_state_dict(path)
    family = FAMILIES[parsed.family]
    expected = "relu" if family.k is None else "topk"
    if "activation" in state:
        activation, k = _activation_of(state, str(path))
    else:  # the family's table entry is authoritative when the file is silent
        activation, k = expected, family.k
    if activation != expected:
        raise SaesteerError(
            f"{path} says its activation is {activation}, but OpenAI {parsed.family} SAEs use {expected};"
            " the cached file is wrong: delete it and load again"
        )
    return sae_from_state_dict(
        state,
        source=spec,
        hook_name=parsed.hook_name,
        activation=activation,
        k=k,
        extra={**parsed.extra(), "url": parsed.url(), "path": str(path)},
    )
