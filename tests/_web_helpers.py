"""Helpers of the web app's tests: a hand-made sweep results folder, a live server in a thread, the SAE."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from pathlib import Path

HOOK = "blocks.6.hook_resid_post"
NEURONPEDIA_ID = "gpt2-small/6-res_post_32k-oai"
WORDS = ["ocean", "river", "music", "garden", "winter", "castle", "forest", "rocket", "coffee", "paper", "mountain",
         "window", "silver", "thunder", "harbor", "candle"]
SPECIAL = {7: "lighthouse", 19: "lighthouse keeper"}
"""Features whose texts hold a word no other feature's do (for the search tests)."""


def web_sae():
    """The tiny test SAE (same weights as the ``tiny_sae`` fixture) with a Neuronpedia id, as OpenAI v5 SAEs have."""
    from conftest import make_sae

    sae = make_sae()
    sae.cfg = replace(sae.cfg, extra={"neuronpedia_id": NEURONPEDIA_ID}, source="openai:v5_32k/resid_post_mlp/6")
    return sae


def row_text(feature: int, value: float) -> str:
    a, b = WORDS[feature % len(WORDS)], WORDS[(feature * 7 + int(value)) % len(WORDS)]
    extra = f" near the {SPECIAL[feature]}" if feature in SPECIAL else ""
    return f" the {a} and the {b}{extra}, said feature {feature} at {value:g}."


def row_score(feature: int, value: float) -> float:
    return round(((feature * 37 + int(value) * 3) % 23) / 10, 3)


def write_results_folder(path: Path, features=range(40), values=(10.0, 40.0), *, prompt: str | None = None,
                         metrics: bool = True, facts=None, extra_lines: str = "") -> Path:
    """A sweep results folder in the sweep's format (manifest.json, results.jsonl, sentences.txt, facts/)."""
    path.mkdir(parents=True, exist_ok=True)
    manifest = {"format": "saesteer-sweep", "model": "tiny-gpt2", "sae": "openai:v5_32k/resid_post_mlp/6",
                "hook": HOOK, "mode": "delta", "values": list(values), "prompt": prompt, "max_new_tokens": 12,
                "baseline": {"tokens": [1, 2, 3], "text": " the unsteered text"}, "status": "complete",
                "sweep": {"values": list(values)}}
    (path / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    lines, sentences = [], []
    for f in features:
        for v in values:
            rec = {"feature": f, "value": v, "clamp": v, "tokens": [11, 12, 13], "text": row_text(f, v)}
            if metrics:
                rec.update(differs=True, first_diff=f % 3, fire_hits=f % 5, lens_hits=(f + int(v)) % 4,
                           fluency=-3.0 - f / 100, fluency_drop=None if f % 10 == 0 else round(f / 50, 3),
                           repetition=round((f % 7) / 10, 2), score=row_score(f, v))
            lines.append(json.dumps(rec))
            sentences.append(f"{f}\t{v:g}\t{rec['text']}")
    (path / "results.jsonl").write_text("\n".join(lines) + "\n" + extra_lines, encoding="utf-8")
    (path / "sentences.txt").write_text("\n".join(sentences) + "\n", encoding="utf-8")
    if facts is not None:
        facts.save(path / "facts")
    return path


def tiny_facts(lm, sae):
    """Real feature facts of the tiny model and SAE, on a short reference text (fast)."""
    from saesteer.evaluation.feature_facts import compute_facts, reference_from_text

    text = ("The lighthouse keeper walked along the harbor in winter. The ocean was silver and the candle burned. "
            "Music from the castle filled the forest, and a rocket rose over the mountain. ") * 4
    return compute_facts(lm, sae, HOOK, reference_from_text(lm, text, length=32))


class LiveServer:
    """``uvicorn`` serving ``app`` on 127.0.0.1 at a free port, in a background thread."""

    def __init__(self, app):
        import uvicorn

        self.config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        sock = self.server.servers[0].sockets[0]
        self.host, self.port = sock.getsockname()[:2]
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
