"""Context managers that add hooks to a model and always remove them, even when the body raises.

* ``record(model, names)``: capture activations at hook sites.
* ``edit(model, name, fn)``: replace the activation with ``fn(act)`` (any function).
* ``clamp(model, sae, clamps, mode=...)``: clamp SAE features (one, several, or per row).
* ``hooks(model, edits)``: the general form, a list of ``(hook_name, fn)`` pairs.

Which hooks are on a model is explicit: saesteer's own hooks are counted in ``ACTIVE_HOOKS`` (a registry
owned here, queried by the engine), and ``user_hooks(model)`` lists every other forward hook or pre-hook
on any submodule (``register_forward_hook`` and the like, TransformerLens-style hook functions). The fast
engine does not run the Hugging Face modules, so while either kind is present ``generate`` takes the
reference loop, where the hooks apply.
"""

from __future__ import annotations

import contextlib
import weakref
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


class HookRegistry:
    """How many saesteer hooks each model carries now (models are held weakly; nothing is set on them)."""

    def __init__(self):
        self._counts: "weakref.WeakKeyDictionary[torch.nn.Module, int]" = weakref.WeakKeyDictionary()

    def count(self, model) -> int:
        return self._counts.get(_unwrap(model), 0)

    @contextlib.contextmanager
    def holding(self, model, n: int):
        """Count ``n`` hooks on ``model`` for the duration of the block."""
        module = _unwrap(model)
        self._counts[module] = self.count(module) + n
        try:
            yield
        finally:
            left = self.count(module) - n
            if left:
                self._counts[module] = left
            else:
                self._counts.pop(module, None)


ACTIVE_HOOKS = HookRegistry()
"""saesteer's own hooks (``record``/``edit``/``clamp``/``hooks`` blocks) on each model."""

OBSERVING_HOOKS = ("transformers.utils.output_capturing",)
"""Modules whose hooks only observe (transformers' own output capturing): they do not count as user hooks."""


def active_hook_count(model) -> int:
    """How many saesteer hooks are on ``model`` now (the fast engine defers to the reference loop if any)."""
    return ACTIVE_HOOKS.count(model)


def _hook_origin(fn) -> str:
    fn = getattr(fn, "func", fn)  # functools.partial
    return getattr(fn, "__module__", None) or type(fn).__module__ or ""


def user_hooks(model) -> list[str]:
    """``"submodule: kind"`` for every forward hook or pre-hook on ``model`` or its submodules, and torch's
    global module hooks, that saesteer did not place (transformers' observing hooks excluded)."""
    found = []
    global_hooks = {"global forward hook": torch.nn.modules.module._global_forward_hooks,
                    "global forward pre-hook": torch.nn.modules.module._global_forward_pre_hooks}
    for kind, table in global_hooks.items():
        found += [kind for fn in table.values() if not _hook_origin(fn).startswith(OBSERVING_HOOKS)]
    if ACTIVE_HOOKS.count(model):
        return found + ["saesteer hooks"]
    for name, sub in _unwrap(model).named_modules():
        for kind in ("_forward_pre_hooks", "_forward_hooks"):
            for fn in getattr(sub, kind, {}).values():
                if not _hook_origin(fn).startswith(OBSERVING_HOOKS):
                    found.append(f"{name or '(model)'}: {kind[1:-1].replace('_', ' ')}")
    return found


@contextlib.contextmanager
def hooks(model, edits: Iterable[tuple[str, EditFn]]):
    """Register ``(hook_name, fn)`` pairs for the duration of the block; all are removed on exit."""
    module = _unwrap(model)
    sites = [(hook_site(module, name), fn) for name, fn in edits]  # resolve all before touching the model
    handles = []
    with ACTIVE_HOOKS.holding(module, len(sites)):
        try:
            for site, fn in sites:
                handles.append(site.register(fn))
            yield
        finally:
            for handle in handles:
                handle.remove()


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

    def __getitem__(self, name: str) -> Tensor:
        """The activation from the latest forward pass at ``name`` (``[B, T, d]``)."""
        if name not in self._store:
            raise SaesteerError(f"hook {name!r} was not recorded; recorded: {self.names}")
        if not self._store[name]:
            raise SaesteerError(f"nothing was recorded at {name!r}: run the model inside the record() block")
        return self._store[name][-1]

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
