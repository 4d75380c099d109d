"""Which models the fast engine runs, and the packed copies of model and SAE weights it runs them with.

Packed copies are built once per (model or SAE, dtype, device, switches) and cached until a parameter is
replaced or modified in place.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

from saesteer.engine.batching import CPU_ROW_BLOCK, row_block
from saesteer.engine.generate import GenerationConfig
from saesteer.engine.gpt2_decoder import GPT2Decoder, gpt2_unsupported
from saesteer.engine.gpt_neo_decoder import GPTNeoDecoder, gpt_neo_unsupported
from saesteer.engine.kernels import Decoder, Linear
from saesteer.engine.llama_decoder import LlamaDecoder, llama_unsupported
from saesteer.engine.options import FastOptions
from saesteer.errors import SaesteerError
from saesteer.models.loading import parse_dtype
from saesteer.saes.base import SAE

TOPK_SCREEN_STRIDE = 16
TOPK_SCREEN_PER_K = 64
"""Automatic TopK screen: every ``stride``-th latent (at most 16), keeping at least 64 k latents."""


def decoder_class(model: nn.Module):
    """``(Decoder subclass, unsupported-check)`` for the model's family, or ``(None, None)``: families without
    a fast decoder (Gemma, GPT-NeoX, Phi, ...) take the reference loop."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type == "gpt2":
        return GPT2Decoder, gpt2_unsupported
    if model_type == "llama":
        return LlamaDecoder, llama_unsupported
    if model_type == "gpt_neo":
        return GPTNeoDecoder, gpt_neo_unsupported
    return None, None


def unsupported_reason(model: nn.Module, config: GenerationConfig | None = None) -> str | None:
    """Why the fast decoder cannot run ``model`` with ``config`` (None when it can)."""
    model = getattr(model, "model", model) if not isinstance(model, nn.Module) else model
    cls, check = decoder_class(model)
    if cls is None:
        return f"model type {getattr(getattr(model, 'config', None), 'model_type', None)!r}"
    if config is not None and not config.use_cache:
        return "use_cache=False asks for the uncached reference loop"
    try:
        param = next(model.parameters())
    except StopIteration:
        return "model has no parameters"
    if param.device.type not in ("cpu", "cuda"):
        return f"device {param.device.type}"
    if model.training:
        return "model in training mode"
    return check(model)


def supports(model: nn.Module, config: GenerationConfig) -> bool:
    """True when ``generate_ids_fast`` can run ``model`` with ``config``."""
    return unsupported_reason(model, config) is None


_DECODERS: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()
_SAE_PACKS: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def _signature(module: nn.Module) -> tuple:
    """Changes whenever a parameter is replaced or modified in place (so stale packs are rebuilt)."""
    return tuple((p.data_ptr(), p._version, p.dtype, str(p.device)) for p in module.parameters())


def clear_cache() -> None:
    """Drop every packed copy of model and SAE weights (they are rebuilt on the next call)."""
    _DECODERS.clear()
    _SAE_PACKS.clear()


def _cached(store, owner: nn.Module, key, build):
    sig = _signature(owner)
    per_owner = store.setdefault(owner, {})
    hit = per_owner.get(key)
    if hit is not None and hit[0] == sig:
        return hit[1]
    per_owner.pop(key, None)  # the stale copy goes before the new one is built
    value = build()
    per_owner[key] = (sig, value)
    return value


def decoder_for(model: nn.Module, dtype: torch.dtype | str | None = None,
                options: FastOptions = FastOptions()) -> Decoder:
    """The packed decoder of ``model`` in ``dtype`` (default: the model's dtype), built once and cached."""
    dtype = parse_dtype(dtype) or next(model.parameters()).dtype
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise SaesteerError(f"the fast engine computes in float32, bfloat16 or float16, not {dtype}")
    device = next(model.parameters()).device

    def build() -> Decoder:
        cls, check = decoder_class(model)
        reason = check(model) if check else "unknown model type"
        if cls is None or reason:
            raise SaesteerError(f"the fast engine does not support this model ({reason})")
        return cls(model, dtype, device, screen=options.unembed_screen, pack=options.pack_weights)

    key = (dtype, str(device), options.unembed_screen, options.pack_weights)
    return _cached(_DECODERS, model, key, build)


class SAEPack:
    """An SAE's fused encoder (``SAE.fused_encoder``) packed for the compute dtype: every latent (TopK needs
    every pre-activation), and a strided subset that bounds the TopK threshold from below. The SAE's own
    float32 tensors stay as they are, for the per-feature gathers."""

    def __init__(self, sae: SAE, dtype: torch.dtype, device: torch.device, screen_stride: int | None = None,
                 pack: bool = True):
        enc = sae.fused_encoder()
        if enc is None:
            raise SaesteerError("this SAE has no fused form; its clamps run through the SAE's own encode")
        self.sae, self.enc = sae, enc
        self.k = enc.k
        self.sae_dtype = enc.W_enc.dtype
        self.dtype = dtype
        self.row_block = row_block(device)
        self.encoder = self.screen = None
        if enc.k is not None:  # only TopK needs every pre-activation
            self.encoder = Linear(enc.W_enc.t(), enc.b_enc, dtype=dtype, device=device, rows_hint=CPU_ROW_BLOCK,
                                  pack=pack)
            d_sae = enc.W_enc.shape[1]
            stride = screen_stride or max(1, min(TOPK_SCREEN_STRIDE, d_sae // (TOPK_SCREEN_PER_K * enc.k)))
            self.stride = stride
            if stride > 1:
                self.col_norm_max = float(enc.W_enc.float().norm(dim=0).max())
                sub = torch.arange(0, d_sae, stride, device=device)
                self.screen = Linear(enc.W_enc.t()[sub], enc.b_enc[sub], dtype=dtype, device=device,
                                     rows_hint=CPU_ROW_BLOCK, pack=pack)
        self.screened_tokens = 0
        """Tokens whose clamped latents the screen proved inactive (their full encode skipped): a counter
        that lets tests see the screen at work."""


def sae_pack(sae: SAE, dtype: torch.dtype, options: FastOptions = FastOptions()) -> SAEPack:
    """The cached :class:`SAEPack` of ``sae`` for ``dtype`` and these switches."""
    key = (dtype, options.topk_screen_stride, options.pack_weights)
    return _cached(_SAE_PACKS, sae, key, lambda: SAEPack(sae, dtype, sae.device, options.topk_screen_stride,
                                                         options.pack_weights))
