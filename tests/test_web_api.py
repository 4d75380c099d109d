"""The web app's JSON API on a live server (127.0.0.1, a free port) over the tiny model and SAE: every
endpoint, validation, the model queue under a burst, time limits, the OpenAPI schema against
docs/openapi.json, and ``saesteer serve``'s defaults."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from _web_helpers import (HOOK, NEURONPEDIA_ID, SPECIAL, LiveServer, row_score, tiny_facts, web_sae,  # noqa: E402
                          write_results_folder)

REPO = Path(__file__).resolve().parents[1]
PROMPT = "Happiness is"


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def steerer(tiny_loaded):
    from saesteer.steerer import Steerer

    return Steerer(tiny_loaded, web_sae())


@pytest.fixture(scope="module")
def facts(tiny_loaded, steerer):
    return tiny_facts(tiny_loaded, steerer.sae)


@pytest.fixture(scope="module")
def folders(tmp_path_factory, facts):
    root = tmp_path_factory.mktemp("results")
    a = write_results_folder(root / "sweep-a", facts=facts)
    b = write_results_folder(root / "sweep-b", features=range(5, 12), values=(20.0,), prompt="Once upon a time",
                             metrics=False, extra_lines='{"feature": 99, "value": 20, "te')  # a cut last line
    return a, b


@pytest.fixture(scope="module")
def server(steerer, folders):
    from saesteer.web.app import create_app

    with LiveServer(create_app(steerer, folders, queue_size=8, request_timeout=30)) as srv:
        yield srv


@pytest.fixture()
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def gen(client, **body):
    body.setdefault("prompt", PROMPT)
    body.setdefault("max_new_tokens", 8)
    return client.post("/api/generate", json=body)


def assert_422(resp, loc_part, text):
    assert resp.status_code == 422, resp.text
    detail = resp.json()["detail"]
    assert isinstance(detail, list) and detail
    assert any(loc_part in [str(x) for x in d["loc"]] and text.lower() in d["msg"].lower() for d in detail), detail


# --------------------------------------------------------------------------- page
def test_page_static_files_and_headers(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'src="static/app.js"' in page.text and 'href="static/style.css"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    js = client.get("/static/app.js")
    assert js.status_code == 200 and "text/javascript" in js.headers["content-type"] and "api/generate" in js.text
    assert client.get("/static/style.css").status_code == 200
    # only the fixed file names: nothing that looks like a path is read
    for bad in ("/static/index.html", "/static/..%2F..%2Fpyproject.toml", "/static/%2E%2E/app.py", "/static/x"):
        assert client.get(bad).status_code == 404, bad
    assert "http" not in "".join(l for l in page.text.splitlines() if "src=" in l or "href=" in l
                                 if "neuronpedia" not in l)  # no CDN


def test_info(client, steerer):
    info = client.get("/api/info").json()
    assert info["model"] == steerer.lm.name and info["hook"] == HOOK and info["d_sae"] == 256
    assert info["neuronpedia_id"] == NEURONPEDIA_ID
    assert info["limits"]["max_positions"] == 128 and info["limits"]["queue_size"] == 8
    a, b = info["results"]
    assert (a["id"], a["label"], a["rows"], a["features"]) == (0, "sweep-a", 80, 40)
    assert a["metrics"][:2] == ["steer", "score"] and "fluency_drop" in a["metrics"]  # ranked as saesteer top
    assert a["unsteered"] == " the unsteered text" and a["prompt"] is None
    assert (b["label"], b["rows"], b["metrics"], b["prompt"]) == ("sweep-b", 7, ["steer", "clamp"], "Once upon a time")


# --------------------------------------------------------------------------- generate
def test_generate_equals_the_python_api(client, steerer):
    r = gen(client, clamps=[{"feature": 3, "value": 20}])
    assert r.status_code == 200, r.text
    out = r.json()
    base = steerer.generate(PROMPT, max_new_tokens=8)
    steered = steerer.generate(PROMPT, clamps={3: 20.0}, max_new_tokens=8)
    assert out["prompt_tokens"] == [50256, 39, 42661, 318]
    assert out["unsteered"] == {"tokens": base.tokens, "text": base.text}
    assert out["steered"] == {"tokens": steered.tokens, "text": steered.text}
    assert out["steered"]["tokens"] != out["unsteered"]["tokens"]
    assert out["clamps"] == [{"feature": 3, "sae": 0, "value": 20.0}] and out["mode"] == "delta"


@pytest.mark.parametrize("settings", [
    {"temperature": 1.0, "top_p": 0.9, "seed": 5},
    {"mode": "reconstruct"},
    {"mode": "reconstruct", "temperature": 0.7, "seed": 1},
])
def test_generate_sampling_and_reconstruct_equal_separate_calls(client, steerer, settings):
    out = gen(client, clamps=[{"feature": 3, "value": 20}, {"feature": 9, "value": -5}], **settings).json()
    kw = dict(max_new_tokens=8, **settings)
    assert out["unsteered"]["tokens"] == steerer.generate(PROMPT, **{k: v for k, v in kw.items() if k != "mode"}).tokens
    assert out["steered"]["tokens"] == steerer.generate(PROMPT, clamps={3: 20.0, 9: -5.0}, **kw).tokens
    again = gen(client, clamps=[{"feature": 3, "value": 20}, {"feature": 9, "value": -5}], **settings).json()
    assert again["steered"] == out["steered"]


def test_generate_from_bos_alone_and_without_clamps(client, steerer):
    for prompt in (None, ""):
        out = gen(client, prompt=prompt, max_new_tokens=5).json()
        assert out["prompt_tokens"] == [50256]
        assert out["steered"] == out["unsteered"]
        assert out["unsteered"]["tokens"] == steerer.generate(None, max_new_tokens=5).tokens


def test_generate_streams_ndjson(client):
    body = {"prompt": PROMPT, "clamps": [{"feature": 3, "value": 20}], "max_new_tokens": 6}
    plain = client.post("/api/generate", json=body).json()
    with client.stream("POST", "/api/generate", json={**body, "stream": True}) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("application/x-ndjson")
        events = [json.loads(line) for line in resp.iter_lines() if line.strip()]
    assert events[0]["event"] == "queued" and events[0]["position"] >= 0
    steps = [e for e in events if e["event"] == "step"]
    assert [e["step"] for e in steps] == list(range(6))
    for name in ("unsteered", "steered"):
        counts = [e[name]["n_tokens"] for e in steps]
        assert counts == list(range(1, 7))  # one more token per step: they arrive as generated
        assert steps[-1][name]["text"] == plain[name]["text"]
    assert events[-1]["event"] == "result"
    result = events[-1]["result"]
    assert {k: result[k] for k in ("unsteered", "steered", "prompt_tokens")} == \
        {k: plain[k] for k in ("unsteered", "steered", "prompt_tokens")}


# --------------------------------------------------------------------------- validation
BAD = [
    ({"clamps": [{"feature": 256, "value": 1}]}, "feature", "unknown feature 256"),
    ({"clamps": [{"feature": -1, "value": 1}]}, "feature", "greater than or equal to 0"),
    ({"clamps": [{"feature": "3", "value": 1}]}, "feature", "valid integer"),
    ({"clamps": [{"feature": 2.5, "value": 1}]}, "feature", "valid integer"),
    ({"clamps": [{"feature": 3}]}, "value", "field required"),
    ({"clamps": [{"feature": 3, "value": 1e300}]}, "value", "less than or equal to 100000"),
    ({"clamps": [{"feature": 3, "value": 1}, {"feature": 3, "value": 2}]}, "feature", "clamped twice"),
    ({"clamps": [{"feature": i, "value": 1} for i in range(17)]}, "clamps", "at most 16"),
    ({"prompt": "x" * 4001}, "prompt", "at most 4000 characters"),
    ({"prompt": " 1" * 600}, "prompt", "at most 512 are allowed"),
    ({"prompt": " lighthouse" * 100, "max_new_tokens": 40}, "max_new_tokens", "exceed the model's 128 positions"),
    ({"max_new_tokens": 257}, "max_new_tokens", "less than or equal to 256"),
    ({"max_new_tokens": -1}, "max_new_tokens", "greater than or equal to 0"),
    ({"mode": "multiply"}, "mode", "'delta', 'reconstruct' or 'add'"),
    ({"temperature": -1}, "temperature", "greater than or equal to 0"),
    ({"top_p": 0}, "top_p", "greater than 0"),
    ({"seed": -4}, "seed", "greater than or equal to 0"),
    ({"promt": "typo"}, "promt", "extra inputs are not permitted"),
]


@pytest.mark.parametrize("body, loc, text", BAD, ids=[f"{b[1]}-{i}" for i, b in enumerate(BAD)])
def test_generate_rejects_bad_fields(client, body, loc, text):
    assert_422(gen(client, **body), loc, text)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_values_are_rejected(client, literal):
    raw = '{"prompt": "a", "clamps": [{"feature": 3, "value": %s}]}' % literal
    resp = client.post("/api/generate", content=raw, headers={"content-type": "application/json"})
    assert_422(resp, "value", "finite number")
    raw = '{"feature": 3, "values": [1, %s]}' % literal
    resp = client.post("/api/compare", content=raw, headers={"content-type": "application/json"})
    assert_422(resp, "values", "finite number")


@pytest.mark.parametrize("body", [b"\x13[\xff", b"{not json", b""])
def test_a_body_that_is_not_json_is_a_422(client, body):
    resp = client.post("/api/generate", content=body, headers={"Content-Type": "application/json"})
    assert resp.status_code == 422 and "Traceback" not in resp.text, resp.text
    assert resp.json()["detail"][0]["loc"][0] == "body"


def test_oversized_body_and_foreign_host(client, server):
    big = client.post("/api/generate", content=b'{"prompt": "' + b"a" * 70_000 + b'"}',
                      headers={"content-type": "application/json"})
    assert big.status_code == 413
    foreign = client.get("/api/info", headers={"host": "attacker.example"})
    assert foreign.status_code == 400  # DNS rebinding: only this machine's names
    assert client.get("/api/info", headers={"host": f"localhost:{server.port}"}).status_code == 200


# --------------------------------------------------------------------------- compare
def test_compare_is_a_strength_curve(client, steerer, facts):
    body = {"prompt": PROMPT, "feature": 7, "values": [0, 20, 60], "max_new_tokens": 6}
    out = client.post("/api/compare", json=body).json()
    assert [p["value"] for p in out["points"]] == [0.0, 20.0, 60.0]
    base = steerer.generate(PROMPT, max_new_tokens=6)
    assert out["unsteered"]["tokens"] == base.tokens and out["unsteered"]["value"] is None
    assert out["unsteered"]["kl"] == 0.0
    for p in out["points"]:
        g = steerer.generate(PROMPT, clamps={7: p["value"]}, max_new_tokens=6)
        assert p["tokens"] == g.tokens and p["text"] == g.text
        assert p["differs"] == (g.tokens != base.tokens)
        assert p["kl"] >= 0 and p["fluency"] is not None and p["score"] is not None  # facts from sweep-a
    assert out["points"][2]["kl"] > 0
    assert out["firing_words"] == sorted(facts.targets(7).words)
    assert len(out["lens_tokens"]) == len(facts.targets(7).lens_ids)
    assert_422(client.post("/api/compare", json={**body, "feature": 256}), "feature", "unknown feature")
    assert_422(client.post("/api/compare", json={**body, "values": []}), "values", "at least 1")
    assert_422(client.post("/api/compare", json={**body, "values": list(range(13))}), "values", "at most 12")


# --------------------------------------------------------------------------- feature
def test_feature_page_data(client, steerer, facts, folders):
    import torch

    from saesteer.sweep.rank import annotate_folder

    from saesteer.models.hook_sites import unembed_directions

    out = client.get("/api/feature/7").json()
    assert out["neuronpedia_url"] == f"https://www.neuronpedia.org/{NEURONPEDIA_ID}/7"
    logits = unembed_directions(steerer.model, steerer.sae.W_dec[7:8])[0]
    assert [t["id"] for t in out["lens_top"][:3]] == logits.topk(3).indices.tolist()
    assert [t["id"] for t in out["lens_bottom"][:3]] == (-logits).topk(3).indices.tolist()
    assert out["lens_top"][0]["text"] == steerer.lm.decode([out["lens_top"][0]["id"]])
    assert out["decoder_norm"] == pytest.approx(float(torch.linalg.norm(steerer.sae.W_dec[7])))
    assert out["facts_from"] == "sweep-a" and out["firing_words"] == facts[7].firing_words[:12]
    assert out["max_activation"] == pytest.approx(facts[7].max_activation)
    active = int(facts.max_activation.argmax())
    card = client.get(f"/api/feature/{active}").json()
    assert card["max_activation"] == pytest.approx(facts[active].max_activation) and card["max_activation"] > 0
    assert card["firing_words"] == facts[active].firing_words[:12]
    assert [t["id"] for t in card["firing_tokens"]] == [t.id for t in facts[active].firing_tokens][:12]
    assert 0 < len(card["contexts"]) <= 8 and all(c["token"] for c in card["contexts"])
    assert card["contexts"][0]["activation"] == pytest.approx(facts[active].max_activation)
    (a,) = [s for s in out["sweeps"] if s["label"] == "sweep-a"]
    (b,) = [s for s in out["sweeps"] if s["label"] == "sweep-b"]
    mine = sorted((r for r in annotate_folder(folders[0])[0] if r["feature"] == 7), key=lambda r: (-r["steer"], -r["score"]))
    assert [(r["value"], r["metrics"]["steer"]) for r in a["rows"]] == [(r["value"], r["steer"]) for r in mine]
    assert all(SPECIAL[7] in r["text"] for r in a["rows"] + b["rows"])
    assert out["suggested_value"] == a["rows"][0]["value"]
    assert [s["label"] for s in client.get("/api/feature/100").json()["sweeps"]] == []
    assert_422(client.get("/api/feature/256"), "feature", "unknown feature 256")


def test_feature_page_histogram_of_reference_activations(client, steerer, facts):
    """Issue 18: the activation histogram counts the SAE's own activations on the facts' reference text."""
    from saesteer.evaluation.activations import hook_activations

    active = int(facts.max_activation.argmax())
    h = client.get(f"/api/feature/{active}").json()["histogram"]
    ref = facts.tensors["reference_tokens"]
    acts = hook_activations(steerer.model, HOOK, ref)[:, 1:].reshape(-1, steerer.sae.d_in)
    col = steerer.sae.encode(acts)[:, active]
    assert h["tokens"] == col.numel() and h["active"] == int((col > 0).sum()) > 0
    assert sum(h["counts"]) == h["active"] and h["share"] == pytest.approx(h["active"] / h["tokens"])
    assert h["max"] == pytest.approx(float(col.max()), rel=1e-5) and h["edges"][-1] == pytest.approx(h["max"])
    assert len(h["edges"]) == len(h["counts"]) + 1
    assert h["max"] == pytest.approx(facts[active].max_activation, rel=1e-4)


def test_search_features_by_meaning(client, facts):
    """Issue 18: firing words, lens tokens and steered texts at once, ranked; rows carry their meanings."""
    hits = client.get("/api/features", params={"q": "lighthouse", "limit": 200}).json()
    feats = {h["feature"]: h for h in hits["features"]}
    assert {7, 19} <= set(feats) and hits["total"] == len(hits["features"])
    for f in (7, 19):
        assert feats[f]["texts_matching"] == feats[f]["texts"] == 2 and "lighthouse" in feats[f]["best_text"]
    for h in hits["features"]:
        assert h["firing_words"] == facts[h["feature"]].firing_words
        assert h["in_words"] == any(w.lower().startswith("lighthouse") for w in h["firing_words"])
        assert h["score"] == pytest.approx(3 * h["in_words"] + 2 * h["in_lens"] + h["texts_matching"] / h["texts"])
    assert [h["score"] for h in hits["features"]] == sorted((h["score"] for h in hits["features"]), reverse=True)
    word = next(w for f in range(40) for w in facts[f].firing_words if w.isalpha())
    by_word = client.get("/api/features", params={"q": word}).json()["features"]
    assert by_word and by_word[0]["in_words"] and by_word[0]["score"] >= 3
    lens = facts[5].lens_top[0].text.strip()
    if lens.isalpha():
        assert any(h["feature"] == 5 and h["in_lens"] for h in
                   client.get("/api/features", params={"q": lens, "limit": 200}).json()["features"])
    page = search(client, limit=5)
    for r in page["rows"]:
        m = page["meanings"][str(r["feature"])]
        assert m["firing_words"] == facts[r["feature"]].firing_words
        assert m["lens_tokens"] == [t.text for t in facts[r["feature"]].lens_top][:8]
    assert client.get("/api/features", params={"q": "zzzqqq"}).json()["total"] == 0
    assert_422(client.get("/api/features", params={"q": ""}), "q", "at least 1")
    assert_422(client.get("/api/features", params={"q": "a", "results": 9}), "results", "unknown results folder")
    assert client.get("/api/feature/-1").status_code == 422
    assert client.get("/api/feature/abc").status_code == 422


def test_feature_without_neuronpedia_or_facts(tiny_loaded, tiny_sae):
    from conftest import make_sae

    from saesteer.steerer import Steerer
    from saesteer.web.app import create_app

    st = Steerer(tiny_loaded, make_sae(seed=5))  # not an OpenAI v5 SAE, no facts for it
    with LiveServer(create_app(st, [])) as srv:
        out = httpx.get(f"{srv.url}/api/feature/3", timeout=30).json()
        assert out["neuronpedia_url"] is None and out["facts_from"] is None and out["sweeps"] == []
        assert len(out["lens_top"]) == 12 and out["firing_words"] == [] and out["suggested_value"] is None
        assert httpx.get(f"{srv.url}/api/search", timeout=30).status_code == 422  # no folders


# --------------------------------------------------------------------------- search
def search(client, **params):
    resp = client.get("/api/search", params=params)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_search_sorts_and_paginates(client):
    full = search(client, sort="score", limit=200)
    assert full["total"] == 80 and len(full["rows"]) == 80
    scores = [r["metrics"]["score"] for r in full["rows"]]
    assert scores == sorted(scores, reverse=True)
    asc = search(client, sort="score", order="asc", limit=200)
    assert [r["metrics"]["score"] for r in asc["rows"]] == sorted(scores)
    pages = [search(client, sort="score", offset=o, limit=25) for o in (0, 25, 50, 75)]
    assert [len(p["rows"]) for p in pages] == [25, 25, 25, 5]
    assert [(r["feature"], r["value"]) for p in pages for r in p["rows"]] == \
        [(r["feature"], r["value"]) for r in full["rows"]]
    by_drop = search(client, sort="fluency_drop", order="desc", limit=200)["rows"]
    drops = [r["metrics"]["fluency_drop"] for r in by_drop]
    assert drops[-8:] == [None] * 8  # missing values go last
    assert drops[:-8] == sorted(drops[:-8], reverse=True)
    feats = search(client, sort="feature", order="asc", limit=5)["rows"]
    assert [(r["feature"], r["value"]) for r in feats] == [(0, 10.0), (0, 40.0), (1, 10.0), (1, 40.0), (2, 10.0)]
    best = search(client, sort="score", per_feature=True, limit=200)
    assert best["total"] == 40 and len({r["feature"] for r in best["rows"]}) == 40
    for r in best["rows"]:
        assert r["metrics"]["score"] == max(row_score(r["feature"], v) for v in (10, 40))
    only = search(client, feature=12, limit=10)
    assert {r["feature"] for r in only["rows"]} == {12} and only["total"] == 2


def test_search_full_text(client):
    hits = search(client, q="lighthouse", limit=50)
    assert hits["total"] == 4 and {r["feature"] for r in hits["rows"]} == {7, 19}
    assert search(client, q="LIGHTHOUSE keeper")["total"] == 2  # all words, any case
    assert search(client, q="lightho")["total"] == 4  # word prefixes
    assert search(client, q='"lighthouse keeper"')["total"] == 2
    assert search(client, q='"keeper lighthouse"')["total"] == 0
    assert search(client, q="ighthouse")["total"] == 0  # not inside a word
    assert search(client, q="lighthouse", per_feature=True)["total"] == 2
    other = search(client, results=1, q="lighthouse", sort="feature")
    assert other["label"] == "sweep-b" and other["total"] == 1 and other["rows"][0]["feature"] == 7
    assert search(client, results=1, sort="feature", limit=100)["total"] == 7  # the cut last line is skipped


@pytest.mark.parametrize("params, loc, text", [
    ({"sort": "nope"}, "sort", "unknown sort key 'nope'"),
    ({"results": 2}, "results", "unknown results folder 2"),
    ({"results": "../../etc"}, "results", "valid integer"),
    ({"limit": 0}, "limit", "greater than or equal to 1"),
    ({"limit": 201}, "limit", "less than or equal to 200"),
    ({"offset": -1}, "offset", "greater than or equal to 0"),
    ({"order": "up"}, "order", "'asc' or 'desc'"),
    ({"q": "x" * 201}, "q", "at most 200 characters"),
    ({"path": "/etc/passwd"}, "path", "extra inputs are not permitted"),
])
def test_search_rejects_bad_parameters(client, params, loc, text):
    assert_422(client.get("/api/search", params=params), loc, text)


def test_results_folder_follows_a_running_sweep(tmp_path, monkeypatch):
    from saesteer.web import results_index
    from saesteer.web.results_index import ResultsIndex

    monkeypatch.setattr(results_index, "RELOAD_INTERVAL_S", 0.0)
    folder = write_results_folder(tmp_path / "growing", features=range(3), values=(5.0,))
    index = ResultsIndex([folder])
    assert index.get(0).search(sort="feature")[0] == 3
    log = folder / "results.jsonl"
    line = json.dumps({"feature": 3, "value": 5.0, "text": "a new zebra", "score": 9.5, "kl": 0.25})
    with open(log, "a", encoding="utf-8") as f:
        f.write(line[:20])  # a line being written: not read yet
    assert index.get(0).search(q="zebra")[0] == 0 and len(index.get(0)) == 3
    with open(log, "a", encoding="utf-8") as f:
        f.write(line[20:] + "\n")
    total, rows = index.get(0).search(q="zebra")
    assert total == 1 and rows[0].feature == 3 and rows[0].metrics["score"] == 9.5 and rows[0].metrics["kl"] == 0.25
    assert index.get(0).row(0).metrics["kl"] is None  # a metric new in later lines: missing for earlier rows
    assert index.get(0).search(sort="score")[1][0].feature == 3  # sort orders are rebuilt
    tmp = folder / "results.new"
    tmp.write_text(json.dumps({"feature": 8, "value": 1.0, "text": "rewritten", "score": 1.0}) + "\n")
    tmp.replace(log)  # the sweep rewrote its log (repair): read again whole
    folder_now = index.get(0)
    assert len(folder_now) == 1 and folder_now.search(sort="feature")[1][0].text == "rewritten"
    assert folder_now.metrics == ["score"]
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "prompt": "changed"}))
    assert index.get(0).summary()["prompt"] == "changed"


def test_a_real_sweep_folder(tmp_path, steerer, facts, monkeypatch):
    """A folder written by ``saesteer.sweep`` itself (relative values: ``clamp`` is the latent value)."""
    from saesteer.sweep import Sweep
    from saesteer.sweep.rank import top
    from saesteer.web.app import create_app

    monkeypatch.setenv("SAESTEER_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "real-sweep"
    results = Sweep(steerer, features="0:6", values=[0.5, 2], relative=True, max_new_tokens=6, facts=facts,
                    out=out, prompt=PROMPT).results()
    assert len(results) == 12
    with LiveServer(create_app(steerer, [out])) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        (info,) = c.get("/api/info").json()["results"]
        assert (info["label"], info["rows"], info["features"], info["prompt"]) == ("real-sweep", 12, 6, PROMPT)
        assert info["metrics"][:2] == ["steer", "score"]
        assert {"clamp", "fire_hits", "lens_hits", "repetition", "word_rank"} <= set(info["metrics"])
        assert info["unsteered"] == steerer.generate(PROMPT, max_new_tokens=6).text
        page = c.get("/api/search", params={"sort": "feature", "order": "asc", "limit": 100}).json()
        assert [(r["feature"], r["value"], r["text"]) for r in page["rows"]] == \
            sorted((r.feature, r.value, r.text) for r in results)
        best = top(out, n=1)[0]  # the browser's default order is saesteer top's
        first = c.get("/api/search", params={"limit": 1}).json()["rows"][0]
        assert (first["feature"], first["value"], first["metrics"]["steer"]) == (best.feature, best.value, best.steer)
        card = c.get(f"/api/feature/{best.feature}").json()
        assert card["facts_from"] == "real-sweep"  # the sweep saved its facts in the folder
        mine = top(out, n=None, all_values=True)
        mine = [r for r in mine if r.feature == best.feature]
        assert card["suggested_value"] == pytest.approx([r for r in results if r.feature == best.feature
                                                         and r.value == best.value][0].clamp)
        assert [r["text"] for r in card["sweeps"][0]["rows"]] == [r.text for r in mine]


def test_several_saes_served_together(steerer):
    """Issue 18: two SAEs of one model at different hooks; clamps of both apply in one generation."""
    from conftest import make_sae

    from saesteer.engine import GenerationConfig, generate_ids
    from saesteer.steerer import Steerer
    from saesteer.steering.clamp import FeatureClamp
    from saesteer.steering.hooks import make_clamp
    from saesteer.web.app import create_app

    other = Steerer(steerer.lm, make_sae(d_sae=128, hook_name="blocks.2.hook_resid_post", seed=2))
    app = create_app([steerer, other], [], queue_size=4, request_timeout=60)
    with LiveServer(app) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        info = c.get("/api/info").json()
        assert [(s["id"], s["hook"], s["d_sae"]) for s in info["saes"]] == [(0, HOOK, 256),
                                                                           (1, "blocks.2.hook_resid_post", 128)]
        one = gen(c, clamps=[{"feature": 5, "sae": 1, "value": 30}]).json()
        assert one["steered"]["tokens"] == other.generate(PROMPT, clamps={5: 30.0}, max_new_tokens=8).tokens
        assert one["clamps"] == [{"feature": 5, "sae": 1, "value": 30.0}]
        both = gen(c, clamps=[{"feature": 3, "value": 20}, {"feature": 5, "sae": 1, "value": 30}]).json()
        ids = [steerer.tokens(PROMPT)]
        edits = [make_clamp(steerer.model, steerer.sae, [FeatureClamp(3, 20.0)]),
                 make_clamp(steerer.model, other.sae, [FeatureClamp(5, 30.0)])]
        (ref,) = generate_ids(steerer.model, ids, GenerationConfig(max_new_tokens=8), edits=edits,
                              eos_token_id=steerer.lm.eos_token_id, pad_token_id=steerer.lm.pad_token_id,
                              engine="reference")
        assert both["steered"]["tokens"] == list(ref)
        assert both["unsteered"]["tokens"] == steerer.generate(PROMPT, max_new_tokens=8).tokens
        assert both["steered"]["tokens"] != one["steered"]["tokens"]
        assert_422(gen(c, clamps=[{"feature": 200, "sae": 1, "value": 1}]), "feature", "features 0..127")
        assert_422(gen(c, clamps=[{"feature": 1, "sae": 2, "value": 1}]), "sae", "unknown SAE 2")
        page = c.get("/api/feature/5", params={"sae": 1}).json()
        assert (page["sae"], page["hook"], page["d_sae"]) == (1, "blocks.2.hook_resid_post", 128)
        assert_422(c.get("/api/feature/200", params={"sae": 1}), "feature", "unknown feature 200")
        curve = c.post("/api/compare", json={"feature": 5, "sae": 1, "values": [30], "prompt": PROMPT,
                                             "max_new_tokens": 6}).json()
        assert curve["points"][0]["tokens"] == other.generate(PROMPT, clamps={5: 30.0}, max_new_tokens=6).tokens


# --------------------------------------------------------------------------- queue, burst, time limits
def block_worker(app):
    """Occupy the model worker until the returned event is set."""
    gate = threading.Event()
    app.state.worker.submit(lambda job: gate.wait(20))
    deadline = time.monotonic() + 10
    while not app.state.worker.busy:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return gate


def test_full_queue_answers_503_with_retry_after(steerer):
    from saesteer.web.app import create_app

    app = create_app(steerer, [], queue_size=2, request_timeout=30)
    with LiveServer(app) as srv:
        gate = block_worker(app)
        prompts = [f"Request number {i}" for i in range(10)]

        def call(p):
            with httpx.Client(base_url=srv.url, timeout=30) as c:
                return c.post("/api/generate", json={"prompt": p, "clamps": [{"feature": 3, "value": 20}],
                                                     "max_new_tokens": 4})

        with ThreadPoolExecutor(10) as pool:
            futures = [pool.submit(call, p) for p in prompts]
            deadline = time.monotonic() + 20
            while sum(f.done() for f in futures) < 8:  # the refused ones are answered at once
                assert time.monotonic() < deadline, "refusals did not come back while the worker was busy"
                time.sleep(0.02)
            assert app.state.worker.waiting == 2
            gate.set()
            answers = [f.result() for f in futures]
        codes = sorted(a.status_code for a in answers)
        assert codes == [200] * 2 + [503] * 8
        for prompt, a in zip(prompts, answers):
            if a.status_code == 503:
                assert int(a.headers["Retry-After"]) >= 1 and "queue is full" in a.json()["detail"]
            else:
                assert a.json()["prompt"] == prompt
                assert a.json()["steered"]["tokens"] == steerer.generate(prompt, clamps={3: 20.0},
                                                                          max_new_tokens=4).tokens


def test_burst_of_concurrent_requests_all_answered(steerer):
    from saesteer.web.app import create_app

    app = create_app(steerer, [], queue_size=24, request_timeout=60)
    with LiveServer(app) as srv:
        jobs = [(f"Burst prompt {i}", i % 2 == 0, 5 + i % 4) for i in range(20)]

        def call(job):
            prompt, stream, n = job
            body = {"prompt": prompt, "clamps": [{"feature": 3 + n, "value": 20}], "max_new_tokens": n}
            with httpx.Client(base_url=srv.url, timeout=60) as c:
                if not stream:
                    r = c.post("/api/generate", json=body)
                    return r.status_code, r.json()
                with c.stream("POST", "/api/generate", json={**body, "stream": True}) as r:
                    events = [json.loads(line) for line in r.iter_lines() if line.strip()]
                    return r.status_code, events[-1]["result"]

        before = app.state.worker.completed
        with ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(call, jobs))
        assert [code for code, _ in answers] == [200] * 20
        for (prompt, _, n), (_, out) in zip(jobs, answers):  # each got its own answer: none lost or mixed up
            assert out["prompt"] == prompt and out["max_new_tokens"] == n
            assert out["steered"]["tokens"] == steerer.generate(prompt, clamps={3 + n: 20.0}, max_new_tokens=n).tokens
        assert app.state.worker.completed - before == 20
        assert app.state.worker.waiting == 0 and not app.state.worker.busy


def test_time_limit_answers_504(steerer):
    from saesteer.web.app import create_app

    app = create_app(steerer, [], queue_size=4, request_timeout=0.5)
    with LiveServer(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        gate = block_worker(app)
        t0 = time.monotonic()
        r = c.post("/api/generate", json={"prompt": "late", "max_new_tokens": 3})
        assert r.status_code == 504 and "time limit of 0.5 s" in r.json()["detail"]
        assert time.monotonic() - t0 < 5
        with c.stream("POST", "/api/generate", json={"prompt": "late", "max_new_tokens": 3, "stream": True}) as s:
            events = [json.loads(line) for line in s.iter_lines() if line.strip()]
        assert events[0]["event"] == "queued" and events[0]["position"] == 1
        assert events[-1]["event"] == "error" and events[-1]["status"] == 504
        assert app.state.worker.waiting == 0  # the timed-out requests left the queue
        gate.set()
        assert app.state.worker.submit(lambda job: "still working", timeout=10).future.result(10) == "still working"


def test_client_going_away_frees_its_place(steerer):
    from saesteer.web.app import create_app

    app = create_app(steerer, [], queue_size=1, request_timeout=30)
    with LiveServer(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        gate = block_worker(app)
        with c.stream("POST", "/api/generate", json={"prompt": "gone", "stream": True}) as s:
            lines = s.iter_lines()  # (held: dropping the iterator would close the connection)
            first = json.loads(next(lines))
            assert first == {"event": "queued", "position": 1} and app.state.worker.waiting == 1
            assert gen(c).status_code == 503  # the queue (size 1) is full
        deadline = time.monotonic() + 10
        while app.state.worker.waiting:  # the stream was closed: its job is cancelled
            assert time.monotonic() < deadline, "a closed stream kept its place in the queue"
            time.sleep(0.02)
        gate.set()
        assert gen(c).status_code == 200


def raw_post(port: int, path: str, body: dict):
    """A socket that sent a whole POST request and waits (closing it is a client giving up)."""
    import socket

    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def test_dropped_plain_requests_lose_their_work(steerer):
    """Issue 15.7: clients that give up on a non-streamed request free their place and their compute."""
    from saesteer.web.app import create_app

    app = create_app(steerer, [], queue_size=3, request_timeout=60)
    worker = app.state.worker
    with LiveServer(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        gate = block_worker(app)
        socks = [raw_post(srv.port, "/api/generate", {"prompt": f"gone {i}", "max_new_tokens": 8}) for i in range(3)]
        deadline = time.monotonic() + 10
        while worker.waiting < 3:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert gen(c).status_code == 503  # the queue is full of them
        done = worker.completed
        for s in socks:
            s.close()
        while worker.waiting:  # still blocked: only the disconnects can empty the queue
            assert time.monotonic() < deadline, "dropped requests kept their place in the queue"
            time.sleep(0.02)
        gate.set()
        assert gen(c).status_code == 200
        assert worker.completed - done == 2  # the blocker and this one: the dropped jobs never ran

        steps = []

        def endless(req, clamps, check, emit=None):  # a generation that only stops when told to
            while True:
                check()
                steps.append(1)
                time.sleep(0.01)

        app.state.playground.generate = endless
        running = raw_post(srv.port, "/api/generate", {"prompt": "long", "max_new_tokens": 8})
        while not steps:
            assert time.monotonic() < deadline + 10
            time.sleep(0.01)
        running.close()
        while worker.busy:  # the running job stops at its next step
            assert time.monotonic() < deadline + 20, "a dropped request kept the model busy"
            time.sleep(0.02)


def test_worker_order_limits_and_running_deadline():
    from saesteer.web.worker import JobTimeout, ModelWorker, QueueFull

    w = ModelWorker(queue_size=3, timeout=5)
    try:
        gate = threading.Event()
        order = []
        w.submit(lambda job: gate.wait(5))
        while not w.busy:
            time.sleep(0.01)
        jobs = [w.submit(lambda job, i=i: order.append(i) or i) for i in range(3)]
        with pytest.raises(QueueFull) as full:
            w.submit(lambda job: None)
        assert full.value.retry_after >= 1 and full.value.waiting == 3
        jobs[1].cancel()  # a cancelled job frees its place at once
        extra = w.submit(lambda job: order.append(9) or 9)
        assert w.position(extra) == 3
        gate.set()
        assert [j.future.result(5) for j in (jobs[0], jobs[2], extra)] == [0, 2, 9]
        assert order == [0, 2, 9] and jobs[1].future.cancelled()

        def spin(job):  # a running job stops at its next check once past its deadline
            while True:
                job.check()
                time.sleep(0.01)

        slow = w.submit(spin, timeout=0.3)
        with pytest.raises(JobTimeout, match="time limit of 0.3 s"):
            slow.future.result(5)
        assert w.submit(lambda job: "after").future.result(5) == "after"
    finally:
        w.close()


# --------------------------------------------------------------------------- schema and CLI
def test_openapi_schema_matches_docs():
    from saesteer.web.app import openapi_schema

    schema = openapi_schema()
    saved = json.loads((REPO / "docs" / "openapi.json").read_text(encoding="utf-8"))
    assert schema == saved, "the API changed: run  python -m saesteer.web.app > docs/openapi.json"
    assert set(schema["paths"]) == {"/api/info", "/api/generate", "/api/compare", "/api/feature/{feature}",
                                    "/api/features",
                                    "/api/search"}
    props = schema["components"]["schemas"]["GenerateRequest"]["properties"]
    for name in ("prompt", "clamps", "mode", "max_new_tokens", "temperature", "top_p", "seed"):
        assert props[name].get("description"), name
    refs = set()

    def walk(x):
        if isinstance(x, dict):
            if "$ref" in x:
                refs.add(x["$ref"].rsplit("/", 1)[-1])
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(schema)
    assert refs <= set(schema["components"]["schemas"])
    responses = schema["paths"]["/api/generate"]["post"]["responses"]
    assert {"200", "422", "503", "504"} <= set(responses)
    assert "application/x-ndjson" in responses["200"]["content"]


def test_serve_binds_to_loopback_by_default(monkeypatch, capsys, steerer, folders):
    from saesteer.cli import serve_commands
    from saesteer.cli.main import run

    calls, built = [], []
    monkeypatch.setattr(serve_commands, "serve_app", lambda app, sock: calls.append((app, sock.getsockname())))
    monkeypatch.setattr(serve_commands, "build_steerer", lambda *a: built.append(a) or steerer)
    assert serve_commands.serve.params[[p.name for p in serve_commands.serve.params].index("port")].default == 8000
    base = ["serve", "--model", "some/model", "--sae", "some.pt", "--hook", HOOK, "--port", "0"]
    assert run([*base, "--results", str(folders[0]), "--results", str(folders[1])]) == 0
    app, (host, port) = calls[-1]
    assert built[-1] == ("some/model", "some.pt", HOOK, "cpu")
    assert host == "127.0.0.1" and 0 < port < 65536
    assert len(app.state.results) == 2 and app.state.worker.queue_size == 8
    assert f"http://127.0.0.1:{port}/" in capsys.readouterr().err
    app.state.worker.close()
    assert run([*base, "--host", "0.0.0.0", "--queue-size", "3", "--timeout", "9"]) == 0
    app, (host, port) = calls[-1]
    assert host == "0.0.0.0" and 0 < port < 65536  # --port 0: a free port, printed
    assert app.state.worker.queue_size == 3 and app.state.worker.timeout == 9.0
    err = capsys.readouterr().err
    assert "anyone who can reach this address" in err and f"http://0.0.0.0:{port}/" in err
    assert "accepted Host headers: 127.0.0.1, localhost" in err and "--allow-host" in err
    app.state.worker.close()


def test_serve_on_all_addresses_still_checks_the_host(monkeypatch, capsys, steerer):
    """Issue 15.8: --host 0.0.0.0 accepts loopback names and those given with --allow-host, nothing else."""
    from saesteer.cli import serve_commands
    from saesteer.cli.main import run

    apps = []
    monkeypatch.setattr(serve_commands, "serve_app", lambda app, sock: apps.append(app))
    monkeypatch.setattr(serve_commands, "build_steerer", lambda *a: steerer)
    assert run(["serve", "--host", "0.0.0.0", "--port", "0", "--allow-host", "box.lan"]) == 0
    assert "accepted Host headers: 127.0.0.1, localhost, ::1, [::1], box.lan" in capsys.readouterr().err
    with LiveServer(apps[-1]) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        assert c.get("/api/info").status_code == 200
        assert c.get("/api/info", headers={"Host": f"box.lan:{srv.port}"}).status_code == 200
        assert c.get("/api/info", headers={"Host": "evil.example"}).status_code == 400
    apps[-1].state.worker.close()
    assert run(["serve", "--host", "0.0.0.0", "--port", "0", "--allow-host", "*"]) == 0
    assert "any Host header" in capsys.readouterr().err
    apps[-1].state.worker.close()


def test_serve_several_saes(monkeypatch, capsys, steerer, tmp_path):
    """Issue 18: serve --add-sae SPEC (repeatable) serves more SAEs of the same model."""
    from conftest import make_sae

    from saesteer.cli import serve_commands
    from saesteer.cli.main import run
    from saesteer.saes import save_sae

    apps = []
    monkeypatch.setattr(serve_commands, "serve_app", lambda app, sock: apps.append(app))
    monkeypatch.setattr(serve_commands, "build_steerer", lambda *a: steerer)
    folder = save_sae(make_sae(d_sae=128, hook_name="blocks.2.hook_resid_post", seed=2), tmp_path / "layer2")
    assert run(["serve", "--port", "0", "--add-sae", str(folder)]) == 0
    services = apps[-1].state.services
    assert [(s.hook, s.d_sae) for s in services] == [(HOOK, 256), ("blocks.2.hook_resid_post", 128)]
    assert services[1].lm is services[0].lm  # one model
    assert "at blocks.2.hook_resid_post" in capsys.readouterr().err
    apps[-1].state.worker.close()


def test_serve_on_a_busy_port_is_one_line(capsys, monkeypatch):
    """Issue 15.8: the port is bound before anything is loaded; a busy one is one line, exit 2."""
    import socket

    from saesteer.cli import serve_commands
    from saesteer.cli.main import run

    monkeypatch.setattr(serve_commands, "build_steerer", lambda *a: pytest.fail("loaded the model first"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert run(["serve", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"port {port}: the port is in use" in err and "Traceback" not in err
    assert "http://" not in err


def test_serve_errors_and_openapi_flag(capsys, tmp_path, tiny_model_dir, tiny_sae_pt):
    from saesteer.cli.main import run

    (tmp_path / "empty").mkdir()
    assert run(["serve", "--model", str(tiny_model_dir), "--sae", str(tiny_sae_pt), "--hook", HOOK,
                "--results", str(tmp_path / "empty")]) == 2
    assert "not a sweep results folder" in capsys.readouterr().err
    assert run(["serve", "--openapi"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads((REPO / "docs" / "openapi.json").read_text())
