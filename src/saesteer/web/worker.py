"""The model queue: one thread does all model work, one job at a time, in arrival order.

``submit`` puts a job in a bounded queue or raises :class:`QueueFull` (the app answers 503 with
``Retry-After``). Every job has a deadline (the request's time limit, counted from submission): a job still
waiting at its deadline is dropped without running, and a running job stops at its next
:meth:`Job.check` (the app calls it from the engine's ``on_step`` callback, so generation stops within a
step). Cancelled jobs (the client went away, or timed out) are dropped the same way and free their place in
the queue at once.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable


class QueueFull(Exception):
    """The queue holds ``queue_size`` waiting jobs; try again after ``retry_after`` seconds."""

    def __init__(self, waiting: int, retry_after: int):
        super().__init__(f"the model queue is full ({waiting} requests waiting); retry in {retry_after} s")
        self.waiting = waiting
        self.retry_after = retry_after


class JobTimeout(Exception):
    """The job passed its deadline (or was cancelled) before it finished."""


class Job:
    """One unit of model work. ``fn(job)`` runs on the worker thread; ``future`` gets its result."""

    def __init__(self, fn: Callable[["Job"], Any], timeout: float):
        self.fn = fn
        self.timeout = timeout
        self.submitted = time.monotonic()
        self.deadline = self.submitted + timeout
        self.future: Future = Future()
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        """Stop the job: dropped if waiting, stopped at its next ``check`` if running."""
        self._cancelled.set()
        self.future.cancel()  # succeeds only while it waits

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set() or self.future.cancelled()

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def check(self, *_args) -> None:
        """Raise :class:`JobTimeout` when the job is cancelled or past its deadline (accepts and ignores the
        engine's ``on_step`` arguments, so it can be passed as ``on_step`` itself)."""
        if self._cancelled.is_set():
            raise JobTimeout("the request was cancelled")
        if time.monotonic() > self.deadline:
            raise JobTimeout(f"the request took longer than its time limit of {self.timeout:g} s")


class ModelWorker:
    """A single worker thread over a bounded FIFO of jobs.

    ``queue_size``: jobs that may wait (the running one not counted). ``timeout``: each job's time limit in
    seconds, waiting included.
    """

    def __init__(self, queue_size: int = 8, timeout: float = 120.0, *, name: str = "saesteer-model"):
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        if not timeout > 0:
            raise ValueError("timeout must be positive")
        self.queue_size = int(queue_size)
        self.timeout = float(timeout)
        self._jobs: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._running: Job | None = None
        self._mean_s = 1.0
        """Running mean of job durations (for Retry-After)."""
        self.completed = 0
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------- queue
    def _purge(self) -> None:
        if any(j.cancelled for j in self._jobs):
            self._jobs = collections.deque(j for j in self._jobs if not j.cancelled)

    @property
    def waiting(self) -> int:
        """Jobs waiting (cancelled ones not counted)."""
        with self._cond:
            self._purge()
            return len(self._jobs)

    @property
    def busy(self) -> bool:
        return self._running is not None

    def retry_after(self, waiting: int | None = None) -> int:
        """Seconds until a place is likely free: the jobs ahead times the mean job time, at least 1."""
        n = self.waiting if waiting is None else waiting
        return max(1, min(3600, math.ceil(self._mean_s * (n + 1))))

    def submit(self, fn: Callable[[Job], Any], timeout: float | None = None) -> Job:
        """Queue ``fn`` (run as ``fn(job)``); raise :class:`QueueFull` when ``queue_size`` jobs wait."""
        job = Job(fn, self.timeout if timeout is None else timeout)
        with self._cond:
            if self._closed:
                raise RuntimeError("the model worker is closed")
            self._purge()
            if len(self._jobs) >= self.queue_size:
                raise QueueFull(len(self._jobs), self.retry_after(len(self._jobs)))
            self._jobs.append(job)
            self._cond.notify()
        return job

    def position(self, job: Job) -> int:
        """Jobs ahead of ``job`` (the running one included); 0 once it runs."""
        with self._cond:
            if self._running is job:
                return 0
            ahead = 0
            for j in self._jobs:
                if j is job:
                    break
                ahead += 0 if j.cancelled else 1
            return ahead + (1 if self._running is not None else 0)

    def close(self, wait: float = 5.0) -> None:
        """Stop taking jobs, cancel the waiting ones, and let the thread end."""
        with self._cond:
            self._closed = True
            for j in self._jobs:
                j.cancel()
            self._jobs.clear()
            self._cond.notify_all()
        if self._running is not None:
            self._running.cancel()
        self._thread.join(wait)

    # ----------------------------------------------------------------- thread
    def _next(self) -> Job | None:
        with self._cond:
            while not self._jobs and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            job = self._jobs.popleft()
            self._running = job
            return job

    def _loop(self) -> None:
        while True:
            job = self._next()
            if job is None:
                return
            result, error = None, None
            if not job.future.set_running_or_notify_cancel():  # cancelled while waiting
                self._done(job)
                continue
            start = time.monotonic()
            try:
                job.check()  # past its deadline already: dropped without running
                result = job.fn(job)
            except BaseException as exc:  # noqa: BLE001 - handed to whoever waits
                error = exc
            self._mean_s = 0.8 * self._mean_s + 0.2 * (time.monotonic() - start)
            self.completed += 1
            self._done(job)
            if error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(result)

    def _done(self, job: Job) -> None:
        with self._cond:
            if self._running is job:
                self._running = None
