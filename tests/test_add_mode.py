"""Additive steering (``mode="add"``, Neuronpedia's default): ``x + v * (decode(z + e_f) - decode(z))`` at every
position, checked on the maths and, through ``generate`` (fast engine and reference loop), against an independent
full-forward reference that adds the decoder direction with a plain forward hook on the decoder layer."""

from __future__ import annotations

import pytest
import torch

from conftest import make_sae
from saesteer.engine import generate_ids
from saesteer.engine.generate import GenerationConfig
from saesteer.steering.clamp import MODES, SAEClamp
from saesteer.steering.hooks import make_clamp

EOS = 50256
PROMPTS = [[EOS], [EOS, 39, 42661, 318], [EOS, 464, 3290]]


@pytest.mark.parametrize("normalize", ["none", "layer_norm", "constant_norm_rescale", "center"])
def test_add_is_the_decode_difference_of_one_unit(normalize):
    sae = make_sae(activation="relu", normalize=normalize)
    x = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(0)) * 3
    out = SAEClamp(sae, {7: 4.0}, mode="add")(x)
    z, stats = sae.encode_with_stats(x)
    bumped = z.clone()
    bumped[..., 7] += 1
    want = x + 4.0 * (sae.decode(bumped, stats) - sae.decode(z, stats))
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    assert "add" in MODES


def test_add_ignores_the_current_activation_and_zero_adds_nothing():
    sae = make_sae(activation="topk", normalize="none")
    x = torch.randn(1, 4, 64, generator=torch.Generator().manual_seed(1))
    z = sae.encode(x)
    f = int(z[0, -1].argmax())
    out = SAEClamp(sae, {f: 2.5}, mode="add")(x)
    torch.testing.assert_close(out - x, (2.5 * sae.W_dec[f]).expand_as(x))  # same at active and inactive tokens
    assert torch.equal(SAEClamp(sae, {f: 0.0}, mode="add")(x), x)
    rows = SAEClamp(sae, rows=[[(f, 1.0)], []], mode="add")(x.expand(2, -1, -1))
    assert torch.equal(rows[1], x[0]) and not torch.equal(rows[0], x[0])


def forward_hook_reference(model, block, prompt, n, direction_fn):
    """Greedy tokens from full forward passes with ``direction_fn(hidden)`` added to ``block``'s output."""
    def hook(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden + direction_fn(hidden)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handle = block.register_forward_hook(hook)
    seq = list(prompt)
    try:
        with torch.no_grad():
            for _ in range(n):
                seq.append(int(model(input_ids=torch.tensor([seq]), use_cache=False).logits[0, -1].argmax()))
    finally:
        handle.remove()
    return seq[len(prompt):]


@pytest.mark.parametrize("engine", ["fast", "reference"])
@pytest.mark.parametrize("normalize", ["none", "layer_norm"])
def test_add_through_generate_equals_a_forward_hook_reference(tiny_gpt2, engine, normalize):
    sae = make_sae(activation="topk", normalize=normalize)  # hook blocks.6.hook_resid_post
    f, v = 11, 30.0

    def direction(hidden):
        d = v * sae.W_dec[f]
        return d * hidden.std(dim=-1, keepdim=True) if normalize == "layer_norm" else d

    config = GenerationConfig(max_new_tokens=6, stop_at_eos=False)
    steered = generate_ids(tiny_gpt2, PROMPTS, config, edits=[make_clamp(tiny_gpt2, sae, {f: v}, mode="add")],
                           eos_token_id=EOS, pad_token_id=EOS, engine=engine)
    plain = generate_ids(tiny_gpt2, PROMPTS, config, eos_token_id=EOS, pad_token_id=EOS, engine=engine)
    for prompt, row in zip(PROMPTS, steered):
        assert row == forward_hook_reference(tiny_gpt2, tiny_gpt2.transformer.h[6], prompt, 6, direction)
    assert steered != plain  # the strength is large enough to change the text


# ------------------------------------------------------------------ everywhere a clamp mode is accepted
HOOK = "blocks.6.hook_resid_post"


def test_cli_generate_add_equals_the_forward_hook_reference(capsys, tmp_path, tiny_model_dir, tiny_sae_pt, tiny_gpt2,
                                                            tiny_sae):
    import json

    from saesteer.cli.main import run

    base = ["--model", str(tiny_model_dir), "--sae", str(tiny_sae_pt), "--hook", HOOK]
    assert run(["generate", *base, "--prompt", "Happiness is", "--clamp", "3=25", "--mode", "add", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["mode"] == "add"

    def direction(hidden):  # tiny_sae normalises its input (layer_norm): the direction in the activation's units
        return 25.0 * tiny_sae.W_dec[3] * hidden.std(dim=-1, keepdim=True)

    want = forward_hook_reference(tiny_gpt2, tiny_gpt2.transformer.h[6], out["prompt_tokens"], 10, direction)
    assert out["tokens"] == want
    lines = tmp_path / "lines.txt"
    assert run(["batch", *base, "--features", "0:3", "--value", "25", "--mode", "add", "--max-new-tokens", "4",
                "--out", str(lines)]) == 0
    assert len(lines.read_text().splitlines()) == 3


def test_steerer_compare_and_feature_card_accept_add(tiny_loaded, tiny_sae, tmp_path, monkeypatch):
    from saesteer.evaluation.compare import compare
    from saesteer.evaluation.feature_card import feature_card
    from saesteer.steerer import Steerer

    monkeypatch.setenv("SAESTEER_CACHE", str(tmp_path))
    st = Steerer(tiny_loaded, tiny_sae)
    added = st.generate("Happiness is", clamps={3: 25.0}, mode="add", max_new_tokens=6)
    assert added.mode == "add" and added.tokens != st.generate("Happiness is", max_new_tokens=6).tokens
    rows = st.batch_features([3, 4], 25.0, prompt="Happiness is", mode="add", max_new_tokens=6)
    assert rows[0].tokens == added.tokens
    cmp = compare(st, "Happiness is", {3: 25.0}, mode="add", max_new_tokens=6, reference_samples=4,
                  reference_length=8, cards=False)
    assert cmp.mode == "add" and cmp.to_dict()["mode"] == "add"
    card = feature_card(st, 3, values=[25.0], prompt="Happiness is", max_new_tokens=6, mode="add",
                        reference_samples=4, reference_length=8)
    assert card.mode == "add"


def test_web_schema_accepts_add():
    from saesteer.web.schemas import GenerateRequest

    assert GenerateRequest(prompt="hi", clamps=[{"feature": 1, "value": 3.0}], mode="add").mode == "add"


# ------------------------------------------------------------------ the other SAE families through both engines
def family_saes(tmp_path):
    """A gated, a constant-norm-rescale, a sparsify skip-connection and a centring SAE at the tiny model's layer 6."""
    import json as _json

    from safetensors.torch import save_file

    from _sae_files import new_cfg, saelens_tensors, write_saelens_folder
    from saesteer.saes import load_sae

    t = saelens_tensors(64, 128)
    g = torch.Generator().manual_seed(5)
    gated = {k: v for k, v in t.items() if k != "b_enc"}
    gated.update(b_gate=torch.randn(128, generator=g) * 0.3, b_mag=torch.randn(128, generator=g) * 0.3,
                 r_mag=torch.randn(128, generator=g) * 0.2)
    out = [load_sae(write_saelens_folder(tmp_path / "gated", new_cfg(64, 128, architecture="gated",
                                                                       hook_name=HOOK), gated)),
           load_sae(write_saelens_folder(tmp_path / "cnr", new_cfg(64, 128, normalize_activations="constant_norm_rescale",
                                                                     hook_name=HOOK), t))]
    folder = tmp_path / "layers.6"
    folder.mkdir()
    save_file({"encoder.weight": t["W_enc"].T.contiguous(), "encoder.bias": t["b_enc"], "W_dec": t["W_dec"],
               "b_dec": t["b_dec"], "W_skip": torch.randn(64, 64, generator=g) / 16}, str(folder / "sae.safetensors"))
    (folder / "cfg.json").write_text(_json.dumps({"activation": "groupmax", "k": 8, "skip_connection": True,
                                                  "transcode": False, "d_in": 64}))
    out.append(load_sae(folder))
    out.append(make_sae(activation="relu", normalize="center", d_sae=128))  # a release trained on centred TL
    return out


@pytest.mark.parametrize("mode", ["delta", "reconstruct", "add"])
def test_other_families_steer_the_same_on_both_engines(tiny_gpt2, tmp_path, mode):
    config = GenerationConfig(max_new_tokens=5, stop_at_eos=False)
    plain = generate_ids(tiny_gpt2, PROMPTS, config, eos_token_id=EOS, pad_token_id=EOS, engine="reference")
    for sae in family_saes(tmp_path / mode):
        assert sae.hook_name == HOOK and not sae.plain_maths
        got = {}
        for engine in ("fast", "reference"):
            edits = [make_clamp(tiny_gpt2, sae, {5: 40.0}, mode=mode)]
            got[engine] = generate_ids(tiny_gpt2, PROMPTS, config, edits=edits, eos_token_id=EOS, pad_token_id=EOS,
                                       engine=engine)
        assert got["fast"] == got["reference"], sae
        assert got["fast"] != plain, sae
