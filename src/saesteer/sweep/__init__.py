"""Sweeps over every feature of an SAE: clamp each to each value during generation, measure, rank.

* ``SweepConfig`` / ``RayConfig``: a sweep's settings, declared once (``config``).
* ``Sweep`` / ``sweep``: the resumable, shardable, batched loop (``runner``); results are ``SweepResult``s.
* ``SweepRun``: an open run (features to do, record, close): the folder's bookkeeping and lock (``folder``).
* ``SweepSpec``: what decides a sweep's results, and the identity resumes and merges check (``spec``).
* ``ResultStore``: the folder, with its append-only, crash-safe ``results.jsonl`` (``store``).
* ``distributed_sweep``: the same sweep on Ray workers, into one folder (``distributed``; needs ``saesteer[ray]``).
* ``merge``: join shards; ``rank``/``top``: the best features (``rank``).
"""

from saesteer.sweep.config import RayConfig, SweepConfig
from saesteer.sweep.distributed import distributed_sweep
from saesteer.sweep.folder import SweepRun
from saesteer.sweep.merge import merge
from saesteer.sweep.rank import Row, format_table, rank, top
from saesteer.sweep.runner import Sweep, SweepResult, load_sweep, sweep
from saesteer.sweep.spec import SweepSpec
from saesteer.sweep.store import ResultStore, load_records

__all__ = ["RayConfig", "ResultStore", "Row", "Sweep", "SweepConfig", "SweepResult", "SweepRun", "SweepSpec",
           "distributed_sweep", "format_table",
           "load_records", "load_sweep", "merge", "rank", "sweep", "top"]
