"""Options shared by commands that load a model and an SAE, and the one place that builds a Steerer."""

from __future__ import annotations

import functools
import json

import click

from saesteer.defaults import DEFAULT_MODEL, DEFAULT_SAE, choose
from saesteer.steerer import Steerer


def model_options(func):
    """``--model --sae --hook --device --dtype``, passed to the command as keyword arguments."""

    @click.option("--model", "model", default=DEFAULT_MODEL, show_default=True,
                  help="gpt2-small, a Hugging Face hub id, or a local Hugging Face model directory.")
    @click.option("--sae", "sae", default=DEFAULT_SAE, show_default=True,
                  help="openai:FAMILY/LOCATION/LAYER, saelens:RELEASE/SAE_ID (SAELens's registry, Gemma Scope),"
                       " saelens:REPO/FOLDER, hf:REPO/FOLDER, or a local SAE folder (SAELens, Gemma Scope,"
                       " sparsify, dictionary_learning) or .pt/.safetensors/.npz file.")
    @click.option("--hook", "hook", default=None,
                  help="Hook site such as blocks.6.hook_resid_post (for SAE files that do not name one, or to override).")
    @click.option("--device", default="cpu", show_default=True, help="cpu, cuda, or auto.")
    @click.option("--force-hook", "force_hook", is_flag=True,
                  help="Use the SAE at --hook even though it names another hook site.")
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        click.get_current_context().meta["saesteer.force_hook"] = kwargs.pop("force_hook", False)
        return func(*args, **kwargs)

    return wrapper


def build_steerer(model: str, sae: str | None, hook: str | None, device: str, dtype=None):
    """Load the model and SAE named on the command line (the embedded pair where the defaults are offline)."""
    choice = choose(model, sae, hook)
    if choice.note:
        click.echo(f"note: {choice.note}", err=True)
    ctx = click.get_current_context(silent=True)
    force = bool(ctx and ctx.meta.get("saesteer.force_hook"))
    return Steerer(choice.model, choice.sae, hook=choice.hook, device=device, dtype=dtype, force_hook=force)


def echo_json(obj) -> None:
    click.echo(json.dumps(obj, ensure_ascii=False, indent=2))
