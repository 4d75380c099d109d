"""The validation on models unlike stories260K: another family and tokenizer (GPT-NeoX with GPT-2's real BPE),
a short context, a greedy opening of end-of-text, whitespace or punctuation; the firing-word rules on known
values; and rescoring a stored run gives the run's own numbers."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from saesteer.errors import SaesteerError
from saesteer.validation import measures
from saesteer.validation.criterion import clearest, word_levels
from saesteer.validation.measures import opening_words
from saesteer.validation.nulls import Group, null_counts, passes


@pytest.mark.parametrize("text, n, want", [
    ("Once upon a time, there was", 4, "Once upon a time"),
    ("\n\n  Return the value. It is", 4, "Return the value. It"),
    ('"Hello," she said.', 4, '"Hello," she said'),
    ("... -- 123 !!", 3, ""),
    ("", 2, ""),
    ("one", 4, "one"),
])
def test_opening_words_skip_leading_space_and_punctuation(text, n, want):
    assert opening_words(text, n) == want


def test_opening_skips_end_of_text_and_newlines(monkeypatch, gpt2_tokenizer):
    lm = SimpleNamespace(bos_token_id=50256, eos_token_id=50256, pad_token_id=50256, model=None)
    eos = 50256
    ids = [eos, eos] + gpt2_tokenizer.encode("\n\n", add_special_tokens=False) + [eos] + gpt2_tokenizer.encode(
        "The value is returned.", add_special_tokens=False)
    seen = {}

    def fake_generate(model, prompts, config, **kw):
        seen["stop"] = config.stop_at_eos
        return [ids]

    monkeypatch.setattr(measures, "generate_ids", fake_generate)
    lm.continuation = lambda p, new: gpt2_tokenizer.decode(new, skip_special_tokens=True)
    assert measures.model_opening(lm, 3) == "The value is"
    assert seen["stop"] is False                      # an end-of-text does not end the opening


def test_opening_falls_back_to_the_samples_then_errors(monkeypatch, gpt2_tokenizer):
    lm = SimpleNamespace(bos_token_id=50256, eos_token_id=50256, pad_token_id=50256, model=None)
    lm.continuation = lambda p, new: gpt2_tokenizer.decode(new, skip_special_tokens=True)
    monkeypatch.setattr(measures, "generate_ids", lambda *a, **k: [[50256] * 8])   # only end-of-text
    enc = lambda s: gpt2_tokenizer.encode(s, add_special_tokens=False)[:4]    # noqa: E731
    rows = [enc("A dog sat down"), enc("A cat sat down"), enc("A cat ran off"), enc("\n\nThe dog ran"),
            enc("The dog sat")]
    width = max(map(len, rows))
    rows = [[50256] + r + [50256] * (width - len(r)) for r in rows]
    ref = SimpleNamespace(tokens=torch.tensor(rows))
    assert measures.model_opening(lm, 3, ref) == "A cat ran"   # "A" (3 of 5), then "cat" (2 of 3), a tie: "ran"
    assert measures.common_opening(["x.", "x. y", "z"], 2) == "x. y"
    with pytest.raises(SaesteerError, match="--prompt"):
        measures.model_opening(lm, 2)


# --------------------------------------------------------------------------- firing-word rules
def test_word_levels_on_known_values():
    base, expected = [0, 3, 1], [0.5, 1.0, 2.5]
    assert word_levels(base, expected, "expected") == [0.5, 3.0, 2.5]
    assert word_levels(base, expected, "excess") == [0.0, 3.0, 1.0]
    assert word_levels(base, expected, "clean") == [0.0, math.inf, math.inf]
    with pytest.raises(SaesteerError, match="expected"):
        word_levels(base, expected, "other")


def _metrics(hits, base=0, drop=0.0):
    return SimpleNamespace(metrics=SimpleNamespace(fire_hits=hits, base_fire_hits=base, fluency_drop=drop))


def test_clearest_at_a_level_credits_words_already_in_the_unsteered_text():
    r = _metrics(5, base=3)
    assert clearest([r]) is r                          # the sweep's rule: 2 beyond the unsteered text's 3
    assert clearest([_metrics(4, base=3)]) is None
    assert clearest([r], math.inf) is None             # the old "clean" rule: no text can pass
    assert clearest([r], 3.0) is r                     # 2 beyond the unsteered text's 3
    assert clearest([r], 3.5) is None
    assert clearest([_metrics(5, base=3, drop=1.5)], 0.0) is None   # not fluent


def test_nulls_count_occurrences_beyond_the_level():
    n = 4
    hits = torch.tensor([[3, 0, 0, 0], [0, 4, 0, 0], [0, 0, 2, 0], [0, 0, 0, 9]], dtype=torch.int32)
    ones = torch.ones(n, dtype=torch.bool)
    g = Group(hits, torch.zeros(n, n), ones, ones)
    idx = torch.arange(n)
    got = passes([g], torch.tensor([1.0, 2.5, 0.0, math.inf]), idx)["words"]
    assert got.tolist() == [True, False, True, False]
    old = passes([g], torch.tensor([True, False, True, False]), idx)["words"]   # the boolean form: clean rule
    assert old.tolist() == [True, False, True, False]
    assert null_counts({"a": ([g], torch.zeros(n))}, permutations=9)["a"]["words"]["observed"] == 4


# --------------------------------------------------------------------------- another family, end to end
@pytest.fixture(scope="module")
def neox_dir(tmp_path_factory, gpt2_tokenizer):
    from _tiny_models import make_tiny

    path = tmp_path_factory.mktemp("tiny-neox")
    make_tiny("neox", max_position_embeddings=48).save_pretrained(path)
    gpt2_tokenizer.save_pretrained(path)
    return path


def test_validation_on_another_family_with_a_short_context(neox_dir, tmp_path):
    from saesteer.validation import validate
    from saesteer.validation.rescore import rescore

    v = validate(model=str(neox_dir), latents=32, k=4, tokens=2000, eval_tokens=256, reference_samples=16,
                 max_new_tokens=8, features=12, permutations=49, out=tmp_path, progress=False)
    cfg = v.config
    assert cfg["seq_len"] == 48 and cfg["reference_length"] == 47      # fitted to the 48 positions
    assert v.hook == "blocks.2.hook_resid_post" and v.n_features == 12
    opening = v.prompts[1].prompt
    assert opening and "<|endoftext|>" not in opening                    # the model's own words, no special token
    assert (tmp_path / "sweeps.json.gz").is_file()
    assert "rule here: <code>excess</code>" in (tmp_path / "report.html").read_text()
    again = rescore(tmp_path)
    for lbl, tests in v.nulls.items():
        for t, d in tests.items():
            assert {k: x for k, x in d.items() if k != "features"} == again["nulls"][lbl][t]
    assert again["cross"] == json.loads(json.dumps(v.cross))
    clean, excess = rescore(tmp_path, word_rule="clean"), rescore(tmp_path, word_rule="excess")
    for lbl in v.nulls:   # "excess" credits every text "clean" does, and more
        assert clean["nulls"][lbl]["words"]["observed"] <= excess["nulls"][lbl]["words"]["observed"]


def test_validate_json_names_the_prompt_and_rule(neox_dir, tmp_path, capsys, monkeypatch):
    import functools

    from saesteer.cli import train_commands
    from saesteer.cli.main import run
    from saesteer.validation import validate

    # the command as it is, with fewer held-out tokens and permutations than the full-size defaults
    monkeypatch.setattr(train_commands, "run_validation", functools.partial(validate, eval_tokens=256,
                                                                            permutations=19))

    args = ["validate", "--model", str(neox_dir), "--latents", "16", "--k", "2", "--tokens", "600",
            "--reference-samples", "8", "--max-new-tokens", "4", "--features", "6", "--quiet", "--json",
            "--out", str(tmp_path / "v")]
    assert run(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["word_rule"] == "excess" and out["hook"] == "blocks.2.hook_resid_post"
    assert out["prompts"]["bos"] is None and out["prompts"]["prompt"]
    assert set(out["nulls"]) == {"bos", "prompt", "every_prompt"}
