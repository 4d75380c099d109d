"""The reference engine: exact against full-forward argmax, batching-invariant, cache-invariant."""

import pytest
import torch

from saesteer.engine.generate import GenerationConfig, full_forward_argmax, generate_ids
from saesteer.errors import SaesteerError
from saesteer.steering.hooks import make_clamp

EOS = 50256
PROMPTS = [[EOS], [EOS, 39, 42661, 318], [EOS, 464, 3290], [EOS, 40, 588, 262, 3797, 780]]


def gen(model, prompts, config=GenerationConfig(), edits=(), eos=EOS):
    return generate_ids(model, prompts, config, edits=edits, eos_token_id=eos, pad_token_id=EOS)


def test_bos_only_equals_full_forward_argmax(tiny_gpt2):
    out = gen(tiny_gpt2, [[EOS]], GenerationConfig(max_new_tokens=10, stop_at_eos=False))
    assert out[0] == full_forward_argmax(tiny_gpt2, [EOS], 10)
    assert len(set(out[0])) > 1  # a real continuation, not a constant


def test_batch_of_different_lengths_equals_each_alone(tiny_gpt2):
    together = gen(tiny_gpt2, PROMPTS, GenerationConfig(max_new_tokens=8))
    for p, row in zip(PROMPTS, together):
        assert row == gen(tiny_gpt2, [p], GenerationConfig(max_new_tokens=8))[0]
        assert row == full_forward_argmax(tiny_gpt2, p, 8, eos_token_id=EOS)


def test_cached_equals_uncached_with_per_row_clamps(tiny_gpt2, tiny_sae):
    rows = [[(3, 20.0)], [(5, -10.0)], [], [(7, 15.0), (9, 5.0)]]
    cached = gen(tiny_gpt2, PROMPTS, GenerationConfig(max_new_tokens=8), [make_clamp(tiny_gpt2, tiny_sae, rows=rows)])
    uncached = gen(tiny_gpt2, PROMPTS, GenerationConfig(max_new_tokens=8, use_cache=False),
                   [make_clamp(tiny_gpt2, tiny_sae, rows=rows)])
    assert cached == uncached
    for p, r, row in zip(PROMPTS, rows, cached):
        alone = full_forward_argmax(tiny_gpt2, p, 8, edits=[make_clamp(tiny_gpt2, tiny_sae, r)], eos_token_id=EOS)
        assert row == alone
    assert cached[0] != gen(tiny_gpt2, PROMPTS[:1], GenerationConfig(max_new_tokens=8))[0]


def test_clamp_applies_at_every_position_and_every_cached_step(tiny_gpt2):
    shapes = []

    def spy(act):
        shapes.append(tuple(act.shape[:2]))
        return None

    gen(tiny_gpt2, [[EOS], [EOS, 39, 42661]], GenerationConfig(max_new_tokens=4, stop_at_eos=False),
        [("blocks.6.hook_resid_post", spy)])
    assert shapes == [(2, 3), (2, 1), (2, 1), (2, 1)]


def test_rows_stop_at_eos_and_leave_the_batch(tiny_gpt2):
    # Make EOS the argmax for row 0 only after 2 steps by using the token it emits as "EOS".
    first = gen(tiny_gpt2, PROMPTS, GenerationConfig(max_new_tokens=6, stop_at_eos=False), eos=None)
    fake_eos = first[1][2]
    batch_sizes = []

    def spy(act):
        batch_sizes.append(act.shape[0])

    out = gen(tiny_gpt2, PROMPTS, GenerationConfig(max_new_tokens=6), [("blocks.0.hook_resid_post", spy)], eos=fake_eos)
    for full, cut in zip(first, out):
        stop = full.index(fake_eos) + 1 if fake_eos in full else len(full)
        assert cut == full[:stop]
    assert out[1][-1] == fake_eos and len(out[1]) <= 3
    assert min(batch_sizes) < len(PROMPTS)  # finished rows left the batch


def test_sampling_is_seeded_per_row(tiny_gpt2):
    cfg = GenerationConfig(max_new_tokens=6, temperature=1.0, top_p=0.9, seed=7, stop_at_eos=False)
    a = gen(tiny_gpt2, PROMPTS, cfg)
    b = gen(tiny_gpt2, PROMPTS, cfg)
    assert a == b
    assert gen(tiny_gpt2, PROMPTS[:2], cfg) == a[:2]  # a row's sample does not depend on the rest
    c = gen(tiny_gpt2, PROMPTS, GenerationConfig(max_new_tokens=6, temperature=1.0, seed=8, stop_at_eos=False))
    assert c != a


def test_top_p_tiny_is_greedy(tiny_gpt2):
    greedy = gen(tiny_gpt2, PROMPTS, GenerationConfig(max_new_tokens=5, stop_at_eos=False))
    nucleus = gen(tiny_gpt2, PROMPTS, GenerationConfig(max_new_tokens=5, temperature=1.0, top_p=1e-6, seed=1,
                                                         stop_at_eos=False))
    assert nucleus == greedy


@pytest.mark.parametrize("kwargs", [{"temperature": -1}, {"top_p": 0}, {"top_p": 1.5}, {"max_new_tokens": -1},
                                    {"temperature": float("nan")}])
def test_config_validation(kwargs):
    with pytest.raises(SaesteerError):
        GenerationConfig(**kwargs)


def test_empty_prompt_rejected(tiny_gpt2):
    with pytest.raises(SaesteerError, match="at least one token"):
        gen(tiny_gpt2, [[]])


def test_sampling_follows_the_distribution():
    from saesteer.engine.generate import row_generators, select_next

    logits = torch.tensor([[0.0, 1.0, 3.0]]).log()  # probabilities 0, 1/4, 3/4
    gens = row_generators(3, 1)
    cfg = GenerationConfig(temperature=1.0, seed=3)
    counts = torch.bincount(torch.cat([select_next(logits, cfg, gens) for _ in range(4000)]), minlength=3)
    assert counts[0] == 0
    assert 850 < counts[1] < 1150 and 2850 < counts[2] < 3150


def test_context_manager_hooks_apply_to_steerer_generation(tiny_loaded):
    """Hooks placed with edit() around a generate call take effect, whichever engine would run."""
    from saesteer.steerer import Steerer
    from saesteer.steering.hooks import active_hook_count, edit

    st = Steerer(tiny_loaded, hook="blocks.4.hook_resid_post")
    plain = st.generate("Happiness is").tokens
    via_arg = st.generate("Happiness is", edit=lambda a: -10 * a).tokens
    with edit(st.model, "blocks.4.hook_resid_post", lambda a: -10 * a):
        assert active_hook_count(st.model) == 1
        via_context = st.generate("Happiness is").tokens
    assert active_hook_count(st.model) == 0
    assert via_context == via_arg != plain


def test_a_dtype_the_reference_loop_cannot_honour_is_refused(tiny_gpt2):
    from saesteer.engine import generate_ids as dispatch

    with pytest.raises(SaesteerError, match="needs the fast engine"):
        dispatch(tiny_gpt2, [[EOS]], GenerationConfig(max_new_tokens=2), engine="reference", dtype="bfloat16")
    out = dispatch(tiny_gpt2, [[EOS]], GenerationConfig(max_new_tokens=2, stop_at_eos=False), engine="reference",
                   dtype="float32")
    assert len(out[0]) == 2


def test_a_user_forward_hook_changes_steerer_generation_and_is_announced_once(tiny_loaded, caplog):
    """A hook registered with plain ``register_forward_hook`` (the practical session's way of editing) changes
    st.generate's text as it changes a forward pass: generation takes the reference loop, and says so once."""
    import logging

    from saesteer.steerer import Steerer
    from saesteer.steering.hooks import edit

    st = Steerer(tiny_loaded, hook="blocks.4.hook_resid_post")
    plain = st.generate("Happiness is").tokens
    with edit(st.model, "blocks.4.hook_resid_post", lambda a: -10 * a):
        via_saesteer = st.generate("Happiness is").tokens

    def negate(module, args, output):
        if isinstance(output, tuple):
            return (-10 * output[0],) + tuple(output[1:])
        return -10 * output

    handle = tiny_loaded.model.transformer.h[4].register_forward_hook(negate)
    try:
        with caplog.at_level(logging.WARNING, logger="saesteer"):
            hooked = st.generate("Happiness is").tokens
            again = st.generate("Happiness is").tokens
    finally:
        handle.remove()
    assert hooked == again == via_saesteer != plain
    told = [r for r in caplog.records if "reference loop" in r.getMessage()]
    assert len(told) == 1 and "transformer.h.4" in told[0].getMessage()
    assert st.generate("Happiness is").tokens == plain  # hook removed: fast engine again, same text as before


def test_user_pre_hooks_and_global_hooks_are_detected(tiny_gpt2):
    from saesteer.steering.hooks import user_hooks

    assert user_hooks(tiny_gpt2) == []
    handle = tiny_gpt2.transformer.h[1].attn.register_forward_pre_hook(lambda m, a: None)
    try:
        assert user_hooks(tiny_gpt2) == ["transformer.h.1.attn: forward pre hook"]
    finally:
        handle.remove()
    handle = torch.nn.modules.module.register_module_forward_hook(lambda m, a, o: None)
    try:
        assert user_hooks(tiny_gpt2) == ["global forward hook"]
    finally:
        handle.remove()
    assert user_hooks(tiny_gpt2) == []


def test_sampling_at_temperature_one_is_the_plain_softmax():
    """select_next skips dividing by a temperature of 1 (x / 1 == x): the draws are those of the formula."""
    from saesteer.engine.generate import row_generators, select_next

    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(1)) * 4
    cfg = GenerationConfig(temperature=1.0, seed=3)
    got = select_next(logits, cfg, row_generators(3, 6))
    probs = torch.softmax(logits / 1.0, dim=-1).double()
    u = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in row_generators(3, 6)])
    cdf = probs.cumsum(-1)
    want = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None]).squeeze(-1)
    assert torch.equal(got, want)


@pytest.mark.parametrize("vocab", [50257, 512, 130, 64, 63])
def test_blocked_argmax_equals_argmax_on_ties_and_infinities(vocab):
    """The greedy pick (one max per 64-wide block, then an argmax inside the first winning block) is
    ``argmax``'s: the first index on ties, across block edges and a short last block."""
    from saesteer.engine.generate import first_argmax

    g = torch.Generator().manual_seed(vocab)
    for _ in range(50):
        x = torch.randint(0, 4, (6, vocab), generator=g).float()  # many ties
        x[0] = -torch.inf
        x[1] = -torch.inf
        x[1, vocab - 1] = 0.0                                        # the winner alone in the last block
        x[2, 60:70] = 9.0                                            # a tie across a block edge
        x[3] = x[3].to(torch.bfloat16).float()
        got = first_argmax(x)
        assert torch.equal(got, x.argmax(dim=-1))
        assert torch.equal(first_argmax(x.to(torch.bfloat16)), x.to(torch.bfloat16).argmax(dim=-1))
    assert got[2].item() == 60 and got[1].item() == vocab - 1 and got[0].item() == 0


@pytest.mark.parametrize("vocab", [50257, 512])
def test_inverse_cdf_in_row_blocks_equals_the_whole_batch(vocab):
    """Sampling builds the float64 cumulative sums a few rows at a time: the same picks as over the whole batch."""
    from saesteer.engine.generate import inverse_cdf

    g = torch.Generator().manual_seed(vocab)
    probs = torch.softmax(torch.randn(37, vocab, generator=g) * 4, dim=-1)
    probs[3, : vocab // 2] = 0.0                       # a row with zeros, as top-p leaves
    u = torch.rand(37, dtype=torch.float64, generator=g)
    u[0], u[1] = 0.0, 1.0                              # the edges
    cdf = probs.double().cumsum(-1)
    whole = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None]).squeeze(-1).clamp(max=vocab - 1)
    got = inverse_cdf(probs, u)
    assert torch.equal(got, whole)
    assert len(set(got.tolist())) > 30                 # the draws spread over the vocabulary
