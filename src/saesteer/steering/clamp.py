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

Clamps apply at every position the model computes: prompt positions and every KV-cached step. Each mode is
one :class:`ClampMode` in :data:`STEERING_MODES` (its maths, its help and what it guarantees): a new mode is
one entry there, and every command, config, the web API and the sweep accept it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Protocol, Sequence

import torch
from torch import Tensor

from saesteer.errors import SaesteerError
from saesteer.saes.base import SAE
from saesteer.steering.values import check_value



def _delta(sae: SAE, x: Tensor, idx: Tensor, val: Tensor, mask: Tensor) -> Tensor:
    z, stats = sae.encode_with_stats(x)
    current = z.gather(-1, idx[:, None, :].expand(-1, x.shape[1], -1))  # [B, T, m]
    coef = torch.where(mask[:, None, :], val[:, None, :] - current, torch.zeros_like(current))
    delta = torch.bmm(coef, sae.W_dec[idx])  # [B, T, d]
    scale = sae.output_scale(stats)
    return x + (delta if scale is None else delta * scale)


def _reconstruct(sae: SAE, x: Tensor, idx: Tensor, val: Tensor, mask: Tensor) -> Tensor:
    z, stats = sae.encode_with_stats(x)
    gather_idx = idx[:, None, :].expand(-1, x.shape[1], -1)  # [B, T, m]
    current = z.gather(-1, gather_idx)
    target = torch.where(mask[:, None, :], val[:, None, :].expand_as(current), current)
    return sae.decode(z.scatter(-1, gather_idx, target), stats)


def _add(sae: SAE, x: Tensor, idx: Tensor, val: Tensor, mask: Tensor) -> Tensor:
    coef = torch.where(mask, val, torch.zeros_like(val))  # [B, m]
    delta = (coef[:, :, None] * sae.W_dec[idx]).sum(dim=1)[:, None, :]  # [B, 1, d]
    scale = sae.output_scale(sae.norm_stats(x))
    return x + (delta if scale is None else delta * scale)


@dataclass(frozen=True)
class ClampMode:
    """A steering mode: how a set of clamps ``(idx, val, mask) [B, m]`` changes an activation ``x [B, T, d]``."""

    name: str
    help: str
    """One clause for the ``--mode`` help."""
    apply: Callable[[SAE, Tensor, Tensor, Tensor, Tensor], Tensor]
    """``(sae, x, idx, val, mask) -> x'``, in the SAE's dtype."""
    keeps_unclamped: bool
    """A row with nothing clamped keeps its activation exactly (so an empty row is the unsteered run)."""


STEERING_MODES: dict[str, ClampMode] = {m.name: m for m in (
    ClampMode("delta", "add decode(z')-decode(z), keeping the SAE error", _delta, keeps_unclamped=True),
    ClampMode("reconstruct", "replace by decode(z')", _reconstruct, keeps_unclamped=False),
    ClampMode("add", "add VALUE times the feature's decoder direction (Neuronpedia's steering)", _add,
              keeps_unclamped=True),
)}
"""Every steering mode, by name; the first is the default."""

MODES = tuple(STEERING_MODES)

MODE_HELP = "; ".join(f"{m.name}: {m.help}" for m in STEERING_MODES.values()) + "."
"""The ``--mode`` help, from the modes."""


def clamp_mode(name: str) -> ClampMode:
    """The :class:`ClampMode` called ``name``, or a one-line error."""
    if name not in STEERING_MODES:
        raise SaesteerError(f"unknown clamp mode {name!r}; use one of {', '.join(STEERING_MODES)}")
    return STEERING_MODES[name]


class LatentClamp(Protocol):
    """What an edit that clamps SAE latents shows the engine, which may compute the same edit from packed
    weights (``engine.fused_clamp``): the SAE, the mode, and the clamp sets ``idx, val, mask [R, m]`` (R = 1
    and ``per_row`` False for a set shared by every row). :class:`SAEClamp` is one; it says so by
    ``latent_clamp()`` returning itself."""

    sae: SAE
    mode: str
    per_row: bool
    idx: Tensor
    val: Tensor
    mask: Tensor

    def select_rows(self, index: Tensor) -> "LatentClamp": ...


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
        clamp_mode(mode)
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

    def latent_clamp(self) -> "SAEClamp":
        """This edit as a :class:`LatentClamp` (the engine's explicit question; other edits do not answer it)."""
        return self

    def __call__(self, act: Tensor) -> Tensor:
        """``act [B, T, d_in]`` -> clamped activation of the same shape and dtype."""
        batch = act.shape[0]
        if self.per_row and self.idx.shape[0] != batch:
            raise SaesteerError(
                f"per-row clamps were given for {self.idx.shape[0]} rows but the batch has {batch} rows"
            )
        x = act.to(self.sae.dtype)
        sets = (t.expand(batch, -1) for t in (self.idx, self.val, self.mask))  # [B, m] each
        return STEERING_MODES[self.mode].apply(self.sae, x, *sets).to(act.dtype)
