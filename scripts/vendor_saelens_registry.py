"""Refresh saesteer's trimmed copy of SAELens's pretrained-SAE registry from an installed sae-lens.

    python scripts/vendor_saelens_registry.py   # needs sae-lens and PyYAML installed

Writes src/saesteer/saes/data/saelens_releases.json.gz (deterministic: sorted keys, no gzip timestamp).
"""

import gzip
import importlib.metadata
import json
from importlib.resources import files
from pathlib import Path

import yaml

from saesteer.saes.releases import DATA_FILE, compact_registry

text = files("sae_lens").joinpath("pretrained_saes.yaml").read_text(encoding="utf-8")
raw = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
version = importlib.metadata.version("sae-lens")
data = {
    "source": f"sae-lens {version}, sae_lens/pretrained_saes.yaml (trimmed)",
    "license": "MIT, Copyright (c) 2023 Joseph Bloom; see SAELENS_LICENSE",
    "releases": compact_registry(raw),
}
payload = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
with open(DATA_FILE, "wb") as raw_file, gzip.GzipFile(fileobj=raw_file, mode="wb", mtime=0) as f:
    f.write(payload)
print(f"{len(data['releases'])} releases -> {Path(DATA_FILE)} ({Path(DATA_FILE).stat().st_size} bytes)")
