"""Context managers that add hooks to a model and always remove them, even when the body raises.

* ``record(model, names)``: capture activations at hook sites.
* ``edit(model, name, fn)``: replace the activation with ``fn(act)`` (any function).
* ``clamp(model, sae, clamps, mode=...)``: clamp SAE features (one, several, or per row).
* ``hooks(model, edits)``: the general form, a list of ``(hook_name, fn)`` pairs.
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Sequence

import torch
from torch import Tensor

from saesteer.errors import SaesteerError
from saesteer.models.hook_sites import EditFn, hook_site, site_width
from saesteer.saes.base import SAE
from saesteer.steering.clamp import SAEClamp


def _unwrap(model):
    """Accept a LoadedModel or a raw nn.Module."""
    return getattr(model, "model", model) if not isinstance(model, torch.nn.Module) else model


ACTIVE_ATTR = "_saesteer_active_hooks"


def active_hook_count(model) -> int:
    """How many saesteer hooks are on ``model`` now (the fast engine defers to the reference loop if any)."""
    return getattr(_unwrap(model), ACTIVE_ATTR, 0)


@contextlib.contextmanager
def hooks(model, edits: Iterable[tuple[str, EditFn]]):
    """Register ``(hook_name, fn)`` pairs for the duration of the block; all are removed on exit."""
    module = _unwrap(model)
    sites = [(hook_site(module, name), fn) for name, fn in edits]  # resolve all before touching the model
    handles = []
    setattr(module, ACTIVE_ATTR, active_hook_count(module) + len(sites))
    try:
        for site, fn in sites:
            handles.append(site.register(fn))
        yield
    finally:
        for handle in handles:
            handle.remove()
        setattr(module, ACTIVE_ATTR, active_hook_count(module) - len(sites))


class Recording:
    """Activations captured per hook name, one tensor ``[B, T, d]`` per forward pass."""

    def __init__(self, names: Sequence[str]):
        self.names = list(names)
        self._store: dict[str, list[Tensor]] = {n: [] for n in self.names}

    def _capture(self, name: str) -> EditFn:
        def fn(act: Tensor):
            self._store[name].append(act.detach().clone())
            return None

        return fn

    def history(self, name: str) -> list[Tensor]:
        """Every activation recorded at ``name``, in forward order."""
        return self._store[name]

    def __getitem__(self, name: str) -> Tensor:
        """The activation from the latest forward pass at ``name`` (``[B, T, d]``)."""
        if name not in self._store:
            raise SaesteerError(f"hook {name!r} was not recorded; recorded: {self.names}")
        if not self._store[name]:
            raise SaesteerError(f"nothing was recorded at {name!r}: run the model inside the record() block")
        return self._store[name][-1]

    def sequence(self, name: str) -> Tensor:
        """All forward passes at ``name`` joined along positions (prompt then each cached step)."""
        return torch.cat(self._store[name], dim=1)

    def clear(self) -> None:
        for v in self._store.values():
            v.clear()


@contextlib.contextmanager
def record(model, names: str | Sequence[str]):
    """Capture activations at one or more hook sites while the block runs; yields a ``Recording``."""
    names = [names] if isinstance(names, str) else list(names)
    rec = Recording(names)
    with hooks(model, [(n, rec._capture(n)) for n in names]):
        yield rec


@contextlib.contextmanager
def edit(model, hook_name: str, fn: EditFn):
    """Replace the activation at ``hook_name`` with ``fn(act)`` (e.g. ``lambda a: -10 * a``)."""
    with hooks(model, [(hook_name, fn)]):
        yield


def check_sae_fits(model, sae: SAE, hook_name: str) -> None:
    """One-line error when the SAE's width differs from the activation width at the hook."""
    width = site_width(_unwrap(model), hook_name)
    if width != sae.d_in:
        raise SaesteerError(
            f"the SAE reads {sae.d_in}-wide activations but {hook_name} is {width} wide; pick the SAE"
            " trained for this model and hook, or pass --hook"
        )


def resolve_hook_name(sae: SAE, hook_name: str | None) -> str:
    name = hook_name or sae.hook_name
    if not name:
        raise SaesteerError("this SAE does not say which hook it reads; pass hook_name= (CLI: --hook NAME)")
    return name


def make_clamp(model, sae: SAE, clamps=None, *, rows=None, mode: str = "delta", hook_name: str | None = None):
    """Validate and build ``(hook_name, SAEClamp)`` for ``clamps`` (shared) or ``rows`` (per row)."""
    name = resolve_hook_name(sae, hook_name)
    check_sae_fits(model, sae, name)
    return name, SAEClamp(sae, clamps, rows=rows, mode=mode)


@contextlib.contextmanager
def clamp(model, sae: SAE, clamps=None, *, rows=None, mode: str = "delta", hook_name: str | None = None):
    """Clamp SAE features at the SAE's hook for the duration of the block.

    ``clamps``: ``{feature: value}``, ``(feature, value)``, or a list of those / ``FeatureClamp``s, shared by
    every batch row. ``rows``: one such set per batch row (row b clamps ``rows[b]``).
    """
    name, fn = make_clamp(model, sae, clamps, rows=rows, mode=mode, hook_name=hook_name)
    with hooks(model, [(name, fn)]):
        yield fn
