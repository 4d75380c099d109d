"""The Llama path on the real pretrained stories260K model (skipped where ../shared is absent)."""

import torch

from conftest import make_sae
from saesteer.engine.generate import full_forward_argmax
from saesteer.steerer import Steerer

REFERENCE = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park."


def test_greedy_generation_reproduces_llama2c_reference(stories_path):
    st = Steerer(str(stories_path))
    g = st.generate("Once upon a time", max_new_tokens=30)
    assert ("Once upon a time" + g.text).startswith(REFERENCE)
    assert g.prompt_tokens == [1, 403, 407, 261, 378]


def test_steering_a_real_model_batches_and_caches_consistently(stories_path):
    sae = make_sae(d_in=64, d_sae=128, k=4, hook_name="blocks.2.hook_resid_post", seed=5)
    st = Steerer(str(stories_path), sae)
    prompts = [None, "Once upon a time", "The cat"]
    rows = [[(3, 8.0)], [(5, 8.0)], []]
    together = st.generate_many(prompts, rows=rows, max_new_tokens=12)
    for p, r, g in zip(prompts, rows, together):
        from saesteer.steering.hooks import make_clamp

        alone = full_forward_argmax(st.model, st.tokens(p), 12, edits=[make_clamp(st.model, sae, r)],
                                    eos_token_id=st.lm.eos_token_id)
        assert g.tokens == alone
    assert together[1].tokens != st.generate("Once upon a time", max_new_tokens=12).tokens
    assert together[2].tokens == st.generate("The cat", max_new_tokens=12).tokens  # empty row: unchanged
