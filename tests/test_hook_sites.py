"""Hook sites read and edit the right activations, and hooks are always removed."""

import pytest
import torch

from saesteer.errors import SaesteerError
from saesteer.models.hook_sites import hook_site, parse_hook_name, site_width
from saesteer.steering.hooks import edit, hooks, record

SITES = ["hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out", "mlp.hook_post"]


def _hidden(model, ids):
    return model(input_ids=ids, output_hidden_states=True).hidden_states


def test_resid_sites_match_hidden_states(tiny_gpt2):
    ids = torch.tensor([[50256, 39, 42661, 318]])
    names = [f"blocks.{l}.{s}" for l in (0, 3, 7) for s in SITES]
    with torch.no_grad(), record(tiny_gpt2, names) as rec:
        hs = _hidden(tiny_gpt2, ids)
    # hidden_states[L] is the input of block L; the last entry has ln_f applied, so compare blocks 0..6.
    assert torch.equal(rec["blocks.0.hook_resid_pre"], hs[0])
    assert torch.equal(rec["blocks.3.hook_resid_pre"], hs[3])
    assert torch.equal(rec["blocks.0.hook_resid_post"], hs[1])
    assert torch.equal(rec["blocks.3.hook_resid_post"], hs[4])
    for layer in (0, 3, 7):
        pre, mid, post = (rec[f"blocks.{layer}.{s}"] for s in ("hook_resid_pre", "hook_resid_mid", "hook_resid_post"))
        attn, mlp = rec[f"blocks.{layer}.hook_attn_out"], rec[f"blocks.{layer}.hook_mlp_out"]
        assert torch.allclose(mid, pre + attn, atol=1e-6)
        assert torch.allclose(post, mid + mlp, atol=1e-6)
        assert rec[f"blocks.{layer}.mlp.hook_post"].shape == (1, 4, 256)


def test_mlp_hook_post_is_input_of_output_projection(tiny_gpt2):
    ids = torch.tensor([[50256, 39]])
    block = tiny_gpt2.transformer.h[2]
    with torch.no_grad(), record(tiny_gpt2, ["blocks.2.mlp.hook_post", "blocks.2.hook_resid_mid"]) as rec:
        tiny_gpt2(input_ids=ids)
        expect = block.mlp.act(block.mlp.c_fc(block.ln_2(rec["blocks.2.hook_resid_mid"])))
    assert torch.allclose(rec["blocks.2.mlp.hook_post"], expect, atol=1e-6)


@pytest.mark.parametrize("site", SITES)
def test_edit_changes_downstream_and_is_removed(tiny_gpt2, site):
    ids = torch.tensor([[50256, 39, 42661]])
    with torch.no_grad():
        clean = tiny_gpt2(input_ids=ids).logits
        with edit(tiny_gpt2, f"blocks.4.{site}", lambda a: a * -10):
            steered = tiny_gpt2(input_ids=ids).logits
        after = tiny_gpt2(input_ids=ids).logits
    assert not torch.allclose(clean, steered, atol=1e-3)
    assert torch.equal(clean, after)


def test_identity_edit_of_resid_mid_changes_nothing_measurable(tiny_gpt2):
    ids = torch.tensor([[50256, 39, 42661]])
    with torch.no_grad():
        clean = tiny_gpt2(input_ids=ids).logits
        with edit(tiny_gpt2, "blocks.4.hook_resid_mid", lambda a: a.clone()):
            same = tiny_gpt2(input_ids=ids).logits
    assert torch.allclose(clean, same, atol=1e-5)


def test_edit_of_resid_mid_is_seen_at_resid_mid(tiny_gpt2):
    ids = torch.tensor([[50256, 39]])
    with torch.no_grad(), edit(tiny_gpt2, "blocks.1.hook_resid_mid", lambda a: torch.zeros_like(a)), \
            record(tiny_gpt2, ["blocks.1.mlp.hook_post"]) as rec:
        tiny_gpt2(input_ids=ids)
    block = tiny_gpt2.transformer.h[1]
    zero_in = block.mlp.act(block.mlp.c_fc(block.ln_2(torch.zeros(1, 2, 64))))
    assert torch.allclose(rec["blocks.1.mlp.hook_post"], zero_in, atol=1e-5)


def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_hooks_removed_on_exception(tiny_gpt2):
    before = _hook_count(tiny_gpt2)
    with pytest.raises(RuntimeError):
        with hooks(tiny_gpt2, [("blocks.1.hook_resid_post", lambda a: a * 0), ("blocks.2.hook_resid_mid", lambda a: a)]):
            assert _hook_count(tiny_gpt2) == before + 3
            raise RuntimeError("boom")
    assert _hook_count(tiny_gpt2) == before


@pytest.mark.parametrize("name", ["blocks.6.hook_resid", "resid_post", "blocks.x.hook_resid_post", ""])
def test_unknown_hook_names(name):
    with pytest.raises(SaesteerError, match="unknown hook name"):
        parse_hook_name(name)


def test_layer_out_of_range(tiny_gpt2):
    with pytest.raises(SaesteerError, match="layers 0..7"):
        hook_site(tiny_gpt2, "blocks.8.hook_resid_post")


def test_site_widths(tiny_gpt2):
    assert site_width(tiny_gpt2, "blocks.0.hook_resid_post") == 64
    assert site_width(tiny_gpt2, "blocks.0.mlp.hook_post") == 256


def test_llama_sites_on_real_model(stories_path):
    from saesteer.models.loading import load_model

    lm = load_model(str(stories_path))
    ids = torch.tensor([lm.encode("Once upon a time")])
    assert ids.tolist() == [[1, 403, 407, 261, 378]]
    names = ["blocks.0.hook_resid_pre", "blocks.2.hook_resid_mid", "blocks.2.hook_resid_post", "blocks.2.hook_attn_out",
             "blocks.2.hook_mlp_out", "blocks.2.mlp.hook_post", "blocks.2.hook_resid_pre"]
    with torch.no_grad(), record(lm.model, names) as rec:
        hs = lm.model(input_ids=ids, output_hidden_states=True).hidden_states
    assert torch.equal(rec["blocks.0.hook_resid_pre"], hs[0])
    assert torch.equal(rec["blocks.2.hook_resid_post"], hs[3])
    assert torch.allclose(rec["blocks.2.hook_resid_mid"], hs[2] + rec["blocks.2.hook_attn_out"], atol=1e-6)
    assert torch.allclose(rec["blocks.2.hook_resid_post"], rec["blocks.2.hook_resid_mid"] + rec["blocks.2.hook_mlp_out"], atol=1e-6)
    assert rec["blocks.2.mlp.hook_post"].shape == (1, 5, 172)
    assert site_width(lm.model, "blocks.2.mlp.hook_post") == 172
