"""The prediction log: every answer of the service, with the features of its image, in a table.

Monitoring compares live traffic with the training data through the same numbers
(`monitoring.features.image_features`), so every prediction is stored with them in the table
``predictions`` of the database named by ``EMOFLOW_PREDICTION_LOG_URI`` (SQLite by default,
or Postgres; one SQLAlchemy Core code path serves both; the schema and the reader are in
`monitoring/prediction_table.py`). The service (serving/) writes it;
the drift report (monitoring/drift.py, run by Airflow) reads it with `read_predictions`.

Design:

- `PredictionLog.record` runs on the request path, so it only appends ``(image, answer, route,
  UTC time)`` to a bounded in-memory queue and returns: no feature computation, no I/O, no
  waiting. When the queue is full (the database is slow or down for long) the record is
  dropped and counted (`dropped_counter`, a warning in the log at most once a minute) rather than
  making clients wait or the process grow without limit. The bound is on records and on the
  bytes of the images they hold.
- One writer thread computes the features and writes. It takes whatever is queued (up to
  `BATCH_SIZE` records) and inserts it in one transaction: one commit per batch, not per
  request, keeps up with bursts and keeps SQLite's file locks short.
- A write that fails (database down, file locked) is logged and retried with backoff; the
  thread never dies of it. `close` stops accepting, drains the queue and joins the writer;
  records are lost only when the database stays unreachable through `close`'s timeout, and then
  the log says how many.

The caller must not modify an image or answer after handing it to `record`: the queue holds
references, not copies.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import queue
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import sqlalchemy as sa
from prometheus_client import Counter

from monitoring.face_store import FaceStore
from monitoring.features import FEATURES, image_features, normalised_box
from monitoring.prediction_table import (
    add_missing_columns,
    embedding_bytes,
    engine_for,
    metadata,
    predictions,
)

if TYPE_CHECKING:  # pragma: no cover
    pass

logger = logging.getLogger(__name__)

MAX_QUEUE = 10_000
"""Records waiting to be written, at most; more are dropped (and counted)."""
MAX_QUEUE_BYTES = 1 << 30
"""Bytes of queued images, at most (10,000 large photos would not fit in memory)."""
BATCH_SIZE = 256
"""Records written per transaction, at most."""
GATHER_SECONDS = 0.25
"""How long the writer lets records gather after the first one: one transaction for many
requests costs far less CPU than one each (a busy service answers hundreds a second)."""
DROP_WARNING_SECONDS = 60.0
MAX_BACKOFF_SECONDS = 30.0


@functools.cache
def dropped_counter() -> Counter:
    """Predictions not written, as a Prometheus counter of this process, made on the first call
    (not at import: the Airflow worker imports this module only to read the log)."""
    return Counter(
        "emoflow_prediction_log_dropped",
        "Predictions not written to the prediction log: queue full, log closed, or database down.",
    )


@dataclass(slots=True)
class _Record:
    image: np.ndarray
    answer: dict[str, Any]
    route: str
    created_at: datetime
    embedding: np.ndarray | None = None


def _number(value: Any) -> float | None:
    """A finite float, or None (NULL) for None and NaN."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _row(record: _Record) -> dict[str, Any]:
    """The table row of one record: the answer's outputs and the image's features."""
    from PIL import Image

    answer = record.answer
    faces = answer.get("faces") or []
    width, height = int(answer["width"]), int(answer["height"])
    box = normalised_box(faces[0]["box"], width, height) if faces else None
    features = image_features(Image.fromarray(record.image), box)
    return {
        "created_at": record.created_at,
        "route": record.route,
        "model_version": answer.get("model_version"),
        "width": width,
        "height": height,
        "n_faces": len(faces),
        "emotion": answer.get("emotion"),
        "confidence": _number(answer.get("confidence")),
        **{name: _number(features[name]) for name in FEATURES},
        "scores": json.dumps(faces[0].get("scores"), default=float) if faces else None,
        "faces": json.dumps(faces, default=float),
        "embedding": embedding_bytes(record.embedding),
    }


class PredictionLog:
    """Records predictions off the request path; `start` it, `record` many, `close` once."""

    def __init__(
        self,
        uri: str,
        *,
        max_queue: int = MAX_QUEUE,
        max_queue_bytes: int = MAX_QUEUE_BYTES,
        batch_size: int = BATCH_SIZE,
        images: FaceStore | None = None,
    ) -> None:
        """`images`: where the writer also keeps each answered image (for labelling), named by
        the row's `image_key`; None keeps none."""
        self.uri = uri
        self.images = images
        self._dropped_total = dropped_counter()  # on /metrics (at 0) from the service's start
        self.batch_size = batch_size
        self.max_queue_bytes = max_queue_bytes
        self.dropped = 0
        """Records not written: dropped by `record`, or lost at `close`."""
        self._queue: queue.Queue[_Record] = queue.Queue(maxsize=max_queue)
        self._lock = threading.Lock()  # guards the counters below and `_closed` against `record`
        self._pending = 0  # recorded, not yet written (queued or in the writer's hands)
        self._queued_bytes = 0
        self._closed = threading.Event()
        self._deadline = math.inf  # set by `close`: the writer gives up failing writes after it
        self._dropped_unwarned = 0
        self._last_drop_warning = -math.inf
        self._engine: sa.Engine | None = None
        self._thread: threading.Thread | None = None
        self._table_ready = False

    @property
    def pending(self) -> int:
        """Records accepted by `record` and not written yet."""
        return self._pending

    def start(self) -> None:
        """Check the URI, make the SQLite folder, start the writer. The database itself may be
        down: the table is created by the first write, retried like any other."""
        if self._thread is not None:
            return
        self._engine = engine_for(self.uri)
        if self._engine.dialect.name == "sqlite":
            Path(self._engine.url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def record(
        self,
        image: np.ndarray,
        answer: dict[str, Any],
        route: str,
        embedding: np.ndarray | None = None,
    ) -> None:
        """Queue one prediction (an (H, W, 3) uint8 RGB image, its answer, and the model's
        embedding (C,) of the image, if any); never blocks."""
        item = _Record(image, answer, route, datetime.now(UTC), embedding)
        with self._lock:
            if (
                not self._closed.is_set()
                and self._queued_bytes + image.nbytes <= self.max_queue_bytes
            ):
                try:
                    self._queue.put_nowait(item)
                except queue.Full:
                    pass
                else:
                    self._pending += 1
                    self._queued_bytes += image.nbytes
                    return
        self._drop(1, "the queue is full" if not self._closed.is_set() else "the log is closed")

    def close(self, timeout: float = 30.0) -> int:
        """Stop accepting, write everything queued, stop the writer; returns the records lost.

        Waits at most `timeout` seconds; a database still failing then loses what is pending
        (logged). Calling it again does nothing more.
        """
        with self._lock:
            if self._closed.is_set():
                return 0
            self._deadline = time.monotonic() + timeout
            self._closed.set()
        if self._thread is not None:
            self._thread.join(timeout + 1.0)
        lost = self._pending
        if lost:
            why = "the writer was never started" if self._thread is None else (
                f"the database was not written within {timeout:g} s of close "
                f"({self._engine.url.render_as_string(hide_password=True)})"
            )  # fmt: skip
            logger.error("prediction log: %d records lost: %s", lost, why)
            self._drop(lost, None)
        if self._engine is not None and not (self._thread and self._thread.is_alive()):
            self._engine.dispose()
        return lost

    # ------------------------------------------------------------------ the writer thread

    def _drop(self, count: int, reason: str | None) -> None:
        self._dropped_total.inc(count)
        with self._lock:
            self.dropped += count
            if reason is None:
                return
            self._dropped_unwarned += count
            now = time.monotonic()
            if now - self._last_drop_warning < DROP_WARNING_SECONDS:
                return
            unwarned, self._dropped_unwarned, self._last_drop_warning = (
                self._dropped_unwarned, 0, now,
            )  # fmt: skip
        logger.warning(
            "prediction log: %d predictions dropped (%s; %d pending, %d dropped in all)",
            unwarned, reason, self._pending, self.dropped,
        )  # fmt: skip

    def _take(self) -> list[_Record] | None:
        """The next batch (at least one record), or None once closed and drained."""
        while True:
            closed = self._closed.is_set()  # before `get`: nothing is queued after `closed`
            if closed and time.monotonic() > self._deadline:
                return None  # `close` has stopped waiting: it counts what is left as lost
            try:
                first = self._queue.get(timeout=0.2)
                break
            except queue.Empty:
                if closed:
                    return None
        self._closed.wait(GATHER_SECONDS)  # `close` ends the wait: it drains at once
        batch = [first]
        while len(batch) < self.batch_size:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        with self._lock:
            self._queued_bytes -= sum(item.image.nbytes for item in batch)
        return batch

    def _rows(self, batch: list[_Record]) -> list[dict[str, Any]]:
        rows = []
        for item in batch:
            try:
                row = _row(item)
                row["image_key"] = self.images.save(item.image) if self.images else None
                rows.append(row)
            except Exception:  # one odd answer must not stop the log
                logger.exception("prediction log: could not describe a %s prediction", item.route)
                with self._lock:
                    self._pending -= 1
                self._drop(1, None)
        return rows

    def _write(self, rows: list[dict[str, Any]]) -> None:
        assert self._engine is not None
        with self._engine.begin() as connection:
            if not self._table_ready:
                metadata.create_all(connection, checkfirst=True)
                add_missing_columns(connection)  # a log made by an older emoflow
            connection.execute(predictions.insert(), rows)
        self._table_ready = True

    def _run(self) -> None:
        rows: list[dict[str, Any]] = []
        failures = 0
        while True:
            if not rows:
                batch = self._take()
                if batch is None:
                    return
                rows = self._rows(batch)
                del batch  # the images can go
                if not rows:
                    continue
            try:
                self._write(rows)
            except Exception as exc:
                failures += 1
                delay = min(0.5 * 2 ** (failures - 1), MAX_BACKOFF_SECONDS)
                logger.error(
                    "prediction log: writing %d records failed (attempt %d, next in %.1f s): %s",
                    len(rows), failures, delay, exc, exc_info=failures == 1,
                )  # fmt: skip
                if self._closed.is_set():
                    delay = min(delay, self._deadline - time.monotonic())
                    if delay <= 0:
                        return  # `close` counts and reports what is left
                    time.sleep(delay)
                else:
                    self._closed.wait(delay)  # `close` wakes it: retry at once, then back off
                continue
            with self._lock:
                self._pending -= len(rows)
            rows, failures = [], 0
