"""Default strengths in each feature's own units (issue 14, item 2), on the embedded stories260K model."""

import json

import pytest

from saesteer import Steerer
from saesteer.cli.main import run
from saesteer.strength import DEFAULT_MULTIPLE, DEFAULT_MULTIPLES, feature_scale

EMB = ["--model", "stories260K", "--sae", "stories260K"]
REF = ["--reference-samples", "16", "--reference-length", "32"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("facts_cache")


@pytest.fixture(autouse=True)
def shared_cache(cache, monkeypatch):
    monkeypatch.setenv("SAESTEER_CACHE", str(cache))


@pytest.fixture(scope="module")
def st():
    return Steerer("stories260K", "stories260K")


def test_batch_defaults_to_twice_each_features_peak(st, tmp_path, capsys):
    out = tmp_path / "b.txt"
    assert run(["batch", *EMB, "--features", "10:14", "--out", str(out)]) == 0
    assert "max activation" in capsys.readouterr().err
    scale = feature_scale(st, range(10, 14))
    lines = dict(line.split("\t", 1) for line in out.read_text().splitlines())
    for f in range(10, 14):
        assert lines[str(f)] == st.generate(None, clamps={f: DEFAULT_MULTIPLE * scale.max_activation[f]}).text
    assert run(["batch", *EMB, "--features", "10:11", "--value", "20", "--out", str(out)]) == 0  # absolute
    assert out.read_text().split("\t", 1)[1].strip() == st.generate(None, clamps={10: 20.0}).text


def test_feature_card_samples_at_multiples_of_its_peak(st, capsys):
    assert run(["feature", "7", *EMB, *REF, "--json", "--max-new-tokens", "4", "--contexts", "0"]) == 0
    card = json.loads(capsys.readouterr().out)
    peak = card["max_activation"]
    assert 0 < peak < 10
    assert [s["value"] for s in card["samples"]] == pytest.approx([m * peak for m in DEFAULT_MULTIPLES])
    assert run(["feature", "7", *EMB, *REF, "--max-new-tokens", "4", "--contexts", "0"]) == 0
    assert f"max activation {peak:.3g}" in capsys.readouterr().out


def test_compare_bare_feature_gets_the_default_strength(capsys):
    assert run(["compare", *EMB, *REF, "--clamp", "7", "--prompt", "Once upon a time", "--json",
                "--max-new-tokens", "4"]) == 0
    out = json.loads(capsys.readouterr().out)
    steered = out["prompts"][0]["settings"][0]["clamps"]
    peak = out["cards"][0]["max_activation"]
    assert steered == [{"feature": 7, "value": pytest.approx(DEFAULT_MULTIPLE * peak)}]


def test_sweep_defaults_to_relative_values(tmp_path, capsys):
    out = tmp_path / "sw"
    assert run(["sweep", *EMB, "--features", "0:4", "--max-new-tokens", "3", "--reference-samples", "16",
                "--reference-length", "32", "--quiet", "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    text = json.dumps(manifest)
    assert '"relative": true' in text and "max activation" in capsys.readouterr().err


def test_a_feature_that_never_fires_has_no_relative_scale(st):
    from saesteer.errors import SaesteerError
    from saesteer.strength import Scale

    with pytest.raises(SaesteerError, match="never fires"):
        Scale({3: 0.0}, "text").value(3, 2.0)
