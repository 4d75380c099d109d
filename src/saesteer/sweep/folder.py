"""An open sweep run: the features still to do, where finished ones go, and the manifest's bookkeeping.

:meth:`SweepRun.open` creates a sweep folder or checks that it holds the same sweep (identity, feature facts,
unsteered text), under an exclusive lock held until :meth:`SweepRun.close`. Then :meth:`SweepRun.start`
begins a session, :meth:`SweepRun.record` appends finished features (each once, durable on return) and
keeps the manifest current, and :meth:`SweepRun.close` ends the session and marks the sweep complete when
it is. The local loop (``Sweep.run``) and the Ray driver (``distributed_sweep``) both drive a sweep
through this class only, so the manifest is kept in one place.
"""

from __future__ import annotations

import datetime as _dt
import platform
import sys
import time
from pathlib import Path
from typing import Iterator, Sequence

from saesteer.errors import SaesteerError
from saesteer.evaluation.feature_facts import FactsTable
from saesteer.locks import FolderLock
from saesteer.sweep import store as st
from saesteer.sweep.spec import SweepSpec

MANIFEST_EVERY_S = 30.0
"""Seconds between manifest (and ``sentences.txt``) updates during a run."""


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def package_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in ("saesteer", "torch", "transformers", "safetensors", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def features_text(ranges) -> str:
    return ",".join(f"{a}:{b}" for a, b in ranges)


def new_manifest(sweep, facts: FactsTable) -> dict:
    """The manifest of a new sweep folder: identity, settings (the config's record), facts, baseline."""
    spec, b = sweep.spec, sweep.baseline
    return {
        "format": st.FORMAT, "fingerprint": spec.fingerprint(), "sweep": spec.identity(),
        "model": sweep.lm.name, "sae": sweep.sae.cfg.source, "hook": sweep.hook,
        **sweep.config.to_dict(),
        "prompt_tokens": list(spec.prompt_tokens), "device": str(sweep.lm.device),
        "n_features": spec.n_shard_features(),
        "facts": {"key": spec.facts_key, "digest": facts.digest, "reference": facts.meta.get("reference"),
                  "settings": facts.meta.get("settings")},
        "baseline": {"tokens": b.tokens, "text": b.text, "fluency": b.fluency},
        "versions": package_versions(), "status": "running", "started_at": now(), "finished_at": None,
        "done": 0, "elapsed_s": 0.0, "features_per_second": None, "sessions": [],
    }


def read_sweep_manifest(out: Path, config_cls) -> dict | None:
    """The folder's manifest with its settings checked (None: no manifest)."""
    manifest = st.read_manifest(out)
    if manifest is not None:
        config_cls.from_dict(manifest, where=str(out / st.MANIFEST))
    return manifest


def check_same_sweep(sweep, out: Path, manifest: dict) -> None:
    """Refuse to resume ``out`` with another sweep, other feature facts or another unsteered text."""
    diffs = SweepSpec.from_identity(manifest["sweep"]).differences(sweep.spec)
    if diffs:
        raise SaesteerError(f"{out} holds a different sweep ({'; '.join(diffs)}); run the command that started it"
                            " to resume, or pick another --out folder")
    digest = manifest.get("facts", {}).get("digest")
    if not sweep.has_facts and FactsTable.exists(out / st.FACTS):
        try:
            table = FactsTable.load(out / st.FACTS)
        except (OSError, ValueError, KeyError):
            table = None
        if table is not None and table.digest == digest:
            sweep.facts = table
    if sweep.facts.digest != digest:
        raise SaesteerError(
            f"the feature facts in {out / st.FACTS} are missing or differ from the ones this sweep started with;"
            " results would mix two sets of metrics: start a new --out folder")
    b = sweep.baseline
    if b.tokens != manifest["baseline"]["tokens"]:
        raise SaesteerError(
            f"the unsteered text now differs from the one {out} started with ({b.text!r} vs"
            f" {manifest['baseline']['text']!r}): the model or engine behaves differently; start a new --out folder")


class SweepRun:
    """One run of a sweep: ``todo`` (features not yet done), ``record`` what finishes, ``close`` at the end.

    Without a folder (``out`` None) results go nowhere and nothing is kept: only the count."""

    def __init__(self, todo: list[int], total: int, out: Path | None = None, manifest: dict | None = None,
                 store: st.ResultStore | None = None, lock: FolderLock | None = None):
        self.todo = todo
        self.total = total
        self.out = out
        self.manifest = manifest
        self.store = store
        self._lock = lock
        self._done = set()
        self._started: float | None = None
        self._features = 0
        self._last_write = time.time()
        self._closed = False

    @classmethod
    def open(cls, sweep, config_cls) -> "SweepRun":
        """Lock ``sweep.out``; create it as this sweep's folder or check that it holds this sweep."""
        out = Path(sweep.out)
        lock = FolderLock(out, what="sweep folder").acquire()
        try:
            manifest = read_sweep_manifest(out, config_cls)
            if manifest is None:
                if out.exists() and any(p.name != st.FACTS for p in out.iterdir()):
                    raise SaesteerError(f"{out} exists, is not empty and holds no sweep manifest; pick another --out"
                                        " folder")
                facts = sweep.facts
                facts.save(out / st.FACTS)
                manifest = new_manifest(sweep, facts)
            else:
                check_same_sweep(sweep, out, manifest)
            store = st.ResultStore(out, sweep.spec.values, set(sweep.spec.shard_features()))
            st.write_manifest(out, manifest)  # a sweep folder from now on
        except BaseException:
            lock.release()
            raise
        todo = [f for f in sweep.spec.shard_features() if f not in store.done]
        return cls(todo, sweep.spec.n_shard_features(), out, manifest, store, lock)

    @property
    def done(self) -> int:
        """Features finished (in the folder, earlier sessions' included)."""
        return len(self.store.done) if self.store is not None else len(self._done)

    def chunks(self, per: int) -> Iterator[list[int]]:
        for s in range(0, len(self.todo), per):
            yield self.todo[s:s + per]

    def start(self, **info) -> None:
        """Begin a session (``info``: device, engine, batch_size, ray...: recorded with it in the manifest)."""
        self._started = time.time()
        self._last_write = self._started
        if self.manifest is None:
            return
        if not self.manifest["sessions"] and "device" in info:
            self.manifest["device"] = info["device"]
        self.manifest["status"] = "running"
        self.manifest.pop("error", None)
        self.manifest["sessions"].append({"started_at": now(), "ended_at": None, "features": 0, "seconds": 0.0,
                                          **info})
        st.write_manifest(self.out, self.manifest)

    def record(self, records: Sequence[dict]) -> int:
        """Keep the records of whole features not yet done (durable on return); the number of new features."""
        done = self.store.done if self.store is not None else self._done
        fresh = [r for r in records if r["feature"] not in done]
        new = len({r["feature"] for r in fresh})
        if self.store is not None:
            self.store.append(fresh)
        else:
            self._done.update(r["feature"] for r in fresh)
        self._features += new
        if self.manifest is not None and time.time() - self._last_write > MANIFEST_EVERY_S:
            self._update()
            st.write_manifest(self.out, self.manifest)
            self._last_write = time.time()
        return new

    def fail(self, reason: str) -> None:
        """Mark the sweep failed, with the reason (written on close; a rerun retries)."""
        if self.manifest is not None:
            self.manifest["status"], self.manifest["error"] = "failed", reason

    def _update(self) -> None:
        seconds = time.time() - self._started
        cur = self.manifest["sessions"][-1]
        prev_seconds = cur["seconds"]
        self.store.flush_sentences()
        cur.update(ended_at=now(), features=self._features, seconds=round(seconds, 3))
        m = self.manifest
        m["elapsed_s"] = round(m.get("elapsed_s", 0.0) + seconds - prev_seconds, 3)
        m["done"] = len(self.store.done)
        computed = sum(x["features"] for x in m["sessions"])
        if m["elapsed_s"] > 0 and computed:
            m["features_per_second"] = round(computed / m["elapsed_s"], 3)

    def close(self) -> None:
        """End the session; mark the sweep complete when every feature is done; release the folder."""
        if self.store is None or self._closed:
            return
        self._closed = True
        try:
            ran = self._started is not None
            complete = len(self.store.done) >= self.total
            self.store.finalise() if complete else self.store.close()
            if ran:
                self._update()
            if complete and self.manifest.get("status") != "complete":
                self.manifest.update(status="complete", finished_at=now(), done=len(self.store.done))
            elif not ran:
                return
            st.write_manifest(self.out, self.manifest)
        finally:
            if self._lock is not None:
                self._lock.release()
                self._lock = None

    def __enter__(self) -> "SweepRun":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
