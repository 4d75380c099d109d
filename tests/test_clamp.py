"""Clamping maths: delta keeps the SAE error, reconstruct replaces the activation, per-row equals one by one."""

import pytest
import torch

from conftest import make_sae
from saesteer.errors import SaesteerError
from saesteer.steering.clamp import FeatureClamp, SAEClamp, as_clamps, parse_clamp
from saesteer.steering.hooks import clamp, make_clamp, record


@pytest.fixture(params=["topk", "relu", "jumprelu"])
def sae(request):
    return make_sae(activation=request.param, normalize="layer_norm" if request.param == "topk" else "none")


def test_delta_clamp_to_current_value_changes_nothing(tiny_gpt2, tiny_sae):
    ids = torch.tensor([[50256, 39, 42661, 318]])
    x = torch.randn(1, 4, 64)
    z = tiny_sae.encode(x)
    j = int(z[0, -1].argmax())
    fn = SAEClamp(tiny_sae, {j: float(z[0, -1, j])})
    out = fn(x)
    assert torch.equal(out[0, -1], x[0, -1])  # exactly unchanged where the value equals the latent
    assert not torch.equal(out[0, 0], x[0, 0])  # other positions have other latent values
    # Through the model: a latent clamped to its own value (0 where it is inactive everywhere) leaves the
    # logits unchanged, while clamping it elsewhere does change them.
    with torch.no_grad():
        with record(tiny_gpt2, tiny_sae.hook_name) as rec:
            clean = tiny_gpt2(input_ids=ids).logits
        inactive = (tiny_sae.encode(rec[tiny_sae.hook_name]) == 0).all(dim=1)[0].nonzero().flatten()
        f = int(inactive[0])
        with clamp(tiny_gpt2, tiny_sae, {f: 0.0}):
            same = tiny_gpt2(input_ids=ids).logits
        with clamp(tiny_gpt2, tiny_sae, {f: 20.0}):
            moved = tiny_gpt2(input_ids=ids).logits
    assert torch.allclose(clean, same, atol=1e-5)
    assert not torch.allclose(clean, moved, atol=1e-3)


def test_delta_clamp_keeps_error_term(sae):
    x = 3 * torch.randn(2, 5, 64)
    out = SAEClamp(sae, {7: 4.0})(x)
    z, stats = sae.encode_with_stats(x)
    z2 = z.clone()
    z2[..., 7] = 4.0
    expect = x + sae.decode(z2, stats) - sae.decode(z, stats)
    assert torch.allclose(out, expect, atol=1e-4)


def test_reconstruct_mode_equals_decode_of_clamped_latents(sae):
    x = 3 * torch.randn(2, 5, 64)
    out = SAEClamp(sae, {7: 4.0, 11: -2.0}, mode="reconstruct")(x)
    z, stats = sae.encode_with_stats(x)
    z[..., 7], z[..., 11] = 4.0, -2.0
    assert torch.allclose(out, sae.decode(z, stats), atol=1e-5)


def test_per_row_clamp_equals_one_row_at_a_time(sae):
    x = 3 * torch.randn(3, 4, 64)
    rows = [[(1, 10.0)], [], [(2, -5.0), (9, 3.0)]]
    together = SAEClamp(sae, rows=rows)(x)
    for b, row in enumerate(rows):
        alone = SAEClamp(sae, row)(x[b:b + 1])
        assert torch.allclose(together[b:b + 1], alone, atol=1e-5)
    assert torch.equal(together[1], x[1])  # a row with no clamps is untouched in delta mode


def test_select_rows_follows_rows(sae):
    x = 3 * torch.randn(3, 1, 64)
    fn = SAEClamp(sae, rows=[[(1, 10.0)], [(2, 5.0)], [(3, 7.0)]])
    keep = torch.tensor([0, 2])
    assert torch.allclose(fn.select_rows(keep)(x[keep]), fn(x)[keep], atol=1e-6)


def test_validation(tiny_gpt2, tiny_sae):
    with pytest.raises(SaesteerError, match=r"outside \[0, 256\)"):
        SAEClamp(tiny_sae, {256: 1.0})
    with pytest.raises(SaesteerError, match="finite"):
        FeatureClamp(3, float("nan"))
    with pytest.raises(SaesteerError, match="finite"):
        FeatureClamp(3, float("inf"))
    with pytest.raises(SaesteerError, match="FEATURE=VALUE"):
        parse_clamp("12:3")
    assert parse_clamp("12=-3.5") == FeatureClamp(12, -3.5)
    with pytest.raises(SaesteerError, match="mode"):
        SAEClamp(tiny_sae, {1: 1.0}, mode="replace")
    wide = make_sae(d_in=32)
    with pytest.raises(SaesteerError, match="32-wide"):
        make_clamp(tiny_gpt2, wide, {1: 1.0})


def test_as_clamps_forms():
    assert as_clamps({1: 2}) == [FeatureClamp(1, 2.0)]
    assert as_clamps((1, 2)) == [FeatureClamp(1, 2.0)]
    assert as_clamps([(1, 2), (3, 4)]) == [FeatureClamp(1, 2.0), FeatureClamp(3, 4.0)]
    assert as_clamps([FeatureClamp(5, 1.0)]) == [FeatureClamp(5, 1.0)]


def test_a_steering_mode_is_one_entry(tiny_gpt2, tiny_sae, monkeypatch):
    """A mode added to STEERING_MODES alone (here: push the latent away from the value) works in a clamp, and
    the fast engine, which fuses only the modes it knows (FUSED_MODES), runs it as the plain edit: the same
    tokens as the reference loop."""
    from saesteer.engine import GenerationConfig, generate_ids
    from saesteer.engine.fused_clamp import FUSED_MODES, FusedClamp, resolve_edits
    from saesteer.steering import clamp as clamp_module

    def away(sae, x, idx, val, mask):
        return clamp_module.STEERING_MODES["add"].apply(sae, x, idx, -val, mask)

    new = clamp_module.ClampMode("away", "add minus VALUE times the direction", away, keeps_unclamped=True)
    monkeypatch.setitem(clamp_module.STEERING_MODES, "away", new)
    x = torch.randn(2, 3, 64)
    fn, add = SAEClamp(tiny_sae, {5: 7.0}, mode="away"), SAEClamp(tiny_sae, {5: -7.0}, mode="add")
    assert torch.equal(fn(x), add(x)) and not torch.equal(fn(x), x)
    assert "away" not in FUSED_MODES and fn.latent_clamp() is fn
    hook = tiny_sae.hook_name
    fused = resolve_edits(tiny_gpt2, [(hook, SAEClamp(tiny_sae, {5: 7.0}))], torch.float32)[0][2]
    plain = resolve_edits(tiny_gpt2, [(hook, fn)], torch.float32)[0][2]
    assert isinstance(fused, FusedClamp) and plain is fn
    prompts = [[50256, 39, 42661], [50256, 318]]
    cfg = GenerationConfig(max_new_tokens=6)
    ref = generate_ids(tiny_gpt2, prompts, cfg, edits=[(hook, fn)], engine="reference")
    fast = generate_ids(tiny_gpt2, prompts, cfg, edits=[(hook, fn)], engine="fast")
    base = generate_ids(tiny_gpt2, prompts, cfg, engine="reference")
    assert fast == ref and ref != base
    with pytest.raises(SaesteerError, match="unknown clamp mode 'sideways'; use one of delta, reconstruct, add"):
        SAEClamp(tiny_sae, {5: 1.0}, mode="sideways")
