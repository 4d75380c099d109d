"""Hook sites on every supported family (tiny random weights): how the sites relate, what is refused, widths,
the logit lens, and that the tiny configs exercise the features the oracle tests rely on."""

import pytest
import torch

from _tiny_models import D_MLP, FAMILIES, make_tiny
from saesteer.errors import SaesteerError
from saesteer.models.families import architecture_of, is_parallel
from saesteer.models.hook_sites import hook_site, site_width, unembed_directions
from saesteer.steering.hooks import edit, hooks, record

SITES = ["hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out", "mlp.hook_post"]
IDS = torch.tensor([[50256, 39, 4266, 318, 257, 922, 11, 290, 612, 837]])


@pytest.fixture(scope="module", params=FAMILIES)
def family_model(request, one_thread):
    return request.param, make_tiny(request.param)


def _sites(model):
    return [s for s in SITES if not (s == "hook_resid_mid" and is_parallel(model))]


def test_sites_add_up_to_the_residual_stream(family_model):
    family, model = family_model
    names = [f"blocks.{l}.{s}" for l in range(4) for s in _sites(model)]
    with torch.no_grad(), record(model, names) as rec:
        hidden = model(input_ids=IDS, output_hidden_states=True).hidden_states
    for layer in range(4):
        pre, post = rec[f"blocks.{layer}.hook_resid_pre"], rec[f"blocks.{layer}.hook_resid_post"]
        attn, mlp = rec[f"blocks.{layer}.hook_attn_out"], rec[f"blocks.{layer}.hook_mlp_out"]
        assert torch.equal(pre, hidden[layer]), family
        if layer < 3:  # the last hidden state has the final norm applied
            assert torch.equal(post, hidden[layer + 1]), family
        if is_parallel(model):
            torch.testing.assert_close(post, pre + attn + mlp, atol=1e-5, rtol=1e-5)
        else:
            mid = rec[f"blocks.{layer}.hook_resid_mid"]
            torch.testing.assert_close(mid, pre + attn, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(post, mid + mlp, atol=1e-5, rtol=1e-5)
        assert rec[f"blocks.{layer}.mlp.hook_post"].shape == (1, IDS.shape[1], D_MLP.get(family, 64))


def test_every_site_edits_downstream_and_hooks_are_removed(family_model):
    family, model = family_model
    count = lambda: sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())  # noqa: E731
    before = count()
    with torch.no_grad():
        clean = model(input_ids=IDS).logits
        for site in _sites(model):
            with edit(model, f"blocks.1.{site}", lambda a: a * -10):
                steered = model(input_ids=IDS).logits
            assert not torch.allclose(clean, steered, atol=1e-3), (family, site)
        # An identity edit of resid_mid (which edits through the attention output) changes nothing measurable.
        if not is_parallel(model):
            with edit(model, "blocks.2.hook_resid_mid", lambda a: a.clone()):
                same = model(input_ids=IDS).logits
            torch.testing.assert_close(same, clean, atol=1e-5, rtol=1e-5)
        assert torch.equal(model(input_ids=IDS).logits, clean)
    assert count() == before


def test_site_widths(family_model):
    family, model = family_model
    assert site_width(model, "blocks.0.hook_resid_post") == 32
    assert site_width(model, "blocks.3.hook_attn_out") == 32
    assert site_width(model, "blocks.0.mlp.hook_post") == D_MLP.get(family, 64)
    with pytest.raises(SaesteerError, match="layers 0..3"):
        hook_site(model, "blocks.4.hook_resid_post")


def test_logit_lens_applies_the_final_norm_gain(family_model):
    """For a vector of unit RMS (LayerNorm: also zero mean), the final norm is just its gain: the logit lens of
    the vector equals the model's own unembedding of the normalised vector."""
    family, model = family_model
    arch = architecture_of(model)
    norm, unembed = model.get_submodule(arch.final_norm), model.get_submodule(arch.unembed)
    x = torch.randn(3, 32, generator=torch.Generator().manual_seed(0))
    x = x - x.mean(-1, keepdim=True)
    x = x / x.pow(2).mean(-1, keepdim=True).sqrt()
    with torch.no_grad():
        expect = unembed(norm(x) - (norm.bias if getattr(norm, "bias", None) is not None else 0))
        if getattr(unembed, "bias", None) is not None:  # GPT-J, Phi: a direction's logits leave it out
            expect = expect - unembed.bias
        torch.testing.assert_close(unembed_directions(model, x), expect, atol=2e-4, rtol=1e-3)


def test_parallel_blocks_have_no_resid_mid():
    parallel, sequential = make_tiny("neox"), make_tiny("neox_seq")
    assert is_parallel(parallel) and not is_parallel(sequential)
    with pytest.raises(SaesteerError, match="run in parallel") as err:
        hook_site(parallel, "blocks.1.hook_resid_mid")
    assert "\n" not in str(err.value)
    with pytest.raises(SaesteerError, match="run in parallel"), hooks(parallel, [("blocks.1.hook_resid_mid", None)]):
        pass
    hook_site(sequential, "blocks.1.hook_resid_mid")


def test_unknown_family_is_refused_in_one_line():
    from transformers import XGLMConfig, XGLMForCausalLM

    model = XGLMForCausalLM(XGLMConfig(vocab_size=64, d_model=16, num_layers=1, attention_heads=2, ffn_dim=32))
    with pytest.raises(SaesteerError, match="'xglm' has no hook-site mapping yet; supported: gemma, gemma2"):
        hook_site(model, "blocks.0.hook_resid_post")


@pytest.mark.parametrize("family, change", [
    ("gemma2", {"sliding_window": 64}), ("gemma2", {"attn_logit_softcapping": None}),
    ("gemma2", {"final_logit_softcapping": None}), ("gemma3", {"sliding_window": 64}),
    ("gemma3", {"query_pre_attn_scalar": 16}), ("mistral", {"sliding_window": 64}), ("phi3", {"sliding_window": 64}),
    ("gpt_neo", {"window_size": 64}), ("gptj", {"rotary_dim": 8}), ("phi", {"partial_rotary_factor": 1.0}),
])
def test_tiny_configs_exercise_the_family_features(family, change, one_thread):
    """The oracle tests compare on a 10-token prompt: each feature (window 4, soft caps, attention scale) must
    change the output there, or agreeing with TransformerLens would prove nothing about it."""
    with torch.no_grad():
        base = make_tiny(family)(input_ids=IDS).logits
        changed = make_tiny(family, **change)(input_ids=IDS).logits
    assert (base - changed).abs().max() > 1e-3


def test_teacher_forced_scores_run_on_every_family(family_model):
    """Fluency and KL read the vocabulary size from the unembedding (Gemma 3 multimodal keeps it in a sub-config)."""
    from conftest import make_sae
    from saesteer.evaluation.teacher_forced import next_token_kl
    from saesteer.evaluation.text_metrics import mean_logprob
    from saesteer.models.hook_sites import vocab_size
    from saesteer.models.loading import wrap_model

    family, model = family_model
    assert vocab_size(model) == 50257
    prompt, conts = [50256, 39, 4266], [[318, 257], [922]]
    lp = mean_logprob(model, prompt, conts)
    with torch.no_grad():
        logits = torch.log_softmax(model(input_ids=torch.tensor([prompt + [922]])).logits[0, -2], -1)
    assert lp[1] == pytest.approx(float(logits[922]), abs=1e-4)
    sae = make_sae(d_in=32, d_sae=64, k=4, hook_name="blocks.1.hook_resid_post", seed=2)
    kl = next_token_kl(wrap_model(model), sae, "blocks.1.hook_resid_post", prompt, conts, [{3: 8.0}, []])
    assert kl[0][0] > 0 and kl[1] == [0.0]


def test_start_token_without_a_bos(tmp_path, one_thread):
    """A tokenizer without BOS (Qwen 2 and 2.5): the start token is the config's BOS, else end-of-text; with
    neither, only an explicit prompt without BOS works."""
    from conftest import make_gpt2_tokenizer
    from saesteer.evaluation.reference import sample_reference
    from saesteer.models.loading import load_model, wrap_model

    tokenizer = make_gpt2_tokenizer()
    tokenizer.bos_token = None
    assert tokenizer.bos_token_id is None and tokenizer.eos_token_id == 50256
    assert wrap_model(make_tiny("qwen2", bos_token_id=7), tokenizer).bos_token_id == 7
    model = make_tiny("qwen2", bos_token_id=None)
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    lm = load_model(str(tmp_path / "m"))
    assert lm.tokenizer.bos_token_id is None and lm.model.config.bos_token_id is None
    assert lm.bos_token_id == 50256 and lm.encode("Hi there") == [50256, 17250, 612]
    assert sample_reference(lm, samples=2, length=3).tokens[:, 0].tolist() == [50256, 50256]
    tokenizer.eos_token = None
    bare = wrap_model(make_tiny("qwen2", bos_token_id=None, eos_token_id=None), tokenizer)
    assert bare.bos_token_id is None
    with pytest.raises(SaesteerError, match="no BOS or end-of-text token") as err:
        bare.encode("Hi there")
    assert "\n" not in str(err.value) and bare.encode("Hi there", prepend_bos=False) == [17250, 612]
