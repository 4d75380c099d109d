"""Writers for small SAE files in the real on-disk key names, shared by the SAE loading tests.

OpenAI: ``nn.Module.state_dict()`` of the reference ``Autoencoder`` plus ``activation`` /
``activation_state_dict``. SAELens: ``cfg.json`` + ``sae_weights.safetensors``.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors.torch import save_file


def openai_state_dict(
    d_model: int = 16,
    n_latents: int = 64,
    *,
    activation: str | None = "TopK",
    k: int = 4,
    seed: int = 0,
    latent_bias: torch.Tensor | None = None,
) -> OrderedDict:
    """An OpenAI SAE state dict: ``encoder.weight [n_latents, d_model]``, ``decoder.weight [d_model, n_latents]``.

    ``activation=None`` leaves the ``activation`` entry out (as old files may).
    """
    g = torch.Generator().manual_seed(seed)
    decoder = torch.randn(d_model, n_latents, generator=g)
    decoder = decoder / decoder.norm(dim=0, keepdim=True)  # unit-norm columns, as trained
    sd = OrderedDict()
    sd["pre_bias"] = torch.randn(d_model, generator=g) * 0.1
    sd["encoder.weight"] = torch.randn(n_latents, d_model, generator=g) / d_model**0.5
    sd["latent_bias"] = torch.randn(n_latents, generator=g) * 0.1 if latent_bias is None else latent_bias
    sd["decoder.weight"] = decoder
    sd["stats_last_nonzero"] = torch.zeros(n_latents, dtype=torch.long)
    sd["latents_activation_frequency"] = torch.rand(n_latents, generator=g)
    sd["latents_mean_square"] = torch.rand(n_latents, generator=g)
    if activation is not None:
        sd["activation"] = activation
        sd["activation_state_dict"] = OrderedDict(k=k, postact_fn="ReLU") if activation == "TopK" else OrderedDict()
    return sd


def write_openai_pt(path: Path, state: OrderedDict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def saelens_tensors(d_in: int = 16, d_sae: int = 48, *, seed: int = 0, jumprelu: bool = False) -> dict:
    """SAELens weights: ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``, ``b_dec [d_in]``."""
    g = torch.Generator().manual_seed(seed)
    tensors = {
        "W_enc": torch.randn(d_in, d_sae, generator=g) / d_in**0.5,
        "b_enc": torch.randn(d_sae, generator=g) * 0.1,
        "W_dec": torch.randn(d_sae, d_in, generator=g) / d_in**0.5,
        "b_dec": torch.randn(d_in, generator=g) * 0.1,
    }
    if jumprelu:
        tensors["threshold"] = torch.rand(d_sae, generator=g) * 0.5
    return tensors


def write_saelens_folder(folder: Path, cfg: dict, tensors: dict, *, weights_metadata: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "sae_weights.safetensors"),
              metadata=weights_metadata)
    return folder


def new_cfg(d_in: int = 16, d_sae: int = 48, **overrides) -> dict:
    """A SAELens >= 6 config: architecture at top level, hook and model names under ``metadata``."""
    cfg = {
        "architecture": "standard",
        "d_in": d_in,
        "d_sae": d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "sae_lens_version": "6.5.1",
            "model_name": "gpt2-small",
            "hook_name": "blocks.3.hook_resid_pre",
            "neuronpedia_id": "gpt2-small/3-test",
        },
    }
    cfg.update(overrides)
    return cfg


def old_cfg(d_in: int = 16, d_sae: int = 48, **overrides) -> dict:
    """A pre-6.0 config, shaped like the OpenAI v5 mirrors on the Hub (``hook_point``, ``activation_fn_str``)."""
    cfg = {
        "architecture": "standard",
        "d_in": d_in,
        "d_sae": d_sae,
        "dtype": "torch.float32",
        "device": "cuda",
        "model_name": "gpt2-small",
        "hook_point": "blocks.6.hook_resid_post",
        "hook_point_layer": 6,
        "hook_point_head_index": None,
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": 5},
        "apply_b_dec_to_input": True,
        "finetuning_scaling_factor": False,
        "context_size": 64,
        "prepend_bos": False,
        "normalize_activations": "layer_norm",
    }
    cfg.update(overrides)
    return cfg
