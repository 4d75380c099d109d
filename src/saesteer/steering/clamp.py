"""Clamping SAE features inside a hook: the maths, for one feature, several, or a different set per row.

Three modes:

* ``delta`` (default): ``x' = x + decode(z') - decode(z)``. Only the clamped latents differ between ``z'``
  and ``z``, so this is ``x + sum_j (v_j - z_j) W_dec[j]`` (times the token's ``std`` for layer-normalised
  SAEs). The SAE's error term is kept, and a latent clamped to its own value leaves ``x`` exactly unchanged.
* ``reconstruct``: ``x' = decode(z')``, replacing the activation by the edited reconstruction (the
  practical session's method; it loses the SAE's error and changes even rows with nothing clamped).
* ``add`` (Neuronpedia's default steering): ``x' = x + v * (decode(z + e_f) - decode(z))``, i.e. ``v`` times
  feature f's decoder direction in the activation's own units (times the token's ``std`` for SAEs that
  normalise their input), whatever the feature's current activation. ``v`` is a strength, not a target value.

Clamps apply at every position the model computes: prompt positions and every KV-cached step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import Tensor

from saesteer.errors import SaesteerError
from saesteer.saes.base import SAE
from saesteer.steering.values import check_value

MODES = ("delta", "reconstruct", "add")


@dataclass(frozen=True)
class FeatureClamp:
    """Set SAE latent ``feature`` to ``value`` (in the SAE's latent units)."""

    feature: int
    value: float

    def __post_init__(self):
        if isinstance(self.feature, bool) or not isinstance(self.feature, int):
            raise SaesteerError(f"feature must be an integer, got {self.feature!r}")
        object.__setattr__(self, "value", check_value(self.value, f"clamp value for feature {self.feature}"))

    def to_dict(self) -> dict:
        return {"feature": self.feature, "value": float(self.value)}


def as_clamps(spec) -> list[FeatureClamp]:
    """Normalise ``{f: v}``, ``(f, v)``, ``[(f, v), ...]``, ``FeatureClamp`` or ``[FeatureClamp, ...]``."""
    if spec is None:
        return []
    if isinstance(spec, FeatureClamp):
        return [spec]
    if isinstance(spec, Mapping):
        return [FeatureClamp(int(f), float(v)) for f, v in spec.items()]
    if isinstance(spec, tuple) and len(spec) == 2 and not isinstance(spec[0], (tuple, list, FeatureClamp)):
        return [FeatureClamp(int(spec[0]), float(spec[1]))]
    out = []
    for item in spec:
        out.extend(as_clamps(item))
    return out


def parse_clamp(text: str) -> FeatureClamp:
    """``"123=20"`` -> FeatureClamp(123, 20.0); one-line error otherwise."""
    feature, sep, value = text.partition("=")
    try:
        if not sep:
            raise ValueError
        return FeatureClamp(int(feature), float(value))
    except ValueError:
        raise SaesteerError(f"bad clamp {text!r}; write FEATURE=VALUE, e.g. --clamp 123=20") from None


class SAEClamp:
    """An edit function that clamps SAE latents; per-row clamp sets follow rows as they leave a batch.

    Pass ``clamps`` (one set, shared by every row) or ``rows`` (one set per batch row; rows may have
    different numbers of clamps, or none).
    """

    def __init__(self, sae: SAE, clamps=None, *, rows: Sequence | None = None, mode: str = "delta"):
        if mode not in MODES:
            raise SaesteerError(f"unknown clamp mode {mode!r}; use one of {', '.join(MODES)}")
        if (clamps is None) == (rows is None):
            raise SaesteerError("give either clamps (shared by all rows) or rows (one clamp set per row)")
        self.sae = sae
        self.mode = mode
        self.per_row = rows is not None
        row_sets = [as_clamps(r) for r in rows] if self.per_row else [as_clamps(clamps)]
        for row in row_sets:
            for c in row:
                sae.check_feature(c.feature)
        width = max([len(r) for r in row_sets] + [1])
        idx = torch.zeros(len(row_sets), width, dtype=torch.long)
        val = torch.zeros(len(row_sets), width, dtype=torch.float32)
        mask = torch.zeros(len(row_sets), width, dtype=torch.bool)
        for b, row in enumerate(row_sets):
            for m, c in enumerate(row):
                idx[b, m], val[b, m], mask[b, m] = c.feature, c.value, True
        self._set(idx, val, mask)

    def _set(self, idx: Tensor, val: Tensor, mask: Tensor) -> None:
        dev = self.sae.device
        self.idx, self.val, self.mask = idx.to(dev), val.to(dev, self.sae.dtype), mask.to(dev)

    @property
    def n_rows(self) -> int | None:
        return self.idx.shape[0] if self.per_row else None

    def select_rows(self, index: Tensor) -> "SAEClamp":
        """The same clamps restricted to batch rows ``index`` (for rows leaving or re-ordering a batch)."""
        if not self.per_row:
            return self
        new = object.__new__(SAEClamp)
        new.sae, new.mode, new.per_row = self.sae, self.mode, True
        index = index.to(self.idx.device)
        new.idx, new.val, new.mask = self.idx[index], self.val[index], self.mask[index]
        return new

    def __call__(self, act: Tensor) -> Tensor:
        """``act [B, T, d_in]`` -> clamped activation of the same shape and dtype."""
        sae = self.sae
        batch = act.shape[0]
        if self.per_row and self.idx.shape[0] != batch:
            raise SaesteerError(
                f"per-row clamps were given for {self.idx.shape[0]} rows but the batch has {batch} rows"
            )
        x = act.to(sae.dtype)
        idx = self.idx.expand(batch, -1)  # [B, m]
        val = self.val.expand(batch, -1)
        mask = self.mask.expand(batch, -1)
        directions = sae.W_dec[idx]  # [B, m, d]
        if self.mode == "add":
            coef = torch.where(mask, val, torch.zeros_like(val))  # [B, m]
            delta = (coef[:, :, None] * directions).sum(dim=1)[:, None, :]  # [B, 1, d]
            scale = sae.output_scale(sae.norm_stats(x))
            return (x + (delta if scale is None else delta * scale)).to(act.dtype)
        z, stats = sae.encode_with_stats(x)
        gather_idx = idx[:, None, :].expand(-1, x.shape[1], -1)  # [B, T, m]
        if self.mode == "reconstruct":
            current = z.gather(-1, gather_idx)
            target = torch.where(mask[:, None, :], val[:, None, :].expand_as(current), current)
            z = z.scatter(-1, gather_idx, target)
            return sae.decode(z, stats).to(act.dtype)
        current = z.gather(-1, gather_idx)  # [B, T, m]
        coef = torch.where(mask[:, None, :], val[:, None, :] - current, torch.zeros_like(current))
        delta = torch.bmm(coef, directions)  # [B, T, d]
        scale = sae.output_scale(stats)
        return (x + (delta if scale is None else delta * scale)).to(act.dtype)
