"""``load_sae(spec)``: turn any SAE spec or path into an :class:`SAE`.

A spec is classified into a format (by its prefix, or by the files a local path holds), and the format's
loader, looked up in :data:`LOADERS`, does the rest. The registry then applies what every format shares:
the ``hook_name`` override, the refusal of non-finite weights, ``dtype`` and ``device``.

Forms: ``openai:FAMILY/LOCATION/LAYER``; ``saelens:RELEASE/SAE_ID`` (SAELens's pretrained registry);
``saelens:REPO_ID/FOLDER`` (an SAELens folder on the Hub); ``hf:REPO_ID/FOLDER`` (any folder format below, on
the Hub); a local SAELens, sparsify, dictionary_learning or Gemma Scope folder; a local OpenAI ``.pt``,
``.safetensors`` (SAELens, OpenAI or Gemma Scope 2 keys), Gemma Scope ``params.npz`` or dictionary_learning
``ae.pt``. Add a family by adding a module in ``saes/``, an entry in :data:`LOADERS`, and its marker files in
:data:`FOLDER_FORMATS` (and, for a SAELens ``conversion_func``, in :data:`RELEASE_LOADERS`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from saesteer.dtypes import SAE_DTYPES, parse_dtype
from saesteer.errors import SaesteerError
from saesteer.saes import dictlearn, gemmascope, openai, releases, saelens, sparsify
from saesteer.saes.base import SAE
from saesteer.saes.hub import MissingHubFile

Loader = Callable[..., SAE]
"""``loader(target: str, *, cache_dir, progress) -> SAE``."""


def _saelens_spec(target: str, *, progress: bool, **_) -> SAE:
    """``saelens:RELEASE/SAE_ID`` through the registry, else ``saelens:REPO_ID/FOLDER``."""
    release, _sep, _rest = target.removeprefix("saelens:").strip("/").partition("/")
    if releases.is_release(release):
        return load_release(target, progress=progress)
    return saelens.load_saelens_hub(target, progress=progress)


LOADERS: dict[str, Loader] = {
    "openai": lambda target, *, cache_dir, progress: openai.load_openai_spec(
        target, cache_dir=cache_dir, progress=progress
    ),
    "saelens": _saelens_spec,
    "hf": lambda target, *, progress, **_: load_hub_folder(target, progress=progress),
    "saelens-folder": lambda target, **_: saelens.load_saelens_folder(target),
    "sparsify-folder": lambda target, **_: sparsify.load_folder(target),
    "dictionary-learning-folder": lambda target, **_: dictlearn.load_folder(target),
    "gemmascope": lambda target, **_: gemmascope.load_params_file(target),
    "openai-pt": lambda target, **_: openai.load_openai_file(target),
    "safetensors": lambda target, **_: saelens.load_safetensors_file(target),
}
"""Format -> loader. Add a format by adding an entry here and a way to recognise it below."""

PREFIXES = {"openai:": "openai", "saelens:": "saelens", "hf:": "hf"}
"""Spec prefix -> format."""

FOLDER_FORMATS: dict[str, tuple[tuple[str, ...], ...]] = {
    "saelens-folder": (("cfg.json", "sae_weights.safetensors"),),
    "sparsify-folder": (("cfg.json", "sae.safetensors"),),
    "dictionary-learning-folder": (("ae.pt", "config.json"),),
    "gemmascope": (("params.npz",), ("params.safetensors",)),
}
"""Folder format -> the sets of files (any one set) that mark it, tried in this order."""

SUFFIXES = {".pt": "openai-pt", ".pth": "openai-pt", ".safetensors": "safetensors", ".npz": "gemmascope"}
"""Local file suffix -> format, for a file that is not one of a folder format's marker files."""

RELEASE_LOADERS: dict[str | None, Callable[..., SAE]] = {
    None: lambda r, **kw: saelens.load_saelens_repo_folder(r.repo_id, r.path, **kw),
    "gemma_2": lambda r, **kw: gemmascope.load_hub_folder(r.repo_id, r.path, **kw),
    "gemma_3": lambda r, **kw: gemmascope.load_hub_folder(r.repo_id, r.path, **kw),
    "dictionary_learning_1": lambda r, **kw: dictlearn.load_hub_folder(r.repo_id, r.path, **kw),
}
"""SAELens ``conversion_func`` of a release -> loader of one of its SAEs (``loader(release, source=, progress=)``)."""

SPEC_FORMS = (
    "openai:FAMILY/LOCATION/LAYER (e.g. openai:v5_32k/resid_post_mlp/6), saelens:RELEASE/SAE_ID (e.g."
    " saelens:gpt2-small-res-jb/blocks.6.hook_resid_pre), saelens:REPO_ID/FOLDER, hf:REPO_ID/FOLDER, or a local"
    " SAELens/sparsify/dictionary_learning/Gemma Scope folder, OpenAI .pt, .safetensors or params.npz"
)


def folder_format(folder: Path) -> str | None:
    """The :data:`FOLDER_FORMATS` key whose marker files ``folder`` holds, or None."""
    for fmt, marker_sets in FOLDER_FORMATS.items():
        if any(all((folder / name).is_file() for name in names) for names in marker_sets):
            return fmt
    return None


def detect_format(spec: str | os.PathLike) -> str:
    """The :data:`LOADERS` key for ``spec``, or a one-line error listing the accepted forms."""
    text = str(spec)
    for prefix, fmt in PREFIXES.items():
        if text.startswith(prefix):
            return fmt
    path = Path(text).expanduser()
    if path.is_dir():
        fmt = folder_format(path)
        if fmt is None:
            raise SaesteerError(
                f"{path} is not an SAE folder saesteer knows: expected SAELens (cfg.json + sae_weights.safetensors),"
                " sparsify (cfg.json + sae.safetensors), dictionary_learning (ae.pt + config.json) or Gemma Scope"
                " (params.npz)"
            )
        return fmt
    if path.suffix.lower() in SUFFIXES:
        if not path.is_file():
            raise SaesteerError(f"no such SAE file: {path}; check the path, or use {SPEC_FORMS}")
        fmt = folder_format(path.parent)
        if fmt is not None and any(path.name in names for names in FOLDER_FORMATS[fmt]):
            return fmt
        return SUFFIXES[path.suffix.lower()]
    if path.exists():
        raise SaesteerError(f"cannot tell what kind of SAE {path} is; use {SPEC_FORMS}")
    raise SaesteerError(f"unknown SAE spec {text!r} (no such file or folder either); use {SPEC_FORMS}")


def load_release(spec: str, *, progress: bool = True) -> SAE:
    """``saelens:RELEASE/SAE_ID``: resolve it in SAELens's registry, then load the files as its
    ``conversion_func`` says; ``norm_scaling_factor`` is folded as SAELens folds it."""
    found = releases.lookup(*releases.parse(spec))
    loader = RELEASE_LOADERS.get(found.conversion_func)
    if loader is None:
        raise SaesteerError(
            f"{spec}: SAELens release {found.release} is stored in a form saesteer cannot read yet (conversion_func"
            f" {found.conversion_func!r}); supported: SAELens folders, gemma_2, gemma_3, dictionary_learning_1"
        )
    sae = loader(found, source=spec, progress=progress)
    if found.norm_scaling_factor is not None and sae.cfg.extra.get("normalize_activations") == "expected_average_only_in":
        saelens.fold_norm_scaling_factor(sae, float(found.norm_scaling_factor))
    if found.config_overrides.get("hook_name") and sae.hook_name is None:
        sae.with_hook(found.config_overrides["hook_name"])
    if centered_training(found, sae):
        sae.cfg = replace(sae.cfg, normalize="center")
    sae.cfg.extra.update(found.extra())
    return sae


CENTERED_SITES = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out")
"""Hooks whose values TransformerLens's ``center_writing_weights`` centres (every write to the residual)."""


def centered_training(found: releases.Release, sae: SAE) -> bool:
    """Whether a release's SAE was trained on TransformerLens with ``center_writing_weights`` at a residual-stream
    hook: saesteer's hooks give the raw values, so the SAE gets ``center`` normalisation (mean removed on the
    way in, added back on the way out), which reproduces what it saw in training."""
    kwargs = found.config_overrides.get("model_from_pretrained_kwargs") or {}
    hook = sae.hook_name or ""
    return bool(kwargs.get("center_writing_weights")) and sae.cfg.normalize == "none" and \
        hook.split(".")[-1] in CENTERED_SITES


def load_hub_folder(spec: str, *, progress: bool = True) -> SAE:
    """``hf:REPO_ID/FOLDER``: the first folder format whose files the Hub repo has."""
    body = spec.removeprefix("hf:").strip("/")
    parts = [p for p in body.split("/") if p]
    if len(parts) < 2:
        raise SaesteerError(f"bad Hub SAE spec {spec!r}; expected hf:REPO_ID/FOLDER, e.g. hf:EleutherAI/sae-pythia-70m-32k/layers.3")
    repo_id, folder = "/".join(parts[:2]), "/".join(parts[2:])
    tries = (
        lambda: saelens.load_saelens_repo_folder(repo_id, folder, source=spec, progress=progress),
        lambda: gemmascope.load_hub_folder(repo_id, folder, source=spec, progress=progress),
        lambda: sparsify.load_hub_folder(repo_id, folder, source=spec, progress=progress),
        lambda: dictlearn.load_hub_folder(repo_id, folder, source=spec, progress=progress),
    )
    first_error = None
    for attempt in tries:
        try:
            return attempt()
        except MissingHubFile as exc:
            first_error = first_error or exc
        except SaesteerError as exc:
            if "could not download" not in str(exc):
                raise
            first_error = first_error or exc
    raise SaesteerError(
        f"{spec}: found no SAELens, Gemma Scope, sparsify or dictionary_learning files there ({first_error})"
    )


def load_sae(
    spec: str | os.PathLike,
    *,
    hook_name: str | None = None,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> SAE:
    """Load the SAE named by ``spec`` (see module docstring).

    ``hook_name`` overrides (or, for files that do not name it, supplies) the TransformerLens hook; ``dtype``
    None keeps the file's dtype; ``cache_dir`` (default ``$SAESTEER_CACHE`` or ``~/.cache/saesteer``) holds
    OpenAI downloads; Hub downloads use the Hub's own cache. Weights with NaN or infinite values are refused.
    """
    fmt = detect_format(spec)
    target = str(spec) if fmt in PREFIXES.values() else str(Path(spec).expanduser())
    if fmt in FOLDER_FORMATS and Path(target).is_file():
        target = str(Path(target).parent)  # a marker file stands for its folder
    sae = LOADERS[fmt](target, cache_dir=cache_dir, progress=progress)
    sae.check_finite()
    if hook_name is not None:
        sae.with_hook(hook_name)
    if dtype is not None:
        sae = sae.to(dtype=parse_dtype(dtype, allowed=SAE_DTYPES))
    try:
        sae = sae.to(device=device)
    except (RuntimeError, AssertionError, ValueError) as exc:
        raise SaesteerError(f"cannot move the SAE to device {str(device)!r} ({exc}); try --device cpu") from None
    return sae.eval()
