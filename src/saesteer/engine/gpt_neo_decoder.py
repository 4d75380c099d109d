"""GPT-Neo's forward (TinyStories' family), step by step over a static KV cache, on the Hugging Face model's own
weights: GPT-2's decoder with separate bias-free q/k/v projections (packed here as one), ``nn.Linear`` weights,
no attention scaling, and local layers that see only the last ``window_size`` cache slots.

Hugging Face's local layers window the cache slots (left padding included); so does this decoder, so a padded
row gives the tokens it gives alone, as there. A unit test holds the logits to Hugging Face's.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from saesteer.engine.gpt2_decoder import ACTIVATIONS, GPT2Decoder
from saesteer.engine.kernels import StepContext


def gpt_neo_unsupported(model: nn.Module) -> str | None:
    """Why the fast GPT-Neo decoder cannot run this model, or None."""
    config = model.config
    if getattr(config, "activation_function", "gelu_new") not in ACTIVATIONS:
        return f"activation {config.activation_function!r}"
    if set(config.attention_layers) - {"global", "local"}:
        return f"attention layer types {sorted(set(config.attention_layers))}"
    if not getattr(model, "transformer", None) or not hasattr(model, "lm_head"):
        return "not a GPTNeoForCausalLM"
    return None


class GPTNeoDecoder(GPT2Decoder):
    def _read_config(self, cfg) -> None:
        super()._read_config(cfg)
        self.windows = [cfg.window_size if kind == "local" else None for kind in cfg.attention_layers]

    def _attn_scales(self, cfg) -> list[float]:
        return [1.0] * self.n_layers  # GPT-Neo does not scale its attention scores

    @staticmethod
    def _mlp_width(cfg) -> int | None:
        return cfg.intermediate_size

    def _linears(self, blk: nn.Module) -> dict:
        attn, mlp = blk.attn.attention, blk.mlp
        qkv = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
        return {"qkv": self._linear(qkv, None), "o": self._linear(attn.out_proj.weight, attn.out_proj.bias),
                "fc": self._linear(mlp.c_fc.weight, mlp.c_fc.bias),
                "proj": self._linear(mlp.c_proj.weight, mlp.c_proj.bias)}

    def attn_bias(self, layer: int, ctx: StepContext) -> Tensor:
        """A local layer also masks every key slot ``window_size`` or more slots before the query's."""
        window = self.windows[layer]
        if window is None:
            return ctx.bias
        if ctx.slot is not None:  # static step: one query at the tensor slot, keys over the whole cache
            queries = ctx.slot.reshape(1)
            keys = torch.arange(ctx.cache.max_len, device=ctx.bias.device)
        else:
            queries = torch.arange(ctx.start, ctx.start + ctx.width, device=ctx.bias.device)
            keys = torch.arange(ctx.start + ctx.width, device=ctx.bias.device)
        far = (queries[:, None] - keys[None, :]) >= window
        return ctx.bias + torch.zeros(far.shape, dtype=ctx.bias.dtype, device=far.device).masked_fill_(far, -math.inf)
