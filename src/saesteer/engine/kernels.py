"""Building blocks of the fast decoders: linear layers in the device's fastest layout, attention over a
static KV cache, and the small helpers around them.

On CPU, weights are pre-packed once into oneDNN's blocked layout (``torch.ops.mkldnn._reorder_linear_weight``)
and applied with ``torch.ops.mkldnn._linear_pointwise``, which can also fuse GELU. On this kind of CPU that
is 2-2.5x faster than ``torch.addmm`` in float32 (MKL runs its AVX2 code on AMD) and reaches the bf16 peak.
Where those private ops are missing or refuse a dtype, ``F.linear`` is used instead: same results, slower.
On CUDA, plain ``F.linear`` (cuBLAS) in the compute dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from saesteer.engine.kvcache import KVCache

# Activation name -> (oneDNN attr, oneDNN algorithm, eager function).
_ACTS = {
    "none": ("none", "", None),
    "gelu_tanh": ("gelu", "tanh", lambda y: F.gelu(y, approximate="tanh")),
    "gelu": ("gelu", "none", F.gelu),
    "relu": ("relu", "", F.relu),
}

_ONEDNN_STATE: dict[torch.dtype, bool] = {}

def onednn_linear_available(dtype: torch.dtype) -> bool:
    """True when pre-packed oneDNN linear works for ``dtype`` here (checked once, numerically)."""
    if dtype in _ONEDNN_STATE:
        return _ONEDNN_STATE[dtype]
    ok = False
    try:
        if torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"):
            g = torch.Generator().manual_seed(0)
            w = torch.randn(48, 32, generator=g).to(dtype)
            x = torch.randn(5, 32, generator=g).to(dtype)
            b = torch.randn(48, generator=g).to(dtype)
            packed = torch.ops.mkldnn._reorder_linear_weight(w, 5)
            y = torch.ops.mkldnn._linear_pointwise(x, packed, b, "none", [], "")
            ref = x.float() @ w.float().T + b.float()
            tol = 1e-4 if dtype == torch.float32 else 0.1
            ok = y.shape == ref.shape and bool((y.float() - ref).abs().max() < tol)
    except (RuntimeError, AttributeError, TypeError):
        ok = False
    _ONEDNN_STATE[dtype] = ok
    return ok


class Linear:
    """``y = act(x @ W.T + b)`` for one weight ``W [out, in]``, stored once in the fastest layout.

    The weight is converted (and, on CPU, packed) at construction: a new buffer in the compute dtype, never
    a file copy. ``x`` must be 2-D ``[rows, in]``.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None, *, dtype: torch.dtype, device: torch.device,
                 rows_hint: int = 256, pack: bool = True):
        w = weight.detach().to(device=device, dtype=dtype).contiguous()
        self.out_features, self.in_features = w.shape
        self.bias = None if bias is None else bias.detach().to(device=device, dtype=dtype).contiguous()
        self.packed = None
        self.weight = w
        if pack and device.type == "cpu" and onednn_linear_available(dtype):
            try:
                self.packed = torch.ops.mkldnn._reorder_linear_weight(w, rows_hint)
                self.weight = None
            except RuntimeError:
                self.packed = None

    def __call__(self, x: Tensor, act: str = "none") -> Tensor:
        attr, algorithm, eager = _ACTS[act]
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, attr, [], algorithm)
        y = F.linear(x, self.weight, self.bias)
        return y if eager is None else eager(y)

    @property
    def nbytes(self) -> int:
        w = self.packed if self.packed is not None else self.weight
        n = self.out_features * self.in_features * w.element_size()
        return n + (0 if self.bias is None else self.bias.numel() * self.bias.element_size())


_UNIT_ROUNDOFF = {torch.float32: 0.0, torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}


def dot_error_coefficient(K: int, dtype: torch.dtype) -> tuple[float, float]:
    """Rounding error of a length-``K`` dot product computed from float32 inputs rounded to ``dtype``, with
    float32 accumulation and the result rounded to ``dtype``: ``(c, u_out)`` such that
    ``|computed - exact| <= c * sum_i |x_i w_i| + u_out * |computed| / (1 - u_out)``.

    Both inputs are rounded (``(1+u)^2 - 1 = 2u + u^2``), every product is accumulated in float32
    (``gamma_{K+2}``, two more terms than K for blocked/pairwise kernels), then the output is rounded
    (``u_out``). float32 inputs are not rounded (u = 0) and the output's rounding is float32's ``2^-24``.
    """
    u = _UNIT_ROUNDOFF[dtype]
    e = 2.0 ** -24
    gamma = (K + 2) * e / (1 - (K + 2) * e)
    c = 2 * u + u * u + gamma * (1 + u) ** 2
    return c, (u if u else e)


def blocked(fn, x: Tensor, rows: int) -> Tensor:
    """``fn`` applied to row blocks of ``x`` (keeps wide outputs such as logits within the CPU's cache)."""
    if x.shape[0] <= rows:
        return fn(x)
    return torch.cat([fn(x[i:i + rows]) for i in range(0, x.shape[0], rows)])


def attention(q: Tensor, k_t: Tensor, v: Tensor, bias: Tensor, scale: float) -> Tensor:
    """Scaled dot-product attention with plain batched matmuls.

    ``q [B, Hkv, G*T, dh]`` (the ``G`` query heads that share a key/value head folded into the rows),
    ``k_t [B, Hkv, dh, S]`` and ``v [B, Hkv, S, dh]`` (views into the static cache), ``bias [B, 1, G*T or 1, S]``
    additive mask (0 or -inf, float32). Scores and softmax are in float32; returns ``[B, Hkv, G*T, dh]`` in
    ``v``'s dtype.
    """
    scores = torch.matmul(q, k_t)
    if scores.dtype != torch.float32:
        scores = scores.float()
    scores = scores.mul_(scale).add_(bias)
    probs = torch.softmax(scores, dim=-1)
    return torch.matmul(probs.to(v.dtype), v)


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor | None, eps: float) -> Tensor:
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """Llama's RMSNorm, computed as Hugging Face does: in float32, scaled by the weight in its dtype."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(weight.dtype)


def rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding (Hugging Face's rotate-half convention). ``x [B, H, T, dh]``, ``cos/sin [B, 1, T, dh]``."""
    return x * cos + rotate_half(x) * sin


def neg_inf_bias(valid: Tensor) -> Tensor:
    """0 where ``valid``, -inf elsewhere (float32)."""
    out = torch.zeros(valid.shape, dtype=torch.float32, device=valid.device)
    return out.masked_fill_(~valid, -math.inf)


# --------------------------------------------------------------------------- the decoder skeleton

SITE_ORDER = ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "mlp.hook_post", "hook_mlp_out", "hook_resid_post")


class Share:
    """Rows with the same token prefix compute the same activations below the first edit.

    ``rep [G]``: one cache row per group (its lower-layer keys/values stand for the group's);
    ``group [B]``: each row's group; ``blocks``: how many blocks run once per group.
    """

    def __init__(self, rep: Tensor, group: Tensor, blocks: int):
        self.rep, self.group, self.blocks = rep, group, blocks


class StepContext:
    """What a block needs to know about the step: shape, cache slots, mask, edits, shared rows."""

    def __init__(self, rows: int, width: int, positions: Tensor, cache, start: int, bias: Tensor, edits: dict,
                 read_rows: Tensor | None = None, write_rows: Tensor | None = None, slot: Tensor | None = None):
        self.rows, self.width = rows, width
        self.positions = positions  # [rows, width]
        self.cache, self.start, self.bias = cache, start, bias
        self.edits = edits  # {(layer, site kind): chain}, empty in the shared part
        self.read_rows, self.write_rows = read_rows, write_rows
        self.slot = slot  # static step: the cache slot as a device tensor; attention spans the whole cache

    def site(self, layer: int, kind: str, x: Tensor) -> Tensor:
        chain = self.edits.get((layer, kind))
        if chain is None:
            return x
        y = chain(x.view(self.rows, self.width, x.shape[-1]))
        return y.reshape(self.rows * self.width, y.shape[-1])


class Decoder:
    """A pre-norm decoder-only transformer, step by step over a static KV cache, with TransformerLens hook
    sites between its parts. Subclasses read a Hugging Face model's weights and implement the parts:
    ``embed``, ``norm1``, ``norm2``, ``qkv``, ``attn_out``, ``mlp_hidden``, ``mlp_out``, ``final_norm`` and
    the ``unembed`` Linear.

    Activations are 2-D ``[rows * positions, width]``. The residual stream stays in ``resid_dtype`` (float32
    unless the model itself is lower precision); matmuls run in ``dtype``.
    """

    n_layers: int
    d_model: int
    d_mlp: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab_size: int
    max_positions: int | None
    dtype: torch.dtype
    resid_dtype: torch.dtype
    device: torch.device
    unembed_weight: Tensor
    """``[vocab, d_model]`` in the model's own dtype (the HF parameter itself): rows gathered for re-scoring."""
    unembed_screen: Linear | None = None
    """A bfloat16 copy of the unembedding for exact screening of the float32 argmax (CPU), or None."""

    unembed_bias: Tensor | None = None
    pack: bool = True
    """CPU: weights pre-packed for oneDNN (``FastOptions.pack_weights``)."""
    _unembed: Linear | None = None

    @property
    def unembed(self) -> Linear:
        """The unembedding in the compute dtype, packed on first use (a float32 greedy run on CPU may never
        need it: its bfloat16 screen and float32 candidate scores decide almost every token)."""
        if self._unembed is None:
            self._unembed = Linear(self.unembed_weight, self.unembed_bias, dtype=self.dtype, device=self.device,
                                  pack=self.pack)
        return self._unembed

    def full_unembed(self) -> Linear:
        return self.unembed

    # ---- parts a subclass implements
    def embed(self, ids: Tensor, positions: Tensor) -> Tensor: ...
    def norm1(self, layer: int, h: Tensor) -> Tensor: ...
    def norm2(self, layer: int, h: Tensor) -> Tensor: ...
    def qkv(self, layer: int, x: Tensor, ctx: StepContext) -> tuple[Tensor, Tensor, Tensor]: ...
    def attn_out(self, layer: int, a: Tensor) -> Tensor: ...
    def mlp_hidden(self, layer: int, x: Tensor) -> Tensor: ...
    def mlp_out(self, layer: int, m: Tensor) -> Tensor: ...
    def final_norm(self, h: Tensor) -> Tensor: ...
    def attn_scale(self, layer: int) -> float:
        return self.head_dim ** -0.5

    def attn_bias(self, layer: int, ctx: StepContext) -> Tensor:
        """The additive attention mask of ``layer`` (a family with local layers narrows it there)."""
        return ctx.bias

    # ---- the shared skeleton
    def new_cache(self, rows: int, max_len: int, cache=None):
        shape = (self.n_layers, rows, self.n_kv_heads, max_len, self.head_dim)
        if cache is not None and cache.fits(*shape, self.dtype, self.device):
            return cache.reset(rows)
        return KVCache(*shape, dtype=self.dtype, device=self.device)

    def cache_bytes_per_row(self, max_len: int) -> int:
        return KVCache.bytes_per_row(self.n_layers, self.n_kv_heads, max_len, self.head_dim, self.dtype)

    def attention(self, layer: int, x: Tensor, ctx: StepContext) -> Tensor:
        q, k, v = self.qkv(layer, x, ctx)  # [rows, H or Hkv, T, dh]
        B, T = ctx.rows, ctx.width
        cache = ctx.cache
        if ctx.slot is not None:  # static shapes (CUDA graphs): write at a tensor slot, attend over all slots
            cache.write_at(layer, k, v, ctx.slot)
            S = cache.max_len
        else:
            cache.write(layer, k, v, ctx.start, rows=ctx.write_rows)
            S = ctx.start + T
        keys = cache.keys_t(layer, S, rows=ctx.read_rows)
        values = cache.values(layer, S, rows=ctx.read_rows)
        group = self.n_heads // self.n_kv_heads
        if group > 1:  # fold the query heads that share a key/value head into the rows
            q = q.reshape(B, self.n_kv_heads, group * T, self.head_dim)
        bias = self.attn_bias(layer, ctx)
        if group > 1 and T > 1:
            bias = bias.repeat(1, 1, group, 1)
        out = attention(q, keys, values, bias, self.attn_scale(layer))  # [B, Hkv, G*T, dh]
        out = out.reshape(B, self.n_heads, T, self.head_dim).transpose(1, 2).reshape(B * T, self.d_model)
        return self.attn_out(layer, out)

    def block(self, layer: int, h: Tensor, ctx: StepContext, skip_pre: bool = False) -> Tensor:
        if not skip_pre:
            h = ctx.site(layer, "hook_resid_pre", h)
        a = self.attention(layer, self.norm1(layer, h), ctx)
        a = ctx.site(layer, "hook_attn_out", a)
        h = h + a
        h = ctx.site(layer, "hook_resid_mid", h)
        m = self.mlp_hidden(layer, self.norm2(layer, h))
        m = ctx.site(layer, "mlp.hook_post", m)
        m = self.mlp_out(layer, m)
        m = ctx.site(layer, "hook_mlp_out", m)
        h = h + m
        return ctx.site(layer, "hook_resid_post", h)

    def forward(self, ids: Tensor, positions: Tensor, cache, start: int, bias: Tensor, edits: dict,
                share: Share | None = None) -> Tensor:
        """Run positions ``start..start+T`` of ``ids [B, T]``; returns the last position's residual ``[B, d]``.

        ``bias [B, 1, T, S]``: additive attention mask. ``edits``: ``{(layer, kind): chain}``. ``share``: run
        the blocks below the first edit once per group of rows with the same prefix, then fan out.
        """
        B, T = ids.shape
        ctx = StepContext(B, T, positions, cache, start, bias, edits)
        first = 0
        if share is None:
            h = self.embed(ids.reshape(-1), positions.reshape(-1))
        else:
            rep, group = share.rep, share.group
            G = rep.numel()
            g_pos = positions.index_select(0, rep)
            g_ctx = StepContext(G, T, g_pos, cache, start, bias.index_select(0, rep), {},
                                read_rows=rep, write_rows=group)
            h = self.embed(ids.index_select(0, rep).reshape(-1), g_pos.reshape(-1))
            for layer in range(share.blocks):
                h = self.block(layer, h, g_ctx)
            h = self._fan_out(h.view(G, T, -1), share, edits).reshape(B * T, -1)
            first = share.blocks
        for layer in range(first, self.n_layers):
            h = self.block(layer, h, ctx, skip_pre=(share is not None and layer == first))
        return h.view(B, T, -1)[:, -1]

    def forward_static(self, ids: Tensor, positions: Tensor, cache, slot: Tensor, bias: Tensor, edits: dict) -> Tensor:
        """One decode step with static shapes, for CUDA graph capture: ``ids, positions [B, 1]``, ``slot`` a
        0-d long tensor (the cache slot written), ``bias [B, 1, 1, max_len]`` masking pads and unwritten slots.
        No Python branches depend on tensor values. Returns the residual ``[B, d]``."""
        B = ids.shape[0]
        ctx = StepContext(B, 1, positions, cache, 0, bias, edits, slot=slot)
        h = self.embed(ids.reshape(-1), positions.reshape(-1))
        for layer in range(self.n_layers):
            h = self.block(layer, h, ctx)
        return h

    def _fan_out(self, h_groups: Tensor, share: Share, edits: dict) -> Tensor:
        """Group activations ``[G, T, d]`` -> row activations ``[B, T, d]``, applying the edits at the boundary
        (``resid_post`` of the last shared block, then ``resid_pre`` of the next). The first of them may use
        the group activations directly (``chain.shared``), e.g. an SAE clamp that encodes once per group."""
        chains = [edits.get((share.blocks - 1, "hook_resid_post")), edits.get((share.blocks, "hook_resid_pre"))]
        chains = [c for c in chains if c is not None]
        if chains and hasattr(chains[0], "shared"):
            h = chains[0].shared(h_groups, share.group)
            chains = chains[1:]
        else:
            h = h_groups.index_select(0, share.group)
        for chain in chains:
            h = chain(h)
        return h

    def first_edit_boundary(self, edits: dict) -> int:
        """How many blocks come before the first edit (their activations do not depend on the edits)."""
        if not edits:
            return self.n_layers
        layer, kind = min(edits, key=lambda lk: (lk[0], SITE_ORDER.index(lk[1])))
        return layer + 1 if kind == "hook_resid_post" else layer
