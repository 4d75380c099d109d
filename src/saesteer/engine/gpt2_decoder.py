"""GPT-2's forward, step by step over a static KV cache, on the Hugging Face model's own weights.

Same maths as ``transformers``' ``GPT2LMHeadModel`` (learned positions, LayerNorm, fused q/k/v, GELU MLP,
tied unembedding); a unit test holds its logits to Hugging Face's. Conv1D stores ``[in, out]``; the
linear layers here take ``[out, in]``, so each weight is transposed once when it is packed.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from saesteer.engine.kernels import Decoder, Linear, StepContext, layer_norm, onednn_linear_available

ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}
"""Hugging Face ``activation_function`` -> the activation fused into the packed MLP input layer."""


def gpt2_unsupported(model: nn.Module) -> str | None:
    """Why the fast GPT-2 decoder cannot run this model, or None."""
    config = model.config
    if getattr(config, "activation_function", "gelu_new") not in ACTIVATIONS:
        return f"activation {config.activation_function!r}"
    if getattr(config, "add_cross_attention", False):
        return "cross-attention"
    if not getattr(model, "transformer", None) or not hasattr(model, "lm_head"):
        return "not a GPT2LMHeadModel"
    return None


class GPT2Decoder(Decoder):
    def __init__(self, model: nn.Module, dtype: torch.dtype, device: torch.device, *, screen: bool = True,
                 pack: bool = True):
        self.pack = pack
        tr = model.transformer
        self.dtype, self.device = dtype, device
        model_dtype = tr.wte.weight.dtype
        self.resid_dtype = torch.float32 if model_dtype == torch.float32 else model_dtype
        if dtype != torch.float32:
            self.resid_dtype = torch.float32  # mixed precision: bf16 matmuls, float32 residual stream
        self._read_config(model.config)
        rd = self.resid_dtype

        def vec(t):
            return t.detach().to(device=device, dtype=rd)

        self.wte = tr.wte.weight.detach().to(device)  # the model's own tensors when already on device
        self.wpe = tr.wpe.weight.detach().to(device)
        self.layers = [{"ln1": (vec(blk.ln_1.weight), vec(blk.ln_1.bias)),
                        "ln2": (vec(blk.ln_2.weight), vec(blk.ln_2.bias)), **self._linears(blk)} for blk in tr.h]
        self.ln_f = (vec(tr.ln_f.weight), vec(tr.ln_f.bias))
        head = model.lm_head
        self.unembed_weight = head.weight.detach().to(device)
        self.unembed_bias = getattr(head, "bias", None)
        self.unembed_row_norm_max = float(self.unembed_weight.float().norm(dim=-1).max())
        self.unembed_screen = None
        if screen and dtype == torch.float32 and device.type == "cpu" and onednn_linear_available(torch.bfloat16) \
                and getattr(head, "bias", None) is None:
            self.unembed_screen = Linear(self.unembed_weight, None, dtype=torch.bfloat16, device=device, pack=pack)

    def _read_config(self, cfg) -> None:
        """Shapes and constants, by the config's standard names (GPT-2's and GPT-Neo's configs both map them)."""
        self.n_layers = cfg.num_hidden_layers
        self.d_model = cfg.hidden_size
        self.n_heads = self.n_kv_heads = cfg.num_attention_heads
        self.head_dim = self.d_model // self.n_heads
        self.d_mlp = self._mlp_width(cfg) or 4 * self.d_model
        self.vocab_size = cfg.vocab_size
        self.max_positions = cfg.max_position_embeddings
        self.eps = cfg.layer_norm_epsilon
        self.act = ACTIVATIONS[cfg.activation_function]
        self._scale = self._attn_scales(cfg)

    def _attn_scales(self, cfg) -> list[float]:
        """Per layer, the factor on the attention scores."""
        return [(self.head_dim ** -0.5 if cfg.scale_attn_weights else 1.0)
                / (float(i + 1) if cfg.scale_attn_by_inverse_layer_idx else 1.0) for i in range(self.n_layers)]

    @staticmethod
    def _mlp_width(cfg) -> int | None:
        return cfg.n_inner

    def _linear(self, weight: Tensor, bias: Tensor | None, rows_hint: int = 256) -> Linear:
        """``weight [out, in]`` in the compute dtype (packed on CPU)."""
        return Linear(weight.detach(), bias, dtype=self.dtype, device=self.device, rows_hint=rows_hint,
                      pack=self.pack)

    def _linears(self, blk: nn.Module) -> dict:
        """One block's q/k/v, attention output and MLP projections (Conv1D stores ``[in, out]``)."""
        attn, mlp = blk.attn, blk.mlp
        return {"qkv": self._linear(attn.c_attn.weight.t(), attn.c_attn.bias),
                "o": self._linear(attn.c_proj.weight.t(), attn.c_proj.bias),
                "fc": self._linear(mlp.c_fc.weight.t(), mlp.c_fc.bias),
                "proj": self._linear(mlp.c_proj.weight.t(), mlp.c_proj.bias)}

    def attn_scale(self, layer: int) -> float:
        return self._scale[layer]

    def embed(self, ids: Tensor, positions: Tensor) -> Tensor:
        h = self.wte.index_select(0, ids) + self.wpe.index_select(0, positions)
        return h.to(self.resid_dtype)

    def _norm(self, h: Tensor, wb) -> Tensor:
        return layer_norm(h, wb[0], wb[1], self.eps).to(self.dtype)

    def norm1(self, layer: int, h: Tensor) -> Tensor:
        return self._norm(h, self.layers[layer]["ln1"])

    def norm2(self, layer: int, h: Tensor) -> Tensor:
        return self._norm(h, self.layers[layer]["ln2"])

    def final_norm(self, h: Tensor) -> Tensor:
        return layer_norm(h.to(self.resid_dtype), self.ln_f[0], self.ln_f[1], self.eps)

    def qkv(self, layer: int, x: Tensor, ctx: StepContext):
        B, T = ctx.rows, ctx.width
        y = self.layers[layer]["qkv"](x).view(B, T, 3, self.n_heads, self.head_dim)
        q, k, v = (y[:, :, i].transpose(1, 2) for i in range(3))  # [B, H, T, dh] views
        return q, k, v

    def attn_out(self, layer: int, a: Tensor) -> Tensor:
        return self.layers[layer]["o"](a)

    def mlp_hidden(self, layer: int, x: Tensor) -> Tensor:
        return self.layers[layer]["fc"](x, self.act)

    def mlp_out(self, layer: int, m: Tensor) -> Tensor:
        return self.layers[layer]["proj"](m.to(self.dtype))
