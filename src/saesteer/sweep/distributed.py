"""Sweeps on a Ray cluster: the features are cut into chunks that Ray workers take, one output folder.

The driver (this process) opens the output folder exactly as :meth:`Sweep.run` does (same manifest,
fingerprint checks and resume), computes the feature facts and the unsteered baseline once, and hands
chunks of the features still to do (a few hundred rows each) to ``workers`` Ray actors. Each actor loads
the model and SAE once, on the device Ray gives it, checks that it would run the same sweep as the driver
(same fingerprint, same unsteered text) and runs :meth:`Sweep.run_features` on each chunk it is sent.
The driver is the only writer: it appends each finished chunk to ``results.jsonl`` as it arrives, so the
folder is always a consistent, resumable sweep folder, the same as a single-process sweep writes.

A chunk whose worker died (killed, out of memory, node lost) is sent again, to a fresh worker, up to
``max_retries`` times; a finished chunk is never written twice. Whatever happens, the same call (or
command) on the same folder finishes the job.

Ray is optional (``pip install 'saesteer[ray]'``) and imported only here, only when called.

>>> distributed_sweep("gpt2-small", "openai:v5_32k/resid_post_mlp/6", features="all", values=[20],
...                   out="sweeps/l6", address="auto", gpus_per_worker=1)        # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

from saesteer.errors import SaesteerError

LOCAL = ("", "local")
"""``address`` values that mean: start a local Ray instance (as does None)."""
MAX_FAILURE_TEXT = 300


def import_ray():
    """``ray``, or a one-line SaesteerError that says how to install it."""
    try:
        import ray
    except ImportError:
        raise SaesteerError("distributed sweeps need Ray: pip install 'saesteer[ray]'") from None
    return ray


# --------------------------------------------------------------------------- the worker
def _build_steerer(build: dict, objects=None):
    """The worker's Steerer, from plain arguments (spec strings or paths) or from the driver's model and SAE."""
    from saesteer.steerer import Steerer

    if build["kind"] == "spec":
        st = Steerer(build["model"], build["sae"], hook=build["hook"], device=build["device"])
    else:
        from saesteer.models.loading import resolve_device

        lm, sae = objects
        lm.model.to(resolve_device(build["device"]))
        st = Steerer(lm, sae, hook=build["hook"])
    st.engine = build["engine"]
    return st


class SweepWorker:
    """A Ray actor's body: one Steerer and one Sweep, built on the first chunk, then reused.

    ``build``: how to make the Steerer (see :func:`_build_steerer`; ``objects``: the driver's ``LoadedModel``
    and ``SAE`` when it sends them). ``options``: the ``Sweep`` keywords.
    ``facts``: the driver's ``FactsTable``. ``baseline``: the driver's unsteered text (``tokens``, ``text``,
    ``fluency``). ``identity``: the driver's ``SweepSpec.identity()``; a worker that would run another
    sweep (other weights in its cache, another SAE file) refuses. ``fault``: tests only (see :meth:`_fault`).
    """

    def __init__(self, build: dict, options: dict, facts, baseline: dict, identity: dict, objects=None,
                 threads: int | None = None, fault: dict | None = None):
        self._build = build
        self._objects = objects
        self._options = options
        self._facts = facts
        self._baseline = baseline
        self._identity = identity
        self._threads = threads
        self._fault_spec = fault
        self._sweep = None

    def _setup(self):
        if self._sweep is not None:
            return self._sweep
        import torch

        from saesteer.sweep.runner import Baseline, Sweep
        from saesteer.sweep.spec import SweepSpec

        if self._threads and self._build["device"] in (None, "cpu"):
            torch.set_num_threads(self._threads)
        st = _build_steerer(self._build, self._objects)
        self._objects = None
        sw = Sweep(st, facts=self._facts, progress=False, **self._options)
        driver = SweepSpec.from_identity(self._identity)
        diffs = driver.differences(sw.spec)
        if diffs:
            raise SaesteerError(
                f"the Ray worker on {_host()} would run another sweep than the driver ({'; '.join(diffs)}): every"
                " node must load the same model and SAE (same files, same saesteer version)")
        mine = sw.baseline
        if mine.tokens != self._baseline["tokens"]:
            raise SaesteerError(
                f"the Ray worker on {_host()} ({st.lm.device}) makes another unsteered text than the driver"
                f" ({mine.text!r} vs {self._baseline['text']!r}): run the driver on the same kind of device as the"
                " workers (e.g. --device cuda on a GPU node), or use --dtype float32")
        # The metrics compare with the driver's baseline, the one the manifest records.
        sw._baseline = Baseline(list(self._baseline["tokens"]), self._baseline["text"], self._baseline["fluency"])
        self._sweep = sw
        return sw

    def run(self, features: list[int]) -> list[dict]:
        """The records of ``features`` (every value of each), as ``results.jsonl`` holds them."""
        sw = self._setup()
        self._fault(sw, features)
        return [r.to_record() for r in sw.run_features(features)]

    def _fault(self, sw, features: list[int]) -> None:
        """Tests: die (``os._exit``) half-way through the chunk that holds ``fault['feature']``, at most
        ``fault['times']`` times over all workers (each death claims a marker file in ``fault['dir']``)."""
        fault = self._fault_spec
        if not fault or fault["feature"] not in features:
            return
        for i in range(fault["times"]):
            try:
                fd = os.open(Path(fault["dir"]) / f"crash.{i}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                continue
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            sw.run_features(features[: max(1, len(features) // 2)])
            os._exit(1)


def _host() -> str:
    import socket

    return socket.gethostname()


# --------------------------------------------------------------------------- the driver
def _one_line(text: str) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    line = lines[-1] if lines else ""
    return line if len(line) <= MAX_FAILURE_TEXT else line[: MAX_FAILURE_TEXT - 3] + "..."


def _span(chunk: list[int]) -> str:
    return f"{chunk[0]}" if len(chunk) == 1 else f"{chunk[0]}..{chunk[-1]}"


def _connect(ray, address: str | None, num_cpus: int, quiet: bool) -> bool:
    """Connect to ``address`` or start a local instance; True when this call started (and must stop) Ray."""
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = dict(logging_level=logging.WARNING, log_to_driver=not quiet)
    if address is None or address in LOCAL:
        kwargs.update(num_cpus=num_cpus, include_dashboard=False)
        try:
            ray.init(**kwargs)
        except Exception as e:  # noqa: BLE001 - one line, whatever Ray raises
            raise SaesteerError(f"could not start a local Ray instance: {_one_line(e)}") from None
    else:
        try:
            ray.init(address=address, **kwargs)
        except Exception as e:  # noqa: BLE001
            hint = ("start it with `ray start --head` and pass --ray auto (on a node of it), --ray HEAD:6379 or"
                    " --ray ray://HEAD:10001")
            if not os.environ.get("RAY_AUTH_MODE") and (Path.home() / ".ray" / "auth_token").is_file():
                hint += "; a cluster with token authentication also needs RAY_AUTH_MODE=token and its token here"
            raise SaesteerError(f"could not connect to the Ray cluster at {address!r}: {_one_line(e)}; {hint}") \
                from None
    return True


def _check_resources(ray, gpus: float, cpus: float, started: bool) -> None:
    have = ray.cluster_resources()
    need = {"GPU": gpus, "CPU": cpus}
    for name, per in need.items():
        if per and have.get(name, 0) < per:
            msg = f"the Ray cluster has {have.get(name, 0):g} {name}s, and one worker asks for {per:g}"
            if name == "GPU":
                msg += ": give --gpus-per-worker 0 (CPU workers) or run on a cluster with GPUs"
            if started:  # a local instance will not grow
                raise SaesteerError(msg)
            print(f"saesteer: warning: {msg}; waiting for the cluster to grow", file=sys.stderr)


def _default_workers(ray, gpus: float, cpus: float) -> int:
    have = ray.cluster_resources()
    if gpus:
        return max(1, int(have.get("GPU", 0) // gpus))
    return max(1, int(have.get("CPU", 1) // max(cpus, 1e-9)))


def distributed_sweep(model, sae=None, *, out, hook: str | None = None, device: str | None = None,
                      engine: str = "auto", address: str | None = None, workers: int | None = None,
                      gpus_per_worker: float = 0, cpus_per_worker: float = 1, chunk_features: int | None = None,
                      max_retries: int = 3, driver_device: str | None = None, progress: bool = False,
                      _fault: dict | None = None, **sweep_options) -> dict:
    """Run a sweep on Ray workers into the folder ``out``; return its manifest (as ``manifest.json`` holds it).

    ``model``/``sae``/``hook``: as for :class:`saesteer.Steerer`: spec strings or paths, which every worker
    loads itself (from its own cache or the hub), or a ready ``Steerer`` as ``model`` (its weights are then
    sent to the workers through Ray's object store). ``device``: the workers' device (default ``cuda`` when
    ``gpus_per_worker`` > 0, else ``cpu``); Ray gives each worker its own GPUs. ``address``: a Ray cluster
    (``auto``, ``ray://HOST:10001``); None starts a local Ray instance (and stops it at the end). An
    already-initialised Ray in this process is used as it is. ``workers``: actors (default: as many as the
    cluster holds at once). ``chunk_features``: features per work unit (default: ``batch_size`` rows' worth,
    smaller when that would leave workers idle). ``max_retries``: times a chunk is sent again after its
    worker died or failed. ``driver_device``: where this process computes the facts and the baseline
    (default: ``device`` when this machine has it, else ``cpu``). ``sweep_options``: the :class:`Sweep`
    keywords (``features``, ``values``, ``relative``, ``prompt``, ``max_new_tokens``, ``mode``, ``fluency``,
    ``dtype``, ``batch_size``, ``shard``, ``reference_text``, ...).

    The folder is the same as a single-process sweep's (``saesteer top`` and the browser read it), and
    resumable by this call or by ``saesteer sweep`` with or without ``--ray``.
    """
    from saesteer.models.loading import resolve_device
    from saesteer.steerer import Steerer
    from saesteer.sweep import runner
    from saesteer.sweep import store as st

    ray = import_ray()
    if out is None:
        raise SaesteerError("a distributed sweep needs an output folder (out= / --out)")
    if workers is not None and workers < 1:
        raise SaesteerError("--workers must be at least 1")
    if gpus_per_worker < 0 or cpus_per_worker < 0:
        raise SaesteerError("--gpus-per-worker and cpus_per_worker must not be negative")
    if max_retries < 0:
        raise SaesteerError("max_retries must not be negative")
    unknown = set(sweep_options) - set(runner.Sweep.__init__.__kwdefaults__ or {}) | ({"out", "facts", "progress"}
                                                                                       & set(sweep_options))
    if unknown:
        raise TypeError(f"distributed_sweep() got unexpected keywords: {', '.join(sorted(unknown))}")
    if device is None:
        device = "cuda" if gpus_per_worker else "cpu"
    elif gpus_per_worker and str(device).startswith("cpu"):
        raise SaesteerError("--gpus-per-worker gives each worker GPUs, but --device cpu leaves them idle; drop one")
    elif not gpus_per_worker and str(device).startswith("cuda"):
        raise SaesteerError("--device cuda on Ray workers needs --gpus-per-worker (e.g. 1), so that Ray gives each"
                            " worker a GPU of its own")

    # The driver's own Steerer: it opens the folder, and computes the facts and the baseline, once.
    if driver_device is None:
        try:
            driver_device = str(resolve_device(device))
        except SaesteerError:
            driver_device = "cpu"
    if isinstance(model, Steerer):
        steerer = model
        if sae is not None or hook is not None:
            raise SaesteerError("pass sae= and hook= to the Steerer, not with it")
        build = {"kind": "objects", "hook": steerer.hook_name, "device": device, "engine": engine}
    else:
        steerer = Steerer(model, sae, hook=hook, device=driver_device)
        build = {"kind": "spec", "model": str(model), "sae": None if sae is None else str(sae), "hook": hook,
                 "device": device, "engine": engine}
    steerer.engine = engine
    sw = runner.Sweep(steerer, out=out, progress=progress, **sweep_options)
    spec = sw.spec
    manifest, store = sw._open_folder()
    todo = [f for f in spec.shard_features() if f not in store.done]
    total = spec.n_shard_features()
    if not todo:
        sw._close(manifest, store, runner._Session(), total, False)
        return manifest
    if not manifest["sessions"]:
        manifest["device"] = device
    st.write_manifest(out, manifest)  # a sweep folder from now on, whatever happens to Ray

    started = ran = False
    session = runner._Session()
    try:
        n_cpus = max(1, math.ceil((workers or os.cpu_count() or 1) * max(cpus_per_worker, 1)))
        started = _connect(ray, address, n_cpus, quiet=not progress)
        session = runner._Session()  # the clock starts once Ray is up
        _check_resources(ray, gpus_per_worker, cpus_per_worker, started)
        n_workers = workers or _default_workers(ray, gpus_per_worker, cpus_per_worker)
        per = chunk_features or max(1, (sw.batch_size or runner.DEFAULT_ROWS_PER_CALL) // len(sw.values))
        if not chunk_features:  # small sweeps: enough chunks that every worker has some
            per = min(per, max(1, math.ceil(len(todo) / (n_workers * 4))))
        queue = deque(todo[s:s + per] for s in range(0, len(todo), per))
        n_workers = min(n_workers, len(queue))

        manifest["status"] = "running"
        manifest["sessions"].append({
            "started_at": session.started_at, "ended_at": None, "features": 0, "seconds": 0.0, "device": device,
            "engine": engine, "batch_size": sw.batch_size,
            "ray": {"address": address if address not in LOCAL else None, "workers": n_workers,
                    "gpus_per_worker": gpus_per_worker, "cpus_per_worker": cpus_per_worker, "chunk_features": per}})
        st.write_manifest(out, manifest)
        ran = True

        objects = ray.put((steerer.lm, steerer.sae)) if build["kind"] == "objects" else None
        options = {k: v for k, v in sweep_options.items() if k not in ("reference_text", "cache_dir")}
        b = sw.baseline
        actor_args = (build, options, ray.put(sw.facts), {"tokens": b.tokens, "text": b.text, "fluency": b.fluency},
                      spec.identity())
        if build["kind"] == "spec" and steerer.lm.device.type != "cpu":  # leave the driver's GPU to a worker
            import torch

            steerer.lm.model.to("cpu")
            steerer.sae.to("cpu")
            torch.cuda.empty_cache()
        remote = ray.remote(SweepWorker).options(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker or None,
                                                  max_restarts=0, max_task_retries=0)
        threads = max(1, int(cpus_per_worker)) if cpus_per_worker else None

        def new_actor():
            return remote.remote(*actor_args, objects=objects, threads=threads, fault=_fault)

        _drive(ray, store, queue, [new_actor() for _ in range(n_workers)], new_actor, max_retries, sw, manifest,
               session, total, out, progress)
    finally:
        sw._close(manifest, store, session, total, ran)
        if started:
            ray.shutdown()
    return manifest


def _drive(ray, store, queue: deque, pool: list, new_actor, max_retries: int, sw, manifest: dict, session,
           total: int, out, progress: bool) -> None:
    """Keep one chunk in flight on each actor; append what comes back; resend what failed."""
    from ray.exceptions import RayError, RayTaskError
    from tqdm.auto import tqdm

    from saesteer.sweep import runner
    from saesteer.sweep import store as st

    failures: dict[tuple[int, ...], int] = {}
    inflight: dict[Any, tuple[Any, list[int]]] = {}  # ref -> (actor, chunk)
    idle = list(pool)
    bar = tqdm(total=total, initial=len(store.done), desc="sweep (ray)", unit="feat", disable=not progress,
               smoothing=0.1, dynamic_ncols=True)
    last_manifest = time.time()

    def submit():
        while idle and queue:
            actor, chunk = idle.pop(), queue.popleft()
            inflight[actor.run.remote(chunk)] = (actor, chunk)

    def failed(chunk: list[int], why: str) -> None:
        key = tuple(chunk)
        failures[key] = failures.get(key, 0) + 1
        if failures[key] > max_retries:
            raise SaesteerError(
                f"features {_span(chunk)} failed {failures[key]} times on Ray workers (last: {why}); the"
                f" {len(store.done)} features finished are in {out}: run the same command again to resume")
        queue.appendleft(chunk)

    try:
        submit()
        while inflight:
            ready, _ = ray.wait(list(inflight), num_returns=1)
            ref = ready[0]
            actor, chunk = inflight.pop(ref)
            try:
                records = ray.get(ref)
            except RayTaskError as e:  # the chunk raised; the worker lives on
                cause = getattr(e, "cause", None)
                if isinstance(cause, SaesteerError):  # a set-up that no retry mends (other model, no GPU...)
                    raise SaesteerError(str(cause)) from None
                failed(chunk, _one_line(f"{type(cause).__name__}: {cause}" if cause is not None else e))
                idle.append(actor)
            except RayError as e:  # the worker died or was lost: a fresh one takes its place, and the chunk again
                _kill(ray, actor)
                failed(chunk, f"worker lost: {_one_line(getattr(e, 'error_msg', None) or e)}")
                idle.append(new_actor())
            else:
                fresh = [r for r in records if r["feature"] not in store.done]
                want = {(f, v) for f in chunk for v in sw.values}
                if {(r["feature"], float(r["value"])) for r in records} != want or len(records) != len(want):
                    raise SaesteerError(f"a Ray worker returned other results than asked for (features {_span(chunk)})")
                store.append(fresh)
                new = len({r["feature"] for r in fresh})
                session.features += new
                bar.update(new)
                idle.append(actor)
                if time.time() - last_manifest > runner.MANIFEST_EVERY_S:
                    sw._update_manifest(manifest, store, session)
                    st.write_manifest(out, manifest)
                    last_manifest = time.time()
            submit()
    finally:
        bar.close()
        for actor in idle + [a for a, _ in inflight.values()]:
            _kill(ray, actor)


def _kill(ray, actor) -> None:
    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # noqa: BLE001 - already gone
        pass
