"""Gemma Scope SAEs: ``params.npz`` (Gemma Scope, Gemma 2) and ``params.safetensors`` (Gemma Scope 2, Gemma 3).

Arrays ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``, ``b_enc``, ``b_dec``, ``threshold`` (Gemma Scope 2 spells
them lower-case). JumpReLU without the ``b_dec`` input shift: ``pre = x @ W_enc + b_enc``, ``z = pre * (pre >
threshold)``, ``x_hat = z @ W_dec + b_dec``. Embedding SAEs were trained on embeddings scaled by ``sqrt(d_in)``;
as SAELens does, the scale is folded into their weights so they take the model's raw ``hook_embed``.

The hook is read from the Hub layout when the path follows it (``gemma-scope-2b-pt-res/layer_12/width_16k/...``):
``res`` -> ``blocks.L.hook_resid_post``, ``mlp`` -> ``blocks.L.hook_mlp_out``, ``att`` -> ``blocks.L.attn.hook_z``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from torch import Tensor

from saesteer.errors import SaesteerError
from saesteer.saes.base import SAE, SAEConfig
from saesteer.saes.hub import MissingHubFile, hub_file
from saesteer.saes.tensors import read_npz, read_safetensors

NPZ_FILENAME = "params.npz"
SAFETENSORS_FILENAME = "params.safetensors"
KEYS = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")


def is_gemmascope_tensors(tensors: dict) -> bool:
    return all(key in tensors or key.lower() in tensors for key in KEYS)


def hook_from_path(text: str) -> str | None:
    """TransformerLens hook of a Gemma Scope SAE from its Hub layout (repo name and folder), or None when the
    path does not follow it (pass the hook then)."""
    layer = re.search(r"layer_(\d+)", text)
    if "transcoder" in text or "clt" in text:
        return None
    if "gemma-scope" in text and "embedding" in text:
        return "hook_embed"
    if not layer:
        return None
    L = int(layer.group(1))
    for marker, site in (("resid_post", "hook_resid_post"), ("mlp_out", "hook_mlp_out"), ("attn_out", "attn.hook_z")):
        if marker in text:  # Gemma Scope 2 folders
            return f"blocks.{L}.{site}"
    repo = re.search(r"gemma-scope-[\w.-]*?-(res|mlp|att)\b", text)  # Gemma Scope repos: gemma-scope-2b-pt-res
    if repo:
        site = {"res": "hook_resid_post", "mlp": "hook_mlp_out", "att": "attn.hook_z"}[repo.group(1)]
        return f"blocks.{L}.{site}"
    return None


def sae_from_params(tensors: dict[str, Tensor], *, source: str, hook_name: str | None, extra: dict) -> SAE:
    """Gemma Scope arrays -> :class:`SAE` (float32, as the files are)."""
    t = {}
    for key in KEYS:
        value = tensors.get(key, tensors.get(key.lower()))
        if value is None:
            raise SaesteerError(f"{source}: Gemma Scope params are missing {key}; found {', '.join(sorted(tensors))}")
        t[key] = value.float()
    if "affine_skip_connection" in tensors or "transcoder" in extra.get("folder", ""):
        raise SaesteerError(f"{source}: Gemma Scope transcoders are not supported by saesteer (only SAEs)")
    if t["W_enc"].dim() != 2:
        raise SaesteerError(f"{source}: W_enc has shape {tuple(t['W_enc'].shape)}, not a matrix")
    d_in, d_sae = (int(n) for n in t["W_enc"].shape)
    if hook_name == "hook_embed":
        t["W_enc"], t["W_dec"] = t["W_enc"] / d_in**0.5, t["W_dec"] * d_in**0.5
    cfg = SAEConfig(d_in=d_in, d_sae=d_sae, activation="jumprelu", apply_b_dec_to_input=False,
                    hook_name=hook_name, source=source, extra={"format": "gemmascope", **extra})
    return SAE(cfg, t["W_enc"], t["b_enc"], t["W_dec"], t["b_dec"], threshold=t["threshold"])


def load_params_file(path: str | os.PathLike, *, source: str | None = None, hook_name: str | None = None) -> SAE:
    """A local ``params.npz`` / ``params.safetensors``, or a folder holding one."""
    path = Path(path)
    if path.is_dir():
        found = [path / n for n in (NPZ_FILENAME, SAFETENSORS_FILENAME) if (path / n).is_file()]
        if not found:
            raise SaesteerError(f"{path} holds no Gemma Scope {NPZ_FILENAME} or {SAFETENSORS_FILENAME}")
        path = found[0]
    tensors = read_npz(path) if path.suffix == ".npz" else read_safetensors(path)[0]
    text = str(path.resolve()) if path.exists() else str(path)
    hook = hook_name or hook_from_path(text.replace("--", "/"))
    return sae_from_params(tensors, source=source or str(path), hook_name=hook, extra={"path": str(path)})


def load_hub_folder(repo_id: str, folder: str, *, source: str, progress: bool = True,
                    hook_name: str | None = None) -> SAE:
    """The Gemma Scope SAE in ``folder`` of Hub repo ``repo_id`` (``params.npz``, else ``params.safetensors``)."""
    prefix = f"{folder}/" if folder else ""
    try:
        path = hub_file(repo_id, prefix + NPZ_FILENAME, progress=progress)
    except MissingHubFile:
        path = hub_file(repo_id, prefix + SAFETENSORS_FILENAME, progress=progress)
    hook = hook_name or hook_from_path(f"{repo_id}/{folder}")
    tensors = read_npz(Path(path)) if path.endswith(".npz") else read_safetensors(Path(path))[0]
    return sae_from_params(tensors, source=source, hook_name=hook,
                           extra={"repo_id": repo_id, "folder": folder, "path": str(Path(path).parent)})
