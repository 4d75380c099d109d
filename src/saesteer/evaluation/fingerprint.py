"""Fingerprints: short hashes of a model's and an SAE's weights, equal for the same weights on any device or path."""

from __future__ import annotations

import hashlib
import json

import torch
from torch import Tensor


def digest_tensor(h, name: str, t: Tensor, max_elements: int = 1 << 16) -> None:
    """Feed ``t``'s name, shape, dtype and a strided sample of its values (at most ``max_elements``) to ``h``."""
    t = t.detach()
    h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
    flat = t.reshape(-1)
    step = max(1, -(-flat.numel() // max_elements))
    sample = flat[::step].contiguous().cpu()
    h.update(sample.view(torch.uint8).numpy().tobytes())


_ARCH_KEYS = ("model_type", "n_head", "num_attention_heads", "num_key_value_heads", "layer_norm_epsilon",
              "rms_norm_eps", "rope_theta", "activation_function", "hidden_act", "scale_attn_weights",
              "scale_attn_by_inverse_layer_idx", "rope_parameters", "rope_scaling", "rotary_dim", "rotary_pct",
              "partial_rotary_factor", "window_size", "attention_layers", "sliding_window", "use_parallel_residual")
"""Config fields that change a model's outputs for the same weights (transformers 5 keeps RoPE's theta and
partial factor in ``rope_parameters``; GPT-Neo's local window, GPT-J's rotary width, GPT-NeoX's parallel blocks)."""


def model_fingerprint(model) -> str:
    """A short hash of a model's architecture constants and weights (names, shapes, dtypes and a strided
    sample of every tensor's values). Equal for the same weights on any device or path; a different
    checkpoint or dtype changes it."""
    h = hashlib.sha256()
    config = getattr(model, "config", None)
    arch = {k: getattr(config, k) for k in _ARCH_KEYS if config is not None and hasattr(config, k)}
    h.update(json.dumps(arch, sort_keys=True, default=str).encode())
    for name, p in model.named_parameters():
        digest_tensor(h, name, p)
    return h.hexdigest()[:16]


def sae_fingerprint(sae) -> str:
    """A short hash of an SAE's maths (activation, k, normalisation) and weights; the hook is not part of it."""
    h = hashlib.sha256()
    c = sae.cfg
    h.update(json.dumps([c.d_in, c.d_sae, c.activation, c.k, c.normalize, c.apply_b_dec_to_input]).encode())
    base = ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")
    for name in base:
        t = getattr(sae, name, None)
        if t is not None:
            digest_tensor(h, name, t)
    for name, t in sae.named_parameters():  # a family's own weights (gated b_mag/r_mag, sparsify W_skip)
        if name not in base:
            digest_tensor(h, name, t)
    return h.hexdigest()[:16]

