"""The ranks ``saesteer top`` gives a sweep folder's results, as numbers for the sweep browser's index.

``steer``, ``word_rank`` and ``readback_rank`` (with ``readback``, ``word_p`` and ``readback_p``) depend on
every result at the same value, so they are not in ``results.jsonl``: :func:`folder_ranks` computes them for
the whole folder with ``sweep.rank.annotate_folder`` (the numbers ``saesteer top`` shows), and the browser
writes them into its metric columns. A folder that is not a saesteer sweep (no such manifest) has none.
"""

from __future__ import annotations

import math
import os

from saesteer.errors import SaesteerError
from saesteer.sweep.rank import annotate_folder

RANK_FIELDS = ("steer", "word_rank", "readback_rank", "readback", "word_p", "readback_p")
"""The fields of ``rank.annotate`` the browser shows, in the order its columns take."""


def _number(x) -> float | None:
    if x is None or isinstance(x, bool):
        return None
    x = float(x)
    return None if math.isnan(x) else x


def folder_ranks(path: str | os.PathLike, known=()) -> tuple[list[str], list[tuple]]:
    """``(names, rows)``: the :data:`RANK_FIELDS` some result has (or in ``known``, to be cleared), and per
    result ``(feature, value, *numbers)`` in that order; no rows for a folder ``saesteer top`` cannot rank."""
    try:
        records, _ = annotate_folder(path)
    except (SaesteerError, OSError, ValueError, KeyError, TypeError):
        return [n for n in RANK_FIELDS if n in known], []
    names = [n for n in RANK_FIELDS if n in known or any(r.get(n) is not None for r in records)]
    return names, [(r["feature"], float(r["value"]), *(_number(r.get(n)) for n in names)) for r in records]
