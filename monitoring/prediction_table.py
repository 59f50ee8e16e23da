"""The prediction log's tables: their schema, their database (SQLite or Postgres, by URI) and
readers. `monitoring.prediction_log.PredictionLog` writes ``predictions`` (in the service);
Airflow's `emotion_monitor` reads it with `read_predictions`. The shadow log,
``shadow_predictions``, sits beside it: the challenger's answers to a share of the requests,
next to the champion's (written by serving/shadow.py, read by `monitoring.shadow_report`)."""

from __future__ import annotations

import importlib.util
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

from monitoring.features import FEATURES

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas

SETTING = "EMOFLOW_PREDICTION_LOG_URI"
EXPECTED = "sqlite:///<path to a file> or postgresql://user[:password]@host[:port]/database"
TABLE = "predictions"

metadata = sa.MetaData()
predictions = sa.Table(
    TABLE, metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("route", sa.String(64), nullable=False),
    sa.Column("model_version", sa.Integer),
    sa.Column("width", sa.Integer, nullable=False),
    sa.Column("height", sa.Integer, nullable=False),
    sa.Column("n_faces", sa.Integer, nullable=False),
    sa.Column("emotion", sa.String(32)),
    sa.Column("confidence", sa.Double),
    *(sa.Column(name, sa.Double) for name in FEATURES),
    sa.Column("scores", sa.Text),  # JSON: the best face's {emotion: score}; NULL without a face
    sa.Column("faces", sa.Text, nullable=False),  # JSON: every face of the answer
    sa.Column("image_key", sa.String(32)),  # the image in the face store; NULL: not kept
    sa.Column("embedding", sa.LargeBinary),  # the champion's image embedding, float32 bytes
)  # fmt: skip
"""The table, the same on SQLite and Postgres (double precision for every real number;
``embedding``: the (C,) float32 embedding of `ml.embedding`, little-endian bytes, NULL for a
model without one)."""

SHADOW_TABLE = "shadow_predictions"
shadow_predictions = sa.Table(
    SHADOW_TABLE, metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("route", sa.String(64), nullable=False),
    sa.Column("champion_version", sa.Integer, nullable=False),
    sa.Column("challenger_version", sa.Integer, nullable=False),
    sa.Column("champion_emotion", sa.String(32)),  # the answer's best face; NULL: no face
    sa.Column("champion_confidence", sa.Double),
    sa.Column("challenger_emotion", sa.String(32)),
    sa.Column("challenger_confidence", sa.Double),
    sa.Column("champion_faces", sa.Integer, nullable=False),
    sa.Column("challenger_faces", sa.Integer, nullable=False),
    sa.Column("challenger_answer", sa.Text, nullable=False),  # JSON: every face it found
    sa.Column("dropped_before", sa.Integer, nullable=False),
)  # fmt: skip
"""One row per image scored in shadow: both models' best face (emotion, confidence), their face
counts and the challenger's whole answer. ``dropped_before``: the requests this worker sampled
for shadow scoring but dropped (its queue was full) since its previous row."""

EMBEDDING_DTYPE = "<f4"

COLUMNS: tuple[str, ...] = tuple(column.name for column in predictions.columns)


def database_url(uri: str) -> sa.URL:
    """`uri` parsed and checked; ``postgresql://`` takes the Postgres driver installed."""
    try:
        url = sa.make_url(uri)
    except (sa.exc.ArgumentError, ValueError) as exc:
        raise ValueError(
            f"{SETTING}={uri!r} is not a database URI ({exc}); expected {EXPECTED}"
        ) from None
    backend, _, driver = url.drivername.partition("+")
    if backend == "sqlite" and driver in ("", "pysqlite"):
        if url.host or url.username or url.password or url.port:
            raise ValueError(f"{SETTING}={uri!r}: a SQLite URI names no host; expected {EXPECTED}")
        if not url.database or url.database == ":memory:":
            raise ValueError(
                f"{SETTING}={uri!r}: a SQLite prediction log needs a file path; expected {EXPECTED}"
            )
        return url
    if backend == "postgresql" and driver in ("", "psycopg2", "psycopg"):
        if not driver and importlib.util.find_spec("psycopg2") is None:
            if importlib.util.find_spec("psycopg") is not None:
                url = url.set(drivername="postgresql+psycopg")
        return url
    raise ValueError(
        f"{SETTING}={uri!r}: unsupported database {url.drivername!r}; expected {EXPECTED}"
    )


def engine_for(uri: str) -> sa.Engine:
    """An engine for the prediction log at `uri` (checked by `database_url`)."""
    url = database_url(uri)
    try:
        engine = sa.create_engine(url, pool_pre_ping=True)
    except (sa.exc.ArgumentError, ImportError) as exc:
        raise ValueError(f"{SETTING}={uri!r}: {exc}; expected {EXPECTED}") from None
    if engine.dialect.name == "sqlite":
        # Write-ahead log, synced at checkpoints rather than at every commit: a commit per
        # batch with the default rollback journal cost the service a tenth of its CPU under load
        # (fsync); a crash can lose the last batches, never corrupt the file.
        @sa.event.listens_for(engine, "connect")
        def _fast_commits(connection, _record) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

    return engine


def add_missing_columns(connection: sa.Connection) -> None:
    """Columns added since a log's table was created (`image_key`, `embedding`): ALTER TABLE
    adds them."""
    have = {column["name"] for column in sa.inspect(connection).get_columns(TABLE)}
    for column in predictions.columns:
        if column.name not in have:
            kind = column.type.compile(dialect=connection.dialect)
            connection.execute(sa.text(f"ALTER TABLE {TABLE} ADD COLUMN {column.name} {kind}"))


def embedding_bytes(embedding) -> bytes | None:
    """An embedding as the column stores it: float32 little-endian bytes (None: NULL)."""
    if embedding is None:
        return None
    import numpy as np

    return np.ascontiguousarray(embedding, dtype=EMBEDDING_DTYPE).reshape(-1).tobytes()


def embedding_array(value) -> np.ndarray | None:
    """The column's bytes (bytes or memoryview, by driver) as a (C,) float32 array, or None."""
    if value is None:
        return None
    import numpy as np

    return np.frombuffer(bytes(value), dtype=EMBEDDING_DTYPE).astype(np.float32)


def read_predictions(
    uri: str,
    limit: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> pandas.DataFrame:
    """The prediction log at `uri` as a table of `COLUMNS`, oldest first; only rows created in
    [`since`, `until`] when given, and of those the newest `limit`. ``created_at`` is UTC, NULL
    features are NaN, ``scores`` and ``faces`` stay JSON text, ``embedding`` holds (C,) float32
    arrays, or None. A log with nothing written yet gives an empty table."""
    import pandas as pd

    engine = engine_for(uri)
    try:
        missing_file = engine.dialect.name == "sqlite" and not Path(engine.url.database).exists()
        if missing_file or not sa.inspect(engine).has_table(TABLE):
            rows: list = []
        else:
            query = sa.select(predictions).order_by(
                predictions.c.created_at.desc(), predictions.c.id.desc()
            )
            if since is not None:
                query = query.where(predictions.c.created_at >= since)
            if until is not None:
                query = query.where(predictions.c.created_at <= until)
            if limit is not None:
                query = query.limit(limit)
            with engine.connect() as connection:
                rows = list(connection.execute(query))[::-1]
    finally:
        engine.dispose()
    frame = pd.DataFrame([tuple(row) for row in rows], columns=list(COLUMNS))
    frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True)
    frame["embedding"] = pd.Series(
        [embedding_array(value) for value in frame["embedding"]], index=frame.index, dtype=object
    )
    reals = ("confidence", *FEATURES)
    integers = ("id", "width", "height", "n_faces")
    return frame.astype(
        {name: "float64" for name in reals}
        | {name: "int64" for name in integers}
        | {"model_version": "Int64"}
    )
