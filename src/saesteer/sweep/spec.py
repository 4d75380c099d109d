"""What a sweep is: the settings that decide its results, and the fingerprint that resumes and merges check.

Two runs belong to the same sweep when their :meth:`SweepSpec.identity` is equal. The identity holds what
changes a result: the model's and SAE's fingerprints (weights, not names or paths, so shards on different
machines agree), the hook, the clamp mode, the values (and whether they are relative), the prompt and its
tokens, the number of new tokens, the compute dtype, the feature selection, whether fluency is measured,
the key of the feature facts the metrics use (model, SAE, hook, reference text, settings), and the shard. The device, the engine and the batch size
are left out: the engines are exact, so they change how fast results come, not what they are.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace

from saesteer.errors import SaesteerError
from saesteer.steering.values import check_value

SPEC_VERSION = 1
FIRST_SETTINGS = ("values", "prompt", "mode", "relative", "max_new_tokens", "dtype", "fluency", "shard")
"""The sweep settings of :class:`SweepSpec`'s own fields; later ones go in ``SweepSpec.options``."""


def parse_features(text: str | None, d_sae: int) -> tuple[tuple[int, int], ...]:
    """``"all"`` | ``"START:STOP"`` | ``"A,B,C:D"`` -> sorted, merged ``[start, stop)`` ranges within ``[0, d_sae)``.

    ``START:`` runs to the end, ``:STOP`` starts at 0; STOP is exclusive (as in Python).
    """
    if text is None or text.strip().lower() == "all":
        return ((0, d_sae),)
    if not text.strip():
        raise SaesteerError("--features is empty; give all, START:STOP (STOP exclusive) or a list like 1,5,10:20")
    ranges = []
    for part in text.split(","):
        part = part.strip()
        try:
            if ":" in part:
                a, b = part.split(":", 1)
                start = int(a) if a.strip() else 0
                stop = int(b) if b.strip() else d_sae
            else:
                start = int(part)
                stop = start + 1
        except ValueError:
            raise SaesteerError(f"bad --features {text!r}; use all, START:STOP (STOP exclusive) or a list like 1,5,10:20") from None
        if not 0 <= start < stop <= d_sae:
            raise SaesteerError(f"--features {part!r} is outside [0, {d_sae}) for this SAE, or empty")
        ranges.append((start, stop))
    ranges.sort()
    merged: list[list[int]] = []
    for a, b in ranges:
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return tuple((a, b) for a, b in merged)


def parse_values(items) -> tuple[float, ...]:
    """``["20", "-20,10"]`` -> ``(20.0, -20.0, 10.0)``: a sweep's ``--values`` (repeated options of comma lists;
    blanks skipped, duplicates dropped: each value is swept once; at least one). ``compare_config.clamp_values``
    reads compare's single ``--values`` list, where order and repeats are the settings asked for."""
    if isinstance(items, (int, float)):
        items = [items]
    out: list[float] = []
    for item in items:
        for part in str(item).split(","):
            part = part.strip()
            if not part:
                continue
            try:
                v = float(part)
            except ValueError:
                raise SaesteerError(f"bad --values entry {part!r}; give numbers, e.g. --values 20 or --values -20,10,20") from None
            v = check_value(v, "--values entry")
            if v not in out:
                out.append(v)
    if not out:
        raise SaesteerError("no --values given; e.g. --values 20")
    return tuple(out)


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"I/N"`` (I counted from 0) -> ``(I, N)``; None -> ``(0, 1)``."""
    if text is None:
        return (0, 1)
    try:
        i, n = (int(x) for x in str(text).split("/"))
    except ValueError:
        raise SaesteerError(f"bad --shard {text!r}; write I/N, e.g. --shard 0/4 (I counts from 0)") from None
    if n < 1 or not 0 <= i < n:
        raise SaesteerError(f"--shard {text!r}: I counts from 0 and must be below N, e.g. 0/{max(n, 1)} .. {max(n, 1) - 1}/{max(n, 1)}")
    return (i, n)


@dataclass(frozen=True)
class SweepSpec:
    """Everything that decides a sweep's results (see the module docstring)."""

    model_fingerprint: str
    sae_fingerprint: str
    hook: str
    d_sae: int
    values: tuple[float, ...]
    prompt: str | None
    prompt_tokens: tuple[int, ...]
    features: tuple[tuple[int, int], ...]
    mode: str = "delta"
    relative: bool = False
    max_new_tokens: int = 10
    dtype: str = "float32"
    fluency: bool = False
    facts_key: str = ""
    """Identifies the feature facts the metrics use (model, SAE, hook, reference text, settings)."""
    shard: tuple[int, int] = (0, 1)
    options: tuple[tuple[str, object], ...] = ()
    """Result-changing settings added after the first spec (``readback``...), ``(name, value)`` sorted, each
    listed only when not at its default, so that sweeps without them keep the identity (and fingerprint)
    they always had."""
    info: dict = field(default_factory=dict, compare=False)
    """Facts about the run that are not part of the identity (model and SAE names, device, engine...)."""

    def identity(self) -> dict:
        d = asdict(self)
        d.pop("info")
        d.pop("options")
        d.update(dict(self.options))
        d["values"] = list(self.values)
        d["prompt_tokens"] = list(self.prompt_tokens)
        d["features"] = [list(r) for r in self.features]
        d["shard"] = list(self.shard)
        d["version"] = SPEC_VERSION
        return d

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:16]

    def unsharded(self) -> "SweepSpec":
        return replace(self, shard=(0, 1))

    @staticmethod
    def from_identity(d: dict, info: dict | None = None) -> "SweepSpec":
        d = dict(d)
        version = d.pop("version", SPEC_VERSION)
        if version != SPEC_VERSION:
            raise SaesteerError(f"this sweep was written by another saesteer version (spec {version}, this one reads {SPEC_VERSION})")
        return SweepSpec(
            model_fingerprint=d["model_fingerprint"], sae_fingerprint=d["sae_fingerprint"], hook=d["hook"],
            d_sae=int(d["d_sae"]), values=tuple(float(v) for v in d["values"]), prompt=d["prompt"],
            prompt_tokens=tuple(int(t) for t in d["prompt_tokens"]),
            features=tuple((int(a), int(b)) for a, b in d["features"]), mode=d["mode"], relative=bool(d["relative"]),
            max_new_tokens=int(d["max_new_tokens"]), dtype=d["dtype"], fluency=bool(d["fluency"]),
            facts_key=d["facts_key"], shard=(int(d["shard"][0]), int(d["shard"][1])),
            options=tuple(sorted((k, v) for k, v in d.items() if k not in _FIELDS)), info=dict(info or {}),
        )

    def differences(self, other: "SweepSpec", *, ignore: tuple[str, ...] = ()) -> list[str]:
        """Names of identity fields that differ, with both values (for error messages)."""
        a, b = self.identity(), other.identity()
        out = []
        for k in list(a) + [k for k in b if k not in a]:
            if k in ignore or a[k] == b.get(k):
                continue
            out.append(f"{k}: {_short(a.get(k))} vs {_short(b.get(k))}")
        return out

    # ------------------------------------------------------------- features
    def all_features(self) -> list[int]:
        """The selected features, in order, before sharding."""
        return [f for a, b in self.features for f in range(a, b)]

    def shard_features(self) -> list[int]:
        """This shard's features: every N-th selected feature starting at the I-th (shards are disjoint,
        their union is the selection, and each gets a similar mix of features)."""
        i, n = self.shard
        return self.all_features()[i::n]

    def n_shard_features(self) -> int:
        total = sum(b - a for a, b in self.features)
        i, n = self.shard
        return max(0, -(-(total - i) // n))


_FIELDS = set(SweepSpec.__dataclass_fields__) - {"options", "info"}


def _short(value, limit: int = 60) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
