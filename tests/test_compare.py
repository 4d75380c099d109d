"""compare: KL, on-target hits, equality with generate, samples, the HTML report and the CLI."""

from __future__ import annotations

import base64
import json
import re

import pytest
import torch

from saesteer.cli.main import run
from saesteer.errors import SaesteerError
from saesteer.evaluation.compare import (Stat, compare, next_token_kl, paired_sign_flip_p, parse_feature_or_clamp,
                                         parse_clamp_values as parse_values)
from saesteer.evaluation.text_metrics import Targets
from saesteer.steering.clamp import FeatureClamp

HOOK = "blocks.6.hook_resid_post"
PROMPT = "Happiness is"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def st(tiny_loaded, tiny_sae):
    from saesteer.steerer import Steerer

    return Steerer(tiny_loaded, tiny_sae, engine="reference")


@pytest.fixture(scope="module")
def facts(st, tmp_path_factory):
    from saesteer.evaluation.feature_facts import feature_facts

    return feature_facts(st, samples=4, length=12, cache_dir=tmp_path_factory.getbasetemp() / "saesteer-facts",
                         engine="reference")


@pytest.fixture(scope="module")
def active(st):
    """The feature most active at the prompt's last token (clamping it to 0 changes the text)."""
    return st.reconstruct(PROMPT, top_n=1).top_features[0][0]


class StubFacts:
    """Hand-made on-target sets per feature, in the ``FactsTable`` interface compare uses."""

    meta = {"reference": {"source": "hand-made"}}

    def __init__(self, by_feature: dict[int, Targets]):
        self.by_feature = by_feature

    def targets(self, j: int) -> Targets:
        return self.by_feature.get(j, Targets())


@torch.no_grad()
def _direct_log_probs(st, ids, clamps=None):
    """Log-softmax of one unpadded sequence, with clamps through the public context manager."""
    from saesteer.steering.hooks import clamp

    x = torch.tensor([ids])
    if clamps is None:
        return torch.log_softmax(st.model(input_ids=x).logits[0].float(), -1)
    with clamp(st.model, st.sae, clamps, hook_name=HOOK):
        return torch.log_softmax(st.model(input_ids=x).logits[0].float(), -1)


# --------------------------------------------------------------------------- KL
def test_kl_is_exactly_zero_when_nothing_is_clamped(st, active):
    prompt = st.tokens(PROMPT)
    conts = [st.generate(PROMPT, clamps={active: 30}).tokens, st.generate(PROMPT).tokens[:4]]
    kl = next_token_kl(st.lm, st.sae, HOOK, prompt, conts, [[], {}])
    assert [len(k) for k in kl] == [len(conts[0]), 4]
    assert all(v == 0.0 for row in kl for v in row)
    moved = next_token_kl(st.lm, st.sae, HOOK, prompt, conts, [{active: 30}, {active: 30}])
    assert all(v > 1e-4 for row in moved for v in row)


def test_kl_is_steered_against_unsteered_along_the_steered_text(st, active):
    prompt = st.tokens(PROMPT)
    cont = st.generate(PROMPT, clamps={active: -300}).tokens
    got = next_token_kl(st.lm, st.sae, HOOK, prompt, [cont, cont[:3]], [{active: -300}, {active: -300}])
    ids = prompt + cont
    lp_u = _direct_log_probs(st, ids)[len(prompt) - 1:-1]
    lp_s = _direct_log_probs(st, ids, {active: -300})[len(prompt) - 1:-1]
    forward = torch.nn.functional.kl_div(lp_u, lp_s, log_target=True, reduction="none").sum(-1)  # KL(s || u)
    reverse = torch.nn.functional.kl_div(lp_s, lp_u, log_target=True, reduction="none").sum(-1)  # KL(u || s)
    assert torch.allclose(torch.tensor(got[0]), forward, rtol=1e-4, atol=1e-6)
    assert torch.allclose(torch.tensor(got[1]), forward[:3], rtol=1e-4, atol=1e-6)  # padding changes nothing
    # The two directions differ (by little on this near-uniform tiny model); the answer is the forward one.
    gap = (forward - reverse).abs().max()
    assert gap > 1e-5 and (torch.tensor(got[0]) - forward).abs().max() < 0.05 * gap


# --------------------------------------------------------------------------- compare
def test_single_value_equals_generate(st, active, facts):
    cmp = compare(st, PROMPT, {active: 20}, facts=facts, cards=False)
    (p,) = cmp.prompts
    assert len(p.settings) == 1 and p.settings[0].label == f"{active}=20"
    assert p.baseline.continuations[0].tokens == st.generate(PROMPT).tokens
    steered = st.generate(PROMPT, clamps={active: 20})
    assert p.settings[0].continuations[0].tokens == steered.tokens
    assert p.settings[0].continuations[0].text == steered.text
    assert steered.tokens != st.generate(PROMPT).tokens
    assert p.baseline.continuations[0].kl == [0.0] * len(p.baseline.continuations[0].tokens)
    assert p.settings[0].summary["kl"].mean > 0
    # Sampling: the same seed gives the same text as generate.
    cmp_s = compare(st, PROMPT, {active: 20}, temperature=1.0, seed=7, facts=False)
    gen_s = st.generate(PROMPT, clamps={active: 20}, temperature=1.0, seed=7)
    assert cmp_s.prompts[0].settings[0].continuations[0].tokens == gen_s.tokens
    assert cmp_s.prompts[0].baseline.continuations[0].tokens == st.generate(PROMPT, temperature=1.0, seed=7).tokens


def test_value_sweep_zero_clamps_to_zero(st, active):
    cmp = compare(st, [PROMPT, "The cat"], active, values=[-20, 0, 20], facts=False)
    assert cmp.values == [-20.0, 0.0, 20.0] and cmp.features == [active]
    for p in cmp.prompts:
        assert [s.value for s in p.settings] == [-20.0, 0.0, 20.0]
        assert p.settings[1].clamps == [FeatureClamp(active, 0.0)]
        assert p.baseline.clamps == [] and p.baseline.value is None
    # The prompt's most active feature clamped to 0 moves the distribution: value 0 is not "no clamp".
    zero = cmp.prompts[0].settings[1]
    assert zero.summary["kl"].mean > 0
    assert zero.continuations[0].tokens == st.generate(PROMPT, clamps={active: 0.0}).tokens
    # Without facts, hits are not measured (None), not zero.
    assert zero.continuations[0].hits_words is None and zero.summary["hits_words"].mean is None


def test_samples_share_random_streams_and_p_values(st):
    n = 4
    base = st.generate_many([PROMPT] * n, temperature=1.0, seed=3)
    # A feature inactive at every position of every baseline sample: clamping it to 0 in delta mode is a
    # no-op, so with common random numbers each steered sample must equal its baseline sample exactly.
    z = torch.zeros(st.sae.d_sae)
    for g in base:
        from saesteer.steering.hooks import record

        with record(st.model, HOOK) as rec:
            st.model(input_ids=torch.tensor([g.prompt_tokens + g.tokens]))
        z = torch.maximum(z, st.sae.encode(rec[HOOK][0]).amax(0))
    idle = int((z == 0).nonzero()[0])
    cmp = compare(st, PROMPT, idle, values=[0.0, 40.0], samples=n, temperature=1.0, seed=3,
                  facts=StubFacts({idle: Targets.of(lens_ids=range(50257))}), cards=False)
    p = cmp.prompts[0]
    assert [c.tokens for c in p.baseline.continuations] == [g.tokens for g in base]
    assert len({tuple(c.tokens) for c in p.baseline.continuations}) > 1  # samples differ among themselves
    noop = p.settings[0]
    assert [c.tokens for c in noop.continuations] == [g.tokens for g in base]
    assert all(not c.differs and c.kl_mean == 0.0 for c in noop.continuations)
    assert noop.p_values["hits_lens"] == 1.0 and noop.p_values["fluency"] == 1.0
    strong = p.settings[1]
    assert any(c.differs for c in strong.continuations) and strong.summary["kl"].mean > 0
    assert strong.summary["kl"].n == n and strong.summary["kl"].se is not None
    assert 0 < strong.p_values["fluency"] <= 1
    # Every token is a "promoted token" in this stub: hits = length.
    assert [c.hits_lens for c in strong.continuations] == [len(c.tokens) for c in strong.continuations]


def test_on_target_hits_hand_made(st, active):
    from saesteer.evaluation.text_metrics import FUNCTION_WORDS

    clamps = [(active, 25.0), (99, 25.0)]
    cmp = compare(st, PROMPT, clamps, facts=False)
    base = cmp.prompts[0].baseline.continuations[0]
    steered = cmp.prompts[0].settings[0].continuations[0]
    # Hand-made targets: one token of each text as "promoted", one word of the steered text as "firing".
    word = [w.lower() for w in re.findall(r"[^\W\d_]{3,}", steered.text) if w.lower() not in FUNCTION_WORDS][0]
    lens = {steered.tokens[0], base.tokens[0]}
    firing = next(t for t in reversed(base.tokens) if t not in lens)  # a "firing token" of the baseline text
    facts = StubFacts({active: Targets.of(words=[word], token_ids=[firing], lens_ids=[steered.tokens[0]]),
                       99: Targets.of(lens_ids=[base.tokens[0]])})
    cmp2 = compare(st, PROMPT, clamps, facts=facts, cards=False)
    assert cmp2.targets["words"] == [word]
    b2 = cmp2.prompts[0].baseline.continuations[0]
    assert b2.tokens == base.tokens
    assert b2.hits_lens == sum(base.tokens.count(t) for t in lens)
    assert b2.hits_tokens == base.tokens.count(firing) >= 1
    words_in = [w.lower() for w in re.findall(r"[^\W\d_]+", b2.text)]
    assert b2.hits_words == words_in.count(word)
    s2 = cmp2.prompts[0].settings[0].continuations[0]
    assert s2.tokens == steered.tokens and s2.hits_words >= 1
    assert s2.hits_tokens == steered.tokens.count(firing)
    assert s2.hits_lens == sum(s2.tokens.count(t) for t in lens) and s2.hits_lens >= 1
    assert s2.hits_words == [w.lower() for w in re.findall(r"[^\W\d_]+", s2.text)].count(word)


def test_on_target_hits_counted_on_a_fixed_text(st, facts):
    """A hand-written continuation through the metric path compare uses (text_metrics.hits)."""
    from saesteer.evaluation.text_metrics import text_metrics

    text = " The sad rain fell. Sad, sad day of rain."
    tokens = st.lm.encode(text, prepend_bos=False)
    sad = st.lm.encode(" sad", prepend_bos=False)
    assert len(sad) == 1
    targets = Targets.of(words=["Sad", "rain", "the"], lens_ids=sad)  # "the" is a function word: dropped
    base = st.lm.encode(" A happy day.", prepend_bos=False)
    m = text_metrics(tokens, text, base, " A happy day.", targets)
    assert (m.fire_hits, m.fire_distinct, m.lens_hits, m.base_fire_hits, m.base_lens_hits) == (5, 2, 2, 0, 0)


def test_errors_are_one_line(st, active):
    with pytest.raises(SaesteerError, match="temperature > 0"):
        compare(st, PROMPT, {active: 1}, samples=3, facts=False)
    with pytest.raises(SaesteerError, match="no clamp value"):
        compare(st, PROMPT, active, facts=False)
    with pytest.raises(SaesteerError, match="at least one clamp"):
        compare(st, PROMPT, {}, facts=False)
    with pytest.raises(SaesteerError):
        compare(st, PROMPT, {10**6: 1.0}, facts=False)
    with pytest.raises(SaesteerError, match="bad clamp value"):
        parse_values("1,x")
    assert parse_values("-20,-10,0,10,20") == [-20, -10, 0, 10, 20] and parse_values(None) is None
    assert parse_feature_or_clamp("12=3.5") == (12, 3.5) and parse_feature_or_clamp("12") == (12, None)


def test_statistics_known_answers():
    assert paired_sign_flip_p([1, 1, 1, 1, 1], [0, 0, 0, 0, 0]) == pytest.approx(2 / 32)
    assert paired_sign_flip_p([2, 2, 2, 2, 2, 2], [1, 1, 1, 1, 1, 1]) == pytest.approx(2 / 64)
    assert paired_sign_flip_p([3, 1], [3, 1]) == 1.0
    assert paired_sign_flip_p([1], [0]) is None
    # Mixed signs: d = [1, -1, 2]; |sum| = 2; flips with |sum| >= 2: 6 of 8.
    assert paired_sign_flip_p([1, 0, 2], [0, 1, 0]) == pytest.approx(6 / 8)
    s = Stat.of([1.0, 2.0, 3.0, None])
    assert (s.mean, s.sd, s.n) == (2.0, 1.0, 3) and s.se == pytest.approx(1 / 3 ** 0.5)


def test_token_pieces_join_to_the_text(tiny_loaded):
    from saesteer.evaluation.compare import token_pieces

    text = " Hello 🙂 wörld 日本語 ok\n\tx"
    ids = tiny_loaded.encode(text, prepend_bos=False)
    pieces = token_pieces(tiny_loaded, ids, tiny_loaded.encode("A prompt"))
    assert len(pieces) == len(ids) and "".join(pieces) == text
    assert pieces[:2] == [" Hello", " 🙂"] and "" in pieces  # a character split over byte tokens shows whole once


# --------------------------------------------------------------------------- report
def test_html_report_is_self_contained_escaped_and_has_its_plot(st, active, facts, tmp_path):
    nasty = 'Tom & "Jerry" <script>alert(1)</script>'
    cmp = compare(st, [nasty, PROMPT], active, values=[-10, 10], max_new_tokens=6, facts=facts)
    out, png_path = tmp_path / "r.html", tmp_path / "r.png"
    png = cmp.save_html(out, png_path=png_path)
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert nasty not in page and "Tom &amp; &quot;Jerry&quot; &lt;script&gt;" in page
    srcs = re.findall(r'src="([^"]*)"', page)
    assert len(srcs) == 1 and srcs[0].startswith("data:image/png;base64,")
    embedded = base64.b64decode(srcs[0].split(",", 1)[1])
    assert embedded == png == png_path.read_bytes() and png[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image
    import io

    w, h = Image.open(io.BytesIO(png)).size
    assert (w, h) == (1200, 660)
    for c in cmp.prompts[1].settings[0].continuations[0].pieces:
        from html import escape

        assert escape(c, quote=True) in page
    assert f"Feature {active}" in page and "KL(p<sub>steered</sub>" in page
    frag = cmp._repr_html_()
    assert frag.startswith('<div class="saesteer-report saesteer">') and "data:image/png;base64," in frag
    json.dumps(cmp.to_dict())
    rows = cmp.table()
    assert len(rows) == 2 * 3 and rows[0]["setting"] == "unsteered" and rows[0]["kl"] == 0.0


# --------------------------------------------------------------------------- CLI
@pytest.fixture()
def base(tiny_model_dir, tiny_sae_pt, tmp_path, monkeypatch):
    monkeypatch.setenv("SAESTEER_CACHE", str(tmp_path / "cache"))
    return ["--model", str(tiny_model_dir), "--sae", str(tiny_sae_pt), "--hook", HOOK]


def _json(capsys, args):
    assert run(args) == 0
    return json.loads(capsys.readouterr().out)


def test_cli_compare_equals_generate_and_writes_report(capsys, base, tmp_path):
    gen = _json(capsys, ["generate", *base, "--prompt", PROMPT, "--clamp", "5=20", "--json"])
    out = tmp_path / "report.html"
    cmp = _json(capsys, ["compare", *base, "--prompt", PROMPT, "--clamp", "5=20", "--json", "--out", str(out),
                         "--reference-samples", "2", "--reference-length", "8"])
    (p,) = cmp["prompts"]
    assert p["settings"][0]["continuations"][0]["tokens"] == gen["tokens"]
    assert p["settings"][0]["continuations"][0]["text"] == gen["text"]
    assert p["prompt_tokens"] == gen["prompt_tokens"]
    assert cmp["written"] == [str(out), str(tmp_path / "report.png")]
    assert out.is_file() and (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert cmp["cards"][0]["feature"] == 5 and cmp["targets"] is not None
    # Terminal output: one line per setting.
    assert run(["compare", *base, "--prompt", PROMPT, "--clamp", "5", "--values", "-20,0,20", "--no-facts",
                "--max-new-tokens", "4"]) == 0
    text = capsys.readouterr().out
    assert "unsteered" in text and "5=-20" in text and "5=0" in text and "5=20" in text


@pytest.mark.parametrize("args, message", [
    (["--clamp", "5=1", "--samples", "3"], "temperature > 0"),
    (["--clamp", "5"], "no clamp value"),
    (["--clamp", "5", "--values", "1,,2"], "bad clamp value"),
    (["--clamp", "x=1"], "bad clamp"),
    (["--clamp", "5=1", "--text", "/nonexistent/file.txt"], "not found"),
])
def test_cli_compare_errors(capsys, base, args, message):
    assert run(["compare", *base, "--no-facts", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


# --------------------------------------------------------------------------- a real model
def test_compare_on_real_stories_model(stories_path, tmp_path):
    """The real pretrained Llama-family stories260K model: a peaked distribution, so KL is large where the
    text changes; SentencePiece pieces keep their spaces."""
    from conftest import make_sae
    from saesteer.evaluation.feature_facts import feature_facts
    from saesteer.steerer import Steerer

    sae = make_sae(d_in=64, d_sae=128, k=4, hook_name="blocks.2.hook_resid_post", seed=5)
    st = Steerer(str(stories_path), sae, engine="reference")
    facts = feature_facts(st, samples=4, length=16, cache_dir=tmp_path, engine="reference")
    prompt = "Once upon a time"
    cmp = compare(st, prompt, 5, values=[0.0, 8.0], max_new_tokens=12, facts=facts)
    p = cmp.prompts[0]
    assert p.baseline.continuations[0].tokens == st.generate(prompt, max_new_tokens=12).tokens
    strong = p.settings[1].continuations[0]
    assert strong.tokens == st.generate(prompt, clamps={5: 8.0}, max_new_tokens=12).tokens
    assert strong.tokens != p.baseline.continuations[0].tokens and max(strong.kl) > 0.1
    # Pieces read on from the prompt with their spaces (the text decoded alone drops its leading space).
    assert prompt + "".join(strong.pieces) == st.lm.decode(p.prompt_tokens[1:] + strong.tokens)
    assert "".join(strong.pieces).strip() == strong.text.strip()
    base = p.baseline.continuations[0]
    assert base.fluency > -2.0 and (prompt + base.text).startswith("Once upon a time, there was")
    assert cmp.cards and cmp.cards[0].feature == 5
    cmp.save_html(tmp_path / "stories.html")
    assert "data:image/png;base64," in (tmp_path / "stories.html").read_text(encoding="utf-8")


def test_a_config_equals_its_keywords_and_relative_values_are_multiples(st, active, facts, tmp_path_factory):
    """compare(config) and compare(**keywords) are the same call; relative=True reads the values as
    multiples of the feature's max activation on the reference text (as `compare --relative` does)."""
    from saesteer.evaluation.compare import CompareConfig

    kw = dict(values=[-5.0, 5.0], max_new_tokens=4, mode="add")
    a = compare(st, PROMPT, active, facts=False, **kw)
    b = compare(st, PROMPT, active, CompareConfig(**kw), facts=False)
    assert a.to_dict() == b.to_dict() and a.values == [-5.0, 5.0]
    ref = dict(reference_samples=4, reference_length=12, cache_dir=tmp_path_factory.getbasetemp() / "saesteer-facts")
    rel = compare(st, PROMPT, active, values=[2.0], relative=True, max_new_tokens=4, facts=facts, cards=False, **ref)
    peak = float(facts.max_activation[active])
    assert peak > 0 and rel.values == [pytest.approx(2.0 * peak)]
    assert rel.prompts[0].settings[0].clamps[0].value == pytest.approx(2.0 * peak)
    with pytest.raises(TypeError, match="unexpected keywords: nope"):
        compare(st, PROMPT, active, values=[1.0], nope=1)


def test_the_report_shows_each_features_ranks_in_a_sweep(small_steerer, reference_story, tmp_path, monkeypatch):
    """With ``sweep=``, the report shows the features' results there as ``saesteer top`` ranks them; without,
    it says the ranks are not measured."""
    from saesteer.evaluation.report import comparison_text
    from saesteer.sweep import Sweep
    from saesteer.sweep.rank import top

    monkeypatch.setenv("SAESTEER_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "sw"
    Sweep(small_steerer, out=out, readback=True, features="0:8", values=[20, -10], reference_text=reference_story,
          max_new_tokens=6).results()
    want = [(r.feature, r.value, r.steer, r.word_rank, r.readback_rank, r.text)
            for r in top(out, n=None, all_values=True) if r.feature in (5, 6)]
    cmp = compare(small_steerer, None, [5, 6, 9], values=[20.0], max_new_tokens=4, facts=False, sweep=str(out))
    got = [(r["feature"], r["value"], r["steer"], r["word_rank"], r["readback_rank"], r["text"]) for r in cmp.sweep_results]
    assert got == want and len(got) == 4 and any(r[4] is not None for r in got)
    html = cmp.to_html(plot=b"")
    assert "In the sweep" in html and f"{want[0][2]:.3f}" in html and "Not in the sweep: 9." in html
    assert cmp.to_dict()["sweep_results"] == cmp.sweep_results and f"{want[0][4]:.3f}" in comparison_text(cmp)
    plain = compare(small_steerer, None, [5], values=[20.0], max_new_tokens=4, facts=False)
    assert plain.sweep_results is None and "not measured" in plain.to_html(plot=b"")
    assert "not measured" in comparison_text(plain)
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text(json.dumps({"format": "saesteer-sweep", "sweep": {"hook": "blocks.0.hook_resid_pre"}}))
    with pytest.raises(SaesteerError, match="not at blocks.1.hook_resid_post"):
        compare(small_steerer, None, [5], values=[20.0], max_new_tokens=4, facts=False, sweep=str(other))
