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
from collections import deque
from pathlib import Path
from typing import Any

from saesteer.errors import SaesteerError
from saesteer.models.loading import resolve_device
from saesteer.steerer import Steerer
from saesteer.sweep.config import RayConfig, SweepConfig
from saesteer.sweep.folder import SweepRun
from saesteer.sweep.runner import Baseline, Sweep
from saesteer.sweep.spec import SweepSpec

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
    if build["kind"] == "spec":
        return Steerer(build["model"], build["sae"], hook=build["hook"], device=build["device"])
    lm, sae = objects
    lm.model.to(resolve_device(build["device"]))
    return Steerer(lm, sae, hook=build["hook"])


class SweepWorker:
    """A Ray actor's body: one Steerer and one Sweep, built on the first chunk, then reused.

    ``build``: how to make the Steerer (see :func:`_build_steerer`; ``objects``: the driver's ``LoadedModel``
    and ``SAE`` when it sends them). ``config``: the driver's ``SweepConfig`` (as run).
    ``facts``: the driver's ``FactsTable``. ``baseline``: the driver's unsteered text (``tokens``, ``text``,
    ``fluency``). ``identity``: the driver's ``SweepSpec.identity()``; a worker that would run another
    sweep (other weights in its cache, another SAE file) refuses.
    """

    def __init__(self, build: dict, config: SweepConfig, facts, baseline: dict, identity: dict, objects=None,
                 threads: int | None = None):
        self._build = build
        self._objects = objects
        self._config = config
        self._facts = facts
        self._baseline = baseline
        self._identity = identity
        self._threads = threads
        self._sweep = None

    def _setup(self) -> Sweep:
        if self._sweep is not None:
            return self._sweep
        import torch

        if self._threads and self._build["device"] in (None, "cpu"):
            torch.set_num_threads(self._threads)
        st = _build_steerer(self._build, self._objects)
        self._objects = None
        sw = Sweep(st, self._config, facts=self._facts)
        diffs = SweepSpec.from_identity(self._identity).differences(sw.spec)
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
        sw.baseline = Baseline(list(self._baseline["tokens"]), self._baseline["text"], self._baseline["fluency"])
        self._sweep = sw
        return sw

    def run(self, features: list[int]) -> list[dict]:
        """The records of ``features`` (every value of each), as ``results.jsonl`` holds them."""
        return [r.to_record() for r in self._setup().run_features(features)]


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
                      progress: bool = False, config: SweepConfig | None = None, ray: RayConfig | None = None,
                      **options) -> dict:
    """Run a sweep on Ray workers into the folder ``out``; return its manifest (as ``manifest.json`` holds it).

    ``model``/``sae``/``hook``: as for :class:`saesteer.Steerer`: spec strings or paths, which every worker
    loads itself (from its own cache or the hub), or a ready ``Steerer`` as ``model`` (its weights are then
    sent to the workers through Ray's object store). ``device``: the workers' device (default ``cuda`` when
    ``gpus_per_worker`` > 0, else ``cpu``); Ray gives each worker its own GPUs. ``config``: the
    :class:`SweepConfig`; ``ray``: the :class:`RayConfig`. ``options``: keywords named as the fields of
    either, applied on top: the sweep's (``features``, ``values``, ``relative``, ``prompt``,
    ``max_new_tokens``, ``mode``, ``fluency``, ``dtype``, ``batch_size``, ``shard``, ``engine``,
    ``reference_text``, ...) and Ray's: ``address`` (a Ray cluster, ``auto``, ``ray://HOST:10001``; None
    starts a local Ray instance and stops it at the end; an already-initialised Ray in this process is used
    as it is), ``workers`` (default: as many as the cluster holds at once), ``gpus_per_worker``,
    ``cpus_per_worker``, ``chunk_features`` (features per work unit; default: ``batch_size`` rows' worth,
    smaller when that would leave workers idle), ``max_retries`` (times a chunk is sent again after its
    worker died or failed), ``driver_device`` (where this process computes the facts and the baseline;
    default: ``device`` when this machine has it, else ``cpu``).

    The folder is the same as a single-process sweep's (``saesteer top`` and the browser read it), and
    resumable by this call or by ``saesteer sweep`` with or without ``--ray``.
    """
    ray_module = import_ray()
    names = RayConfig.field_names()
    rc = RayConfig.build(ray, {k: options.pop(k) for k in list(options) if k in names}, caller="distributed_sweep")
    config = SweepConfig.build(config, options, caller="distributed_sweep")
    if out is None:
        raise SaesteerError("a distributed sweep needs an output folder (out= / --out)")
    device = _worker_device(device, rc)
    steerer, build = _driver_steerer(model, sae, hook, device, rc)
    sw = Sweep(steerer, config, out=out, progress=progress)
    with sw.open() as run:
        if run.todo:
            _run_on_ray(ray_module, sw, run, build, rc, device, progress)
    return run.manifest


def _worker_device(device: str | None, rc: RayConfig) -> str:
    if device is None:
        return "cuda" if rc.gpus_per_worker else "cpu"
    if rc.gpus_per_worker and str(device).startswith("cpu"):
        raise SaesteerError("--gpus-per-worker gives each worker GPUs, but --device cpu leaves them idle; drop one")
    if not rc.gpus_per_worker and str(device).startswith("cuda"):
        raise SaesteerError("--device cuda on Ray workers needs --gpus-per-worker (e.g. 1), so that Ray gives each"
                            " worker a GPU of its own")
    return device


def _driver_steerer(model, sae, hook, device: str, rc: RayConfig):
    """The driver's own Steerer (it opens the folder, and computes the facts and the baseline, once), and how
    the workers build theirs."""
    if isinstance(model, Steerer):
        if sae is not None or hook is not None:
            raise SaesteerError("pass sae= and hook= to the Steerer, not with it")
        return model, {"kind": "objects", "hook": model.hook_name, "device": device}
    driver_device = rc.driver_device
    if driver_device is None:
        try:
            driver_device = str(resolve_device(device))
        except SaesteerError:
            driver_device = "cpu"
    steerer = Steerer(model, sae, hook=hook, device=driver_device)
    return steerer, {"kind": "spec", "model": str(model), "sae": None if sae is None else str(sae), "hook": hook,
                     "device": device}


def _run_on_ray(ray, sw: Sweep, run: SweepRun, build: dict, rc: RayConfig, device: str, progress: bool) -> None:
    """Start (or join) Ray, start the workers, and drive the run's features through them."""
    started = False
    try:
        n_cpus = max(1, math.ceil((rc.workers or os.cpu_count() or 1) * max(rc.cpus_per_worker, 1)))
        started = _connect(ray, rc.address, n_cpus, quiet=not progress)
        _check_resources(ray, rc.gpus_per_worker, rc.cpus_per_worker, started)
        n_workers = rc.workers or _default_workers(ray, rc.gpus_per_worker, rc.cpus_per_worker)
        per = rc.chunk_features or sw.chunk_features()
        if not rc.chunk_features:  # small sweeps: enough chunks that every worker has some
            per = min(per, max(1, math.ceil(len(run.todo) / (n_workers * 4))))
        queue = deque(run.chunks(per))
        n_workers = min(n_workers, len(queue))
        run.start(device=device, engine=sw.engine, batch_size=sw.config.batch_size,
                  ray={"address": rc.address if rc.address not in LOCAL else None, "workers": n_workers,
                       "gpus_per_worker": rc.gpus_per_worker, "cpus_per_worker": rc.cpus_per_worker,
                       "chunk_features": per})
        new_actor = _actor_factory(ray, sw, build, rc)
        _drive(ray, run, queue, [new_actor() for _ in range(n_workers)], new_actor, rc.max_retries, sw, progress)
    finally:
        if started:
            ray.shutdown()


def _actor_factory(ray, sw: Sweep, build: dict, rc: RayConfig):
    """A function that starts one more worker actor (the driver's facts, baseline and identity shared)."""
    objects = ray.put((sw.lm, sw.sae)) if build["kind"] == "objects" else None
    b = sw.baseline
    config = sw.config.replace(reference_text=None, cache_dir=None)  # the workers get the facts themselves
    args = (build, config, ray.put(sw.facts), {"tokens": b.tokens, "text": b.text, "fluency": b.fluency},
            sw.spec.identity())
    if build["kind"] == "spec" and sw.lm.device.type != "cpu":  # leave the driver's GPU to a worker
        import torch

        sw.lm.model.to("cpu")
        sw.sae.to("cpu")
        torch.cuda.empty_cache()
    remote = ray.remote(SweepWorker).options(num_cpus=rc.cpus_per_worker, num_gpus=rc.gpus_per_worker or None,
                                              max_restarts=0, max_task_retries=0)
    threads = max(1, int(rc.cpus_per_worker)) if rc.cpus_per_worker else None
    return lambda: remote.remote(*args, objects=objects, threads=threads)


def _drive(ray, run: SweepRun, queue: deque, pool: list, new_actor, max_retries: int, sw: Sweep,
           progress: bool) -> None:
    """Keep one chunk in flight on each actor; record what comes back; resend what failed."""
    from ray.exceptions import RayError, RayTaskError
    from tqdm.auto import tqdm

    failures: dict[tuple[int, ...], int] = {}
    inflight: dict[Any, tuple[Any, list[int]]] = {}  # ref -> (actor, chunk)
    idle = list(pool)
    bar = tqdm(total=run.total, initial=run.done, desc="sweep (ray)", unit="feat", disable=not progress,
               smoothing=0.1, dynamic_ncols=True)

    def failed(chunk: list[int], why: str) -> None:
        key = tuple(chunk)
        failures[key] = failures.get(key, 0) + 1
        if failures[key] > max_retries:
            raise SaesteerError(
                f"features {_span(chunk)} failed {failures[key]} times on Ray workers (last: {why}); the"
                f" {run.done} features finished are in {run.out}: run the same command again to resume")
        queue.appendleft(chunk)

    try:
        while True:
            while idle and queue:
                actor, chunk = idle.pop(), queue.popleft()
                inflight[actor.run.remote(chunk)] = (actor, chunk)
            if not inflight:
                break
            ready, _ = ray.wait(list(inflight), num_returns=1)
            actor, chunk = inflight.pop(ready[0])
            try:
                records = ray.get(ready[0])
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
                _check_records(records, chunk, sw.values)
                bar.update(run.record(records))
                idle.append(actor)
    finally:
        bar.close()
        for actor in idle + [a for a, _ in inflight.values()]:
            _kill(ray, actor)


def _check_records(records: list[dict], chunk: list[int], values) -> None:
    want = {(f, v) for f in chunk for v in values}
    if {(r["feature"], float(r["value"])) for r in records} != want or len(records) != len(want):
        raise SaesteerError(f"a Ray worker returned other results than asked for (features {_span(chunk)})")


def _kill(ray, actor) -> None:
    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # noqa: BLE001 - already gone
        pass
