"""Captured activations equal TransformerLens 3.9's on the same weights without weight processing.

TransformerLens is a test-only oracle (the `oracle` extra); the test skips with a reason where it is absent.
"""

import warnings

import pytest
import torch

from conftest import make_tiny_gpt2
from saesteer.steering.hooks import record

tl = pytest.importorskip("transformer_lens", reason="TransformerLens 3.9 (the 'oracle' extra) is not installed")

SITES = ["hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out", "mlp.hook_post"]


def tl_gpt2(hf_model):
    """A HookedTransformer with the HF GPT-2's weights, loaded as from_pretrained_no_processing does."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights

    c = hf_model.config
    cfg = HookedTransformerConfig(
        n_layers=c.n_layer, d_model=c.n_embd, d_head=c.n_embd // c.n_head, n_heads=c.n_head, d_mlp=4 * c.n_embd,
        d_vocab=c.vocab_size, n_ctx=c.n_positions, act_fn="gelu_new", normalization_type="LN", eps=c.layer_norm_epsilon,
        original_architecture="GPT2LMHeadModel", default_prepend_bos=True,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = HookedTransformer(cfg)
        model.load_and_process_state_dict(convert_gpt2_weights(hf_model, cfg), fold_ln=False,
                                          center_writing_weights=False, center_unembed=False,
                                          fold_value_biases=False)
    return model.eval()


def compare(hf_model, tl_model, ids, layers, atol, sites=SITES):
    names = [f"blocks.{l}.{s}" for l in layers for s in sites]
    with torch.no_grad(), record(hf_model, names) as rec:
        hf_logits = hf_model(input_ids=ids).logits
    with torch.no_grad():
        tl_logits, cache = tl_model.run_with_cache(ids)
    for name in names:
        assert rec[name].shape == cache[name].shape, name
        torch.testing.assert_close(rec[name], cache[name], atol=atol, rtol=1e-4, msg=name)
    torch.testing.assert_close(hf_logits, tl_logits, atol=atol * 10, rtol=1e-4)


def test_tiny_gpt2_matches_transformer_lens(tiny_gpt2):
    ids = torch.tensor([[50256, 39, 42661, 318, 257, 922]])
    compare(tiny_gpt2, tl_gpt2(tiny_gpt2), ids, layers=range(8), atol=1e-4)


@pytest.mark.slow
def test_full_size_gpt2_matches_transformer_lens():
    model = make_tiny_gpt2(n_layer=12, d_model=768, n_head=12, n_positions=1024, seed=3)
    ids = torch.tensor([[50256, 39, 42661, 318, 257, 922, 286]])
    compare(model, tl_gpt2(model), ids, layers=[0, 6, 11], atol=2e-3)


def tl_llama(hf_model):
    """A HookedTransformer with a HF Llama's weights (no weight processing)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_llama_weights

    c = hf_model.config
    cfg = HookedTransformerConfig(
        n_layers=c.num_hidden_layers, d_model=c.hidden_size, d_head=c.head_dim, n_heads=c.num_attention_heads,
        n_key_value_heads=c.num_key_value_heads, d_mlp=c.intermediate_size, d_vocab=c.vocab_size,
        n_ctx=c.max_position_embeddings, act_fn="silu", normalization_type="RMS", eps=c.rms_norm_eps,
        positional_embedding_type="rotary", rotary_dim=c.head_dim, rotary_base=10000,  # stories260K: rope_theta 10000 (config.json)
        gated_mlp=True,
        final_rms=True, original_architecture="LlamaForCausalLM", rotary_adjacent_pairs=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = HookedTransformer(cfg)
        model.load_and_process_state_dict(convert_llama_weights(hf_model, cfg), fold_ln=False,
                                          center_writing_weights=False, center_unembed=False,
                                          fold_value_biases=False)
    return model.eval()


def test_stories260k_llama_matches_transformer_lens(stories_path):
    from saesteer.models.loading import load_model

    lm = load_model(str(stories_path))
    ids = torch.tensor([lm.encode("Once upon a time, there was a little girl")])
    compare(lm.model, tl_llama(lm.model), ids, layers=range(5), atol=1e-4)


# --------------------------------------------------------------------------- every family, tiny random weights

TL_FROM_HF_CONFIG = ("llama", "mistral", "qwen2", "qwen3", "phi3", "neox", "neox_seq", "gpt_neo", "gptj")
"""TransformerLens converts these families' HF config itself (from a local model directory)."""
GEMMAS = ("gemma", "gemma2", "gemma3", "gemma3_mm")
"""TransformerLens hard-codes Gemma configs per checkpoint name: the config is written here from the HF config
in the form of TransformerLens's own Gemma entries; the weights go through TransformerLens's converter."""


def tl_from_directory(hf_model, directory):
    """TransformerLens's own config and weight conversion for a model saved in ``directory`` (no processing)."""
    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as tl_loading

    hf_model.save_pretrained(directory)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = tl_loading.get_pretrained_model_config(str(directory), fold_ln=False, device="cpu", dtype=torch.float32)
        cfg.tokenizer_name = None  # ids only: the directory holds no tokenizer
        state = tl_loading.get_pretrained_state_dict(str(directory), cfg, hf_model=hf_model, dtype=torch.float32)
        model = HookedTransformer(cfg)
        model.load_and_process_state_dict(state, fold_ln=False, center_writing_weights=False, center_unembed=False,
                                          fold_value_biases=False)
    return model.eval()


def tl_gemma(hf_model):
    """A HookedTransformer for a Gemma 1/2/3 HF model (text decoder of a Gemma 3 multimodal model)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_gemma_weights

    c = hf_model.config.get_text_config()
    cfg = dict(
        d_model=c.hidden_size, d_head=c.head_dim, n_heads=c.num_attention_heads, d_mlp=c.intermediate_size,
        n_layers=c.num_hidden_layers, n_ctx=c.max_position_embeddings, eps=c.rms_norm_eps, d_vocab=c.vocab_size,
        act_fn=getattr(c, "hidden_activation", None) or c.hidden_act, normalization_type="RMS", positional_embedding_type="rotary",
        use_attn_scale=True, n_key_value_heads=c.num_key_value_heads, gated_mlp=True, final_rms=True,
        original_architecture=type(hf_model).__name__, dtype=torch.float32, device="cpu",
    )
    if c.model_type == "gemma":
        cfg.update(rotary_base=c.rope_parameters["rope_theta"])
    else:
        assert c.query_pre_attn_scalar == c.head_dim  # TransformerLens's default scale, 1/sqrt(d_head)
        cfg.update(window_size=c.sliding_window, use_local_attn=True, use_normalization_before_and_after=True,
                   attn_types=["local" if t == "sliding_attention" else "global" for t in c.layer_types])
    if c.model_type == "gemma2":
        cfg.update(rotary_base=c.rope_parameters["rope_theta"], attn_scores_soft_cap=c.attn_logit_softcapping,
                   output_logits_soft_cap=c.final_logit_softcapping)
    if c.model_type == "gemma3_text":
        cfg.update(rotary_base=c.rope_parameters["full_attention"]["rope_theta"], use_qk_norm=True,
                   rotary_base_local=c.rope_parameters["sliding_attention"]["rope_theta"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = HookedTransformerConfig(**cfg)
        model = HookedTransformer(config)
        model.load_and_process_state_dict(convert_gemma_weights(hf_model, config), fold_ln=False,
                                          center_writing_weights=False, center_unembed=False, fold_value_biases=False)
    return model.eval()


def tl_phi(hf_model):
    """A HookedTransformer for a HF Phi-1/1.5/2: TransformerLens's own ``PhiForCausalLM`` config entry, written
    here because it reads ``partial_rotary_factor`` where transformers 5 no longer keeps it; its weight
    converter."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_phi_weights

    c = hf_model.config
    d_head = c.hidden_size // c.num_attention_heads
    cfg = HookedTransformerConfig(
        d_model=c.hidden_size, d_head=d_head, n_heads=c.num_attention_heads, d_mlp=c.intermediate_size,
        n_layers=c.num_hidden_layers, n_ctx=c.max_position_embeddings, eps=c.layer_norm_eps, d_vocab=c.vocab_size,
        act_fn=c.hidden_act, normalization_type="LN", positional_embedding_type="rotary",
        rotary_base=c.rope_parameters["rope_theta"], use_attn_scale=True, parallel_attn_mlp=True,
        rotary_dim=round(c.rope_parameters["partial_rotary_factor"] * d_head), original_architecture="PhiForCausalLM",
        dtype=torch.float32, device="cpu",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = HookedTransformer(cfg)
        model.load_and_process_state_dict(convert_phi_weights(hf_model, cfg), fold_ln=False,
                                          center_writing_weights=False, center_unembed=False, fold_value_biases=False)
    return model.eval()


HAND_WRITTEN = {"phi": tl_phi}


@pytest.mark.parametrize("family", TL_FROM_HF_CONFIG + GEMMAS + tuple(HAND_WRITTEN))
def test_tiny_family_matches_transformer_lens(family, tmp_path, one_thread):
    from _tiny_models import make_tiny

    from saesteer.models.families import is_parallel

    model = make_tiny(family)
    if family in HAND_WRITTEN:
        tl_model = HAND_WRITTEN[family](model)
    else:
        tl_model = tl_gemma(model) if family in GEMMAS else tl_from_directory(model, tmp_path / "hf")
    # Ten tokens: longer than the sliding windows (4) of Mistral, Phi-3, GPT-Neo and Gemma 2/3's local layers.
    ids = torch.tensor([[50256, 39, 4266, 318, 257, 922, 11, 290, 612, 837]])
    sites = [s for s in SITES if not (s == "hook_resid_mid" and is_parallel(model))]
    assert len(sites) == (5 if family in ("neox", "gptj", "phi") else 6)  # parallel blocks: no resid_mid
    compare(model, tl_model, ids, layers=range(4), atol=2e-5, sites=sites)
