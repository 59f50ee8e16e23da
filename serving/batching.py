"""Adaptive batching: requests that wait together go through the model together.

One inference thread owns the model calls. Each request puts its prepared input (one row per
view of its image) on a queue and awaits the answer. The thread takes the first waiting input
and every other input already queued, up to `max_rows` rows, and runs them as one batch per
model (a swap of the served model can leave two in the queue for a moment). Nothing waits on
purpose: when requests arrive one at a time each runs alone at once; under load the batch
grows to what queued up while the previous batch ran. So batch size follows the load, and
latency at low load is that of a single call.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import queue
import threading
from dataclasses import dataclass, field

import numpy as np
from prometheus_client import Histogram

from serving.model import Detector

logger = logging.getLogger(__name__)


@functools.cache
def batch_rows_histogram() -> Histogram:
    """Rows per batched model call in this process, made on the first call (not at import)."""
    return Histogram(
        "emoflow_batch_rows", "Model input rows (image views) per batched inference call.",
        buckets=(1, 2, 4, 8, 16, 32, 64, 128),
    )  # fmt: skip


@dataclass
class _Job:
    detector: Detector
    rows: np.ndarray
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future = field(repr=False)


class Batcher:
    """Runs `Detector.run` for concurrent requests in shared batches, on one thread."""

    def __init__(self, max_rows: int = 64) -> None:
        self.max_rows = max_rows
        self.rows_per_call = batch_rows_histogram()
        self.jobs: queue.Queue[_Job | None] = queue.Queue()
        self.thread = threading.Thread(target=self._work, name="inference", daemon=True)
        self.thread.start()

    async def run(self, detector: Detector, rows: np.ndarray) -> np.ndarray:
        """The model output for `rows` (n, 3, h, w), computed in a batch with other requests."""
        loop = asyncio.get_running_loop()
        job = _Job(detector, rows, loop, loop.create_future())
        self.jobs.put(job)
        return await job.future

    def close(self) -> None:
        """Finish the queued jobs, then stop the thread."""
        self.jobs.put(None)
        self.thread.join()

    def _take(self) -> tuple[list[_Job], bool]:
        """The next jobs to run together, and whether close() was asked."""
        first = self.jobs.get()
        if first is None:
            return [], True
        taken, rows = [first], len(first.rows)
        while rows < self.max_rows:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return taken, True
            taken.append(job)
            rows += len(job.rows)
        return taken, False

    def _work(self) -> None:
        stop = False
        while not stop:
            taken, stop = self._take()
            for detector in dict.fromkeys(job.detector for job in taken):
                self._run(detector, [job for job in taken if job.detector is detector])

    def _run(self, detector: Detector, jobs: list[_Job]) -> None:
        try:
            output = detector.run(np.concatenate([job.rows for job in jobs]))
            self.rows_per_call.observe(len(output))
        except Exception as exc:  # every waiting request gets the error, the thread goes on
            logger.exception("batched inference failed")
            for job in jobs:
                job.loop.call_soon_threadsafe(_settle, job.future, None, exc)
            return
        start = 0
        for job in jobs:
            part = output[start : start + len(job.rows)]
            start += len(job.rows)
            job.loop.call_soon_threadsafe(_settle, job.future, part, None)


def _settle(future: asyncio.Future, result: np.ndarray | None, error: Exception | None) -> None:
    if future.done():  # the request was cancelled (client went away)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
