"""Tiny random-weight models of every supported family, shared by the hook-site, oracle and steering tests.

Each has grouped-query attention where the family allows it, the real GPT-2 vocabulary size (so the real
GPT-2 tokenizer can drive it from the CLI), and enlarged weights so greedy continuations vary. Gemma 2
has its logit soft-capping (attention and output) and a sliding window shorter than the test prompts;
Gemma 3 has its local/global layers with two RoPE bases and q/k norms. GPT-NeoX comes in its parallel
(Pythia) and sequential forms. Phi-3 has its fused qkv and gate/up projections. GPT-Neo (TinyStories) has its
global/local layers (window 4), no attention scaling, and a 4 x wide MLP (TransformerLens assumes that width);
GPT-J (4 x wide too) and Phi-1/2 their parallel blocks, partial rotary embeddings and unembedding biases.
"""

from __future__ import annotations

import torch

VOCAB = 50257
BOS = EOS = 50256

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "gemma3_mm", "neox", "neox_seq", "phi3",
            "gpt_neo", "gptj", "phi")

D_MLP = {"gpt_neo": 128, "gptj": 128}
"""Width of ``mlp.hook_post`` where it is not 64."""


def _config(family: str, **overrides):
    import transformers as tf

    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, bos_token_id=BOS,
                  eos_token_id=EOS, pad_token_id=None)  # a pad id would zero that embedding row at init
    untied = dict(tie_word_embeddings=False)
    gemma2 = dict(head_dim=8, query_pre_attn_scalar=8, sliding_window=4)
    rope = {"rope_type": "default", "rope_theta": 10000.0}
    table = {
        "llama": (tf.LlamaConfig, untied),
        "mistral": (tf.MistralConfig, dict(untied, sliding_window=4)),
        "qwen2": (tf.Qwen2Config, untied),
        "qwen3": (tf.Qwen3Config, dict(untied, head_dim=8)),
        "gemma": (tf.GemmaConfig, dict(untied, num_key_value_heads=1, head_dim=8)),  # tied: repeats its input
        "gemma2": (tf.Gemma2Config, dict(gemma2, attn_logit_softcapping=1.5, final_logit_softcapping=10.0)),
        "gemma3": (tf.Gemma3TextConfig, dict(gemma2, sliding_window_pattern=2, rope_parameters={
            "full_attention": dict(rope, rope_theta=1e6), "sliding_attention": rope})),
        "neox": (tf.GPTNeoXConfig, dict(untied, num_key_value_heads=None, use_parallel_residual=True,
                                        rope_parameters=dict(rope, partial_rotary_factor=0.25))),
        "phi3": (tf.Phi3Config, dict(untied, sliding_window=4)),
        "phi": (tf.PhiConfig, dict(untied, num_key_value_heads=None, partial_rotary_factor=0.5)),
    }
    if family == "gpt_neo":
        return tf.GPTNeoConfig(**{**dict(vocab_size=VOCAB, hidden_size=32, num_layers=4, num_heads=4,
                                         attention_types=[[["global", "local"], 2]], window_size=4,
                                         max_position_embeddings=128, bos_token_id=BOS, eos_token_id=EOS),
                                  **overrides})
    if family == "gptj":  # parallel attention and MLP, rotary on 4 of 8 head dimensions (adjacent pairs)
        return tf.GPTJConfig(**{**dict(vocab_size=VOCAB, n_embd=32, n_layer=4, n_head=4, rotary_dim=4, n_positions=128,
                                       bos_token_id=BOS, eos_token_id=EOS, tie_word_embeddings=False), **overrides})
    if family == "neox_seq":
        return _config("neox", use_parallel_residual=False, **overrides)
    if family == "gemma3_mm":  # Gemma3ForConditionalGeneration (4B and up): the text decoder is model.language_model
        vision = tf.SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                       image_size=28, patch_size=14)
        return tf.Gemma3Config(text_config=_config("gemma3", **overrides).to_dict(), vision_config=vision.to_dict(),
                               mm_tokens_per_image=4, image_token_index=50255, boi_token_index=50254,
                               eoi_token_index=50253)
    cls, extra = table[family]
    kwargs = {**common, **extra, **overrides}
    return cls(**{k: v for k, v in kwargs.items() if v is not None or k == "pad_token_id" or k in overrides})


def make_tiny(family: str, seed: int = 0, **overrides):
    """A random-weight causal LM of ``family`` in eval mode, float32, with the eager attention path.

    ``overrides`` change config fields (the weights stay the same for the same family and seed)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed + FAMILIES.index(family))
    config = _config(family, **overrides)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name or "layernorm" in name:
                param.add_(0.2 * torch.randn_like(param))  # norm gains and biases away from their init
            elif "embed" in name and family.startswith("gemma"):
                param.mul_(5)  # tied to the unembedding: larger logits, varied greedy continuations
            elif param.dim() == 2 and "embed" not in name:
                param.mul_(4)
            elif param.dim() == 1:
                param.add_(0.1 * torch.randn_like(param))
    return model
