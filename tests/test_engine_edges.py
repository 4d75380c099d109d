"""The fast engine at the edges of exactness (issue 17.3): TopK ties, the TopK threshold screen inside a real
sweep, the bfloat16 logit screen's error bound at small widths, sampling against the reference loop, and
model families without a fast decoder."""

from __future__ import annotations

import pytest
import torch

from conftest import make_sae, make_tiny_gpt2
from saesteer.engine import fast
from saesteer.engine import generate_ids as dispatch
from saesteer.engine.fused_clamp import FusedClamp
from saesteer.engine.generate import GenerationConfig, generate_ids, left_pad, positions_from_mask
from saesteer.engine.kernels import dot_error_coefficient, neg_inf_bias
from saesteer.engine.packs import SAEPack, sae_pack
from saesteer.engine.token_choice import screen_error_bound
from saesteer.errors import SaesteerError
from saesteer.saes.base import SAE, SAEConfig, topk_keep
from saesteer.steering.clamp import SAEClamp

EOS = 50256

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- TopK ties

def tied_sae(d_in=16, d_sae=64, k=7, normalize="none"):
    """Latents come in identical pairs (2i, 2i+1): with an odd k, the k-th and (k+1)-th largest
    pre-activations of every token are a tied pair, so every token has a tie at the threshold."""
    g = torch.Generator().manual_seed(5)
    W_half = torch.randn(d_in, d_sae // 2, generator=g)
    W_enc = W_half.repeat_interleave(2, dim=1)
    b_enc = torch.full((d_sae,), 0.5)
    W_dec = torch.randn(d_sae, d_in, generator=g)
    W_dec = W_dec / W_dec.norm(dim=1, keepdim=True)
    cfg = SAEConfig(d_in=d_in, d_sae=d_sae, activation="topk", k=k, normalize=normalize,
                    hook_name="blocks.0.hook_resid_post")
    return SAE(cfg, W_enc, b_enc, W_dec, torch.zeros(d_in))


def test_topk_keeps_exactly_k_and_the_lower_index_of_a_tie():
    pre = torch.tensor([[3.0, 1.0, 2.0, 2.0, 2.0, 0.0], [2.0, 2.0, 2.0, 2.0, 2.0, 2.0]])
    keep = topk_keep(pre, 3)
    assert keep.tolist() == [[True, False, True, True, False, False], [True, True, True, False, False, False]]
    assert torch.equal(topk_keep(pre, 3, branchless=True), keep)
    s = tied_sae()
    z = s.encode(torch.randn(50, 16, generator=torch.Generator().manual_seed(0)))
    assert ((z != 0).sum(-1) <= 7).all()
    pair_both = (z[:, 0::2] != 0) & (z[:, 1::2] != 0)
    assert (pair_both.sum(-1) == 3).all()  # three whole pairs and the lower half of the fourth
    only_low = (z[:, 0::2] != 0) & (z[:, 1::2] == 0)
    assert (only_low.sum(-1) == 1).all() and not ((z[:, 0::2] == 0) & (z[:, 1::2] != 0)).any()


@pytest.mark.parametrize("mode,stride", [("delta", None), ("delta", 2), ("reconstruct", None)])
def test_fused_topk_uses_the_sae_tie_rule(mode, stride):
    """The fused clamp admits exactly the latents the SAE's encode keeps, also when the k-th is tied."""
    s = tied_sae()
    x = 2 * torch.randn(3, 40, 16, generator=torch.Generator().manual_seed(1))
    z = s.encode(x).reshape(-1, 64)
    # for each token the latent pair straddling the threshold: the lower one kept, the upper one dropped
    straddle = ((z[:, 0::2] != 0) & (z[:, 1::2] == 0)).float().sum(0).argmax()
    lo, hi = 2 * int(straddle), 2 * int(straddle) + 1
    clamp = SAEClamp(s, rows=[{hi: 4.0}, {lo: 4.0}, {lo: 1.0, hi: -1.0}], mode=mode)
    pack = SAEPack(s, torch.float32, torch.device("cpu"), screen_stride=stride)
    assert (pack.screen is not None) == (stride is not None)
    out = FusedClamp(clamp, pack)(x)
    assert torch.allclose(out, clamp(x), atol=1e-5)


# --------------------------------------------------------------------------- the TopK screen in a sweep

def test_topk_threshold_screen_with_stride_runs_in_a_sweep_and_equals_the_reference(gpt2_tokenizer, tmp_path,
                                                                                     monkeypatch):
    """A 1024-latent TopK(4) SAE gets the strided threshold bound (stride 4) automatically, as the 32k and
    128k SAEs do; a whole sweep through it gives the reference loop's tokens, and the bound decided tokens."""
    from saesteer import Steerer
    from saesteer.sweep import Sweep

    monkeypatch.setenv("SAESTEER_CACHE", str(tmp_path / "cache"))
    ref = tmp_path / "ref.txt"
    ref.write_text("Once upon a time a little dragon lived in a cave by the sea. The king was afraid of it.")
    model = make_tiny_gpt2(n_layer=2, d_model=32, n_head=2, seed=0)
    sae = make_sae(d_in=32, d_sae=1024, k=4, hook_name="blocks.1.hook_resid_post", seed=2)
    pack = sae_pack(sae, torch.float32)
    assert pack.stride == 4 and pack.screen is not None
    before = pack.screened_tokens
    st = Steerer(model, sae, tokenizer=gpt2_tokenizer)
    features = list(range(0, 1024, 16))
    results = Sweep(st, features=features, values=[20, 2], reference_text=ref, batch_size=64).results()
    assert pack.screened_tokens > before  # the bound proved some clamped latents inactive
    for value in (20.0, 2.0):
        rows = [{f: value} for f in features]
        want = generate_ids(model, [[EOS]] * len(rows), GenerationConfig(max_new_tokens=10),
                            edits=[("blocks.1.hook_resid_post", SAEClamp(sae, rows=rows))], eos_token_id=EOS,
                            pad_token_id=EOS)
        got = [r.tokens for r in results if r.value == value]
        assert got == want


# --------------------------------------------------------------------------- the bfloat16 logit screen

def test_dot_error_coefficient_counts_both_roundings_at_small_widths():
    """Both inputs are rounded to bfloat16 (2u + u^2) and the sum is accumulated in float32 (gamma_K): the
    bound the old screen used, 2 (2^-8 + K 2^-24), falls below that at K = 64."""
    u = 2.0 ** -8
    for K in (16, 64, 768):
        c, u_out = dot_error_coefficient(K, torch.bfloat16)
        rigorous = 2 * u + u * u + K * 2.0 ** -24
        assert c >= rigorous and u_out == u
        assert 2 * c >= 2 * rigorous  # the screen's safety factor applies on top
    old_64 = 2 * (u + 64 * 2.0 ** -24)
    assert old_64 < 2 * u + u * u + 64 * 2.0 ** -24 <= dot_error_coefficient(64, torch.bfloat16)[0]


@pytest.mark.parametrize("K", [64, 768])
def test_screen_error_bound_holds_on_adversarial_dot_products(K):
    """Aligned inputs (every product positive) maximise the rounding error; the bound covers every logit."""
    g = torch.Generator().manual_seed(K)
    h = torch.rand(256, K, generator=g) + 0.5
    w = torch.rand(512, K, generator=g) + 0.5
    h[:, ::3] *= -1
    w[:, ::3] *= -1  # products still all positive
    exact = h.double() @ w.double().T
    screened = (h.to(torch.bfloat16).float() @ w.to(torch.bfloat16).float().T).to(torch.bfloat16).double()
    bound = screen_error_bound(K, h.norm(dim=-1, keepdim=True), float(w.norm(dim=-1).max()), screened.abs())
    assert ((screened - exact).abs() <= bound.double()).all()
    assert ((screened - exact).abs().max() > 0.05 * bound.min())  # the bound is not vacuous here


# --------------------------------------------------------------------------- sampling

@pytest.fixture(scope="module")
def gpt2():
    return make_tiny_gpt2(n_layer=4, d_model=64, n_head=4, seed=0)


@pytest.mark.parametrize("mode", ["delta", "reconstruct"])
def test_sampling_with_clamps_equals_reference_for_the_same_seed(gpt2, mode):
    hook = "blocks.2.hook_resid_post"
    sae = make_sae(d_in=64, d_sae=256, k=8, hook_name=hook)
    rows = [{(7 * i) % 256: 20.0 if i % 2 else -5.0} for i in range(8)]
    prompts = [[EOS]] * 4 + [[EOS, 464, 3797]] * 4
    for seed in (1, 2):
        cfg = GenerationConfig(max_new_tokens=8, temperature=0.9, top_p=0.95, seed=seed)
        ref = generate_ids(gpt2, prompts, cfg, edits=[(hook, SAEClamp(sae, rows=rows, mode=mode))],
                           eos_token_id=EOS, pad_token_id=EOS)
        got = fast.generate_ids_fast(gpt2, prompts, cfg, edits=[(hook, SAEClamp(sae, rows=rows, mode=mode))],
                                     eos_token_id=EOS, pad_token_id=EOS)
        assert got == ref


def test_sampling_difference_from_reference_is_bounded(gpt2):
    """Where the two engines' float32 logits differ by rounding, a sample can differ only if its uniform
    draw falls between the two cumulative distributions: probability at most their L1 distance, measured
    here far below 1e-4 per step."""
    prompts = [[EOS], [EOS, 464, 3797], [EOS, 818, 6303, 262]]
    ids, mask = left_pad(prompts, EOS, "cpu")
    positions = positions_from_mask(mask)
    dec = fast.decoder_for(gpt2, torch.float32)
    B, W = ids.shape
    causal = torch.ones(W, W, dtype=torch.bool).tril_()
    bias = neg_inf_bias((causal & mask.bool()[:, None, :]) | torch.eye(W, dtype=torch.bool)).unsqueeze(1)
    ours = dec.unembed(dec.final_norm(dec.forward(ids, positions, dec.new_cache(B, W), 0, bias, {})))
    with torch.no_grad():
        theirs = gpt2(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1]
    cdf = [torch.softmax(lg.double() / 0.8, dim=-1).cumsum(-1) for lg in (ours, theirs)]
    assert (cdf[0] - cdf[1]).abs().sum(-1).max() < 1e-4


# --------------------------------------------------------------------------- families without a fast decoder

@pytest.mark.parametrize("family", ["gemma2", "neox", "phi3"])
def test_families_without_a_fast_decoder_take_the_reference_loop(family):
    from _tiny_models import make_tiny

    model = make_tiny(family)
    assert not fast.supports(model, GenerationConfig())
    assert family.replace("neox", "gpt_neox") in fast.unsupported_reason(model)
    hook = "blocks.1.hook_resid_post"
    sae = make_sae(d_in=32, d_sae=64, k=4, hook_name=hook)
    cfg = GenerationConfig(max_new_tokens=5)
    prompts = [[EOS], [EOS, 464, 3797]]

    def edits():
        return [(hook, SAEClamp(sae, rows=[{3: 20.0}, {9: -4.0}]))]

    got = dispatch(model, prompts, cfg, edits=edits(), eos_token_id=EOS, pad_token_id=EOS)
    assert got == generate_ids(model, prompts, cfg, edits=edits(), eos_token_id=EOS, pad_token_id=EOS)
    with pytest.raises(SaesteerError, match="fast engine does not support"):
        dispatch(model, prompts, cfg, edits=edits(), eos_token_id=EOS, pad_token_id=EOS, engine="fast")


# --------------------------------------------------------------------------- CUDA graphs (no GPU here)

def test_cuda_graph_capture_failure_falls_back_to_eager_static_steps(gpt2, monkeypatch):
    """The CUDA-graph path cannot be measured without a GPU; on CPU its capture fails (no CUDA), and the chunk
    must restore its step state and keep decoding eagerly with static shapes, with the reference's tokens."""
    from saesteer.engine.fast import _Chunk

    hook = "blocks.2.hook_resid_post"
    sae = make_sae(d_in=64, d_sae=256, k=8, hook_name=hook)
    rows = [{3: 20.0}, {}, {40: -6.0}, {7: 9.0}]
    prompts = [[EOS], [EOS, 464, 3797], [EOS, 818, 6303, 262], [EOS]]
    cfg = GenerationConfig(max_new_tokens=6)
    graphs = []
    real_setup = _Chunk._static_setup

    def setup_then_capture(self):
        real_setup(self)
        self._capture()
        graphs.append(self.graph)

    monkeypatch.setattr(_Chunk, "_static_setup", setup_then_capture)
    got = fast.generate_ids_fast(gpt2, prompts, cfg, edits=[(hook, SAEClamp(sae, rows=rows))], pad_token_id=EOS,
                                 static_steps=True)
    ref = generate_ids(gpt2, prompts, cfg, edits=[(hook, SAEClamp(sae, rows=rows))], pad_token_id=EOS)
    assert graphs == [None] and got == ref


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run in a GPU session)")
def test_cuda_graph_is_captured_and_float32_stays_exact(gpt2, monkeypatch):
    """On a GPU (issue 17 item 4): the static step is captured as a CUDA graph and replayed, and its tokens
    equal the reference loop's on the same GPU (TF32 off, PyTorch's default)."""
    import copy

    from saesteer.engine.fast import _Chunk

    hook = "blocks.2.hook_resid_post"
    model = copy.deepcopy(gpt2).cuda()
    sae = make_sae(d_in=64, d_sae=256, k=8, hook_name=hook).cuda()
    rows = [{3: 20.0}, {}, {40: -6.0}, {7: 9.0}] * 8
    prompts = [[EOS], [EOS, 464, 3797], [EOS, 818, 6303, 262], [EOS]] * 8
    cfg = GenerationConfig(max_new_tokens=6)
    graphs = []
    real_capture = _Chunk._capture

    def capture(self):
        real_capture(self)
        graphs.append(self.graph)

    monkeypatch.setattr(_Chunk, "_capture", capture)
    got = fast.generate_ids_fast(model, prompts, cfg, edits=[(hook, SAEClamp(sae, rows=rows))], pad_token_id=EOS)
    ref = generate_ids(model, prompts, cfg, edits=[(hook, SAEClamp(sae, rows=rows))], pad_token_id=EOS)
    assert graphs and all(g is not None for g in graphs)
    assert got == ref


# --------------------------------------------------------------------------- every switch keeps float32 exact

@pytest.mark.parametrize("switch", [dict(pack_weights=False), dict(unembed_screen=False), dict(topk_screen_stride=1),
                                    dict(topk_screen_stride=4), dict(share_prefixes=False), dict(share_max_groups=1.0),
                                    dict(batch_size=3)])
def test_every_fast_option_gives_the_reference_tokens_in_float32(gpt2, switch):
    from saesteer.engine.options import FastOptions

    hook = "blocks.1.hook_resid_post"
    sae = make_sae(d_in=64, d_sae=512, k=4, hook_name=hook, seed=3)
    rows = [{(37 * i) % 512: 20.0 if i % 3 else 1.5} for i in range(8)]
    prompts = [[EOS]] * 6 + [[EOS, 464, 3797], [EOS, 818]]
    cfg = GenerationConfig(max_new_tokens=6)
    ref = generate_ids(gpt2, prompts, cfg, edits=[(hook, SAEClamp(sae, rows=rows))], pad_token_id=EOS)
    fast.clear_cache()
    got = fast.generate_ids_fast(gpt2, prompts, cfg, edits=[(hook, SAEClamp(sae, rows=rows))], pad_token_id=EOS,
                                 options=FastOptions(**switch))
    assert got == ref


def test_greedy_without_the_screen_takes_the_argmax_per_row_block(gpt2):
    """float32 greedy without the logit screen (machines without fast bfloat16, or switched off) takes each
    row block's argmax: the same tokens as the argmax of the whole logits, over several blocks."""
    from saesteer.engine.options import FastOptions
    from saesteer.engine.token_choice import greedy_f32, row_block

    dec = fast.decoder_for(gpt2, torch.float32, FastOptions(unembed_screen=False))
    assert dec.unembed_screen is None
    rows = 2 * row_block(dec.device) + 37
    h = torch.randn(rows, 64, generator=torch.Generator().manual_seed(2))
    h[5] = 0.0  # every logit tied: the first token, both ways
    want = dec.full_unembed()(h).argmax(dim=-1)
    assert torch.equal(greedy_f32(dec, h), want) and int(want[5]) == 0
