"""Dtype names, parsed in one place for models, SAEs and the engine.

``parse_dtype`` reads a ``torch.dtype`` or its name (``"float32"``, ``"torch.bfloat16"``, ``"half"``; any
case); ``allowed`` says which names a caller takes: a model computes in :data:`COMPUTE_DTYPES`, an SAE's
weights may also be float64 (:data:`SAE_DTYPES`). ``dtype_name`` is the spelling written to files.
"""

from __future__ import annotations

import torch

from saesteer.errors import SaesteerError

DTYPES = {
    "float32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "double": torch.float64,
}
"""Every accepted name (canonical names and torch's aliases)."""

COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
"""What a model (and the engine) computes in."""

SAE_DTYPES = ("float32", "float16", "bfloat16", "float64")
"""What an SAE's weights may be stored and loaded in."""


def parse_dtype(value: str | torch.dtype | None, *, allowed: tuple[str, ...] = COMPUTE_DTYPES) -> torch.dtype | None:
    """None -> None; a floating ``torch.dtype`` as it is; a name among ``allowed`` (or one of their aliases,
    ``torch.`` prefix and case ignored) -> its dtype; anything else -> a one-line ``SaesteerError``."""
    if value is None:
        return None
    if isinstance(value, torch.dtype):
        if not value.is_floating_point:
            raise SaesteerError(f"dtype must be a floating type, got {value}")
        return value
    dtype = DTYPES.get(str(value).strip().lower().removeprefix("torch."))
    if dtype is None or dtype not in {DTYPES[name] for name in allowed}:
        raise SaesteerError(f"unknown dtype {value!r}; use one of {', '.join(allowed)}")
    return dtype


def dtype_name(dtype: str | torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"`` (the spelling files and manifests hold); a name is kept as given."""
    return dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")
