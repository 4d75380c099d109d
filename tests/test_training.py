"""TopK SAE training (OpenAI v5 recipe) and activation collection.

Synthetic data with a known sparse dictionary checks what the trainer learns; the hand-written backward
pass is checked against autograd; activation collection is checked against plain forward passes, on a
tiny random GPT-2 and on the real stories260K model (skipped where ../shared is absent).
"""

from __future__ import annotations

import torch
import pytest

from saesteer.errors import SaesteerError
from saesteer.saes.base import SAE
from saesteer.training import (
    evaluate_sae, file_activations, ids_activations, sample_activations, text_activations, train_topk_sae,
)
from saesteer.training.topk import _Params, _step, geometric_median, layer_norm

HOOK = "blocks.2.hook_resid_post"


pytestmark = pytest.mark.usefixtures("one_thread")


def sparse_data(n: int, d: int, m: int, s: int, *, seed: int = 0, alpha: float = 0.0):
    """``n`` tokens, each a sum of ``s`` of ``m`` unit directions (zero-mean, so layer norm keeps them)
    with magnitudes in [1, 2]; feature j is drawn with weight ``(j + 1) ** -alpha``."""
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(m, d, generator=g)
    D -= D.mean(dim=-1, keepdim=True)
    D /= D.norm(dim=-1, keepdim=True)
    weights = (torch.arange(1, m + 1).float() ** -alpha).expand(n, m)
    idx = torch.multinomial(weights, s, replacement=False, generator=g)
    coef = torch.zeros(n, m).scatter_(1, idx, 1 + torch.rand(n, s, generator=g))
    return coef @ D, D


@pytest.fixture(scope="module")
def dictionary_data():
    return sparse_data(20_000, 32, 64, 4, seed=0)


@pytest.fixture(scope="module")
def trained(dictionary_data):
    x, _ = dictionary_data
    return train_topk_sae(x, d_sae=128, k=4, epochs=3, batch_size=256, seed=0, hook_name=HOOK, progress=False)


# --------------------------------------------------------------------------- what training learns

def test_recovers_a_known_sparse_dictionary(dictionary_data, trained):
    _, D = dictionary_data
    sae, stats = trained
    assert isinstance(sae, SAE)
    assert sae.cfg.activation == "topk" and sae.cfg.k == 4 and sae.cfg.normalize == "layer_norm"
    assert sae.hook_name == HOOK and (sae.d_in, sae.d_sae) == (32, 128)
    assert stats.variance_explained > 0.8
    assert stats.l0 == pytest.approx(4, abs=0.05)
    best = (D @ sae.W_dec.T).max(dim=-1).values  # each true direction's closest decoder row
    assert (best > 0.95).float().mean() >= 0.95
    # a random dictionary of the same size matches nothing
    rand = torch.randn(128, 32, generator=torch.Generator().manual_seed(9))
    assert ((D @ (rand / rand.norm(dim=-1, keepdim=True)).T).max(dim=-1).values > 0.95).sum() == 0
    # the loss went down, and the stats agree with an independent evaluation
    assert sum(stats.loss_history[-10:]) / 10 < 0.5 * sum(stats.loss_history[:10]) / 10
    ve, l0, dead = evaluate_sae(sae, dictionary_data[0][:5000])
    assert ve > 0.8 and l0 == pytest.approx(4, abs=0.05) and 0 <= dead < 1


def test_decoder_rows_are_unit_norm(trained):
    sae, _ = trained
    norms = sae.W_dec.norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)


def test_same_seed_same_weights_other_seed_different(dictionary_data):
    x = dictionary_data[0][:4000]
    kw = dict(d_sae=64, k=4, steps=40, batch_size=128, progress=False)
    a, sa = train_topk_sae(x, seed=3, **kw)
    b, sb = train_topk_sae(x, seed=3, **kw)
    c, _ = train_topk_sae(x, seed=4, **kw)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert sa.loss_history == sb.loss_history
    assert not torch.equal(a.W_dec, c.W_dec)
    assert not torch.equal(a.W_enc, c.W_enc)


def test_auxk_revives_dead_latents():
    # Many rare features and a high learning rate: without AuxK a quarter of the latents die.
    x, _ = sparse_data(10_000, 32, 512, 6, seed=1, alpha=1.0)
    kw = dict(d_sae=256, k=6, epochs=4, batch_size=256, lr=3e-2, seed=0, progress=False)
    _, without = train_topk_sae(x, aux_coef=0.0, **kw)
    _, with_aux = train_topk_sae(x, **kw)
    assert without.dead_fraction > 0.1
    assert with_aux.dead_fraction < 0.5 * without.dead_fraction
    assert max(with_aux.aux_loss_history) > 0 and max(without.aux_loss_history) == 0


def test_data_based_initialisation():
    x = torch.randn(3000, 16) * torch.linspace(0.5, 3, 16) + 5.0
    xn = layer_norm(x)
    ref_mu, ref_std = x.mean(-1, keepdim=True), x.std(-1, keepdim=True)
    assert torch.allclose(xn, (x - ref_mu) / (ref_std + 1e-5), atol=1e-6)
    p = _Params(xn, 32, torch.Generator().manual_seed(0), median_sample=3000)
    assert torch.equal(p.W_enc_rows, p.W_dec)  # encoder starts as the decoder's transpose
    assert torch.allclose(p.W_dec.norm(dim=-1), torch.ones(32), atol=1e-6)
    # b_dec is the geometric median: the mean of unit vectors towards the data is ~0 there
    def pull(point):
        return ((xn - point) / (xn - point).norm(dim=-1, keepdim=True)).mean(0).norm()

    assert pull(p.b_dec) < 1e-3
    skewed = torch.cat([torch.zeros(900, 3), torch.ones(100, 3) * 10])  # median 0, mean 1
    assert geometric_median(skewed).abs().max() < 1e-3


def test_hand_written_gradients_match_autograd():
    torch.manual_seed(0)
    B, d, d_sae, k, k_aux, coef = 64, 16, 48, 4, 8, 1 / 32
    p = _Params(layer_norm(torch.randn(500, d)), d_sae, torch.Generator().manual_seed(1), median_sample=500)
    p.b_enc = 0.1 * torch.randn(d_sae)
    p.W_enc_rows = p.W_enc_rows + 0.2 * torch.randn(d_sae, d)
    x = layer_norm(torch.randn(B, d))
    dead = torch.zeros(d_sae, dtype=torch.bool)
    dead[::3] = True
    var = 1.7
    loss, aux, l0, fired = _step(p, x, k, k_aux, coef, dead, var)

    W_enc, b_enc, W_dec, b_dec = (t.detach().clone().requires_grad_() for t in p.all())
    pre = (x - b_dec) @ W_enc.T + b_enc
    idx = pre.detach().topk(k, dim=-1).indices
    z = torch.zeros_like(pre).scatter(1, idx, torch.relu(pre.gather(1, idx)))
    recon = z @ W_dec + b_dec
    ref_loss = (recon - x).pow(2).sum() / (B * var)
    e = (x - recon).detach()
    a_idx = pre.detach().masked_fill(~dead, -torch.inf).topk(k_aux, dim=-1).indices
    z_a = torch.zeros_like(pre).scatter(1, a_idx, torch.relu(pre.gather(1, a_idx)))
    ref_aux = (z_a @ W_dec - e).pow(2).sum() / (e - e.mean(0)).pow(2).sum()
    (ref_loss + coef * ref_aux).backward()
    g_dec = W_dec.grad - (W_dec.grad * W_dec).sum(-1, keepdim=True) * W_dec
    assert loss == pytest.approx(ref_loss.item(), rel=1e-5)
    assert aux == pytest.approx(ref_aux.item(), rel=1e-5)
    assert aux > 0 and l0 == pytest.approx(float((z > 0).sum()) / B)
    assert torch.equal(fired, (z > 0).any(dim=0))
    for got, want in [(p.W_enc_rows.grad, W_enc.grad), (p.b_enc.grad, b_enc.grad), (p.W_dec.grad, g_dec),
                      (p.b_dec.grad, b_dec.grad)]:
        assert torch.allclose(got, want, atol=1e-6, rtol=1e-4)
    assert (p.W_dec.grad * p.W_dec.detach()).sum(-1).abs().max() < 1e-6  # nothing along the rows


def test_callback_sees_progress_and_can_stop(dictionary_data):
    seen = []

    def cb(info):
        seen.append(info)
        return info.step == 4

    _, stats = train_topk_sae(dictionary_data[0][:3000], d_sae=32, k=2, steps=500, batch_size=100,
                              progress=False, callback=cb)
    assert [i.step for i in seen] == [0, 1, 2, 3, 4]
    assert stats.steps == 5 and len(stats.loss_history) == 5 and stats.tokens == 500
    assert seen[-1].variance_explained == pytest.approx(1 - seen[-1].loss)
    assert seen[0].lr < seen[-1].lr  # warm-up


def test_progress_bar_shows_training_metrics(dictionary_data, capsys):
    train_topk_sae(dictionary_data[0][:2000], d_sae=32, k=2, steps=12, batch_size=100, progress=True)
    err = capsys.readouterr().err
    for key in ("loss=", "ve=", "l0=", "dead="):
        assert key in err


@pytest.mark.parametrize(
    "acts, kwargs, message",
    [
        (torch.randn(10), {}, "2-D"),
        (torch.randint(0, 5, (10, 4)), {}, "floating"),
        (torch.full((10, 4), float("nan")), {}, "NaN"),
        (torch.randn(10, 4), {"k": 9, "d_sae": 8}, "k <= d_sae"),
        (torch.randn(10, 4), {"steps": 5, "epochs": 1}, "not both"),
        (torch.randn(10, 4), {"lr": 0.0}, "lr"),
        (torch.randn(10, 4), {"eval_acts": torch.randn(5, 3)}, "eval_acts"),
    ],
)
def test_bad_inputs_are_one_line_errors(acts, kwargs, message):
    args = {"d_sae": 8, "k": 2, "progress": False, **kwargs}
    with pytest.raises(SaesteerError, match=message):
        train_topk_sae(acts, **args)


def test_trained_sae_saves_and_loads_in_saelens_format(trained, tmp_path):
    from saesteer.saes import load_sae, save_sae

    sae, _ = trained
    loaded = load_sae(str(save_sae(sae, tmp_path / "sae")))
    assert loaded.cfg.activation == "topk" and loaded.cfg.k == 4 and loaded.cfg.normalize == "layer_norm"
    assert loaded.hook_name == HOOK
    x = torch.randn(7, 32)
    assert torch.equal(loaded.reconstruct(x), sae.reconstruct(x))


# --------------------------------------------------------------------------- activation collection

def _hidden(model, ids, layer):
    """``blocks.{layer}.hook_resid_post`` by a plain forward: HF's hidden_states[layer + 1]."""
    with torch.no_grad():
        return model(input_ids=ids, output_hidden_states=True).hidden_states[layer + 1]


def test_text_activations_drop_bos_and_padding(tiny_loaded):
    texts = ["Hello there, how are you today?", "Short", "A somewhat longer document " * 5]
    hook = "blocks.1.hook_resid_post"
    acts = text_activations(tiny_loaded, texts, hook, seq_len=16, batch_size=2, progress=False)
    tok = tiny_loaded.tokenizer
    lengths = [len(tok(t)["input_ids"]) for t in texts]
    assert acts.shape == (sum(lengths), 64) and acts.dtype == torch.float32
    # every row of the result is the activation of a real token in its window (BOS + up to 15 tokens)
    bos = tiny_loaded.bos_token_id
    want = []
    for t in texts:
        ids = tok(t)["input_ids"]
        for s in range(0, len(ids), 15):
            row = torch.tensor([[bos] + ids[s:s + 15]])
            want.append(_hidden(tiny_loaded.model, row, 1)[0, 1:])
    want = torch.cat(want)
    # rows are batched by length, so compare as sets: sort both by a fixed projection
    key = torch.randn(64)
    assert torch.allclose((acts @ key).sort().values, (want @ key).sort().values, atol=1e-4)
    with_bos = text_activations(tiny_loaded, texts, hook, seq_len=16, batch_size=2, keep_bos=True, progress=False)
    assert with_bos.shape[0] == acts.shape[0] + sum(-(-n // 15) for n in lengths)  # one BOS per window


def test_file_activations_and_errors(tiny_loaded, tmp_path):
    f = tmp_path / "docs.txt"
    f.write_text("first story here\n\nsecond one\n\n", encoding="utf-8")
    one = file_activations(tiny_loaded, f, "blocks.0.hook_resid_post", progress=False)
    split = file_activations(tiny_loaded, f, "blocks.0.hook_resid_post", separator="\n\n", progress=False)
    assert one.shape[1] == split.shape[1] == 64 and one.shape[0] > split.shape[0] > 0
    with pytest.raises(SaesteerError, match="does not exist"):
        file_activations(tiny_loaded, tmp_path / "missing.txt", "blocks.0.hook_resid_post")
    with pytest.raises(SaesteerError, match="layer"):
        text_activations(tiny_loaded, ["x"], "blocks.99.hook_resid_post")
    with pytest.raises(SaesteerError, match="list of documents"):
        text_activations(tiny_loaded, "a string", "blocks.0.hook_resid_post")


def test_ids_activations_match_forward_pass(tiny_loaded):
    ids = torch.randint(0, 50000, (3, 10))
    ids[:, 0] = tiny_loaded.bos_token_id
    mask = torch.ones_like(ids)
    mask[2, 6:] = 0
    acts = ids_activations(tiny_loaded, ids, "blocks.3.hook_resid_post", attention_mask=mask, batch_size=2,
                           progress=False)
    full = _hidden(tiny_loaded.model, ids, 3)
    keep = mask.bool() & (ids != tiny_loaded.bos_token_id)
    assert acts.shape == (int(keep.sum()), 64)
    assert torch.allclose(acts[:18], full[:2, 1:].reshape(-1, 64), atol=1e-5)
    assert torch.allclose(acts[18:], full[2, 1:6], atol=1e-5)  # right padding does not touch earlier tokens


def test_sampled_activations_are_the_models_own(tiny_loaded):
    from saesteer.engine import GenerationConfig, generate_ids

    hook = "blocks.2.hook_resid_post"
    acts = sample_activations(tiny_loaded, hook, 40, seq_len=10, batch_size=4, seed=7, keep_bos=True, progress=False)
    assert acts.shape == (40, 64)
    # regenerate the same rows (the first call's seed) and run a plain forward over them
    cfg = GenerationConfig(max_new_tokens=10, temperature=1.0, seed=7 * 65_537, stop_at_eos=False)
    bos = tiny_loaded.bos_token_id
    out = generate_ids(tiny_loaded.model, [[bos]] * 4, cfg, engine="reference")
    ids = torch.tensor([[bos] + row[:9] for row in out])
    full = _hidden(tiny_loaded.model, ids, 2)  # [4, 10, 64]
    assert torch.allclose(acts.view(10, 4, 64), full.transpose(0, 1), atol=1e-4)  # step-major order
    again = sample_activations(tiny_loaded, hook, 40, seq_len=10, batch_size=4, seed=7, keep_bos=True, progress=False)
    assert torch.equal(acts, again)
    other = sample_activations(tiny_loaded, hook, 40, seq_len=10, batch_size=4, seed=8, keep_bos=True, progress=False)
    assert not torch.equal(acts, other)
    no_bos = sample_activations(tiny_loaded, hook, 36, seq_len=10, batch_size=4, seed=7, progress=False)
    assert torch.equal(no_bos, acts[4:])  # position 0 (BOS) of each row dropped, nothing else here
    with pytest.raises(SaesteerError, match="temperature"):
        sample_activations(tiny_loaded, hook, 10, temperature=0.0)


# --------------------------------------------------------------------------- the real model

def test_stories260k_sampled_activations_train_a_good_sae(stories_path):
    from saesteer.models.loading import load_model

    lm = load_model(str(stories_path))
    acts = sample_activations(lm, HOOK, 40_000, seq_len=64, batch_size=128, seed=0, progress=False)
    assert acts.shape == (40_000, 64) and bool(torch.isfinite(acts).all())
    # BOS positions are gone: the BOS residual (identical at every row start) does not appear
    bos_act = ids_activations(lm, torch.tensor([[lm.bos_token_id]]), HOOK, keep_bos=True, progress=False)[0]
    assert (acts - bos_act).norm(dim=-1).min() > 1e-3
    train, held_out = acts[:36_000], acts[36_000:]
    sae, stats = train_topk_sae(train, d_sae=256, k=16, epochs=2, batch_size=512, seed=0, hook_name=HOOK,
                                eval_acts=held_out, progress=False)
    assert stats.variance_explained > 0.85
    assert stats.dead_fraction < 0.05
    assert stats.eval_tokens == 4_000
