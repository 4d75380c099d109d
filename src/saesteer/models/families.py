"""Where each model family keeps the modules that TransformerLens's hook sites read: one table entry per family.

Adding a family is one entry here (and a tiny config in the tests' ``_tiny_models.py``, whose oracle tests
check every site against TransformerLens). Paths are attribute paths from the Hugging Face ``*ForCausalLM``
object (``get_submodule``), for the unmodified modules of transformers 5.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from saesteer.errors import SaesteerError


@dataclass(frozen=True)
class Architecture:
    """The module paths of one family (from the CausalLM for ``layers``/``final_norm``/``unembed``, else
    from one decoder block)."""

    layers: str
    attn: str
    mlp: str
    mlp_out_proj: str
    """The MLP's output projection, whose input is TransformerLens's ``mlp.hook_post``."""
    final_norm: str
    unembed: str
    attn_out: str | None = None
    """The module whose output is added to the residual stream after attention (TransformerLens's
    ``hook_attn_out``), when it is not the attention module: Gemma 2/3 normalise the attention output first."""
    mlp_out: str | None = None
    """Likewise for ``hook_mlp_out`` (Gemma 2/3: the post-feedforward norm)."""
    norm_gain_offset: float = 0.0
    """RMSNorm multiplies by ``offset + weight`` (Gemma: 1)."""
    parallel_flag: str | None = None
    """Config attribute that, when true, makes attention and MLP both read ``hook_resid_pre`` and write
    ``hook_resid_post`` (GPT-NeoX's ``use_parallel_residual``): no ``hook_resid_mid`` exists then."""
    parallel: bool = False
    """Attention and MLP always run side by side (GPT-J, Phi-1/1.5/2)."""

    @property
    def attn_out_module(self) -> str:
        return self.attn_out or self.attn

    @property
    def mlp_out_module(self) -> str:
        return self.mlp_out or self.mlp


GPT2 = Architecture("transformer.h", "attn", "mlp", "mlp.c_proj", "transformer.ln_f", "lm_head")
LLAMA_LIKE = Architecture("model.layers", "self_attn", "mlp", "mlp.down_proj", "model.norm", "lm_head")
GEMMA = Architecture("model.layers", "self_attn", "mlp", "mlp.down_proj", "model.norm", "lm_head",
                     norm_gain_offset=1.0)
GEMMA2_LIKE = Architecture("model.layers", "self_attn", "mlp", "mlp.down_proj", "model.norm", "lm_head",
                           attn_out="post_attention_layernorm", mlp_out="post_feedforward_layernorm",
                           norm_gain_offset=1.0)
GEMMA3_MULTIMODAL = Architecture("model.language_model.layers", "self_attn", "mlp", "mlp.down_proj",
                                 "model.language_model.norm", "lm_head", attn_out="post_attention_layernorm",
                                 mlp_out="post_feedforward_layernorm", norm_gain_offset=1.0)
GPTJ = Architecture("transformer.h", "attn", "mlp", "mlp.fc_out", "transformer.ln_f", "lm_head", parallel=True)
PHI = Architecture("model.layers", "self_attn", "mlp", "mlp.fc2", "model.final_layernorm", "lm_head", parallel=True)
GPT_NEOX = Architecture("gpt_neox.layers", "attention", "mlp", "mlp.dense_4h_to_h", "gpt_neox.final_layer_norm",
                        "lm_head", parallel_flag="use_parallel_residual")

ARCHITECTURES: dict[str, Architecture] = {
    "gpt2": GPT2,
    "llama": LLAMA_LIKE,
    "mistral": LLAMA_LIKE,
    "qwen2": LLAMA_LIKE,
    "qwen3": LLAMA_LIKE,
    "phi3": LLAMA_LIKE,  # fused qkv and gate/up projections live inside self_attn and mlp
    "gemma": GEMMA,
    "gemma2": GEMMA2_LIKE,
    "gemma3_text": GEMMA2_LIKE,
    "gemma3": GEMMA3_MULTIMODAL,  # Gemma3ForConditionalGeneration: its text decoder only
    "gpt_neox": GPT_NEOX,
    "gpt_neo": GPT2,  # GPT-Neo (TinyStories): GPT-2's module names; nn.Linear projections, local layers
    "gptj": GPTJ,
    "phi": PHI,  # Phi-1, 1.5 and 2 (Phi-3 is "phi3")
}
"""``config.model_type`` -> module paths. Each entry is checked against TransformerLens 3.9 in the tests."""


def architecture_of(model: nn.Module) -> Architecture:
    """The family table entry of ``model`` (by ``config.model_type``); one-line error for other families."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    arch = ARCHITECTURES.get(model_type)
    if arch is None:
        raise SaesteerError(
            f"model type {model_type!r} has no hook-site mapping yet; supported: {', '.join(sorted(ARCHITECTURES))}"
        )
    return arch


def is_parallel(model: nn.Module) -> bool:
    """Whether attention and MLP run side by side on the block's input (then there is no resid_mid)."""
    arch = architecture_of(model)
    return arch.parallel or bool(arch.parallel_flag and getattr(model.config, arch.parallel_flag, False))
