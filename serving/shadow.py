"""Shadow scoring: the alias `challenger` answers a sampled share of the requests, unseen.

`ml.registry.register` points `challenger` at every new version; while that version is not the
champion (the gate failed, or a person has not approved it yet), a worker with
`serve_shadow_share` > 0 loads it beside the champion (`follow`, on the champion's poll) and
hands each sampled image, with the champion's answer and the input already prepared for it, to
`offer`. That never waits: a bounded queue (`serve_shadow_queue`) takes it or the image is
dropped and counted (`emoflow_shadow_dropped_total` on /metrics). One low-priority thread runs
the challenger on what is queued and writes both answers to the shadow log
(``shadow_predictions``, beside the prediction log: `monitoring.prediction_table`). Shadow
answers are never returned; `monitoring.shadow_report` compares the two models.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import queue
import random
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from prometheus_client import Counter

from ml.config import Settings
from ml.registry import CHALLENGER
from monitoring.prediction_table import engine_for, metadata, shadow_predictions
from serving import registry_api
from serving.faces import FaceCrops, prepare_crops, read_emotions
from serving.model import Face, Prepared, ServedModel, load_version

logger = logging.getLogger(__name__)

BATCH_ROWS = 64  # shadow rows written per transaction, at most


@functools.cache
def shadow_counters() -> tuple[Counter, Counter]:
    """(scored, dropped) as Prometheus counters of this process, made on the first call."""
    return (
        Counter("emoflow_shadow_scored", "Images the challenger answered in shadow."),
        Counter("emoflow_shadow_dropped", "Images sampled for shadow scoring but dropped: "
                "the shadow queue was full."),
    )  # fmt: skip


@dataclass(slots=True)
class _Job:
    image: np.ndarray
    prepared: Prepared | FaceCrops  # the champion's input for the image
    imgsz: tuple[int, int]  # the champion's input size
    answer: dict  # the champion's answer
    route: str
    created_at: datetime


def _best(faces: list[Face]) -> tuple[str | None, float | None]:
    return (faces[0].emotion, faces[0].confidence) if faces else (None, None)


class ShadowScorer:
    """The challenger of one worker process, its queue, its thread and its log writer."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.share = settings.serve_shadow_share
        self.model: ServedModel | None = None  # the challenger, while it is not the champion
        self.scored, self.dropped = shadow_counters()
        self._dropped_since_row = 0
        self._lock = threading.Lock()
        self._jobs: queue.Queue[_Job | None] = queue.Queue(maxsize=settings.serve_shadow_queue)
        self._thread: threading.Thread | None = None
        self._engine: sa.Engine | None = None

    @property
    def enabled(self) -> bool:
        return self.share > 0

    def follow(self, champion: int | None) -> None:
        """Load the version `challenger` names (blocking: run it in a thread) if it is not the
        champion and not loaded yet; forget it once it is the champion or gone."""
        if not self.enabled:
            return
        ref = registry_api.version_by_alias(self.settings, CHALLENGER)
        if ref is None or ref.version == champion:
            self.model = None
        elif self.model is None or self.model.ref.version != ref.version:
            # one inference thread: the shadow thread itself, whose priority is the lowest
            self.model = load_version(self.settings, ref, 1)
            logger.info("shadow scoring with challenger version %s", ref.version)
        if self._thread is None and self.model is not None:
            self._engine = engine_for(self.settings.prediction_log)
            if self._engine.dialect.name == "sqlite":
                Path(self._engine.url.database).expanduser().parent.mkdir(
                    parents=True, exist_ok=True
                )
            self._thread = threading.Thread(target=self._run, name="shadow", daemon=True)
            self._thread.start()

    def offer(
        self, served: ServedModel, image: np.ndarray, prepared: Prepared | FaceCrops,
        answer: dict, route: str,
    ) -> None:  # fmt: skip
        """On the request path: queue a sampled image for the challenger; never waits."""
        challenger = self.model
        if challenger is None or challenger.ref.version == served.ref.version:
            return
        if random.random() >= self.share:
            return
        job = _Job(image, prepared, served.detector.imgsz, answer, route, datetime.now(UTC))
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            self.dropped.inc()
            with self._lock:
                self._dropped_since_row += 1

    def close(self, timeout: float = 10.0) -> None:
        """Score and write what is queued (for at most `timeout` s), then stop the thread."""
        if self._thread is None:
            return
        try:
            self._jobs.put(None, timeout=timeout)
        except queue.Full:
            logger.warning("shadow scoring: the queue did not drain in %g s at shutdown", timeout)
        self._thread.join(timeout)
        if self._engine is not None:
            self._engine.dispose()

    # ------------------------------------------------------------------ the shadow thread

    def _answer(self, challenger: ServedModel, job: _Job) -> list[Face]:
        """The challenger's faces for the job's image: the champion's input reused where the
        input sizes agree, else the image prepared again (the same detected face boxes)."""
        detector, item = challenger.detector, job.prepared
        same = detector.imgsz == job.imgsz
        if isinstance(item, FaceCrops):
            crops = item if same else prepare_crops(job.image, item.boxes, detector.imgsz)
            return read_emotions(detector.names, crops, detector.run(crops.batch))
        views = item if same else detector.prepare(job.image)
        return detector.faces(views, detector.run(views.batch))

    def _row(self, challenger: ServedModel, job: _Job) -> dict:
        faces = self._answer(challenger, job)
        emotion, confidence = _best(faces)
        with self._lock:
            dropped, self._dropped_since_row = self._dropped_since_row, 0
        return {
            "created_at": job.created_at,
            "route": job.route,
            "champion_version": job.answer["model_version"],
            "challenger_version": challenger.ref.version,
            "champion_emotion": job.answer["emotion"],
            "champion_confidence": job.answer["confidence"],
            "challenger_emotion": emotion,
            "challenger_confidence": confidence,
            "champion_faces": len(job.answer["faces"]),
            "challenger_faces": len(faces),
            "challenger_answer": json.dumps([vars(face) for face in faces], default=float),
            "dropped_before": dropped,
        }

    def _write(self, rows: list[dict]) -> None:
        assert self._engine is not None
        try:
            with self._engine.begin() as connection:
                metadata.create_all(connection, tables=[shadow_predictions], checkfirst=True)
                connection.execute(shadow_predictions.insert(), rows)
        except Exception:  # the shadow log is information: never retried, never fatal
            logger.exception("shadow log: %d rows not written", len(rows))

    def _run(self) -> None:
        # the lowest CPU priority for this thread alone (Linux): requests come first
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        stop = False
        while not stop:
            jobs = [self._jobs.get()]
            while len(jobs) < BATCH_ROWS:
                try:
                    jobs.append(self._jobs.get_nowait())
                except queue.Empty:
                    break
            stop = None in jobs
            rows = []
            for job in jobs:
                challenger = self.model
                if job is None or challenger is None:
                    continue
                try:
                    rows.append(self._row(challenger, job))
                    self.scored.inc()
                except Exception:
                    logger.exception("shadow scoring of a %s request failed", job.route)
            if rows:
                self._write(rows)
