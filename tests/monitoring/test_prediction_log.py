"""monitoring/prediction_log.py against real databases: SQLite files and the local Postgres.

Postgres is always at 127.0.0.1:5432 (trust auth, user postgres, database `test`); each test
that uses it gets a fresh database `emoflow_test_<random>` and drops it after. SQLite is made
slow or unavailable by holding an exclusive lock on its file from another connection.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image

from ml.config import EMOTIONS
from monitoring.features import FEATURES, image_features
from monitoring.prediction_log import PredictionLog, dropped_counter
from monitoring.prediction_table import COLUMNS, read_predictions

POSTGRES = "postgresql://postgres@127.0.0.1:5432"
LOGGER = "monitoring.prediction_log"


# ---------------------------------------------------------------- predictions as the service makes them


def make_prediction(rng: np.random.Generator, n_faces: int) -> tuple[np.ndarray, dict]:
    """A random RGB image and an answer shaped like the service's (`serving.service.answer`)."""
    height, width = int(rng.integers(24, 72)), int(rng.integers(24, 96))
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    faces = []
    for _ in range(n_faces):
        x1, y1 = float(rng.uniform(0, width / 2)), float(rng.uniform(0, height / 2))
        x2, y2 = float(rng.uniform(x1 + 2, width)), float(rng.uniform(y1 + 2, height))
        raw = rng.random(len(EMOTIONS))
        scores = {name: float(v) for name, v in zip(EMOTIONS, raw / raw.sum(), strict=True)}
        emotion = max(scores, key=scores.__getitem__)
        faces.append(
            {"box": [x1, y1, x2, y2], "emotion": emotion, "confidence": scores[emotion],
             "scores": scores}
        )  # fmt: skip
    best = faces[0] if faces else None
    answer = {
        "emotion": best["emotion"] if best else None,
        "confidence": best["confidence"] if best else None,
        "faces": faces,
        "model_version": int(rng.integers(1, 9)),
        "width": width,
        "height": height,
    }
    return image, answer


def make_predictions(count: int, seed: int = 0) -> list[tuple[np.ndarray, dict, str]]:
    """`count` (image, answer, route); every third has no face, some have several."""
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(count):
        image, answer = make_prediction(rng, 0 if i % 3 == 0 else int(rng.integers(1, 4)))
        cases.append((image, answer, "/predict" if i % 2 else "/predict/batch"))
    return cases


def expected_features(image: np.ndarray, answer: dict) -> dict[str, float]:
    """`image_features` computed here, with the best face's box normalised by the test."""
    box = None
    if answer["faces"]:
        x1, y1, x2, y2 = answer["faces"][0]["box"]
        w, h = answer["width"], answer["height"]
        box = ((x1 + x2) / (2 * w), (y1 + y2) / (2 * h), (x2 - x1) / w, (y2 - y1) / h)
    return image_features(Image.fromarray(image), box)


def assert_logged(frame, cases: list[tuple[np.ndarray, dict, str]]) -> None:
    """`frame` (from `read_predictions`) holds exactly `cases`, in the order recorded."""
    assert list(frame.columns) == list(COLUMNS)
    assert len(frame) == len(cases)
    assert frame["id"].is_unique
    assert frame["created_at"].is_monotonic_increasing
    assert str(frame["created_at"].dt.tz) == "UTC"
    for (image, answer, route), row in zip(cases, frame.itertuples(index=False), strict=True):
        assert row.route == route
        assert row.model_version == answer["model_version"]
        assert (row.width, row.height) == (answer["width"], answer["height"])
        assert row.n_faces == len(answer["faces"])
        assert json.loads(row.faces) == answer["faces"]
        if answer["faces"]:
            assert row.emotion == answer["emotion"]
            assert row.confidence == pytest.approx(answer["confidence"], rel=1e-12)
            assert json.loads(row.scores) == answer["faces"][0]["scores"]
        else:
            assert row.emotion is None and row.scores is None and math.isnan(row.confidence)
        features = expected_features(image, answer)
        for name in FEATURES:
            got, want = getattr(row, name), features[name]
            if math.isnan(want):
                assert math.isnan(got), (name, got)
            else:
                assert got == pytest.approx(want, rel=1e-9, abs=1e-12), (name, got, want)


def dropped_total() -> float:
    return dropped_counter().collect()[0].samples[0].value


# ---------------------------------------------------------------- databases


@pytest.fixture
def postgres_uri() -> Iterator[str]:
    """A fresh Postgres database for one test, dropped after it."""
    name = f"emoflow_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(f"{POSTGRES}/test", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{POSTGRES}/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def log_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":  # in folders that do not exist yet: start() makes them
        return f"sqlite:///{tmp_path / 'not' / 'yet' / 'predictions.db'}"
    return request.getfixturevalue("postgres_uri")


class Locked:
    """An exclusive lock on a SQLite file, from another connection: no one reads or writes."""

    def __init__(self, path: Path) -> None:
        self.connection = sqlite3.connect(path, isolation_level=None)
        self.connection.execute("BEGIN EXCLUSIVE")

    def release(self) -> None:
        self.connection.execute("ROLLBACK")
        self.connection.close()


# ---------------------------------------------------------------- tests


def test_every_prediction_is_written_with_its_features(log_uri: str) -> None:
    cases = make_predictions(60)
    log = PredictionLog(log_uri, batch_size=16)  # several batches
    log.start()
    for image, answer, route in cases:
        log.record(image, answer, route)
    assert log.close() == 0
    assert log.pending == 0
    assert_logged(read_predictions(log_uri), cases)
    assert_logged(read_predictions(log_uri, limit=7), cases[-7:])  # the newest, oldest first


def test_close_writes_everything_queued(log_uri: str) -> None:
    cases = make_predictions(1500, seed=1)
    log = PredictionLog(log_uri)
    log.start()
    for image, answer, route in cases:
        log.record(image, answer, route)
    assert log.close(timeout=120) == 0  # at once: most of them are still queued here
    assert log.close() == 0  # again: nothing more to do
    frame = read_predictions(log_uri)
    assert len(frame) == len(cases)
    assert frame["width"].tolist() == [answer["width"] for _, answer, _ in cases]
    log.record(*cases[0])  # after close: dropped, not queued
    assert log.pending == 0 and log.dropped == 1


def test_record_does_not_wait_for_the_database(tmp_path: Path) -> None:
    """The database is locked throughout the burst: a record() that wrote would wait on it."""
    path = tmp_path / "predictions.db"
    lock = Locked(path)
    log = PredictionLog(f"sqlite:///{path}")
    log.start()
    cases = make_predictions(1000, seed=2)
    start = time.perf_counter()
    for image, answer, route in cases:
        log.record(image, answer, route)
    elapsed = time.perf_counter() - start
    try:
        assert log.pending == 1000  # all accepted, none written: the file is locked
        assert elapsed < 5.0  # SQLite's busy timeout: no record() waited on the lock
    finally:
        lock.release()
    assert log.close(timeout=120) == 0
    assert len(read_predictions(f"sqlite:///{path}")) == 1000


def test_writer_survives_a_database_outage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "predictions.db"
    uri = f"sqlite:///{path}?timeout=0.05"  # a locked file fails a write at once
    lock = Locked(path)
    log = PredictionLog(uri)
    log.start()
    cases = make_predictions(20, seed=3)
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        for image, answer, route in cases:
            log.record(image, answer, route)
        deadline = time.monotonic() + 30
        while sum("failed (attempt" in r.getMessage() for r in caplog.records) < 2:
            assert time.monotonic() < deadline, "the writer did not retry"
            time.sleep(0.05)
        assert log.pending == 20
        lock.release()
        deadline = time.monotonic() + 30
        while log.pending:  # written by the same thread, without close()
            assert time.monotonic() < deadline, "the writer did not recover"
            time.sleep(0.05)
    assert log.close() == 0
    assert_logged(read_predictions(uri), cases)


def test_close_reports_what_a_database_down_throughout_loses(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "predictions.db"
    lock = Locked(path)
    log = PredictionLog(f"sqlite:///{path}?timeout=0.05")
    log.start()
    before = dropped_total()
    for image, answer, route in make_predictions(10, seed=4):
        log.record(image, answer, route)
    try:
        with caplog.at_level(logging.ERROR, logger=LOGGER):
            start = time.monotonic()
            assert log.close(timeout=1.0) == 10
            assert time.monotonic() - start < 10  # bounded by the timeout, not the outage
    finally:
        lock.release()
    assert any("10 records lost" in r.getMessage() for r in caplog.records)
    assert log.dropped == 10 and dropped_total() - before == 10


def test_a_full_queue_drops_and_counts(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    uri = f"sqlite:///{tmp_path / 'predictions.db'}"
    log = PredictionLog(uri, max_queue=5)  # not started: nothing leaves the queue
    cases = make_predictions(8, seed=5)
    before = dropped_total()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for image, answer, route in cases:
            log.record(image, answer, route)
    assert log.pending == 5 and log.dropped == 3
    assert dropped_total() - before == 3
    warnings = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert len(warnings) == 1  # at most one a minute, not one per record
    log.start()
    assert log.close() == 0
    assert_logged(read_predictions(uri), cases[:5])


@pytest.mark.parametrize(
    "uri",
    [
        "not a uri",
        "mysql://user@localhost/emoflow",
        "postgres://user@localhost/emoflow",
        "http://example.com/predictions",
        "sqlite://",
        "sqlite:///:memory:",
        "sqlite://host/predictions.db",
    ],
)
def test_a_bad_uri_is_a_clear_error_at_start(uri: str) -> None:
    log = PredictionLog(uri)
    with pytest.raises(ValueError, match="EMOFLOW_PREDICTION_LOG_URI") as error:
        log.start()
    assert "expected sqlite:///" in str(error.value) and "postgresql://" in str(error.value)
    assert log.close() == 0


def test_an_embedding_round_trips(log_uri: str) -> None:
    """The model's embedding of each image comes back as the float32 array recorded; a
    prediction recorded without one reads None."""
    cases = make_predictions(9, seed=3)
    rng = np.random.default_rng(3)
    embeddings = [None if i % 4 == 1 else rng.standard_normal(256).astype(np.float32)
                  for i in range(len(cases))]  # fmt: skip
    embeddings[2] = embeddings[2].astype(np.float64)  # any real dtype is stored as float32
    log = PredictionLog(log_uri, batch_size=4)
    log.start()
    for (image, answer, route), embedding in zip(cases, embeddings, strict=True):
        log.record(image, answer, route, embedding)
    assert log.close() == 0
    frame = read_predictions(log_uri)
    assert_logged(frame, cases)
    assert frame["embedding"].isna().tolist() == [e is None for e in embeddings]
    for got, want in zip(frame["embedding"], embeddings, strict=True):
        if want is None:
            assert got is None
        else:
            assert got.dtype == np.float32 and got.shape == (256,)
            np.testing.assert_array_equal(got, want.astype(np.float32))


def test_a_log_made_before_embeddings_gets_the_column(tmp_path: Path) -> None:
    """A predictions table without ``embedding`` (an older emoflow's) is given it on the first
    write; its old rows read None."""
    path = tmp_path / "old.db"
    uri = f"sqlite:///{path}"
    first, second = make_predictions(2, seed=4)
    log = PredictionLog(uri)
    log.start()
    log.record(*first)
    assert log.close() == 0
    with sqlite3.connect(path) as connection:
        connection.execute("ALTER TABLE predictions DROP COLUMN embedding")
    log = PredictionLog(uri)
    log.start()
    log.record(*second, embedding=np.arange(8, dtype=np.float32))
    assert log.close() == 0
    frame = read_predictions(uri)
    assert_logged(frame, [first, second])
    assert frame["embedding"].iloc[0] is None
    np.testing.assert_array_equal(frame["embedding"].iloc[1], np.arange(8, dtype=np.float32))


def test_the_shadow_summary_gives_agreement_per_class_and_drops(log_uri: str) -> None:
    """The shadow log (`shadow_predictions`, beside the predictions) summed per version pair and
    per class the champion answered; nothing logged gives an empty summary and page."""
    from datetime import UTC, datetime

    from monitoring.prediction_table import engine_for, metadata, shadow_predictions
    from monitoring.shadow_report import shadow_report_page, shadow_summary

    if log_uri.startswith("sqlite"):
        Path(log_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True)
    assert shadow_summary(log_uri) == []
    assert "Nothing scored in shadow yet" in shadow_report_page(log_uri)
    answers = [("happy", "happy", 0.9, 0.8, 0), ("happy", "sad", 0.7, 0.6, 3),
               ("sad", "sad", 0.5, 0.4, 0), (None, None, None, None, 1)]  # fmt: skip
    rows = [
        {"created_at": datetime.now(UTC), "route": "/predict", "champion_version": 1,
         "challenger_version": 2, "champion_emotion": a, "challenger_emotion": b,
         "champion_confidence": ca, "challenger_confidence": cb, "champion_faces": int(a is not None),
         "challenger_faces": int(b is not None), "challenger_answer": "[]", "dropped_before": d}
        for a, b, ca, cb, d in answers
    ]  # fmt: skip
    engine = engine_for(log_uri)
    with engine.begin() as connection:
        metadata.create_all(connection, tables=[shadow_predictions])
        connection.execute(shadow_predictions.insert(), rows)
    engine.dispose()
    (pair,) = shadow_summary(log_uri)
    assert (pair["champion_version"], pair["challenger_version"]) == (1, 2)
    assert (pair["images"], pair["agreement"], pair["dropped"]) == (4, 0.75, 4)
    happy = next(c for c in pair["classes"] if c["emotion"] == "happy")
    assert happy["images"] == 2 and happy["agreement"] == 0.5
    assert happy["champion_confidence"] == pytest.approx(0.8)
    assert happy["challenger_confidence"] == pytest.approx(0.7)
    page = shadow_report_page(log_uri)
    assert "champion v1 vs challenger v2" in page and "agreed on <b>75%</b>" in page
