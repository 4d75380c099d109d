"""saesteer validate: the reduced CI version on the real stories260K model (skipped where ../shared is absent),
the pipeline on a GPT-2-architecture directory, and the clear criterion on values where the answer is known."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from saesteer.cli.main import run
from saesteer.evaluation.text_metrics import Targets, TextMetrics
from saesteer.validation import REPORT_KEYS, chance_clear, clearest, top_hits, validate

REDUCED = ["--latents", "256", "--k", "8", "--tokens", "100000", "--reference-samples", "256",
           "--max-new-tokens", "48"]


# --------------------------------------------------------------------------- the criterion
def _result(feature=0, hits=0, base=0, drop=0.0, tokens=(5,), text="", value=1.0):
    m = TextMetrics(differs=True, first_diff=0, fire_hits=hits, fire_distinct=min(hits, 1), fire_token_hits=0,
                    lens_hits=0, base_fire_hits=base, base_fire_token_hits=0, base_lens_hits=0, repetition=0.0,
                    distinct=1.0, fluency=-1.0, fluency_drop=drop)
    return SimpleNamespace(feature=feature, value=value, clamp=value, tokens=list(tokens), text=text, metrics=m)


@pytest.mark.parametrize("hits, base, drop, clear", [
    (2, 0, 1.0, True),      # exactly at both limits
    (2, 0, -0.3, True),     # more fluent than the unsteered text
    (7, 0, 0.2, True),
    (1, 0, 0.0, False),     # one occurrence is not enough
    (3, 0, 1.01, False),    # too much less fluent
    (5, 1, 0.0, True),      # 4 beyond the unsteered text's 1
    (2, 1, 0.0, False),     # only 1 beyond it
    (4, 0, None, False),    # fluency not measured: cannot be called clear
])
def test_clear_criterion_on_known_values(hits, base, drop, clear):
    r = _result(hits=hits, base=base, drop=drop)
    assert (clearest([r]) is r) is clear


def test_clearest_prefers_more_hits_then_more_fluent():
    a, b, c = _result(hits=2, drop=0.1), _result(hits=3, drop=0.9), _result(hits=3, drop=0.5)
    d = _result(hits=9, drop=2)
    assert clearest([a, b, c, d]) is c
    assert clearest([]) is None and clearest([d]) is None


def test_chance_control_uses_another_features_words():
    table = _Facts([["dog"], ["cat"]])
    own = _result(feature=0, text="the dog saw a dog", drop=0.2)   # clear for feature 0 itself
    other = _result(feature=1, text="a dog and a dog", drop=0.2)   # feature 1's text, feature 0's words
    assert chance_clear([own, other], table, [1], "a bird", shift=1) == {1}
    assert chance_clear([own, other], table, [1], "a dog", shift=1) == set()  # baseline has the word
    too_broken = _result(feature=1, text="a dog and a dog", drop=1.5)
    assert chance_clear([too_broken], table, [1], "a bird", shift=1) == set()


class _Facts:
    def __init__(self, words):
        self.words = words

    def __len__(self):
        return len(self.words)

    def targets(self, j):
        return Targets.of(self.words[j])


def test_top_hits_counts_the_highest_scores():
    scores = {0: 2.5, 1: 0.1, 2: 2.0, 3: 2.0, 4: 1.0}
    assert top_hits(scores, {0, 3}, n=2) == 1   # top 2: 0, then 2 (tie with 3, lower id first)
    assert top_hits(scores, {0, 2, 3}, n=3) == 3
    assert top_hits(scores, set(), n=20) == 0


# --------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def reduced(tmp_path_factory, stories_path):
    out = tmp_path_factory.mktemp("validation")
    code = run(["validate", "--model", str(stories_path), *REDUCED, "--quiet", "--out", str(out)])
    assert code == 0
    return out


def test_reduced_validation_on_the_real_model(reduced):
    report = json.loads((reduced / "report.json").read_text())
    for key in REPORT_KEYS + ("chance_bos", "chance_prompt", "chance_both", "top20_score_hits_no_fluency",
                              "best", "prompts", "timings", "machine", "config"):
        assert key in report
    assert report["hook"] == "blocks.2.hook_resid_post" and report["n_features"] == 256
    assert report["variance_explained"] > 0.85 and report["l0"] == pytest.approx(8, abs=0.05)
    assert report["dead_fraction"] <= 0.05
    bos, prompt = set(report["clear_features"]["bos"]), set(report["clear_features"]["prompt"])
    assert (report["clear_bos"], report["clear_prompt"], report["clear_both"]) == (len(bos), len(prompt),
                                                                                   len(bos & prompt))
    # steering works: features steer clearly, more than chance alone gives
    assert report["clear_bos"] >= 3 and report["clear_prompt"] >= 3
    assert report["clear_bos"] + report["clear_prompt"] > 2 * (report["chance_bos"] + report["chance_prompt"])
    # the score counts firing words beyond the unsteered text's, the test beyond what a typical text holds too
    assert 0 < report["top20_score_hits"] <= min(20, len(bos | prompt))
    assert len(report["best"]) == 20
    first = report["best"][0]
    assert first["clear_on"] and first["firing_words"] and set(first["texts"]) == {"bos", "prompt"}
    assert any(t["clear"] for t in first["texts"].values())


def test_reduced_validation_files(reduced):
    from saesteer.saes import load_sae

    html = (reduced / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "<mark>" in html and "Once upon a time" in html
    # steer's weights for the two measures, per prompt: each in [0, 1], the larger 1, shown on the page
    cross = json.loads((reduced / "report.json").read_text())["cross"]
    for lbl in ("bos", "prompt"):
        w = cross[lbl]["steer_weights"]
        assert 0.0 <= min(w.values()) and max(w.values()) == 1.0
        assert f"firing words {w['word']:.2f}, readback {w['readback']:.2f}" in html
    lines = (reduced / "features.jsonl").read_text().splitlines()
    assert len(lines) == 256
    rec = json.loads(lines[0])
    assert {"feature", "firing_words", "clear_bos", "clear_prompt", "bos", "prompt"} <= set(rec)
    sae = load_sae(str(reduced / "sae"))
    assert sae.d_sae == 256 and sae.hook_name == "blocks.2.hook_resid_post"
    assert (reduced / "facts" / "facts.json").is_file()


def test_pipeline_on_a_gpt2_directory(tiny_model_dir, tmp_path):
    v = validate(model=str(tiny_model_dir), latents=32, k=4, tokens=3000, eval_tokens=512, seq_len=32,
                 reference_samples=16, reference_length=16, max_new_tokens=6, prompt="Happiness is", features=16,
                 out=tmp_path, progress=False)
    assert v.hook == "blocks.4.hook_resid_post" and v.n_features == 16
    assert 0 <= v.clear_both <= min(v.clear_bos, v.clear_prompt) and len(v.best) == 16
    report = json.loads((tmp_path / "report.json").read_text())
    assert all(key in report for key in REPORT_KEYS)


def test_pipeline_on_a_gpt_neo_with_the_gpt2_vocabulary(gpt2_tokenizer, tmp_path, one_thread):
    """TinyStories' family (GPT-Neo: local layers, 50,257-token vocabulary), the prompt taken from the model."""
    import torch
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    torch.manual_seed(0)
    config = GPTNeoConfig(vocab_size=50257, hidden_size=64, num_layers=4, num_heads=16, window_size=8,
                          attention_types=[[["global", "local"], 2]], max_position_embeddings=2048,
                          bos_token_id=50256, eos_token_id=50256)
    GPTNeoForCausalLM(config).save_pretrained(tmp_path / "neo")
    gpt2_tokenizer.save_pretrained(tmp_path / "neo")
    v = validate(model=str(tmp_path / "neo"), latents=32, k=4, tokens=3000, eval_tokens=512, seq_len=32,
                 reference_samples=16, reference_length=16, max_new_tokens=6, features=16, out=tmp_path / "v",
                 progress=False)
    assert v.hook == "blocks.2.hook_resid_post" and v.n_features == 16 and len(v.best) == 16
    opening = v.prompts[1].prompt
    assert opening and "<|endoftext|>" not in opening
    report = json.loads((tmp_path / "v" / "report.json").read_text())
    assert all(key in report for key in REPORT_KEYS)
    assert {p["label"]: p["prompt"] for p in report["prompts"]} == {"bos": None, "prompt": opening}
    assert 0 <= report["clear_both"] <= min(report["clear_bos"], report["clear_prompt"])


def test_bad_settings_are_one_line_errors(tmp_path, capsys):
    assert run(["validate", "--model", str(tmp_path / "missing"), "--quiet", "--out", str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err
    assert run(["validate", "--model", str(tmp_path), "--values", "2,x", "--quiet", "--out", str(tmp_path / "o")]) == 2
    assert "bad value list" in capsys.readouterr().err


def test_a_model_without_tokenizer_files_is_refused_before_any_work(tiny_gpt2, tmp_path, capsys):
    """transformers 5 gives such a folder an empty tokenizer (special tokens only), which saesteer takes as none."""
    tiny_gpt2.save_pretrained(tmp_path / "bare")  # weights and config only
    capsys.readouterr()
    assert run(["validate", "--model", str(tmp_path / "bare"), "--quiet", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "has no tokenizer (no tokenizer files beside config.json)" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- permutation nulls
def test_rank_matrix_agrees_with_the_readback_ranks_of_top():
    import torch

    from saesteer.evaluation.readback import readback_ranks
    from saesteer.validation.nulls import rank_matrix

    gen = torch.Generator().manual_seed(0)
    n = 12
    dense = (torch.rand(n, n, generator=gen) * 4).floor() * (torch.rand(n, n, generator=gen) < 0.4)  # ties, zeros
    changed = torch.rand(n, generator=gen) < 0.8
    recs = []
    for f in range(n):
        ids = torch.nonzero(dense[f] > 0).flatten().tolist()
        recs.append({"feature": f, "value": 1.0, "differs": bool(changed[f]), "readback_ids": ids,
                     "readback_vals": dense[f, ids].tolist()})
    ranks = readback_ranks(recs)
    R = rank_matrix(dense, changed)
    for f in range(n):
        want = ranks[(f, 1.0)]["readback_rank"]
        assert (want is None and R[f, f] == -1) or abs(float(R[f, f]) - want) < 1e-6


def test_null_counts_tell_own_words_from_chance():
    import torch

    from saesteer.validation.nulls import Group, hits_matrix, null_counts

    n = 40
    name = [f"w{chr(97 + f % 26)}{chr(97 + f // 26)}" for f in range(n)]   # letters only: words have no digits
    words = [[name[f]] for f in range(n)]
    own = [f"{name[f]} and {name[f]}" for f in range(n)]   # every feature's text has its own word twice
    shuffled = [f"{name[(f * 7 + 3) % n]} {name[(f * 7 + 3) % n]}" for f in range(n)]  # someone else's words

    def group(texts):
        ones = torch.ones(n, dtype=torch.bool)
        rank = torch.eye(n)                      # own readback highest in each column
        return Group(hits_matrix(texts, words), rank, ones, ones)

    clean = torch.ones(n, dtype=torch.bool)
    got = null_counts({"a": ([group(own)], clean)}, permutations=199, seed=1)["a"]
    assert got["words"]["observed"] == n and got["words"]["p"] == pytest.approx(1 / 200)
    assert got["words"]["chance"] < 2 and got["words"]["net"] > n - 2
    assert got["both"]["observed"] == n and got["readback"]["features"] == list(range(n))
    assert got["word_rank"]["observed"] == n and got["word_rank"]["chance"] < 2   # own words: top of the null
    lo, hi = got["words"]["interval"]
    assert lo <= got["words"]["chance"] <= hi
    other = null_counts({"a": ([group(shuffled)], clean)}, permutations=199, seed=1)["a"]
    assert other["words"]["observed"] == 0 and other["words"]["p"] == 1.0
    assert other["both"]["observed"] == 0 and other["word_rank"]["observed"] == 0


def test_prompt_comes_from_the_model_itself(tiny_loaded):
    from saesteer.validation.measures import model_opening

    opening = model_opening(tiny_loaded, 3)
    assert opening and len(opening.split()) <= 3
    assert opening == model_opening(tiny_loaded, 3)   # greedy: the same every time
