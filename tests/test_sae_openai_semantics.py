"""Loaded SAEs compute what their reference implementations compute.

The references below are written from the documented semantics (reference README), independently of
``saesteer.saes.base``: OpenAI's ``Autoencoder`` works on ``encoder.weight [n_latents, d_model]`` /
``decoder.weight [d_model, n_latents]`` with ``F.linear``, SAELens on ``W_enc [d_in, d_sae]``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from _sae_files import new_cfg, openai_state_dict, saelens_tensors, write_openai_pt, write_saelens_folder
from saesteer.errors import SaesteerError
from saesteer.saes import load_sae

ATOL = 1e-5


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ------------------------------------------------------------------ OpenAI reference
def oai_layer_norm(x, eps=1e-5):
    """OpenAI's LN: unbiased std over the last dim, eps added outside the std; returns (x_ln, mu, std)."""
    mu = x.mean(dim=-1, keepdim=True)
    centred = x - mu
    std = (centred.pow(2).sum(dim=-1, keepdim=True) / (x.shape[-1] - 1)).sqrt()
    return centred / (std + eps), mu, std


def oai_topk(pre, k):
    """TopK then ReLU: keep the k largest pre-activations, ReLU them, zeros elsewhere."""
    values, indices = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, indices, F.relu(values))


def oai_encode(sd, x, k=None):
    """``z = act(encoder(x_ln - pre_bias) + latent_bias)``; LN (and TopK) only when k is given (v5)."""
    if k is not None:
        x, mu, std = oai_layer_norm(x)
    else:
        mu = std = None
    pre = F.linear(x - sd["pre_bias"], sd["encoder.weight"]) + sd["latent_bias"]
    z = oai_topk(pre, k) if k is not None else F.relu(pre)
    return z, mu, std


def oai_decode(sd, z, mu=None, std=None):
    """``x_hat = decoder(z) + pre_bias``, then ``* std + mu`` with the encode's stats (v5)."""
    x_hat = F.linear(z, sd["decoder.weight"]) + sd["pre_bias"]
    return x_hat * std + mu if mu is not None else x_hat


def _v5_state(seed=0):
    # Latent biases from -5 to 0: some tokens have fewer than k positive pre-activations among their
    # top k, so the ReLU after TopK matters; others have k.
    return openai_state_dict(16, 64, activation="TopK", k=6, seed=seed, latent_bias=torch.linspace(-5, 0, 64))


def test_v5_encode_decode_match_the_reference(tmp_path):
    sd = _v5_state()
    sae = load_sae(write_openai_pt(tmp_path / "v5.pt", sd))
    x = torch.randn(3, 7, 16) * 3 + 1.5  # [batch, pos, d_model], off-centre and scaled like residuals

    z, stats = sae.encode_with_stats(x)
    z_ref, mu, std = oai_encode(sd, x, k=6)
    torch.testing.assert_close(z, z_ref, atol=ATOL, rtol=0)
    active = (z_ref > 0).sum(-1)
    assert active.max() == 6 and active.min() < 6  # both TopK and the ReLU after it are exercised
    torch.testing.assert_close(stats[0], mu, atol=ATOL, rtol=0)
    torch.testing.assert_close(stats[1], std, atol=ATOL, rtol=0)

    torch.testing.assert_close(sae.decode(z, stats), oai_decode(sd, z_ref, mu, std), atol=ATOL, rtol=0)
    torch.testing.assert_close(sae.reconstruct(x), oai_decode(sd, z_ref, mu, std), atol=ATOL, rtol=0)
    with pytest.raises(SaesteerError):
        sae.decode(z)  # decoding v5 latents without the encode's (mu, std) would be wrong


def test_v5_clamping_moves_along_the_decoder_column(tmp_path):
    sd = _v5_state(seed=1)
    sae = load_sae(write_openai_pt(tmp_path / "v5.pt", sd))
    x = torch.randn(5, 16) * 2
    z, stats = sae.encode_with_stats(x)
    z_clamped = z.clone()
    z_clamped[:, 9] = 4.0
    moved = sae.decode(z_clamped, stats) - sae.decode(z, stats)
    _, _, std = oai_encode(sd, x, k=6)
    expected = (4.0 - z[:, 9:10]) * sd["decoder.weight"][:, 9] * std  # in raw (de-normalised) space
    torch.testing.assert_close(moved, expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(sae.decoder_directions[9], sd["decoder.weight"][:, 9], atol=0, rtol=0)


@pytest.mark.parametrize("activation", ["ReLU", None])
def test_v1_v4_relu_without_normalisation(tmp_path, activation):
    sd = openai_state_dict(16, 64, activation=activation, seed=2)
    sae = load_sae(write_openai_pt(tmp_path / "mlp_post_act_v4" / "autoencoders" / "1.pt", sd))
    x = torch.randn(4, 6, 16) * 5 + 2
    z, stats = sae.encode_with_stats(x)
    z_ref, _, _ = oai_encode(sd, x, k=None)
    assert stats is None
    torch.testing.assert_close(z, z_ref, atol=ATOL, rtol=0)
    assert (z_ref > 0).float().mean() > 0.2  # many latents active: no TopK in play
    torch.testing.assert_close(sae.decode(z), oai_decode(sd, z_ref), atol=ATOL, rtol=0)
    torch.testing.assert_close(sae.reconstruct(x), oai_decode(sd, z_ref), atol=ATOL, rtol=0)


# ------------------------------------------------------------------ SAELens reference
def lens_pre(t, x, apply_b_dec=True):
    return (x - t["b_dec"] * apply_b_dec) @ t["W_enc"] + t["b_enc"]


def test_saelens_topk_semantics(tmp_path):
    t = saelens_tensors(16, 48, seed=3)
    t["b_enc"] = torch.linspace(-5, -1, 48)  # some rows have fewer than k positive pre-activations
    sae = load_sae(write_saelens_folder(tmp_path / "s", new_cfg(architecture="topk", k=5), t))
    x = torch.randn(10, 16) * 2
    pre = lens_pre(t, x)
    values, idx = pre.topk(5, dim=-1)
    z_ref = torch.zeros_like(pre).scatter(-1, idx, values.clamp(min=0))
    z = sae.encode(x)
    torch.testing.assert_close(z, z_ref, atol=ATOL, rtol=0)
    assert (z_ref > 0).sum(-1).max() == 5 and (z_ref > 0).sum(-1).min() < 5
    torch.testing.assert_close(sae.decode(z), z_ref @ t["W_dec"] + t["b_dec"], atol=ATOL, rtol=0)


def test_saelens_jumprelu_semantics(tmp_path):
    t = saelens_tensors(16, 48, seed=4, jumprelu=True)
    cfg = new_cfg(architecture="jumprelu", apply_b_dec_to_input=False)
    sae = load_sae(write_saelens_folder(tmp_path / "s", cfg, t))
    x = torch.randn(20, 16) * 2
    pre = lens_pre(t, x, apply_b_dec=False)
    z_ref = pre * (pre > t["threshold"])  # the value passes whole (not pre - threshold), or not at all
    z = sae.encode(x)
    torch.testing.assert_close(z, z_ref, atol=ATOL, rtol=0)
    passed = z_ref != 0
    assert passed.any() and ((pre > 0) & ~passed).any()  # some positive pre-activations are cut
    assert z[passed].min() >= t["threshold"].min()
    torch.testing.assert_close(sae.decode(z), z_ref @ t["W_dec"] + t["b_dec"], atol=ATOL, rtol=0)


def test_saelens_layer_norm_is_openai_layer_norm(tmp_path):
    """An OpenAI v5 SAE mirrored in SAELens format (old schema) computes what the .pt computes."""
    sd = _v5_state(seed=5)
    t = {
        "W_enc": sd["encoder.weight"].T.contiguous(),
        "b_enc": sd["latent_bias"],
        "W_dec": sd["decoder.weight"].T.contiguous(),
        "b_dec": sd["pre_bias"],
    }
    cfg = new_cfg(16, 64, architecture="standard", activation_fn_str="topk", activation_fn_kwargs={"k": 6},
                  normalize_activations="layer_norm")
    sae = load_sae(write_saelens_folder(tmp_path / "mirror", cfg, t))
    x = torch.randn(4, 16) * 3
    z_ref, mu, std = oai_encode(sd, x, k=6)
    torch.testing.assert_close(sae.reconstruct(x), oai_decode(sd, z_ref, mu, std), atol=ATOL, rtol=0)
