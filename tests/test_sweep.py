"""Sweeps in process: equal to one-feature generation, resumable, refusing a different sweep, shardable."""

import json

import pytest

from saesteer.errors import SaesteerError
from saesteer.sweep import Sweep, load_sweep, merge, rank, top
from saesteer.sweep import store as st

REF = ("Once upon a time a little dragon lived in a cave by the sea. Every morning the dragon flew over the "
       "village and the children waved. The king of the village was afraid of the dragon, but his daughter was not.")


pytestmark = pytest.mark.usefixtures("one_thread")


def small_model(seed=0):
    from conftest import make_tiny_gpt2

    return make_tiny_gpt2(n_layer=2, d_model=32, n_head=2, seed=seed)


def small_sae(seed=1):
    from conftest import make_sae

    return make_sae(d_in=32, d_sae=64, k=4, hook_name="blocks.1.hook_resid_post", seed=seed)


@pytest.fixture(scope="module")
def steerer(gpt2_tokenizer):
    """A 2-layer GPT-2 (real vocabulary) and a 64-latent TopK SAE: sweeps of it take a second."""
    from saesteer import Steerer

    return Steerer(small_model(), small_sae(), tokenizer=gpt2_tokenizer)


@pytest.fixture
def ref(tmp_path, monkeypatch):
    monkeypatch.setenv("SAESTEER_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "ref.txt"
    path.write_text(REF)
    return path


def make(steerer, ref, **kw):
    kw.setdefault("features", "0:12")
    kw.setdefault("values", [20, -10])
    kw.setdefault("batch_size", 8)
    return Sweep(steerer, reference_text=ref, **kw)


def records(folder):
    return st.load_records(folder)


@pytest.mark.parametrize("prompt,mode", [(None, "delta"), ("The dragon", "reconstruct"), ("The dragon", "add")])
def test_each_result_equals_generate_with_that_clamp_alone(steerer, ref, prompt, mode):
    results = make(steerer, ref, prompt=prompt, mode=mode, features="0:5", batch_size=4).results()
    assert [(r.feature, r.value) for r in results] == [(f, v) for f in range(5) for v in (20.0, -10.0)]
    for r in results:
        alone = steerer.generate(prompt, clamps={r.feature: r.value}, mode=mode, max_new_tokens=10)
        assert r.tokens == alone.tokens, (r.feature, r.value)
        assert r.text == alone.text
    unsteered = steerer.generate(prompt, max_new_tokens=10)
    assert any(r.tokens != unsteered.tokens for r in results)
    assert len({tuple(r.tokens) for r in results}) > 2


def test_folder_contents(steerer, ref, tmp_path):
    out = tmp_path / "sw"
    sw = make(steerer, ref, out=out, fluency=True)
    results = sw.results()
    m, loaded = load_sweep(out)
    assert m["status"] == "complete" and m["done"] == m["n_features"] == 12
    assert m["values"] == [20.0, -10.0] and m["prompt"] is None and m["max_new_tokens"] == 10
    assert m["hook"] == "blocks.1.hook_resid_post" and m["mode"] == "delta" and m["dtype"] == "float32"
    assert m["baseline"]["tokens"] == steerer.generate(None).tokens
    assert m["baseline"]["text"] == steerer.generate(None).text
    assert m["versions"]["torch"] and m["started_at"] and m["finished_at"] and m["features_per_second"] > 0
    assert [r.to_record() for r in results] == [r.to_record() for r in loaded]
    lines = (out / "sentences.txt").read_text().splitlines()
    assert len(lines) == 24
    f, v, text = lines[1].split("\t")
    assert (int(f), float(v)) == (0, -10.0) and text == st.escape_text(results[1].text)
    rec = json.loads((out / "results.jsonl").read_text().splitlines()[0])
    for key in ("feature", "value", "tokens", "text", "differs", "first_diff", "fire_hits", "base_fire_hits",
                "lens_hits", "base_lens_hits", "repetition", "distinct", "fluency", "fluency_drop", "score"):
        assert key in rec
    assert rec["fluency"] is not None and rec["fluency"] < 0
    # Every stored metric is what text_metrics gives for the stored text against the baseline and facts.
    from saesteer.sweep.merge import rescore

    stored = records(out)
    for r in stored:
        again = rescore(r, sw.facts, m["baseline"])
        assert again.pop("fluency_drop") == pytest.approx(r["fluency_drop"], abs=1e-4)  # stored rounded
        assert again == {k: v for k, v in r.items() if k != "fluency_drop"}
    assert any(r["differs"] for r in stored) and any(r["lens_hits"] > 0 for r in stored)


def test_relative_values_scale_by_max_activation(steerer, ref):
    sw = make(steerer, ref, relative=True, values=[2.0], features="0:6")
    results = sw.results()
    for r in results:
        assert r.clamp == pytest.approx(2.0 * float(sw.facts.max_activation[r.feature]), rel=1e-5)
        alone = steerer.generate(None, clamps={r.feature: float(2.0 * sw.facts.max_activation[r.feature])})
        assert r.tokens == alone.tokens
    assert any(r.clamp > 0 for r in results)


def test_interrupted_then_resumed_equals_uninterrupted(steerer, ref, tmp_path):
    whole = make(steerer, ref, out=tmp_path / "whole").results()
    out = tmp_path / "part"
    it = make(steerer, ref, out=out).run()
    first = [next(it) for _ in range(8)]  # one batch of 4 features
    it.close()
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "running" and m["done"] == 4
    assert len((out / "sentences.txt").read_text().splitlines()) == 8  # rewritten when the run stopped
    # A write cut by a crash, a repeated line, and a feature with only one of its values.
    lines = (out / "results.jsonl").read_text().splitlines(keepends=True)
    with open(out / "results.jsonl", "a") as f:
        f.write(lines[0])
        f.write(json.dumps(dict(json.loads(lines[0]), feature=9)) + "\n")
        f.write(lines[1][: len(lines[1]) // 2])
    again = make(steerer, ref, out=out)
    rest = list(again.run())
    assert [(r.feature, r.value) for r in rest] == [(f, v) for f in range(4, 12) for v in (20.0, -10.0)]
    recs = records(out)
    assert [(r["feature"], r["value"]) for r in recs] == [(f, v) for f in range(12) for v in (20.0, -10.0)]
    assert recs == [r.to_record() for r in whole]
    assert first[0].to_record() == recs[0]
    raw = (out / "results.jsonl").read_text().splitlines()
    assert len(raw) == 24 and raw == (tmp_path / "whole" / "results.jsonl").read_text().splitlines()
    assert (out / "sentences.txt").read_text() == (tmp_path / "whole" / "sentences.txt").read_text()
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "complete" and len(m["sessions"]) == 2
    assert list(make(steerer, ref, out=out).run()) == []  # finished: nothing to redo


@pytest.mark.parametrize("change,field", [
    ({"values": [20, -5]}, "values"),
    ({"prompt": "Hello"}, "prompt"),
    ({"features": "0:13"}, "features"),
    ({"mode": "reconstruct"}, "mode"),
    ({"max_new_tokens": 5}, "max_new_tokens"),
    ({"shard": (1, 2)}, "shard"),
])
def test_a_different_sweep_on_the_same_folder_is_refused(steerer, ref, tmp_path, change, field):
    out = tmp_path / "sw"
    it = make(steerer, ref, out=out).run()
    next(it)
    it.close()
    before = (out / "results.jsonl").read_bytes()
    with pytest.raises(SaesteerError, match=field):
        list(make(steerer, ref, out=out, **change).run())
    assert (out / "results.jsonl").read_bytes() == before


def test_another_model_or_sae_is_refused(steerer, ref, tmp_path, gpt2_tokenizer):
    from saesteer import Steerer

    out = tmp_path / "sw"
    it = make(steerer, ref, out=out).run()
    next(it)
    it.close()
    other_model = Steerer(small_model(seed=5), steerer.sae, tokenizer=gpt2_tokenizer)
    with pytest.raises(SaesteerError, match="model_fingerprint"):
        list(make(other_model, ref, out=out).run())
    other_sae = Steerer(steerer.lm, small_sae(seed=7))
    with pytest.raises(SaesteerError, match="sae_fingerprint"):
        list(make(other_sae, ref, out=out).run())


def test_shards_merge_into_the_unsharded_result(steerer, ref, tmp_path):
    whole = tmp_path / "whole"
    make(steerer, ref, out=whole, batch_size=6).results()
    shards = []
    for i in range(3):
        d = tmp_path / f"s{i}"
        res = make(steerer, ref, out=d, shard=(i, 3), batch_size=4).results()
        assert [r.feature for r in res][::2] == list(range(i, 12, 3))
        shards.append(d)
    with pytest.raises(SaesteerError, match="missing"):
        merge(shards[:2], tmp_path / "bad")
    merged = tmp_path / "merged"
    m = merge(list(reversed(shards)), merged)
    assert m["shard"] == "0/1" and m["status"] == "complete"
    assert (merged / "results.jsonl").read_bytes() == (whole / "results.jsonl").read_bytes()
    assert (merged / "sentences.txt").read_bytes() == (whole / "sentences.txt").read_bytes()
    mw = json.loads((whole / "manifest.json").read_text())
    assert m["sweep"] == mw["sweep"] and m["fingerprint"] == mw["fingerprint"]
    # The merged folder is the unsharded sweep: running that command on it has nothing left to do.
    assert list(make(steerer, ref, out=merged).run()) == []
    with pytest.raises(SaesteerError, match="not empty"):
        merge(shards, merged)


def test_merge_refuses_other_sweeps_and_unfinished_shards(steerer, ref, tmp_path):
    a = tmp_path / "a"
    make(steerer, ref, out=a, shard=(0, 2)).results()
    b = tmp_path / "b"
    make(steerer, ref, out=b, shard=(1, 2), values=[20]).results()
    with pytest.raises(SaesteerError, match="same sweep.*values"):
        merge([a, b], tmp_path / "m1")
    c = tmp_path / "c"
    it = make(steerer, ref, out=c, shard=(1, 2)).run()
    next(it)
    it.close()
    with pytest.raises(SaesteerError, match="not finished"):
        merge([a, c], tmp_path / "m2")
    with pytest.raises(SaesteerError, match="twice"):
        merge([a, a], tmp_path / "m3")
    assert not (tmp_path / "m1").exists() and not (tmp_path / "m2").exists()


def test_rank_orders_by_score_and_filters_by_word(steerer, ref, tmp_path):
    out = tmp_path / "sw"
    make(steerer, ref, out=out).results()
    recs = records(out)
    # Make the known winner: feature 3 at -10 gets two firing words of its own.
    words = ["dragon", "king"]
    for r in recs:
        r["score"] = 0.1
    target = next(r for r in recs if r["feature"] == 3 and r["value"] == -10.0)
    target.update(score=2.25, fire_hits=2, text=" the dragon and the king")
    rows = rank(recs, n=5)
    assert rows[0].feature == 3 and rows[0].value == -10.0 and rows[0].score == 2.25
    assert len(rows) == 5 and len({r.feature for r in rows}) == 5
    assert [r.feature for r in rank(recs, query="KING")] == [3]
    assert len(rank(recs, n=None, all_values=True)) == 24
    assert [r.feature for r in rank(recs, sort="feature", n=3)] == [0, 1, 2]
    with pytest.raises(SaesteerError, match="sort"):
        rank(recs, sort="nope")
    table = top(out, n=3)
    assert len(table) == 3 and table[0].firing_words is not None
    assert words  # the words used above


def test_top_and_merge_cli(steerer, ref, tmp_path):
    from saesteer.cli.main import run

    out = tmp_path / "sw"
    make(steerer, ref, out=out).results()
    assert run(["top", str(out), "--n", "4", "--json"]) == 0
    assert run(["top", str(tmp_path)]) == 2  # not a sweep folder: one-line error
    assert run(["merge", str(out), "--out", str(out)]) == 2


def test_the_two_manifest_readers_differ_only_in_strictness(tmp_path):
    """read_manifest (resume, merge, top) refuses what is not a sweep manifest; read_manifest_lenient (the
    sweep browser) shows any JSON object and {} for the rest."""
    import json

    from saesteer.sweep.store import read_manifest, read_manifest_lenient

    assert read_manifest(tmp_path) is None and read_manifest_lenient(tmp_path) == {}
    (tmp_path / "manifest.json").write_text(json.dumps({"model": "m"}), encoding="utf-8")
    assert read_manifest_lenient(tmp_path) == {"model": "m"}
    with pytest.raises(SaesteerError, match="not a saesteer sweep manifest"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text('{"format": "saesteer-sweep", "model": "m"}', encoding="utf-8")
    assert read_manifest(tmp_path) == read_manifest_lenient(tmp_path) == {"format": "saesteer-sweep", "model": "m"}
    (tmp_path / "manifest.json").write_text("[1, 2", encoding="utf-8")
    assert read_manifest_lenient(tmp_path) == {}
    with pytest.raises(SaesteerError, match="not a readable sweep manifest"):
        read_manifest(tmp_path)
