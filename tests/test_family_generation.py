"""Steered generation on every supported family (tiny random weights) equals step-by-step argmax of full
forward passes: through the engine's API (batched, left-padded, KV-cached, crossing the sliding windows) and
through ``saesteer generate --json`` (delta and add modes) against a reference that knows nothing of
saesteer's hook sites."""

import json

import pytest
import torch

from _tiny_models import BOS, EOS, FAMILIES, make_tiny
from conftest import make_sae
from saesteer.engine import GenerationConfig, full_forward_argmax, generate_ids
from saesteer.errors import SaesteerError
from saesteer.steering.hooks import make_clamp

FAST_FAMILIES = ("llama", "gpt_neo")
"""Families of this list that the fast decoder runs; every other one takes the reference loop."""
HOOK = "blocks.2.hook_resid_post"
PROMPTS = [[BOS], [BOS, 39, 4266, 318, 257, 922, 11], [BOS, 612, 837]]
ROWS = [[(3, 8.0)], [(5, 8.0), (9, -4.0)], []]


@pytest.fixture(scope="module")
def sae():
    return make_sae(d_in=32, d_sae=128, k=4, hook_name=HOOK, seed=5)


@pytest.mark.parametrize("family", FAMILIES)
def test_steered_generation_equals_full_forward_argmax(family, sae, one_thread):
    model = make_tiny(family)
    config = GenerationConfig(max_new_tokens=10, stop_at_eos=False)
    name, fn = make_clamp(model, sae, rows=ROWS)
    batched = generate_ids(model, PROMPTS, config, edits=[(name, fn)], pad_token_id=0)
    for prompt, clamps, got in zip(PROMPTS, ROWS, batched):
        assert got == full_forward_argmax(model, prompt, 10, edits=[make_clamp(model, sae, clamps)]), (family, prompt)
    plain = generate_ids(model, PROMPTS, config, pad_token_id=0)
    assert batched[0] != plain[0] and batched[1] != plain[1]  # the clamps steer
    assert batched[2] == plain[2]  # a row with nothing clamped is unchanged (delta mode)


@pytest.mark.parametrize("family", [f for f in FAMILIES if f not in FAST_FAMILIES])
def test_families_without_a_fast_decoder_take_the_reference_loop(family, sae, one_thread):
    model = make_tiny(family)
    config = GenerationConfig(max_new_tokens=4, stop_at_eos=False)
    edits = [make_clamp(model, sae, (3, 8.0))]
    with pytest.raises(SaesteerError, match="the fast engine does not support this model") as err:
        generate_ids(model, PROMPTS[:1], config, edits=edits, engine="fast")
    assert "\n" not in str(err.value)
    auto = generate_ids(model, PROMPTS, config, edits=edits, pad_token_id=0)
    assert auto == generate_ids(model, PROMPTS, config, edits=edits, pad_token_id=0, engine="reference")


# --------------------------------------------------------------------------- the CLI, against an independent reference

LAYERS = {"neox": "gpt_neox.layers", "neox_seq": "gpt_neox.layers", "gemma3_mm": "model.language_model.layers",
          "gpt_neo": "transformer.h", "gptj": "transformer.h"}
"""Decoder layers by family, written out here (not taken from saesteer's table) for the reference."""


def _sae_shift(sae, x, feature, value, mode):
    """What steering adds at resid_post, from the SAE's weights (TopK, layer-normalised inputs)."""
    mu, std = x.mean(-1, keepdim=True), x.std(-1, keepdim=True)
    pre = ((x - mu) / (std + 1e-5) - sae.b_dec) @ sae.W_enc + sae.b_enc
    top = pre.topk(sae.cfg.k, dim=-1).indices
    z_f = torch.where((top == feature).any(-1, keepdim=True), pre[..., feature:feature + 1].clamp(min=0), 0.0)
    scale = (value - z_f) if mode == "delta" else value
    return scale * sae.W_dec[feature] * std


def reference_tokens(model, family, sae, prompt_ids, feature, value, mode, n):
    """Argmax of full forward passes, steered by a plain forward hook on decoder layer 2."""
    layer = model.get_submodule(LAYERS.get(family, "model.layers"))[2]

    def steer(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        new = hidden + _sae_shift(sae, hidden, feature, value, mode)
        return (new,) + tuple(output[1:]) if isinstance(output, tuple) else new

    seq, out = list(prompt_ids), []
    handle = layer.register_forward_hook(steer)
    try:
        with torch.no_grad():
            for _ in range(n):
                token = int(model(input_ids=torch.tensor([seq])).logits[0, -1].argmax())
                out.append(token)
                seq.append(token)
                if token == EOS:  # where generate stops
                    break
    finally:
        handle.remove()
    return out


@pytest.fixture(scope="module")
def sae_dir(tmp_path_factory, sae):
    from saesteer.saes.saelens import save_sae

    return save_sae(sae, tmp_path_factory.mktemp("sae") / "tiny")


@pytest.mark.parametrize("mode", ["delta", "add"])
@pytest.mark.parametrize("family", FAMILIES)
def test_cli_generate_json_equals_a_forward_hook_reference(family, mode, sae, sae_dir, tmp_path, capsys, gpt2_tokenizer,
                                                          one_thread):
    from transformers import AutoModelForCausalLM

    from saesteer.cli.main import run

    model_dir = tmp_path / family
    make_tiny(family).save_pretrained(model_dir)
    gpt2_tokenizer.save_pretrained(model_dir)
    args = ["generate", "--model", str(model_dir), "--sae", str(sae_dir), "--prompt", "Happiness is",
            "--clamp", "3=6", "--mode", mode, "--max-new-tokens", "8", "--json"]
    assert run(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["hook"] == HOOK and out["prompt_tokens"] == [BOS, 39, 42661, 318]
    reloaded = AutoModelForCausalLM.from_pretrained(model_dir).eval()  # the same weights, loaded by transformers
    expect = reference_tokens(reloaded, family, sae, out["prompt_tokens"], 3, 6.0, mode, 8)
    assert out["tokens"] == expect, family
    assert out["tokens"] != reference_tokens(reloaded, family, sae, out["prompt_tokens"], 3, 0.0, "add", 8), family
