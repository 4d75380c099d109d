"""The generation engine: ``generate_ids`` picks the fast exact decoder where it applies, else the
reference loop over the Hugging Face forward (``engine.generate``).

The reference loop is taken when the model's family has no fast decoder (Gemma, GPT-NeoX, Phi-3, ...), for
settings the fast decoder does not honour, and whenever hooks are on the model: saesteer's own
``record``/``edit``/``clamp`` blocks around the call, or any hook the user registered on a submodule
(``steering.hooks.user_hooks``), which the fast decoder would skip because it does not run the modules.
"""

from __future__ import annotations

import logging
import weakref

from saesteer.engine import fast
from saesteer.engine.generate import GenerationConfig, full_forward_argmax, generate_ids as reference_generate_ids
from saesteer.errors import SaesteerError
from saesteer.models.loading import parse_dtype
from saesteer.steering.hooks import active_hook_count, user_hooks

__all__ = ["GenerationConfig", "generate_ids", "reference_generate_ids", "full_forward_argmax"]

log = logging.getLogger("saesteer")
_TOLD: "weakref.WeakSet" = weakref.WeakSet()


def _say_once(model, found: list[str]) -> None:
    """One log line per model: its hooks send generation to the reference loop."""
    module = getattr(model, "model", model)
    try:
        if module in _TOLD:
            return
        _TOLD.add(module)
    except TypeError:  # not weak-referenceable: say it every time
        pass
    more = f" and {len(found) - 1} more" if len(found) > 1 else ""
    log.warning("saesteer: hooks on the model (%s%s): generating with the reference loop so that they apply",
                found[0], more)


def generate_ids(model, prompts, config: GenerationConfig = GenerationConfig(), *, edits=(), eos_token_id=None,
                 pad_token_id: int = 0, on_step=None, engine: str = "auto", dtype=None, batch_size: int | None = None):
    """Generate ids for each prompt (see ``engine.generate.generate_ids``).

    ``engine``: ``auto`` (fast decoder where the model, settings and hooks allow, else reference), ``fast``
    or ``reference``. ``dtype`` (fast engine only): compute dtype, e.g. ``torch.bfloat16``. ``batch_size``
    (fast engine only): rows per chunk; chosen from memory when None.
    """
    use_fast = False
    if engine in ("auto", "fast") and active_hook_count(model) == 0:
        found = user_hooks(model)
        if found:
            _say_once(model, found)
        else:
            use_fast = fast.supports(model, config)
    if engine == "fast" and not use_fast:
        raise SaesteerError("the fast engine does not support this model, these settings or hooks placed on the"
                            " model; use engine='reference'")
    if not use_fast and dtype is not None and parse_dtype(dtype) != next(model.parameters()).dtype:
        raise SaesteerError(f"computing in {dtype} needs the fast engine, which cannot run this call; load the"
                            " model in that dtype instead (load_model(..., dtype=...)) or drop --dtype")
    if use_fast:
        return fast.generate_ids_fast(model, prompts, config, edits=edits, eos_token_id=eos_token_id,
                                      pad_token_id=pad_token_id, on_step=on_step, dtype=dtype, batch_size=batch_size)
    return reference_generate_ids(model, prompts, config, edits=edits, eos_token_id=eos_token_id,
                                  pad_token_id=pad_token_id, on_step=on_step)
