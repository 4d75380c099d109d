"""The generation engine: ``generate_ids`` picks the fast exact decoder where it applies, else the
reference loop over the Hugging Face forward (``engine.generate``)."""

from __future__ import annotations

from saesteer.engine.generate import GenerationConfig, full_forward_argmax, generate_ids as reference_generate_ids
from saesteer.errors import SaesteerError
from saesteer.models.loading import parse_dtype

__all__ = ["GenerationConfig", "generate_ids", "reference_generate_ids", "full_forward_argmax"]


def generate_ids(model, prompts, config: GenerationConfig = GenerationConfig(), *, edits=(), eos_token_id=None,
                 pad_token_id: int = 0, on_step=None, engine: str = "auto", dtype=None, batch_size: int | None = None):
    """Generate ids for each prompt (see ``engine.generate.generate_ids``).

    ``engine``: ``auto`` (fast decoder where the model and settings allow, else reference), ``fast`` or
    ``reference``. ``dtype`` (fast engine only): compute dtype, e.g. ``torch.bfloat16``. ``batch_size``
    (fast engine only): rows per chunk; chosen from memory when None.
    """
    from saesteer.steering.hooks import active_hook_count

    use_fast = False
    # Hooks a user placed with record()/edit()/clamp() around this call live on the HF modules, which the
    # fast decoder does not run: such calls take the reference loop so that the hooks apply.
    if engine in ("auto", "fast") and active_hook_count(model) == 0:
        try:
            from saesteer.engine import fast
        except ImportError:  # the fast decoder is optional
            fast = None
        use_fast = fast is not None and fast.supports(model, config)
    if engine == "fast" and not use_fast:
        raise SaesteerError("the fast engine does not support this model, these settings or hooks placed around"
                            " the call; use engine='reference'")
    if not use_fast and dtype is not None and parse_dtype(dtype) != next(model.parameters()).dtype:
        raise SaesteerError(f"computing in {dtype} needs the fast engine, which cannot run this call; load the"
                            " model in that dtype instead (load_model(..., dtype=...)) or drop --dtype")
    if use_fast:
        return fast.generate_ids_fast(model, prompts, config, edits=edits, eos_token_id=eos_token_id,
                                      pad_token_id=pad_token_id, on_step=on_step, dtype=dtype, batch_size=batch_size)
    return reference_generate_ids(model, prompts, config, edits=edits, eos_token_id=eos_token_id,
                                  pad_token_id=pad_token_id, on_step=on_step)
