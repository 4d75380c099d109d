"""TransformerLens hook names mapped onto Hugging Face modules.

A hook site is where an activation can be read or replaced. Names follow TransformerLens
(``blocks.L.hook_resid_pre``, ``hook_resid_mid``, ``hook_resid_post``, ``hook_attn_out``, ``hook_mlp_out``,
``mlp.hook_post``), so that SAEs trained on TransformerLens activations apply unchanged. Each site is
implemented with PyTorch forward hooks on the unmodified HF model (no re-implemented forward), and the
values seen equal TransformerLens's on the same weights loaded without weight processing.

An edit function receives the activation ``[batch, positions, d]`` computed in this forward (all prompt
positions on the first step, one position per KV-cached step) and returns a replacement or None.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from saesteer.errors import SaesteerError
from saesteer.models.families import Architecture, architecture_of, is_parallel

EditFn = Callable[[Tensor], "Tensor | None"]

SITE_KINDS = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out", "mlp.hook_post")
_NAME = re.compile(r"^blocks\.(\d+)\.(hook_resid_pre|hook_resid_mid|hook_resid_post|hook_attn_out|hook_mlp_out|mlp\.hook_post)$")


def n_layers(model: nn.Module) -> int:
    return len(model.get_submodule(architecture_of(model).layers))


def parse_hook_name(name: str) -> tuple[int, str]:
    """``blocks.6.hook_resid_post`` -> ``(6, "hook_resid_post")``; one-line error for anything else."""
    m = _NAME.match(name or "")
    if not m:
        raise SaesteerError(
            f"unknown hook name {name!r}; use blocks.L.<site> with site one of {', '.join(SITE_KINDS)}"
        )
    return int(m.group(1)), m.group(2)


def _first(output):
    return output[0] if isinstance(output, tuple) else output


def _replace_first(output, new: Tensor):
    if isinstance(output, tuple):
        return (new,) + tuple(output[1:])
    return new


def _hidden_from_args(args, kwargs) -> tuple[Tensor, bool]:
    if args:
        return args[0], True
    return kwargs["hidden_states"], False


class HookHandle:
    """Removes every PyTorch hook a site registered, once."""

    def __init__(self, handles):
        self._handles = list(handles)

    def remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()


@dataclass(frozen=True)
class HookSite:
    """One resolved hook site on one model: ``register(fn)`` attaches an edit/read function."""

    name: str
    layer: int
    kind: str
    model: nn.Module

    @property
    def arch(self) -> Architecture:
        return architecture_of(self.model)

    def block(self) -> nn.Module:
        """The transformer block (decoder layer) this site belongs to."""
        return self.model.get_submodule(self.arch.layers)[self.layer]

    def mlp_out_weight(self) -> Tensor:
        """The block's MLP output projection as ``[d_mlp, d_model]`` (GPT-2's Conv1D stores ``[in, out]``,
        ``nn.Linear`` ``[out, in]``): ``mlp.hook_post`` activations times it give the MLP's output."""
        proj = self.block().get_submodule(self.arch.mlp_out_proj)
        return proj.weight if type(proj).__name__ == "Conv1D" else proj.weight.T

    def register(self, fn: EditFn) -> HookHandle:
        block = self.block()
        kind = self.kind
        if kind == "hook_resid_pre":
            return HookHandle([block.register_forward_pre_hook(_pre_hook(fn), with_kwargs=True)])
        if kind == "hook_resid_post":
            return HookHandle([block.register_forward_hook(_out_hook(fn))])
        if kind == "hook_attn_out":
            return HookHandle([block.get_submodule(self.arch.attn_out_module).register_forward_hook(_out_hook(fn))])
        if kind == "hook_mlp_out":
            return HookHandle([block.get_submodule(self.arch.mlp_out_module).register_forward_hook(_out_hook(fn))])
        if kind == "mlp.hook_post":
            proj = block.get_submodule(self.arch.mlp_out_proj)
            return HookHandle([proj.register_forward_pre_hook(_pre_hook(fn), with_kwargs=True)])
        # hook_resid_mid = resid_pre + attn_out: remember resid_pre, edit through the attention output.
        state: dict[str, Tensor] = {}

        def remember(module, args, kwargs):
            state["resid_pre"] = _hidden_from_args(args, kwargs)[0]

        def on_attn(module, args, output):
            attn_out = _first(output)
            resid_pre = state.pop("resid_pre")
            mid = attn_out + resid_pre
            new = fn(mid)
            if new is None or new is mid:
                return None
            return _replace_first(output, new.to(attn_out.dtype) - resid_pre)

        attn = block.get_submodule(self.arch.attn_out_module)
        return HookHandle(
            [
                block.register_forward_pre_hook(remember, with_kwargs=True),
                attn.register_forward_hook(on_attn),
            ]
        )


def _pre_hook(fn: EditFn):
    def hook(module, args, kwargs):
        x, positional = _hidden_from_args(args, kwargs)
        new = fn(x)
        if new is None or new is x:
            return None
        new = new.to(x.dtype)
        if positional:
            return (new,) + tuple(args[1:]), kwargs
        kwargs = dict(kwargs)
        kwargs["hidden_states"] = new
        return args, kwargs

    return hook


def _out_hook(fn: EditFn):
    def hook(module, args, output):
        x = _first(output)
        new = fn(x)
        if new is None or new is x:
            return None
        return _replace_first(output, new.to(x.dtype))

    return hook


def hook_site(model: nn.Module, name: str) -> HookSite:
    """Resolve a TransformerLens hook name on ``model``; one-line error if unknown or out of range."""
    layer, kind = parse_hook_name(name)
    total = n_layers(model)
    if not 0 <= layer < total:
        raise SaesteerError(f"hook {name!r} names layer {layer}, but the model has layers 0..{total - 1}")
    if kind == "hook_resid_mid" and is_parallel(model):
        raise SaesteerError(
            f"hook {name!r} does not exist on this model: its attention and MLP run in parallel on"
            " hook_resid_pre (as in TransformerLens, which has no resid_mid there); use hook_resid_pre,"
            " hook_attn_out, hook_mlp_out or hook_resid_post"
        )
    return HookSite(name=name, layer=layer, kind=kind, model=model)


def site_width(model: nn.Module, name: str) -> int:
    """Width ``d`` of the activation at a hook site (d_model, or d_mlp for ``mlp.hook_post``)."""
    site = hook_site(model, name)
    if site.kind == "mlp.hook_post":
        return site.mlp_out_weight().shape[0]
    return d_model(model)


def d_model(model: nn.Module) -> int:
    """Width of the residual stream (read from the final norm, so composite configs need no special case)."""
    return int(model.get_submodule(architecture_of(model).final_norm).weight.shape[0])


def vocab_size(model: nn.Module) -> int:
    """Number of logits per position (read from the unembedding: multimodal configs keep it in a sub-config)."""
    return int(model.get_submodule(architecture_of(model).unembed).weight.shape[0])


@torch.no_grad()
def unembed_directions(model: nn.Module, directions: Tensor) -> Tensor:
    """Logit-lens: push residual-stream directions ``[n, d]`` through the final norm's gain and unembedding.

    Returns ``[n, vocab]``. Only the norm's elementwise gain is applied (a direction has no mean/scale of its own);
    Gemma's RMSNorm multiplies by ``1 + weight``.
    """
    arch = architecture_of(model)
    norm = model.get_submodule(arch.final_norm)
    unembed = model.get_submodule(arch.unembed)
    d = directions.to(unembed.weight.dtype)
    if getattr(norm, "weight", None) is not None:
        d = d * (norm.weight + arch.norm_gain_offset)
    return d @ unembed.weight.T
