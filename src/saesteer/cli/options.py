"""Options shared by commands that load a model and an SAE, and the one place that builds a Steerer."""

from __future__ import annotations

import functools
import json

import click

DEFAULT_MODEL = "gpt2-small"
DEFAULT_SAE = "openai:v5_32k/resid_post_mlp/6"


def model_options(func):
    """``--model --sae --hook --device --dtype``, passed to the command as keyword arguments."""

    @click.option("--model", "model", default=DEFAULT_MODEL, show_default=True,
                  help="gpt2-small, a Hugging Face hub id, or a local Hugging Face model directory.")
    @click.option("--sae", "sae", default=DEFAULT_SAE, show_default=True,
                  help="openai:FAMILY/LOCATION/LAYER, saelens:REPO/FOLDER, or a local SAE folder/.pt/.safetensors.")
    @click.option("--hook", "hook", default=None,
                  help="Hook site such as blocks.6.hook_resid_post (for SAE files that do not name one, or to override).")
    @click.option("--device", default="cpu", show_default=True, help="cpu, cuda, or auto.")
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        return func(*args, **kwargs)

    return wrapper


def build_steerer(model: str, sae: str | None, hook: str | None, device: str, dtype=None):
    """Load the model and SAE named on the command line."""
    from saesteer.steerer import Steerer

    return Steerer(model, sae, hook=hook, device=device, dtype=dtype)


def echo_json(obj) -> None:
    click.echo(json.dumps(obj, ensure_ascii=False, indent=2))
