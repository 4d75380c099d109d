"""Feature cards: facts checked against direct computation, steered samples, rendering, and the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from saesteer.cli.main import run
from saesteer.errors import SaesteerError
from saesteer.evaluation.feature_card import feature_card

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

    # The same cache folder and settings as test_compare: the second module reads the first one's facts.
    return feature_facts(st, samples=4, length=12, cache_dir=tmp_path_factory.getbasetemp() / "saesteer-facts",
                         engine="reference")


@pytest.fixture(scope="module")
def fired(facts):
    return int(facts.max_activation.argmax())


@torch.no_grad()
def test_card_facts_match_direct_computation(st, facts, fired):
    from saesteer.evaluation.feature_facts import hook_activations
    from saesteer.models.hook_sites import unembed_directions

    card = feature_card(st, fired, values=(), facts=facts, n_tokens=7, n_contexts=5)
    assert card.samples == [] and card.unsteered is None
    logits = unembed_directions(st.model, st.sae.W_dec[fired:fired + 1])[0]
    assert [t.id for t in card.promoted] == logits.topk(7).indices.tolist()
    assert [t.id for t in card.suppressed] == logits.topk(7, largest=False).indices.tolist()
    assert card.promoted[0].text == st.lm.decode([card.promoted[0].id])
    # Maximum activation and the top context, recomputed from the reference tokens.
    ref = facts.tensors["reference_tokens"].long()
    z = st.sae.encode(hook_activations(st.model, HOOK, ref))[..., fired]  # [n, T]
    z[ref == st.lm.bos_token_id] = 0
    assert card.max_activation == pytest.approx(float(z.max()), rel=1e-4) and card.max_activation > 0
    s, p = divmod(int(z.argmax()), ref.shape[1])
    top = card.contexts[0]
    assert top.activation == pytest.approx(card.max_activation)
    assert top.token == st.lm.decode([int(ref[s, p])])
    assert top.before.endswith(st.lm.decode(ref[s, max(0, p - 3):p].tolist()))
    assert [c.activation for c in card.contexts] == sorted((c.activation for c in card.contexts), reverse=True)
    assert 1 <= len(card.contexts) <= 5
    assert card.frequency == pytest.approx(float((z > 0).sum()) / int((ref != st.lm.bos_token_id).sum()))


def test_decoder_norm_is_the_features_own(tiny_loaded, facts, fired):
    from saesteer.steerer import Steerer
    from conftest import make_sae

    sae = make_sae()
    with torch.no_grad():
        sae.W_dec[fired] *= 2.5
    st2 = Steerer(tiny_loaded, sae, engine="reference")
    assert feature_card(st2, fired, values=(), facts=facts).decoder_norm == pytest.approx(2.5, rel=1e-5)
    other = (fired + 1) % sae.d_sae
    assert feature_card(st2, other, values=(), facts=facts).decoder_norm == pytest.approx(1.0, rel=1e-5)


def test_steered_samples_and_rendering(st, facts, fired):
    nasty = '<b>"Tom" & Jerry</b>'
    card = feature_card(st, fired, values=[-20, 20], prompt=nasty, max_new_tokens=5, facts=facts)
    assert [s.value for s in card.samples] == [-20.0, 20.0]
    for s in card.samples:
        assert s.tokens == st.generate(nasty, clamps={fired: s.value}, max_new_tokens=5).tokens
    assert card.unsteered.text == st.generate(nasty, max_new_tokens=5).text and card.unsteered.value is None
    assert card.unsteered.shown == card.unsteered.text  # GPT-2's BPE keeps the leading space anyway
    assert card.samples[1].tokens != card.samples[0].tokens
    text = card.to_text()
    assert f"Feature {fired}" in text and "decoder norm" in text
    assert "[[" + repr(card.contexts[0].token)[1:-1] + "]]" in text
    page = card.to_html()
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page and "http" not in page
    assert nasty not in page and "&lt;b&gt;&quot;Tom&quot; &amp; Jerry&lt;/b&gt;" in page
    from html import escape

    top = card.contexts[0]
    assert f"<mark title=\"activation {top.activation:.3f}\">{escape(top.token)}</mark>" in page
    assert card._repr_html_().startswith('<div class="saesteer-report saesteer">')
    d = json.loads(json.dumps(card.to_dict()))
    c0 = d["contexts"][0]
    assert c0["before"] + c0["token"] + c0["after"] == "".join(c0["pieces"])
    assert c0["token"] == c0["pieces"][c0["index"]]


def test_errors(st, facts):
    with pytest.raises(SaesteerError):
        feature_card(st, st.sae.d_sae, facts=facts)
    with pytest.raises(SaesteerError):
        feature_card(st, "3", facts=facts)


# --------------------------------------------------------------------------- CLI
@pytest.fixture()
def base(tiny_model_dir, tiny_sae_pt, tmp_path, monkeypatch):
    monkeypatch.setenv("SAESTEER_CACHE", str(tmp_path / "cache"))
    return ["--model", str(tiny_model_dir), "--sae", str(tiny_sae_pt), "--hook", HOOK]


def test_cli_feature_on_a_text_file(capsys, base, tmp_path):
    text = ("The rain fell on the quiet town. Children laughed in the park while the dog barked. "
            "A storm came over the hills and the river rose. ") * 3
    src = tmp_path / "ref.txt"
    src.write_text(text, encoding="utf-8")
    out = tmp_path / "card.html"
    args = ["feature", "7", *base, "--text", str(src), "--reference-length", "16", "--values", "10",
            "--max-new-tokens", "3", "--contexts", "3"]
    assert run([*args, "--json", "--out", str(out)]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["feature"] == 7 and d["reference"]["source"] == str(src) and d["written"] == [str(out)]
    assert [s["value"] for s in d["samples"]] == [10.0] and len(d["samples"][0]["tokens"]) == 3
    assert len(d["promoted"]) == 10 and len(d["contexts"]) <= 3
    for c in d["contexts"]:
        assert c["before"] + c["token"] + c["after"] in text
    page = out.read_text(encoding="utf-8")
    assert "Feature 7" in page and ("<mark" in page) == bool(d["contexts"])
    assert run(args) == 0  # cached facts, terminal card
    shown = capsys.readouterr().out
    assert "Feature 7" in shown and "promotes" in shown and "Steered samples" in shown


@pytest.mark.parametrize("args, message", [
    (["999999"], "outside"),
    (["3", "--text", "/nonexistent/ref.txt"], "not found"),
    (["3", "--values", "a,b"], "bad clamp value"),
])
def test_cli_feature_errors(capsys, base, args, message):
    assert run(["feature", args[0], *base, *args[1:]]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_a_config_equals_its_keywords_and_relative_values_are_multiples(st, facts, fired, tmp_path_factory):
    from saesteer.evaluation.compare_config import FeatureCardConfig

    kw = dict(values=[3.0], max_new_tokens=3, n_tokens=4, n_contexts=2)
    a = feature_card(st, fired, facts=facts, **kw)
    assert a.to_dict() == feature_card(st, fired, FeatureCardConfig(**kw), facts=facts).to_dict()
    ref = dict(reference_samples=4, reference_length=12, cache_dir=tmp_path_factory.getbasetemp() / "saesteer-facts")
    rel = feature_card(st, fired, facts=facts, relative=True, values=[1.0, 2.0], max_new_tokens=3, **ref)
    peak = float(facts.max_activation[fired])
    assert [s.value for s in rel.samples] == [pytest.approx(peak), pytest.approx(2.0 * peak)]


def test_cli_reference_seed_reaches_the_facts(capsys, base):
    """--reference-seed (one field of FeatureCardConfig and CompareConfig): the facts are those of that seed."""
    args = ["feature", "7", *base, "--reference-samples", "2", "--reference-length", "8", "--values", "10",
            "--max-new-tokens", "2", "--json"]
    assert run([*args, "--reference-seed", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["reference"]["seed"] == 3
    assert run(args) == 0
    assert json.loads(capsys.readouterr().out)["reference"]["seed"] == 0
    assert run(["compare", *base, "--prompt", PROMPT, "--clamp", "7=10", "--reference-samples", "2",
                "--reference-length", "8", "--reference-seed", "3", "--max-new-tokens", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["reference"]["seed"] == 3
