"""The table of every feature's facts (firing tokens and words, logit lens, examples) and how it is stored."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from saesteer.evaluation.text_metrics import Targets
from saesteer.io import atomic_path, atomic_write_json

FACTS_VERSION = 2


@dataclass(frozen=True)
class TokenScore:
    """A token with a number: its activation (firing tokens) or its logit (logit lens)."""

    id: int
    text: str
    value: float


@dataclass(frozen=True)
class FeatureFacts:
    """What one feature is about."""

    feature: int
    max_activation: float
    """Its largest activation on the reference text (0 for a feature that never fired there)."""
    frequency: float
    """Share of reference tokens (BOS excluded) on which it is active."""
    firing_tokens: list[TokenScore] = field(default_factory=list)
    """Distinct tokens of its top activations, most active first (value: the activation)."""
    firing_words: list[str] = field(default_factory=list)
    """Distinct content words those tokens belong to, most active first."""
    lens_top: list[TokenScore] = field(default_factory=list)
    """Tokens its decoder direction promotes most (value: the logit)."""
    lens_bottom: list[TokenScore] = field(default_factory=list)
    """Tokens it suppresses most."""

    def targets(self) -> Targets:
        """What counts as on target for this feature in ``text_metrics``."""
        return Targets.of(self.firing_words, [t.id for t in self.firing_tokens], [t.id for t in self.lens_top])

    def to_dict(self) -> dict:
        return asdict(self)


class FactsTable:
    """Facts of every feature of one SAE: ``table[j]`` -> :class:`FeatureFacts`.

    Tensors (``[d_sae, ...]``): ``max_act``, ``frequency``, ``fire_ids``/``fire_vals`` (distinct firing
    tokens, id -1 = none), ``lens_top_ids``/``lens_top_vals``, ``lens_bottom_ids``/``lens_bottom_vals``,
    ``example_index``/``example_vals`` (top activations as flat indices into ``reference_tokens``, -1 = none),
    ``reference_tokens`` ``[n, length + 1]``.
    """

    TENSORS = ("max_act", "frequency", "fire_ids", "fire_vals", "lens_top_ids", "lens_top_vals", "lens_bottom_ids",
               "lens_bottom_vals", "example_index", "example_vals", "reference_tokens")

    def __init__(self, tensors: dict[str, Tensor], words: list[list[str]], token_texts: dict[int, str], meta: dict):
        self.tensors = tensors
        self.words = words
        self.token_texts = token_texts
        self.meta = meta
        self._targets: dict[int, Targets] = {}

    def __len__(self) -> int:
        return int(self.tensors["max_act"].shape[0])

    @property
    def digest(self) -> str:
        """Hash of the content: equal tables give equal digests (checked when sweeps are resumed or merged)."""
        return self.meta["digest"]

    @property
    def max_activation(self) -> Tensor:
        return self.tensors["max_act"]

    def _scores(self, ids_key: str, vals_key: str, j: int) -> list[TokenScore]:
        ids, vals = self.tensors[ids_key][j].tolist(), self.tensors[vals_key][j].tolist()
        return [TokenScore(i, self.token_texts.get(i, ""), v) for i, v in zip(ids, vals) if i >= 0]

    def __getitem__(self, j: int) -> FeatureFacts:
        j = int(j)
        if not 0 <= j < len(self):
            raise IndexError(f"feature {j} is outside [0, {len(self)})")
        return FeatureFacts(
            feature=j,
            max_activation=float(self.tensors["max_act"][j]),
            frequency=float(self.tensors["frequency"][j]),
            firing_tokens=self._scores("fire_ids", "fire_vals", j),
            firing_words=list(self.words[j]),
            lens_top=self._scores("lens_top_ids", "lens_top_vals", j),
            lens_bottom=self._scores("lens_bottom_ids", "lens_bottom_vals", j),
        )

    def targets(self, j: int) -> Targets:
        """``self[j].targets()``, memoised (cheap to call per sweep row)."""
        t = self._targets.get(j)
        if t is None:
            ids = self.tensors["fire_ids"][j].tolist()
            lens = self.tensors["lens_top_ids"][j].tolist()
            t = Targets.of(self.words[j], [i for i in ids if i >= 0], [i for i in lens if i >= 0])
            if len(self._targets) > 100_000:
                self._targets.clear()
            self._targets[j] = t
        return t

    def examples(self, j: int, context: int = 8) -> list[tuple[float, list[int], int]]:
        """Top activations of feature ``j``: ``(activation, tokens around it, index of the token in them)``."""
        ref = self.tensors["reference_tokens"]
        width = ref.shape[1]
        out = []
        for idx, val in zip(self.tensors["example_index"][j].tolist(), self.tensors["example_vals"][j].tolist()):
            if idx < 0:
                continue
            s, p = divmod(idx, width)
            lo = max(0, p - context)
            out.append((val, ref[s, lo:p + 2].tolist(), p - lo))
        return out

    # ------------------------------------------------------------- disk
    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``facts.safetensors`` then ``facts.json`` into ``directory`` (each atomically)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(directory / "facts.safetensors") as tmp:
            save_file({k: v.contiguous() for k, v in self.tensors.items()}, str(tmp))
        atomic_write_json(directory / "facts.json", {
            "meta": self.meta, "words": self.words,
            "token_texts": {str(k): v for k, v in sorted(self.token_texts.items())},
        })
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "FactsTable":
        from safetensors.torch import load_file

        directory = Path(directory)
        info = json.loads((directory / "facts.json").read_text(encoding="utf-8"))
        tensors = load_file(str(directory / "facts.safetensors"))
        return cls(tensors, info["words"], {int(k): v for k, v in info["token_texts"].items()}, info["meta"])

    @staticmethod
    def exists(directory: str | os.PathLike) -> bool:
        d = Path(directory)
        return (d / "facts.json").is_file() and (d / "facts.safetensors").is_file()


def table_digest(tensors: dict[str, Tensor], words: list[list[str]]) -> str:
    """Hash of a table's tensors and words (``FactsTable.digest``)."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].contiguous()
        h.update(f"{k}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    h.update(json.dumps(words).encode())
    return h.hexdigest()[:16]
