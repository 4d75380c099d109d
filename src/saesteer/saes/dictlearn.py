"""dictionary_learning folders (github saprmarks/dictionary_learning): ``ae.pt`` (a state dict, read with
``torch.load(weights_only=True)``) + ``config.json`` whose ``trainer`` names ``dict_class``, ``activation_dim``,
``dict_size``, ``k``, ``layer``, ``lm_name`` (and ``submodule_name``).

Classes and their maths, in saesteer's terms (``x_c = x - b_dec``):

* ``AutoEncoder``: ``bias``, ``encoder`` (Linear with bias), ``decoder`` (no bias): relu, b_dec = ``bias``.
* ``AutoEncoderTopK``: ``b_dec``, ``encoder``, ``decoder``, buffers ``k``, ``threshold``: TopK of relu (the
  threshold serves training only; its default ``encode`` is the per-token TopK).
* ``BatchTopKSAE`` / ``MatryoshkaBatchTopKSAE``: at inference ``z = relu(pre) * (relu(pre) > threshold)`` with one
  scalar threshold: a JumpReLU with that threshold for every latent.
* ``JumpReluAutoEncoder``: ``W_enc``, ``b_enc``, ``W_dec``, ``b_dec``, ``threshold``; no input shift.
* ``GatedAutoEncoder``: ``decoder_bias``, ``encoder`` (no bias), ``r_mag``, ``gate_bias``, ``mag_bias``, ``decoder``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from torch import Tensor

from saesteer.errors import SaesteerError
from saesteer.saes.base import SAE, SAEConfig
from saesteer.saes.gated import GatedSAE
from saesteer.saes.hub import hub_file
from saesteer.saes.tensors import read_state_dict

WEIGHTS_FILENAME = "ae.pt"
CFG_FILENAME = "config.json"
CLASSES = ("AutoEncoder", "AutoEncoderTopK", "BatchTopKSAE", "MatryoshkaBatchTopKSAE", "JumpReluAutoEncoder",
           "GatedAutoEncoder")


def hook_of(trainer: dict) -> str | None:
    """The TransformerLens hook of the trainer's ``layer`` and ``submodule_name`` (residual stream by default,
    as SAELens reads these releases)."""
    layer = trainer.get("layer")
    if not isinstance(layer, int):
        return None
    sub = str(trainer.get("submodule_name") or "").lower()
    if "embed" in sub:
        return "hook_embed"
    if "mlp" in sub:
        return f"blocks.{layer}.hook_mlp_out"
    if "attn" in sub or "attention" in sub:
        return f"blocks.{layer}.hook_attn_out"
    return f"blocks.{layer}.hook_resid_post"


def _weights(state: dict, dict_class: str, source: str) -> dict[str, Tensor]:
    """The class's tensors in SAELens layout (``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``)."""
    def get(*keys):
        for key in keys:
            if isinstance(state.get(key), Tensor):
                return state[key].float()
        raise SaesteerError(f"{source}: {dict_class} weights are missing {keys[0]}; found {', '.join(sorted(state))}")

    if dict_class == "JumpReluAutoEncoder" or "W_enc" in state:
        t = {"W_enc": get("W_enc"), "b_enc": get("b_enc"), "W_dec": get("W_dec"), "b_dec": get("b_dec")}
    else:
        t = {"W_enc": get("encoder.weight").mT.contiguous(), "W_dec": get("decoder.weight").mT.contiguous(),
             "b_dec": get("b_dec", "bias", "decoder_bias")}
        if dict_class != "GatedAutoEncoder":
            t["b_enc"] = get("encoder.bias")
    if dict_class == "GatedAutoEncoder":
        t.update(b_gate=get("gate_bias"), b_mag=get("mag_bias"), r_mag=get("r_mag"))
    if dict_class in ("JumpReluAutoEncoder", "BatchTopKSAE", "MatryoshkaBatchTopKSAE"):
        threshold = get("threshold")
        t["threshold"] = threshold.expand(t["W_enc"].shape[1]).clone() if threshold.dim() == 0 else threshold
    return t


def sae_from_files(cfg_path: Path, weights_path: Path, *, source: str) -> SAE:
    try:
        trainer = json.loads(Path(cfg_path).read_text(encoding="utf-8"))["trainer"]
        dict_class = trainer["dict_class"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SaesteerError(
            f"{source}: {CFG_FILENAME} is not a dictionary_learning config (needs trainer.dict_class; {exc!r})"
        ) from None
    if dict_class not in CLASSES:
        raise SaesteerError(
            f"{source}: unsupported dictionary_learning class {dict_class!r}; saesteer supports {', '.join(CLASSES)}"
        )
    state = read_state_dict(weights_path)
    t = _weights(state, dict_class, source)
    d_in, d_sae = (int(n) for n in t["W_enc"].shape)
    activation = {"AutoEncoder": "relu", "AutoEncoderTopK": "topk", "GatedAutoEncoder": "gated"}.get(
        dict_class, "jumprelu")
    k = trainer.get("k") if activation == "topk" else None
    if activation == "topk" and isinstance(state.get("k"), Tensor):
        k = int(state["k"].item())
    config = SAEConfig(
        d_in=d_in, d_sae=d_sae, activation=activation, k=int(k) if k is not None else None,
        apply_b_dec_to_input=dict_class != "JumpReluAutoEncoder", hook_name=hook_of(trainer), source=source,
        extra={"format": "dictionary_learning", "dict_class": dict_class, "path": str(Path(weights_path).parent),
               **({"model_name": str(trainer["lm_name"])} if trainer.get("lm_name") else {})},
    )
    if activation == "gated":
        return GatedSAE(config, t["W_enc"], t["b_gate"], t["W_dec"], t["b_dec"], b_mag=t["b_mag"], r_mag=t["r_mag"])
    return SAE(config, t["W_enc"], t["b_enc"], t["W_dec"], t["b_dec"], threshold=t.get("threshold"))


def load_folder(folder: str | os.PathLike, *, source: str | None = None) -> SAE:
    folder = Path(folder)
    return sae_from_files(folder / CFG_FILENAME, folder / WEIGHTS_FILENAME, source=source or str(folder))


def load_hub_folder(repo_id: str, folder: str, *, source: str, progress: bool = True) -> SAE:
    prefix = f"{folder}/" if folder else ""
    cfg_path = hub_file(repo_id, prefix + CFG_FILENAME, progress=progress)
    weights_path = hub_file(repo_id, prefix + WEIGHTS_FILENAME, progress=progress)
    sae = sae_from_files(Path(cfg_path), Path(weights_path), source=source)
    sae.cfg.extra.update({"repo_id": repo_id, "folder": folder})
    return sae
