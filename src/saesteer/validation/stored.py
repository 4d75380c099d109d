"""The validation's sweeps on disk, so that its counts can be measured again without sweeping again.

``sweeps.json.gz`` in the output folder holds, per prompt label, the unsteered text (and its tokens) and every annotated
result (text, firing-word hits, fluency, readback vector, ...), and per feature the firing-word occurrences
a text the model writes anyway holds (``expected_hits``). :func:`load_sweeps` reads it back.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from saesteer.errors import SaesteerError
from saesteer.io import atomic_write_bytes

SWEEPS = "sweeps.json.gz"
KEEP = ("feature", "value", "clamp", "text", "differs", "fire_hits", "base_fire_hits", "lens_hits", "base_lens_hits",
        "repetition", "fluency", "fluency_drop", "score", "readback_ids", "readback_vals")
"""Record fields kept (token ids and derived ranks are left out: ranks are recomputed from the vectors)."""


def save_sweeps(out_dir: Path, annotated: dict, baselines: dict, expected: list[float]) -> Path:
    """Write ``sweeps.json.gz``: ``annotated`` (per label, one list of records per sweep), the baselines'
    text and fluency, and the expected hits."""
    data = {"version": 1, "expected_hits": expected,
            "prompts": {lbl: {"baseline": {"text": b.text, "fluency": b.fluency, "tokens": list(b.tokens)},
                              "sweeps": [[{k: r[k] for k in KEEP if k in r} for r in recs] for recs in annotated[lbl]]}
                        for lbl, b in baselines.items()}}
    path = Path(out_dir) / SWEEPS
    atomic_write_bytes(path, gzip.compress(json.dumps(data, ensure_ascii=False).encode("utf-8"), mtime=0))
    return path


def load_sweeps(out_dir: str | Path) -> dict:
    """``sweeps.json.gz`` of a validation folder (see :func:`save_sweeps`)."""
    path = Path(out_dir) / SWEEPS
    if not path.is_file():
        raise SaesteerError(f"{path} not found; give the --out folder of a saesteer validate run")
    return json.loads(gzip.decompress(path.read_bytes()))
