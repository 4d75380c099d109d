"""Where a trained SAE goes: the folder is checked before training, and replaced as a whole after it.

An SAE folder (``cfg.json``, ``sae_weights.safetensors``, ``training.json``) is only ever replaced when the
caller says so (``overwrite``, the CLI's ``--overwrite``); a non-empty folder that holds no SAE is never
written into. The new folder is built beside the old one and swapped in (``outputs.staged_folder``), so a
kill at any moment leaves the old SAE or the new one, never new weights with an old ``cfg.json``.
"""

from __future__ import annotations

import os
from pathlib import Path

from saesteer.errors import SaesteerError
from saesteer.io import atomic_write_json
from saesteer.outputs import check_output_folder, clean_leftovers, staged_folder
from saesteer.saes import load_sae, save_sae

SAE_FILES = ("cfg.json", "sae_weights.safetensors", "training.json")


def check_sae_folder(out: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Refuse (one line, before any work) an ``out`` that cannot take a new SAE."""
    out = check_output_folder(out, "the SAE folder")
    clean_leftovers(out)
    if not out.is_dir() or not any(out.iterdir()):
        return out
    if any((out / name).exists() for name in SAE_FILES):
        if not overwrite:
            raise SaesteerError(f"{out} already holds an SAE; pass --overwrite to replace it (the whole folder)"
                                " or choose another --out")
        return out
    raise SaesteerError(f"{out} is a non-empty folder that holds no SAE; choose a new or empty folder for --out"
                        " (--overwrite only replaces an SAE folder)")


def save_trained_sae(sae, info: dict, out: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``sae`` (SAELens format) and ``training.json`` as a new folder at ``out``, swapped in whole;
    the staged copy is loaded back first, so an unreadable SAE never replaces anything."""
    out = check_sae_folder(out, overwrite=overwrite)  # again: the folder may have changed while training
    with staged_folder(out, replace=overwrite) as staging:
        save_sae(sae, staging)
        atomic_write_json(staging / "training.json", info)
        load_sae(str(staging))  # what the other commands will do; fails here, before the swap
    return out
