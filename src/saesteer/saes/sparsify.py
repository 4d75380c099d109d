"""EleutherAI sparsify folders: ``cfg.json`` (SparseCoderConfig fields plus ``d_in``) + ``sae.safetensors``.

Weights: ``encoder.weight [num_latents, d_in]``, ``encoder.bias``, ``W_dec [num_latents, d_in]``, ``b_dec``, and
``W_skip [d_in, d_in]`` with ``skip_connection``. Encode: ``pre = relu(encoder(x - b_dec))``, then ``topk`` keeps
the k largest, ``groupmax`` the largest of each of k equal groups of latents. Decode: ``z @ W_dec + b_dec``, plus
``x @ W_skip.T`` with a skip connection (so decode needs the input: it travels in the encode's stats).
A TopK folder without a skip connection loads as the plain :class:`SAE`; transcoders are refused.
Hub releases hold one folder per hook point, named by module path (``layers.6``, ``layers.6.mlp``).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from torch import Tensor, nn

from saesteer.errors import SaesteerError
from saesteer.saes.base import SAE, SAEConfig
from saesteer.saes.hub import hub_file
from saesteer.saes.tensors import read_safetensors

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae.safetensors"
ACTIVATIONS = ("topk", "groupmax")


class SparsifySAE(SAE):
    """sparsify's groupmax activation and/or linear skip connection (``W_skip``)."""

    activations = ("topk", "groupmax")

    def __init__(self, cfg: SAEConfig, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Tensor,
                 *, W_skip: Tensor | None = None):
        super().__init__(cfg, W_enc, b_enc, W_dec, b_dec)
        if cfg.activation == "groupmax" and cfg.d_sae % cfg.k:
            raise SaesteerError(f"groupmax needs d_sae ({cfg.d_sae}) divisible by k ({cfg.k})")
        if W_skip is not None and tuple(W_skip.shape) != (cfg.d_in, cfg.d_in):
            raise SaesteerError(f"SAE weight W_skip has shape {tuple(W_skip.shape)}, expected {(cfg.d_in, cfg.d_in)}")
        self.W_skip = None if W_skip is None else nn.Parameter(W_skip.detach().clone(), requires_grad=False)

    @property
    def plain_maths(self) -> bool:
        return False

    def activate(self, pre: Tensor) -> Tensor:
        if self.cfg.activation == "topk":
            return super().activate(pre)
        values, index = torch.relu(pre).unflatten(-1, (self.cfg.k, -1)).max(dim=-1)
        index = index + torch.arange(self.cfg.k, device=pre.device) * (self.cfg.d_sae // self.cfg.k)
        return torch.zeros_like(pre).scatter_(-1, index, values)

    def encode_with_stats(self, x: Tensor):
        """Latents and, with a skip connection, ``(None, x @ W_skip.T)``: the term decode adds back."""
        x = x.to(self.dtype)
        z = self.activate(self.encode_pre_act(x, None))
        return z, (None if self.W_skip is None else (None, x @ self.W_skip.mT))

    @staticmethod
    def output_scale(stats) -> None:
        return None

    def decode(self, z: Tensor, stats=None) -> Tensor:
        out = z @ self.W_dec + self.b_dec
        if self.W_skip is None:
            return out
        if stats is None:
            raise SaesteerError("this SAE has a skip connection: decode needs its input; use encode_with_stats()"
                                " or reconstruct()")
        return out + stats[1]


def hook_from_module_path(name: str) -> str | None:
    """``layers.6`` / ``h.6`` / ``gpt_neox.layers.6`` -> ``blocks.6.hook_resid_post``; ``.mlp`` -> ``hook_mlp_out``;
    ``.attn`` / ``.self_attn`` / ``.attention`` -> ``hook_attn_out``; None when not recognised."""
    found = re.fullmatch(r"(?:[\w.]*\.)?(?:layers|h)\.(\d+)(?:\.(mlp|attn|self_attn|attention))?", name)
    if not found:
        return None
    suffix = {None: "hook_resid_post", "mlp": "hook_mlp_out"}.get(found.group(2), "hook_attn_out")
    return f"blocks.{found.group(1)}.{suffix}"


def sae_from_files(cfg_path: Path, weights_path: Path, *, source: str, hook_name: str | None) -> SAE:
    try:
        cfg = json.loads(Path(cfg_path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SaesteerError(f"could not read {cfg_path} as JSON ({exc})") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("d_in"), int):
        raise SaesteerError(f"{source}: {CFG_FILENAME} is not a sparsify config (it needs an integer d_in)")
    if cfg.get("transcode"):
        raise SaesteerError(f"{source}: sparsify transcoders are not supported by saesteer (only SAEs)")
    activation = cfg.get("activation", "topk")
    if activation not in ACTIVATIONS:
        raise SaesteerError(f"{source}: unsupported sparsify activation {activation!r}; saesteer supports topk, groupmax")
    tensors, _ = read_safetensors(weights_path)
    missing = [k for k in ("encoder.weight", "encoder.bias", "W_dec", "b_dec") if k not in tensors]
    if missing:
        raise SaesteerError(f"{source}: sparsify weights are missing {', '.join(missing)}")
    W_enc = tensors["encoder.weight"].mT.contiguous()
    skip = tensors.get("W_skip") if cfg.get("skip_connection") else None
    if cfg.get("skip_connection") and skip is None:
        raise SaesteerError(f"{source}: skip_connection is set but the weights have no W_skip")
    config = SAEConfig(
        d_in=cfg["d_in"], d_sae=int(W_enc.shape[1]), activation=activation, k=int(cfg.get("k", 32)),
        apply_b_dec_to_input=True, hook_name=hook_name, source=source,
        extra={"format": "sparsify", "skip_connection": skip is not None, "path": str(Path(weights_path).parent)},
    )
    args = (config, W_enc, tensors["encoder.bias"], tensors["W_dec"], tensors["b_dec"])
    if activation == "topk" and skip is None:
        return SAE(*args)
    return SparsifySAE(*args, W_skip=skip)


def load_folder(folder: str | os.PathLike, *, source: str | None = None) -> SAE:
    """A local sparsify folder; its hook is read from the folder name (``layers.6``) when it follows sparsify's."""
    folder = Path(folder)
    return sae_from_files(folder / CFG_FILENAME, folder / WEIGHTS_FILENAME, source=source or str(folder),
                          hook_name=hook_from_module_path(folder.resolve().name))


def load_hub_folder(repo_id: str, folder: str, *, source: str, progress: bool = True) -> SAE:
    prefix = f"{folder}/" if folder else ""
    cfg_path = hub_file(repo_id, prefix + CFG_FILENAME, progress=progress)
    weights_path = hub_file(repo_id, prefix + WEIGHTS_FILENAME, progress=progress)
    sae = sae_from_files(Path(cfg_path), Path(weights_path), source=source,
                         hook_name=hook_from_module_path(Path(folder).name))
    sae.cfg.extra.update({"repo_id": repo_id, "folder": folder})
    return sae
