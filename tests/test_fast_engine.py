"""The fast decoder re-implements the forward: its logits must equal Hugging Face's, and its tokens those of
full-forward step-by-step argmax and of the reference engine (float32), with edits at every hook site,
per-row SAE clamps, rows leaving at EOS, chunking, and sampling. Speed is measured in the benchmark only.
"""

from __future__ import annotations

import pytest
import torch

from conftest import make_sae, make_tiny_gpt2
from saesteer.engine import fast, token_choice
from saesteer.engine.fused_clamp import FusedClamp
from saesteer.engine.options import FastOptions
from saesteer.engine.packs import SAEPack, sae_pack
from saesteer.engine.token_choice import top_tokens
from saesteer.engine import generate_ids as dispatch_generate_ids
from saesteer.engine.generate import GenerationConfig, full_forward_argmax, generate_ids, left_pad, positions_from_mask
from saesteer.engine.kernels import neg_inf_bias
from saesteer.engine.kvcache import KVCache
from saesteer.errors import SaesteerError
from saesteer.steering.clamp import SAEClamp

EOS = 50256
HOOK = "blocks.6.hook_resid_post"


@pytest.fixture(scope="module")
def gpt2():
    return make_tiny_gpt2(n_layer=8, d_model=64, n_head=4, seed=0)


@pytest.fixture(scope="module")
def sae():
    return make_sae(d_in=64, d_sae=256, k=8, hook_name=HOOK)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny shapes gain nothing from threads, and a busy machine makes OpenMP barriers stall."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# GPT-2 BPE ids of "Hello world, this is a test", "The cat", "In 1990 the" and "" (BOS first).
PROMPTS = [[EOS, 15496, 995, 11, 428, 318, 257, 1332], [EOS, 464, 3797], [EOS, 818, 6303, 262], [EOS]]


@pytest.fixture(scope="module")
def prompts():
    return [list(p) for p in PROMPTS]


def prefill_logits(dec, ids, mask):
    """Our decoder's logits at every position of left-padded ``ids`` (one prefill)."""
    B, W = ids.shape
    cache = dec.new_cache(B, W)
    causal = torch.ones(W, W, dtype=torch.bool).tril_()
    bias = neg_inf_bias((causal & mask.bool()[:, None, :]) | torch.eye(W, dtype=torch.bool)).unsqueeze(1)
    positions = positions_from_mask(mask)
    h = dec.forward(ids, positions, cache, 0, bias, {})
    return dec.unembed(dec.final_norm(h))


def run_both(model, prompts, config, edits_factory, **kw):
    ref = generate_ids(model, prompts, config, edits=edits_factory(), pad_token_id=EOS, **kw)
    got = fast.generate_ids_fast(model, prompts, config, edits=edits_factory(), pad_token_id=EOS, **kw)
    return ref, got


# --------------------------------------------------------------------------- the forward itself

def test_logits_equal_hugging_face(gpt2, prompts):
    dec = fast.decoder_for(gpt2, torch.float32)
    ids, mask = left_pad(prompts, EOS, "cpu")
    ours = prefill_logits(dec, ids, mask)
    with torch.no_grad():
        ref = gpt2(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask)).logits[:, -1]
    assert ours.shape == ref.shape
    assert torch.allclose(ours, ref, atol=2e-5, rtol=1e-5), (ours - ref).abs().max()


def test_cached_steps_equal_full_forward_logits(gpt2, prompts):
    """Decode steps over the static cache give the logits of a full forward over the whole sequence."""
    dec = fast.decoder_for(gpt2, torch.float32)
    ids, mask = left_pad(prompts, EOS, "cpu")
    B, W = ids.shape
    steps = 4
    cache = dec.new_cache(B, W + steps)
    causal = torch.ones(W, W, dtype=torch.bool).tril_()
    bias = neg_inf_bias((causal & mask.bool()[:, None, :]) | torch.eye(W, dtype=torch.bool)).unsqueeze(1)
    positions = positions_from_mask(mask)
    h = dec.forward(ids, positions, cache, 0, bias, {})
    key_bias = torch.zeros(B, W + steps)
    key_bias[:, :W] = neg_inf_bias(mask.bool())
    pos = positions[:, -1]
    g = torch.Generator().manual_seed(0)
    for s in range(steps):
        tok = torch.randint(0, 50257, (B,), generator=g)
        ids = torch.cat([ids, tok[:, None]], 1)
        mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype)], 1)
        pos = pos + 1
        h = dec.forward(tok[:, None], pos[:, None], cache, W + s, key_bias[:, None, None, : W + s + 1], {})
        ours = dec.unembed(dec.final_norm(h))
        with torch.no_grad():
            ref = gpt2(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask)).logits[:, -1]
        assert torch.allclose(ours, ref, atol=2e-5, rtol=1e-5), (s, (ours - ref).abs().max())


def test_llama_logits_and_tokens(stories_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(stories_path)).eval()
    assert fast.supports(model, GenerationConfig())
    prompts = [[1], [1, 50, 60, 70, 80], [1, 99, 12]]
    dec = fast.decoder_for(model, torch.float32)
    ids, mask = left_pad(prompts, 0, "cpu")
    ours = prefill_logits(dec, ids, mask)
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask)).logits[:, -1]
    assert torch.allclose(ours, ref, atol=2e-5, rtol=1e-5), (ours - ref).abs().max()
    lsae = make_sae(d_in=64, d_sae=128, k=8, hook_name="blocks.2.hook_resid_post")
    rows = [{3: 20.0}, {7: 5.0, 9: -3.0}, {}]
    cfg = GenerationConfig(max_new_tokens=10)
    got = fast.generate_ids_fast(model, prompts, cfg, edits=[(lsae.hook_name, SAEClamp(lsae, rows=rows))])
    truth = [full_forward_argmax(model, p, 10, edits=[(lsae.hook_name, SAEClamp(lsae, rows=[rows[i]]))])
             for i, p in enumerate(prompts)]
    assert got == truth
    unclamped = fast.generate_ids_fast(model, prompts, cfg)
    assert unclamped[0] != got[0]  # the clamp did something


def test_gpt_neo_logits_and_tokens_across_its_local_window(prompts):
    """GPT-Neo (TinyStories' family): no attention scaling and local layers with a window (4 here) shorter than
    the prompts, so the window masks keys in the prefill, in cached steps and in static steps."""
    from _tiny_models import make_tiny

    model = make_tiny("gpt_neo")
    assert fast.supports(model, GenerationConfig()) and model.config.window_size < len(prompts[0])
    dec = fast.decoder_for(model, torch.float32)
    ids, mask = left_pad(prompts, EOS, "cpu")
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask)).logits[:, -1]
    torch.testing.assert_close(prefill_logits(dec, ids, mask), ref, atol=2e-5, rtol=1e-5)
    lsae = make_sae(d_in=32, d_sae=128, k=4, hook_name="blocks.2.hook_resid_post")
    rows = [{3: 8.0}, {7: 5.0, 9: -3.0}, {}, {100: 6.0}]
    truth = [full_forward_argmax(model, p, 10, edits=[(lsae.hook_name, SAEClamp(lsae, rows=[rows[i]]))])
             for i, p in enumerate(prompts)]
    cfg = GenerationConfig(max_new_tokens=10, stop_at_eos=False)
    for static in (False, True):
        got = fast.generate_ids_fast(model, prompts, cfg, edits=[(lsae.hook_name, SAEClamp(lsae, rows=rows))],
                                     static_steps=static)
        assert got == truth, static
    assert fast.generate_ids_fast(model, prompts, cfg)[0] != truth[0]  # the clamp did something
    sampled = GenerationConfig(max_new_tokens=8, temperature=0.8, seed=3, stop_at_eos=False)
    assert fast.generate_ids_fast(model, prompts, sampled) == generate_ids(model, prompts, sampled)


# --------------------------------------------------------------------------- greedy tokens, float32

@pytest.mark.parametrize("mode", ["delta", "reconstruct"])
def test_tokens_equal_full_forward_argmax_with_per_row_clamps(gpt2, sae, prompts, mode):
    rows = [{3: 20.0}, {7: 5.0, 9: -3.0}, {}, {100: 12.0}]
    cfg = GenerationConfig(max_new_tokens=8)
    got = fast.generate_ids_fast(gpt2, prompts, cfg, edits=[(HOOK, SAEClamp(sae, rows=rows, mode=mode))],
                                 eos_token_id=EOS, pad_token_id=EOS)
    truth = [full_forward_argmax(gpt2, p, 8, edits=[(HOOK, SAEClamp(sae, rows=[rows[i]], mode=mode))],
                                 eos_token_id=EOS) for i, p in enumerate(prompts)]
    assert got == truth
    plain = fast.generate_ids_fast(gpt2, prompts, cfg, eos_token_id=EOS, pad_token_id=EOS)
    assert plain[0] != got[0] and plain[3] != got[3]


@pytest.mark.parametrize("mode", ["delta", "reconstruct"])
def test_bos_sweep_equals_reference_in_chunks(gpt2, sae, mode):
    """A small sweep: BOS-only rows, one feature each, several chunks, shared BOS step."""
    n = 24
    rows = [{(7 * i) % 256: 20.0} for i in range(n)]
    cfg = GenerationConfig(max_new_tokens=6)
    prompts = [[EOS]] * n
    ref = generate_ids(gpt2, prompts, cfg, edits=[(HOOK, SAEClamp(sae, rows=rows, mode=mode))],
                       eos_token_id=EOS, pad_token_id=EOS)
    got = fast.generate_ids_fast(gpt2, prompts, cfg, edits=[(HOOK, SAEClamp(sae, rows=rows, mode=mode))],
                                 eos_token_id=EOS, pad_token_id=EOS, batch_size=10)
    unshared = fast.generate_ids_fast(gpt2, prompts, cfg, edits=[(HOOK, SAEClamp(sae, rows=rows, mode=mode))],
                                      eos_token_id=EOS, pad_token_id=EOS, share_prefixes=False)
    assert got == ref == unshared
    assert len({tuple(r) for r in got}) > 5  # rows really differ


@pytest.mark.parametrize("mode", ["delta", "reconstruct"])
def test_static_steps_equal_reference(gpt2, sae, prompts, mode):
    """The static-shape step that CUDA graphs capture (run eagerly here): same tokens, EOS included."""
    rows = [{3: 20.0}, {7: 5.0, 9: -3.0}, {}, {100: 12.0}]
    cfg = GenerationConfig(max_new_tokens=7)
    free = generate_ids(gpt2, prompts, cfg, edits=[(HOOK, SAEClamp(sae, rows=rows, mode=mode))], pad_token_id=EOS)
    eos = free[1][2]
    ref = generate_ids(gpt2, prompts, cfg, edits=[(HOOK, SAEClamp(sae, rows=rows, mode=mode))], pad_token_id=EOS,
                       eos_token_id=eos)
    got = fast.generate_ids_fast(gpt2, prompts, cfg, edits=[(HOOK, SAEClamp(sae, rows=rows, mode=mode))],
                                 pad_token_id=EOS, eos_token_id=eos, static_steps=True, batch_size=3)
    assert got == ref
    assert len(got[1]) == 3
    with pytest.raises(SaesteerError, match="static_steps"):
        fast.generate_ids_fast(gpt2, prompts, cfg, edits=[(HOOK, lambda a: a)], static_steps=True)


@pytest.mark.parametrize("activation", ["relu", "jumprelu"])
def test_relu_family_clamps(gpt2, prompts, activation):
    rsae = make_sae(d_in=64, d_sae=256, activation=activation, normalize="none", hook_name=HOOK)
    rows = [{3: 10.0}, {5: 8.0}, {}, {9: -4.0}]
    ref, got = run_both(gpt2, prompts, GenerationConfig(max_new_tokens=6),
                        lambda: [(HOOK, SAEClamp(rsae, rows=rows))], eos_token_id=EOS)
    assert got == ref
    assert got != fast.generate_ids_fast(gpt2, prompts, GenerationConfig(max_new_tokens=6), pad_token_id=EOS,
                                         eos_token_id=EOS)


@pytest.mark.parametrize("site", ["hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out",
                                  "hook_mlp_out", "mlp.hook_post"])
def test_plain_edit_fns_at_every_site(gpt2, prompts, site):
    name = f"blocks.3.{site}"
    g = torch.Generator().manual_seed(5)
    width = 256 if site == "mlp.hook_post" else 64
    push = 4 * torch.randn(len(prompts), 1, width, generator=g)

    class PerRowPush:
        def __init__(self, v):
            self.v = v

        def __call__(self, act):
            return act + self.v

        def select_rows(self, index):
            return PerRowPush(self.v[index])

    cfg = GenerationConfig(max_new_tokens=6)
    ref, got = run_both(gpt2, prompts, cfg, lambda: [(name, PerRowPush(push))], eos_token_id=EOS)
    assert got == ref
    plain = fast.generate_ids_fast(gpt2, prompts, cfg, pad_token_id=EOS)
    assert plain != got


def test_two_edits_in_order_at_one_site_and_another_layer(gpt2, sae, prompts):
    push = 2 * torch.randn(64, generator=torch.Generator().manual_seed(2))

    def edits():  # the push changes the activation's std, so it does not commute with the clamp
        return [("blocks.2.hook_resid_mid", lambda a: a * 1.5), (HOOK, SAEClamp(sae, {4: 15.0})),
                (HOOK, lambda a: a + push)]

    ref, got = run_both(gpt2, prompts, GenerationConfig(max_new_tokens=6), edits, eos_token_id=EOS)
    assert got == ref
    swapped = fast.generate_ids_fast(gpt2, prompts, GenerationConfig(max_new_tokens=6), pad_token_id=EOS,
                                     eos_token_id=EOS, edits=[edits()[0], edits()[2], edits()[1]])
    assert swapped != got  # the order of edits at one site matters, and is kept


def test_rows_leave_at_eos(gpt2, sae):
    """EOS ends a row (kept), rows leave mid-chunk, per-row state follows via select_rows."""
    n = 12
    prompts = [[EOS]] * n
    rows = [{(11 * i) % 256: 20.0} for i in range(n)]
    cfg = GenerationConfig(max_new_tokens=6)
    free = generate_ids(gpt2, prompts, cfg, edits=[(HOOK, SAEClamp(sae, rows=rows))], pad_token_id=EOS)
    eos = free[0][1]  # a token that ends row 0 at its second step
    selected = []

    class Tracking:
        def __init__(self, ids):
            self.ids = ids

        def __call__(self, act):
            assert act.shape[0] == len(self.ids)
            return None

        def select_rows(self, index):
            selected.append(len(index))
            return Tracking([self.ids[i] for i in index.tolist()])

    for extra in ([], [("blocks.1.hook_resid_pre", Tracking(list(range(n))))]):  # lazy and eager exits
        def edits(extra=extra):
            return [(HOOK, SAEClamp(sae, rows=rows))] + extra

        ref, got = run_both(gpt2, prompts, cfg, edits, eos_token_id=eos)
        assert got == ref
        assert got[0] == free[0][:2] and got[0][-1] == eos
    assert any(s < n for s in selected)  # the tracking edit saw rows leave


def test_sampling_equals_reference_for_the_same_seed(gpt2, prompts):
    cfg = GenerationConfig(max_new_tokens=8, temperature=0.8, top_p=0.9, seed=7)
    ref, got = run_both(gpt2, prompts * 2, cfg, lambda: [], eos_token_id=EOS)
    assert got == ref
    other = fast.generate_ids_fast(gpt2, prompts * 2, GenerationConfig(max_new_tokens=8, temperature=0.8,
                                                                        top_p=0.9, seed=8), pad_token_id=EOS)
    assert other != got


def test_dispatcher_uses_fast_engine(gpt2, sae, prompts, monkeypatch):
    calls = []
    real = fast.generate_ids_fast
    monkeypatch.setattr(fast, "generate_ids_fast", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg = GenerationConfig(max_new_tokens=4)
    got = dispatch_generate_ids(gpt2, prompts, cfg, edits=[(HOOK, SAEClamp(sae, {3: 9.0}))], pad_token_id=EOS,
                                engine="fast", batch_size=2)
    ref = generate_ids(gpt2, prompts, cfg, edits=[(HOOK, SAEClamp(sae, {3: 9.0}))], pad_token_id=EOS)
    assert calls and got == ref


# --------------------------------------------------------------------------- bfloat16

def test_bfloat16_close_to_float32(gpt2, sae):
    n = 32
    prompts = [[EOS]] * n
    rows = [{(5 * i) % 256: 20.0} for i in range(n)]
    cfg = GenerationConfig(max_new_tokens=6)
    f32 = fast.generate_ids_fast(gpt2, prompts, cfg, edits=[(HOOK, SAEClamp(sae, rows=rows))], pad_token_id=EOS)
    bf16 = fast.generate_ids_fast(gpt2, prompts, cfg, edits=[(HOOK, SAEClamp(sae, rows=rows))], pad_token_id=EOS,
                                  dtype="bfloat16")
    assert len(bf16) == n and all(len(r) == 6 for r in bf16)
    assert sum(a == b for a, b in zip(f32, bf16)) >= 0.75 * n
    assert fast.decoder_for(gpt2, torch.bfloat16).dtype == torch.bfloat16


# --------------------------------------------------------------------------- parts

@pytest.mark.parametrize("spec", [("topk", "delta"), ("topk", "reconstruct"), ("relu", "delta"), ("jumprelu", "delta")])
def test_fused_clamp_equals_sae_clamp(spec):
    activation, mode = spec
    norm = "layer_norm" if activation == "topk" else "none"
    s = make_sae(d_in=64, d_sae=256, activation=activation, normalize=norm, hook_name=HOOK, k=8)
    g = torch.Generator().manual_seed(3)
    x = 3 * torch.randn(4, 5, 64, generator=g)
    # clamp a latent that is active in some tokens and inactive in others
    z = s.encode(x)
    active = (z > 0).float().mean((0, 1))
    j = int(((active - 0.5).abs()).argmin())
    clamp = SAEClamp(s, rows=[{j: 7.0}, {j: 0.0, 1: 3.0}, {}, {j: -2.0}], mode=mode)
    fused = FusedClamp(clamp, sae_pack(s, torch.float32))
    assert torch.allclose(fused(x), clamp(x), atol=1e-5)
    # shared: group activations fanned out to rows
    group = torch.tensor([1, 1, 0, 1])
    assert torch.allclose(fused.shared(x[:2], group), clamp(x[group]), atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_topk_threshold_screen_is_exact(dtype):
    """Delta clamps bound the TopK threshold with a subset of latents; tokens the bound cannot decide get the
    full encode. Both kinds occur here, and the result equals SAEClamp's."""
    s = make_sae(d_in=64, d_sae=512, k=8, hook_name=HOOK)
    g = torch.Generator().manual_seed(4)
    x = 3 * torch.randn(6, 7, 64, generator=g)
    z = s.encode(x)
    active = (z > 0).float().mean((0, 1))
    j_mixed = int(((active - 0.5).abs()).argmin())
    j_off = int(active.argmin())
    rows = [{j_off: 20.0}, {j_mixed: 20.0}, {j_off: 5.0, j_mixed: -1.0}, {}, {j_off: 1.0}, {j_mixed: 3.0}]
    clamp = SAEClamp(s, rows=rows)
    pack = SAEPack(s, dtype, torch.device("cpu"), screen_stride=4)
    assert pack.screen is not None
    calls = []
    real = pack.encoder
    pack.encoder = lambda t, act="none": calls.append(t.shape[0]) or real(t, act)
    out = FusedClamp(clamp, pack)(x)
    assert calls and 0 < sum(calls) < 6 * 7  # some tokens needed the full encode, not all
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert torch.allclose(out, clamp(x), atol=tol)


def test_screened_float32_argmax_is_exact_including_fallback(gpt2, monkeypatch):
    dec = fast.decoder_for(gpt2, torch.float32)
    if dec.unembed_screen is None:
        pytest.skip("no bfloat16 oneDNN here: the float32 argmax is computed directly")
    g = torch.Generator().manual_seed(0)
    h = torch.randn(300, 64, generator=g)
    truth = dec.unembed(h).argmax(-1)
    assert torch.equal(token_choice.greedy_f32(dec, h), truth)
    used = []
    real = dec.unembed
    monkeypatch.setattr(token_choice, "SCREEN_CANDIDATES", 1)  # a screen that rarely decides: the fallback runs
    monkeypatch.setattr(dec, "full_unembed", lambda: (lambda x: used.append(x.shape[0]) or real(x)))
    assert torch.equal(token_choice.greedy_f32(dec, h), truth)
    assert used and sum(used) < h.shape[0]


def test_top_tokens_equals_topk():
    g = torch.Generator().manual_seed(1)
    for V in (50257, 1000, 64 * 3):
        logits = torch.randn(7, V, generator=g).to(torch.bfloat16).float()
        logits[0, -1] = 100.0  # the winner in the ragged tail block
        vals, idx = top_tokens(logits, 9)
        ref = logits.topk(9, dim=-1)
        assert torch.equal(vals, ref.values)
        assert torch.equal(logits.gather(1, idx), ref.values)
        assert idx[0, 0] == V - 1


def test_without_onednn_packing_and_after_weights_change(gpt2, sae, prompts, monkeypatch):
    """The plain ``F.linear`` fallback gives the same tokens; packed copies are rebuilt when a weight changes."""
    def edits():
        return [(HOOK, SAEClamp(sae, rows=[{3: 20.0}, {}, {5: 9.0}, {}]))]

    cfg = GenerationConfig(max_new_tokens=5)
    ref = generate_ids(gpt2, prompts, cfg, edits=edits(), pad_token_id=EOS)
    unpacked = FastOptions(pack_weights=False)
    fast.clear_cache()
    dec = fast.decoder_for(gpt2, torch.float32, unpacked)
    assert dec.layers[0]["fc"].packed is None
    assert fast.generate_ids_fast(gpt2, prompts, cfg, edits=edits(), pad_token_id=EOS, options=unpacked) == ref
    fast.clear_cache()
    model = make_tiny_gpt2(n_layer=8, d_model=64, n_head=4, seed=0)
    before = fast.decoder_for(model, torch.float32)
    with torch.no_grad():
        model.transformer.h[7].mlp.c_proj.weight.mul_(-1.0)
    assert fast.decoder_for(model, torch.float32) is not before
    assert fast.generate_ids_fast(model, prompts, cfg, edits=edits(), pad_token_id=EOS) == \
        generate_ids(model, prompts, cfg, edits=edits(), pad_token_id=EOS)


def test_kv_cache_select_rows_compacts_in_place():
    cache = KVCache(2, 4, 1, 5, 2, dtype=torch.float32, device=torch.device("cpu"))
    keys = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 1, 3, 2)
    cache.write(0, keys, keys + 10, 0)
    cache.write(1, keys, keys + 10, 0)
    cache.length = 3
    cache.select_rows(torch.tensor([3, 1]))
    assert cache.rows == 2
    assert torch.equal(cache.keys_t(0, 3)[:, 0, 0, :], torch.tensor([[3.0] * 3, [1.0] * 3]))
    assert cache.keys_t(0, 3).shape == (2, 1, 2, 3)
    assert torch.equal(cache.values(1, 3)[:, 0, 0, 0], torch.tensor([13.0, 11.0]))


def test_supports_and_errors(gpt2, prompts):
    assert fast.supports(gpt2, GenerationConfig())
    assert not fast.supports(gpt2, GenerationConfig(use_cache=False))

    class Other(torch.nn.Module):
        config = type("C", (), {"model_type": "bert"})()

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

    assert not fast.supports(Other(), GenerationConfig())
    with pytest.raises(SaesteerError, match="unknown hook name"):
        fast.generate_ids_fast(gpt2, prompts, GenerationConfig(), edits=[("blocks.1.nope", lambda a: a)])
    with pytest.raises(SaesteerError, match="positions"):
        fast.generate_ids_fast(gpt2, [[1] * 120], GenerationConfig(max_new_tokens=20))
    with pytest.raises(SaesteerError, match="at least one token"):
        fast.generate_ids_fast(gpt2, [[EOS], []], GenerationConfig())
    assert fast.generate_ids_fast(gpt2, prompts, GenerationConfig(max_new_tokens=0)) == [[]] * len(prompts)


def test_batch_size_from_memory(gpt2):
    dec = fast.decoder_for(gpt2, torch.float32)
    roomy = fast.choose_batch_size(dec, 10_000, 1, 10, sae_width=256, memory=64 << 30)
    tight = fast.choose_batch_size(dec, 10_000, 1, 10, sae_width=256, memory=200 << 20)
    assert roomy == fast.CPU_MAX_BATCH
    assert 1 <= tight < roomy
    assert fast.choose_batch_size(dec, 7, 1, 10, memory=64 << 30) == 7
