"""Feature facts on a model and SAE built so that the answers are known."""

import pytest
import torch

from saesteer.evaluation import feature_facts as ff
from saesteer.models.loading import wrap_model
from saesteer.saes.base import SAE, SAEConfig

pytestmark = pytest.mark.usefixtures("one_thread")


TEXT = "The dragon flew over the hills. A dragon sleeps, and the old king waits for the dragon."


@pytest.fixture(scope="module")
def lens_model():
    """One block, no position embeddings: the activation at blocks.0.hook_resid_pre is the token's embedding."""
    from conftest import make_tiny_gpt2

    model = make_tiny_gpt2(n_layer=1, d_model=64, seed=3)
    with torch.no_grad():
        model.transformer.wpe.weight.zero_()
    return model


@pytest.fixture(scope="module")
def known(lens_model, gpt2_tokenizer):
    lm = wrap_model(lens_model, gpt2_tokenizer, name="lens-model")
    E = lens_model.transformer.wte.weight.detach()
    dragon = gpt2_tokenizer(" dragon")["input_ids"]
    assert len(dragon) == 1
    dragon = dragon[0]
    loudest = int(E.norm(dim=-1).argmax())
    d_sae = 8
    g = torch.Generator().manual_seed(0)
    W_enc = 0.01 * torch.randn(64, d_sae, generator=g)
    b_enc = torch.full((d_sae,), -10.0)  # features 2.. never fire
    W_dec = torch.randn(d_sae, 64, generator=g)
    # Feature 0 fires (0.5) on " dragon" only; feature 1 never fires.
    W_enc[:, 0] = E[dragon] / E[dragon].pow(2).sum()
    b_enc[0] = -0.5
    W_enc[:, 1] = 0.0
    # Feature 2 promotes the token with the largest embedding; feature 3 suppresses it.
    W_dec[2] = E[loudest] / E[loudest].norm()
    W_dec[3] = -W_dec[2]
    cfg = SAEConfig(d_in=64, d_sae=d_sae, activation="relu", normalize="none", apply_b_dec_to_input=False,
                    hook_name="blocks.0.hook_resid_pre", source="known")
    sae = SAE(cfg, W_enc, b_enc, W_dec, torch.zeros(64))
    return lm, sae, dragon, loudest


def test_firing_tokens_words_and_max_activation(known, tmp_path):
    lm, sae, dragon, _ = known
    ref = tmp_path / "ref.txt"
    ref.write_text(TEXT)
    facts = ff.feature_facts(lm, sae, sae.hook_name, reference_text=ref, cache_dir=tmp_path / "cache")
    f0 = facts[0]
    assert f0.firing_tokens[0].id == dragon
    assert [t.id for t in f0.firing_tokens] == [dragon]
    assert f0.firing_words == ["dragon"]
    assert f0.max_activation == pytest.approx(0.5, abs=1e-4)
    n_tokens = len(gpt2_ids(lm, TEXT))
    assert f0.frequency == pytest.approx(3 / n_tokens)
    assert len(facts.examples(0)) == 3
    dead = facts[1]
    assert dead.max_activation == 0.0 and dead.firing_tokens == [] and dead.firing_words == [] and dead.frequency == 0
    assert f0.targets().words == frozenset({"dragon"}) and dragon in f0.targets().token_ids


def gpt2_ids(lm, text):
    return lm.encode(text, prepend_bos=False)


def test_logit_lens_names_the_promoted_token(known, tmp_path):
    lm, sae, _, loudest = known
    ref = tmp_path / "ref.txt"
    ref.write_text(TEXT)
    facts = ff.feature_facts(lm, sae, sae.hook_name, reference_text=ref, cache_dir=tmp_path / "cache", n_lens=5)
    assert facts[2].lens_top[0].id == loudest
    assert facts[3].lens_bottom[0].id == loudest
    assert facts[2].lens_top[0].text == lm.decode([loudest])
    assert len(facts[2].lens_top) == 5
    assert facts[2].lens_top[0].value > facts[2].lens_top[1].value
    assert loudest in facts.targets(2).lens_ids


def test_mlp_post_directions_go_through_the_output_projection(tiny_gpt2):
    from saesteer.models.hook_sites import unembed_directions

    from conftest import make_sae

    sae = make_sae(d_in=256, d_sae=16, hook_name="blocks.2.mlp.hook_post", normalize="none", activation="relu")
    lens = ff.logit_lens(tiny_gpt2, sae, sae.hook_name, n=4)
    assert lens["lens_top_ids"].shape == (16, 4)
    W = tiny_gpt2.transformer.h[2].mlp.c_proj.weight  # Conv1D: [in=256, out=64]
    want = unembed_directions(tiny_gpt2, sae.W_dec @ W).topk(4, dim=-1).indices
    assert torch.equal(lens["lens_top_ids"].long(), want)


def test_cached_after_first_computation(known, tmp_path, monkeypatch):
    lm, sae, _, _ = known
    ref = tmp_path / "ref.txt"
    ref.write_text(TEXT)
    first = ff.feature_facts(lm, sae, sae.hook_name, reference_text=ref, cache_dir=tmp_path / "c")

    def boom(*a, **k):
        raise AssertionError("recomputed instead of read from the cache")

    monkeypatch.setattr(ff, "compute_facts", boom)
    again = ff.feature_facts(lm, sae, sae.hook_name, reference_text=ref, cache_dir=tmp_path / "c")
    assert again.digest == first.digest
    assert again[0] == first[0] and again[2] == first[2]
    ref.write_text(TEXT + " More text.")  # another reference: another key, so it is computed
    with pytest.raises(AssertionError, match="recomputed"):
        ff.feature_facts(lm, sae, sae.hook_name, reference_text=ref, cache_dir=tmp_path / "c")


def test_sampled_reference_is_seeded(tiny_loaded):
    a = ff.sample_reference(tiny_loaded, samples=3, length=4, seed=1)
    b = ff.sample_reference(tiny_loaded, samples=3, length=4, seed=1)
    c = ff.sample_reference(tiny_loaded, samples=3, length=4, seed=2)
    assert a.tokens.shape == (3, 5) and (a.tokens[:, 0] == 50256).all()
    assert torch.equal(a.tokens, b.tokens)
    assert not torch.equal(a.tokens, c.tokens)


def test_fingerprints_follow_weights_not_objects(tiny_sae):
    from conftest import make_sae, make_tiny_gpt2

    assert ff.sae_fingerprint(tiny_sae) == ff.sae_fingerprint(make_sae())
    assert ff.sae_fingerprint(tiny_sae) != ff.sae_fingerprint(make_sae(seed=2))
    m1, m2 = make_tiny_gpt2(n_layer=1, d_model=32), make_tiny_gpt2(n_layer=1, d_model=32)
    assert ff.model_fingerprint(m1) == ff.model_fingerprint(m2)
    with torch.no_grad():
        m2.transformer.h[0].mlp.c_fc.weight.mul_(1.01)
    assert ff.model_fingerprint(m1) != ff.model_fingerprint(m2)


@pytest.mark.parametrize("family,overrides", [
    ("llama", {"rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}}),  # transformers 5 keeps theta here
    ("gpt_neo", {"window_size": 2}),
])
def test_model_fingerprint_tells_configs_apart_that_change_outputs_for_the_same_weights(family, overrides):
    from _tiny_models import make_tiny

    same, other = make_tiny(family), make_tiny(family, **overrides)
    assert all(torch.equal(a, b) for a, b in zip(same.state_dict().values(), other.state_dict().values()))
    ids = torch.arange(1, 13)[None]
    with torch.no_grad():  # the config change is real: the logits differ
        assert not torch.allclose(same(ids).logits, other(ids).logits)
    assert ff.model_fingerprint(same) == ff.model_fingerprint(make_tiny(family))
    assert ff.model_fingerprint(same) != ff.model_fingerprint(other)


def test_words_keep_the_spaces_a_lone_token_loses():
    from saesteer.evaluation.text_metrics import token_words

    vocab = [" the", " lady", "bug", " ran"]

    def decode(ids):  # like SentencePiece: a text's leading space is dropped, so " lady" alone is "lady"
        return "".join(vocab[i] for i in ids).lstrip()

    texts = ff.tokens_in_context(decode, [0, 1, 2, 3])
    assert texts == ["the", " lady", "bug", " ran"]
    assert token_words(texts) == ["the", "ladybug", "ladybug", "ran"]
    assert token_words([decode([i]) for i in [0, 1, 2, 3]]) == ["theladybugran"] * 4  # what it avoids


def test_sampled_text_is_reused_by_another_sae_of_the_same_model(tiny_loaded, tmp_path, monkeypatch):
    from conftest import make_sae

    first = ff.feature_facts(tiny_loaded, make_sae(d_sae=32), "blocks.6.hook_resid_post", samples=2, length=4,
                             cache_dir=tmp_path)

    def boom(*a, **k):
        raise AssertionError("sampled again")

    monkeypatch.setattr(ff, "sample_reference", boom)
    other = ff.feature_facts(tiny_loaded, make_sae(d_sae=48, seed=4), "blocks.6.hook_resid_post", samples=2, length=4,
                             cache_dir=tmp_path)
    assert torch.equal(other.tensors["reference_tokens"], first.tensors["reference_tokens"])
    assert len(other) == 48 and other.meta["reference"]["source"] == "sampled"
    with pytest.raises(AssertionError, match="sampled again"):  # another seed is another text
        ff.feature_facts(tiny_loaded, make_sae(d_sae=48, seed=4), "blocks.6.hook_resid_post", samples=2, length=4,
                         seed=9, cache_dir=tmp_path)


def test_facts_of_some_blocks_equal_the_full_tables_rows(tiny_loaded, tmp_path):
    """Issue 17 item 2: a first sweep of a few features computes their facts only, with the same numbers."""
    from conftest import make_sae

    sae = make_sae(d_sae=80, k=8, seed=5)
    ref = ff.reference_from_text(tiny_loaded, TEXT * 3, length=16)
    full = ff.compute_facts(tiny_loaded, sae, sae.hook_name, ref, block=16)
    part = ff.compute_facts(tiny_loaded, sae, sae.hook_name, ref, block=16, blocks=[1, 4])
    rows = list(range(16, 32)) + list(range(64, 80))
    for name, t in full.tensors.items():
        if name == "reference_tokens":
            assert torch.equal(part.tensors[name], t)
            continue
        assert torch.equal(part.tensors[name][rows], t[rows]), name
    assert all(part[j] == full[j] for j in rows) and part.words[20] == full.words[20]
    fired = [j for j in range(80) if j not in rows and full[j].max_activation > 0]
    assert fired and all(part[j].max_activation == 0 and not part[j].firing_words for j in fired)
    assert part.meta["blocks"] == [1, 4] and "blocks" not in full.meta
    assert ff.feature_blocks(range(20, 70), 80, 16) == [1, 2, 3, 4]
    assert ff.feature_blocks(range(80), 80, 16) is None and ff.feature_blocks(None, 80) is None


def test_a_sweep_computes_facts_for_the_blocks_it_sweeps(tiny_loaded, tmp_path, monkeypatch):
    from conftest import make_sae

    from saesteer import Steerer
    from saesteer.sweep import Sweep

    monkeypatch.setattr(ff, "BLOCK", 16)
    sae = make_sae(d_sae=48, k=8, seed=6)
    st = Steerer(tiny_loaded, sae)
    ref = tmp_path / "ref.txt"
    ref.write_text(TEXT)
    sw = Sweep(st, features="17:20", values=[5], reference_text=ref, cache_dir=tmp_path / "c", max_new_tokens=3)
    results = sw.results()
    full = Sweep(st, features="0:48", values=[5], reference_text=ref, cache_dir=tmp_path / "c", max_new_tokens=3)
    assert sw.facts.meta["blocks"] == [1] and "blocks" not in full.facts.meta
    assert all(sw.facts[j] == full.facts[j] for j in range(16, 32))
    by = {(r.feature, r.value): r for r in full.results()}
    assert all(r.metrics == by[(r.feature, r.value)].metrics for r in results)


def _bits(t):
    return t.contiguous().view(torch.int32)


@pytest.mark.parametrize("activation", ["topk", "relu", "jumprelu"])
def test_column_latents_equal_the_full_encode_bit_for_bit(activation):
    """Issue 17 item 2: statistics of the swept columns form only their activations, with the same bits."""
    from conftest import make_sae

    from saesteer.evaluation.activations import column_latents

    sae = make_sae(d_sae=96, k=7, activation=activation, normalize="none", seed=7)
    with torch.no_grad():  # latents in identical pairs and k odd: ties straddle the k-th value on every token
        sae.W_enc[:, 1::2] = sae.W_enc[:, 0::2]
        sae.b_enc[1::2] = sae.b_enc[0::2]
        sae.W_enc[5, :10] = 0.0
    x = torch.randn(40, 64, generator=torch.Generator().manual_seed(0)) * 3
    x[3, 5] = float("inf")  # latents 0-9 NaN (inf * 0), the others +-inf: the SAE's own rule decides
    x[4, 6] = 1e38  # some latents +inf (tied), some -inf
    cols = torch.tensor([5, 0, 1, 94, 95, 40, 41, 13])
    full = sae.encode(x)[:, cols]
    assert _bits(column_latents(sae, x, cols)).equal(_bits(full))
    assert _bits(column_latents(sae, x, cols, only_columns=False)).equal(_bits(full))
    assert _bits(column_latents(sae, x, None)).equal(_bits(sae.encode(x)))
    if activation == "topk":
        z = sae.encode(x[5:])
        assert z.gt(0).sum(-1).eq(7).all()  # exactly k per token although a pair is tied at the k-th...
        assert (z[:, 0::2] > 0).sum() > (z[:, 1::2] > 0).sum()  # ...so the lower index of a pair is kept more
        with torch.no_grad():
            sae.b_enc[3] = float("nan")  # one NaN latent per token: no k-th value, as the SAE's own rule says
        assert _bits(column_latents(sae, x, cols)).equal(_bits(sae.encode(x)[:, cols]))


def test_firing_stats_of_columns_equal_the_plain_path(tiny_loaded):
    from conftest import make_sae

    from saesteer.evaluation.activations import firing_stats

    sae = make_sae(d_sae=80, k=8, seed=5)
    ref = ff.reference_from_text(tiny_loaded, TEXT * 3, length=16)
    cols = torch.arange(16, 48)
    fast = firing_stats(tiny_loaded.model, sae, sae.hook_name, ref.tokens, skip_ids=[tiny_loaded.bos_token_id],
                        columns=cols)
    plain = firing_stats(tiny_loaded.model, sae, sae.hook_name, ref.tokens, skip_ids=[tiny_loaded.bos_token_id],
                         columns=cols, only_columns=False)
    assert fast.keys() == plain.keys() and all(torch.equal(fast[k], plain[k]) for k in fast)
    assert (fast["max_act"] > 0).any()


def test_feature_facts_log_their_parts(tiny_loaded, tmp_path, caplog):
    """The first-sweep benchmark reads these lines to split a sweep process's time."""
    import logging

    from conftest import make_sae

    with caplog.at_level(logging.DEBUG, logger="saesteer.timing"):
        ff.feature_facts(tiny_loaded, make_sae(d_sae=32), "blocks.6.hook_resid_post", samples=2, length=4,
                         cache_dir=tmp_path)
    said = [r.getMessage().split(":")[0] for r in caplog.records if r.name == "saesteer.timing"]
    assert said == ["feature facts, reference text", "feature facts, hook activations",
                    "feature facts, activation statistics", "feature facts, logit lens",
                    "feature facts, tokens and words", "feature facts, computed"]


def test_hook_activations_are_kept_for_the_next_sae_at_that_hook(tiny_loaded, tmp_path, monkeypatch):
    """A first sweep of a new SAE on a known model and hook skips the model's forward; same facts."""
    from conftest import make_sae

    from saesteer.evaluation import activations

    hook = "blocks.6.hook_resid_post"
    first = ff.feature_facts(tiny_loaded, make_sae(d_sae=32), hook, samples=3, length=5, cache_dir=tmp_path)
    assert len(list((tmp_path / "activations").glob("*.safetensors"))) == 1
    other_sae = make_sae(d_sae=48, seed=4)
    plain = ff.feature_facts(tiny_loaded, other_sae, hook, samples=3, length=5, cache_dir=tmp_path / "plain",
                             cache_activations=False)
    assert not (tmp_path / "plain" / "activations").exists()

    def boom(*a, **k):
        raise AssertionError("the model ran again")

    monkeypatch.setattr(activations, "hook_activations", boom)
    other = ff.feature_facts(tiny_loaded, other_sae, hook, samples=3, length=5, cache_dir=tmp_path)
    assert other.digest == plain.digest and first.digest != other.digest
    assert all(torch.equal(other.tensors[k], plain.tensors[k]) for k in plain.tensors)
    assert (other.max_activation > 0).any()
    with pytest.raises(AssertionError, match="ran again"):  # another hook: its own forward
        ff.feature_facts(tiny_loaded, make_sae(d_sae=48, seed=4, hook_name="blocks.2.hook_resid_post"),
                         "blocks.2.hook_resid_post", samples=3, length=5, cache_dir=tmp_path)


def test_activations_too_large_to_keep_are_not_cached(tiny_loaded, tmp_path, monkeypatch):
    from conftest import make_sae

    sae = make_sae(d_sae=32)
    kept = ff.feature_facts(tiny_loaded, sae, sae.hook_name, samples=2, length=4, cache_dir=tmp_path / "a")
    monkeypatch.setattr(ff, "ACTIVATIONS_CACHE_MAX", 2 * 5 * 64 * 4 - 1)  # one byte short of these activations
    not_kept = ff.feature_facts(tiny_loaded, sae, sae.hook_name, samples=2, length=4, cache_dir=tmp_path / "b")
    assert len(list((tmp_path / "a" / "activations").glob("*"))) == 1
    assert not (tmp_path / "b" / "activations").exists() and not_kept.digest == kept.digest
