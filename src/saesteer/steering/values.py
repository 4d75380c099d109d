"""The one rule for clamp values, shared by the CLI, the Python API, sweeps and the web API.

A clamp value (in the SAE's latent units) must be a finite number with ``|value| <= MAX_ABS_VALUE``. Real
features fire at most at a few hundred; values far beyond that only overflow the model (``1e30`` turns every
logit into NaN and the text into "!!!!!!!!!!", ``1e39`` is not even a float32), so they are refused before
any work starts. A relative value (a multiple of a feature's maximum activation) obeys the same rule, both
as given and once multiplied.
"""

from __future__ import annotations

import math

from saesteer.errors import SaesteerError

MAX_ABS_VALUE = 1e5
"""The largest clamp value magnitude accepted anywhere (CLI, Python API, sweeps, web API)."""


def check_value(value, what: str = "clamp value") -> float:
    """``value`` as a float when it obeys the rule; else a one-line ``SaesteerError`` naming ``what``."""
    try:
        v = float(value)
    except (TypeError, ValueError, OverflowError):
        raise SaesteerError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(v) or abs(v) > MAX_ABS_VALUE:
        raise SaesteerError(f"{what} must be a finite number between {-MAX_ABS_VALUE:g} and {MAX_ABS_VALUE:g},"
                            f" got {value!r}")
    return v
