"""``load_sae(spec)``: turn any SAE spec or path into an :class:`SAE`.

A spec is classified into a format (by its prefix, or by what the local path is), and the format's
loader, looked up in :data:`LOADERS`, does the rest. The registry then applies what every format shares:
the ``hook_name`` override, ``dtype`` and ``device``.

Forms: ``openai:FAMILY/LOCATION/LAYER``, ``saelens:REPO_ID/FOLDER``, a local SAELens folder, a local
OpenAI ``.pt`` state dict, a local ``.safetensors`` (SAELens or OpenAI keys).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

from saesteer.errors import SaesteerError
from saesteer.saes import openai, saelens
from saesteer.saes.base import SAE

Loader = Callable[..., SAE]
"""``loader(target: str, *, cache_dir, progress) -> SAE``."""

LOADERS: dict[str, Loader] = {
    "openai": lambda target, *, cache_dir, progress: openai.load_openai_spec(
        target, cache_dir=cache_dir, progress=progress
    ),
    "saelens": lambda target, *, cache_dir, progress: saelens.load_saelens_hub(target, progress=progress),
    "saelens-folder": lambda target, **_: saelens.load_saelens_folder(target),
    "openai-pt": lambda target, **_: openai.load_openai_file(target),
    "safetensors": lambda target, **_: saelens.load_safetensors_file(target),
}
"""Format -> loader. Add a format by adding an entry here and a way to recognise it below."""

PREFIXES = {"openai:": "openai", "saelens:": "saelens"}
"""Spec prefix -> format."""

SUFFIXES = {".pt": "openai-pt", ".pth": "openai-pt", ".safetensors": "safetensors"}
"""Local file suffix -> format (a directory is ``saelens-folder``)."""

SPEC_FORMS = (
    "openai:FAMILY/LOCATION/LAYER (e.g. openai:v5_32k/resid_post_mlp/6), saelens:REPO_ID/FOLDER, or a local"
    " path to an SAELens folder, an OpenAI .pt file or a .safetensors file"
)


def detect_format(spec: str | os.PathLike) -> str:
    """The :data:`LOADERS` key for ``spec``, or a one-line error listing the accepted forms."""
    text = str(spec)
    for prefix, fmt in PREFIXES.items():
        if text.startswith(prefix):
            return fmt
    path = Path(text).expanduser()
    if path.is_dir():
        return "saelens-folder"
    if path.suffix.lower() in SUFFIXES:
        if not path.is_file():
            raise SaesteerError(f"no such SAE file: {path}; check the path, or use {SPEC_FORMS}")
        return SUFFIXES[path.suffix.lower()]
    if path.exists():
        raise SaesteerError(f"cannot tell what kind of SAE {path} is; use {SPEC_FORMS}")
    raise SaesteerError(f"unknown SAE spec {text!r} (no such file or folder either); use {SPEC_FORMS}")


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

    ``hook_name`` overrides (or, for OpenAI ``.pt`` files outside OpenAI's folder layout, supplies) the
    TransformerLens hook; ``dtype`` None keeps the file's dtype; ``cache_dir`` (default ``$SAESTEER_CACHE``
    or ``~/.cache/saesteer``) holds OpenAI downloads; Hub downloads use the Hub's own cache.
    """
    fmt = detect_format(spec)
    target = str(spec) if fmt in PREFIXES.values() else str(Path(spec).expanduser())
    sae = LOADERS[fmt](target, cache_dir=cache_dir, progress=progress)
    if hook_name is not None:
        sae.with_hook(hook_name)
    if dtype is not None:
        sae = sae.to(dtype=saelens.parse_sae_dtype(dtype))
    try:
        sae = sae.to(device=device)
    except (RuntimeError, AssertionError, ValueError) as exc:
        raise SaesteerError(f"cannot move the SAE to device {str(device)!r} ({exc}); try --device cpu") from None
    return sae.eval()
