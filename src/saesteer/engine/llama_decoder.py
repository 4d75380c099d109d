"""Llama-family forward (RMSNorm, rotary positions, grouped-query attention, SwiGLU MLP), step by step over
a static KV cache, on the Hugging Face model's own weights.

q/k/v are packed as one linear layer and gate/up as another. Rotary tables come from the model's own
``rotary_emb`` module, so they equal Hugging Face's. A unit test holds the logits to Hugging Face's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saesteer.engine.kernels import Decoder, Linear, StepContext, apply_rope, rms_norm

_STATIC_ROPE = {None, "default", "linear", "llama3"}


def llama_unsupported(model: nn.Module) -> str | None:
    """Why the fast Llama decoder cannot run this model, or None."""
    cfg = model.config
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"activation {cfg.hidden_act!r}"
    if getattr(cfg, "pretraining_tp", 1) != 1:
        return "pretraining_tp > 1"
    params = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    if params.get("rope_type", params.get("type")) not in _STATIC_ROPE:
        return f"rope type {params.get('rope_type')!r}"
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "rotary_emb") or not hasattr(model, "lm_head"):
        return "not a LlamaForCausalLM"
    return None


class LlamaDecoder(Decoder):
    def __init__(self, model: nn.Module, dtype: torch.dtype, device: torch.device, *, screen: bool = False,
                 pack: bool = True):
        cfg = model.config
        self.pack = pack
        inner = model.model
        self.dtype, self.device = dtype, device
        model_dtype = inner.embed_tokens.weight.dtype
        self.resid_dtype = torch.float32 if (dtype != torch.float32 or model_dtype == torch.float32) else model_dtype
        self.n_layers = cfg.num_hidden_layers
        self.d_model = cfg.hidden_size
        self.n_heads = cfg.num_attention_heads
        self.n_kv_heads = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or self.d_model // self.n_heads
        self.d_mlp = cfg.intermediate_size
        self.vocab_size = cfg.vocab_size
        self.max_positions = cfg.max_position_embeddings
        self.eps = cfg.rms_norm_eps
        self.q_width = self.n_heads * self.head_dim
        self.kv_width = self.n_kv_heads * self.head_dim

        def fused(*mods):
            weight = torch.cat([m.weight.detach() for m in mods])
            biases = [m.bias for m in mods]
            bias = None if all(b is None for b in biases) else torch.cat(
                [b.detach() if b is not None else torch.zeros(m.weight.shape[0]) for m, b in zip(mods, biases)])
            return Linear(weight, bias, dtype=dtype, device=device, pack=pack)

        def norm_weight(mod):
            return mod.weight.detach().to(device=device, dtype=self.resid_dtype)

        self.embed_tokens = inner.embed_tokens.weight.detach().to(device)
        self.layers = []
        for blk in inner.layers:
            at, mlp = blk.self_attn, blk.mlp
            self.layers.append({
                "ln1": norm_weight(blk.input_layernorm),
                "ln2": norm_weight(blk.post_attention_layernorm),
                "qkv": fused(at.q_proj, at.k_proj, at.v_proj),
                "o": fused(at.o_proj),
                "gate_up": fused(mlp.gate_proj, mlp.up_proj),
                "down": fused(mlp.down_proj),
            })
        self.norm_f = norm_weight(inner.norm)
        # rotary tables for every position, from the model's own module (same numbers as its forward)
        positions = torch.arange(self.max_positions, device=device)[None]
        probe = torch.zeros(1, dtype=torch.float32, device=device)
        with torch.no_grad():
            cos, sin = inner.rotary_emb(probe, positions)
        self.cos, self.sin = cos[0].to(dtype), sin[0].to(dtype)  # [P, dh]
        head = model.lm_head
        self.unembed_weight = head.weight.detach().to(device)
        self.unembed_row_norm_max = float(self.unembed_weight.float().norm(dim=-1).max())
        self.unembed_bias = getattr(head, "bias", None)
        self.unembed_screen = None  # small vocabularies: the float32 unembedding is cheap

    def embed(self, ids: Tensor, positions: Tensor) -> Tensor:
        return self.embed_tokens.index_select(0, ids).to(self.resid_dtype)

    def norm1(self, layer: int, h: Tensor) -> Tensor:
        return rms_norm(h, self.layers[layer]["ln1"], self.eps).to(self.dtype)

    def norm2(self, layer: int, h: Tensor) -> Tensor:
        return rms_norm(h, self.layers[layer]["ln2"], self.eps).to(self.dtype)

    def final_norm(self, h: Tensor) -> Tensor:
        return rms_norm(h.to(self.resid_dtype), self.norm_f, self.eps)

    def qkv(self, layer: int, x: Tensor, ctx: StepContext):
        B, T = ctx.rows, ctx.width
        y = self.layers[layer]["qkv"](x)
        q = y[:, : self.q_width].reshape(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = y[:, self.q_width: self.q_width + self.kv_width].reshape(B, T, self.n_kv_heads, self.head_dim)
        v = y[:, self.q_width + self.kv_width:].reshape(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        pos = ctx.positions.reshape(-1)
        cos = self.cos.index_select(0, pos).view(B, 1, T, self.head_dim)
        sin = self.sin.index_select(0, pos).view(B, 1, T, self.head_dim)
        q = apply_rope(q, cos, sin)
        k = apply_rope(k.transpose(1, 2), cos, sin)
        return q, k, v

    def attn_out(self, layer: int, a: Tensor) -> Tensor:
        return self.layers[layer]["o"](a)

    def mlp_hidden(self, layer: int, x: Tensor) -> Tensor:
        y = self.layers[layer]["gate_up"](x)
        gate, up = y[:, : self.d_mlp], y[:, self.d_mlp:]
        return F.silu(gate) * up

    def mlp_out(self, layer: int, m: Tensor) -> Tensor:
        return self.layers[layer]["down"](m.to(self.dtype))
