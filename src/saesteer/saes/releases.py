"""SAELens's pretrained-SAE registry, read as data: ``saelens:RELEASE/SAE_ID`` -> where the files are and how
to read them.

The registry is SAELens's ``pretrained_saes.yaml`` (MIT licence, Copyright (c) 2023 Joseph Bloom; the licence
is ``data/SAELENS_LICENSE``). A trimmed copy, converted to JSON by ``scripts/vendor_saelens_registry.py``, ships
as ``data/saelens_releases.json.gz``: per release its repo, model and ``conversion_func``; per SAE its path,
Neuronpedia id and ``norm_scaling_factor``. sae-lens is not needed at run time. A release missing from the
copy is looked up in an installed sae-lens's own YAML when there is one (newer releases).
"""

from __future__ import annotations

import functools
import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path

from saesteer.errors import SaesteerError

DATA_FILE = Path(__file__).parent / "data" / "saelens_releases.json.gz"
SAE_FIELDS = ("path", "neuronpedia", "norm_scaling_factor")
"""What is kept of each SAE entry (besides its id)."""


@dataclass(frozen=True)
class Release:
    """One SAE of a SAELens release, resolved."""

    release: str
    sae_id: str
    repo_id: str
    path: str
    model: str | None = None
    conversion_func: str | None = None
    neuronpedia_id: str | None = None
    norm_scaling_factor: float | None = None
    config_overrides: dict = field(default_factory=dict)

    def extra(self) -> dict:
        """Facts kept in ``SAEConfig.extra`` (manifests, messages)."""
        out = {"release": self.release, "sae_id": self.sae_id, "repo_id": self.repo_id, "folder": self.path,
               "conversion_func": self.conversion_func, "model_name": self.model}
        if self.neuronpedia_id:
            out["neuronpedia_id"] = self.neuronpedia_id
        if self.config_overrides.get("model_from_pretrained_kwargs"):  # e.g. trained on weight-processed TL
            out["model_from_pretrained_kwargs"] = self.config_overrides["model_from_pretrained_kwargs"]
        return {k: v for k, v in out.items() if v is not None}


def compact_registry(raw: dict) -> dict:
    """SAELens's YAML (as a dict) -> the trimmed form kept here (see module docstring)."""
    out = {}
    for name, entry in raw.items():
        saes = {}
        for sae in entry.get("saes") or []:
            if "id" in sae and "path" in sae:
                saes[str(sae["id"])] = {k: sae[k] for k in SAE_FIELDS if sae.get(k) is not None}
        release = {"repo_id": entry.get("repo_id"), "model": entry.get("model"),
                   "conversion_func": entry.get("conversion_func"), "saes": saes}
        if entry.get("config_overrides"):
            release["config_overrides"] = entry["config_overrides"]
        out[str(name)] = release
    return out


@functools.lru_cache(maxsize=1)
def vendored() -> dict:
    """The shipped copy: ``{"source": ..., "releases": {name: ...}}``."""
    with gzip.open(DATA_FILE, "rt", encoding="utf-8") as f:
        return json.load(f)


@functools.lru_cache(maxsize=1)
def installed_yaml() -> str:
    """The text of an installed sae-lens's registry (found without importing sae-lens), or ``""``."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("sae_lens")
        locations = list(spec.submodule_search_locations or []) if spec else []
        return (Path(locations[0]) / "pretrained_saes.yaml").read_text(encoding="utf-8") if locations else ""
    except (ImportError, ValueError, OSError):
        return ""


@functools.lru_cache(maxsize=1)
def installed() -> dict:
    """An installed sae-lens's registry, trimmed; empty when sae-lens (or PyYAML) is not installed."""
    text = installed_yaml()
    if not text:
        return {}
    try:
        import yaml
    except ImportError:
        return {}
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return compact_registry(yaml.load(text, Loader=loader) or {})


def find(release: str) -> dict | None:
    """A release's trimmed entry: the shipped copy first, then an installed sae-lens (parsed only if it names it)."""
    entry = vendored()["releases"].get(release)
    if entry is None and f"\n{release}:" in "\n" + installed_yaml():
        entry = installed().get(release)
    return entry


def is_release(name: str) -> bool:
    """Whether ``name`` is a release name (release names have no ``/``; Hub repo ids do)."""
    return bool(name) and "/" not in name and find(name) is not None


def lookup(release: str, sae_id: str) -> Release:
    """Resolve ``RELEASE/SAE_ID``, or a one-line error naming close choices."""
    entry = find(release)
    if entry is None:
        raise SaesteerError(
            f"unknown SAELens release {release!r}; see https://decoderesearch.github.io/SAELens/latest/pretrained_saes/"
            " for the list, or use saelens:REPO_ID/FOLDER"
        )
    sae = entry["saes"].get(sae_id)
    if sae is None:
        ids = list(entry["saes"])
        near = [i for i in ids if sae_id and sae_id.split("/")[0] in i][:4] or ids[:4]
        raise SaesteerError(
            f"SAELens release {release} has no SAE {sae_id!r} ({len(ids)} SAEs, e.g. {', '.join(near)})"
        )
    return Release(
        release=release,
        sae_id=sae_id,
        repo_id=entry["repo_id"],
        path=sae["path"],
        model=entry.get("model"),
        conversion_func=entry.get("conversion_func"),
        neuronpedia_id=sae.get("neuronpedia"),
        norm_scaling_factor=sae.get("norm_scaling_factor"),
        config_overrides=dict(entry.get("config_overrides") or {}),
    )


def parse(spec: str) -> tuple[str, str]:
    """``saelens:RELEASE/SAE_ID`` -> (release, sae_id); the id may contain slashes."""
    body = spec.removeprefix("saelens:").strip("/")
    release, _, sae_id = body.partition("/")
    if not release or not sae_id:
        raise SaesteerError(
            f"bad SAELens release spec {spec!r}; expected saelens:RELEASE/SAE_ID, e.g."
            " saelens:gpt2-small-res-jb/blocks.6.hook_resid_pre"
        )
    return release, sae_id
