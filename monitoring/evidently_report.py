"""Evidently's data-drift report over two feature tables, for `monitoring.drift`.

`compare(cur_df, ref_df, params, title=...)` samples at most ``params.max_rows`` rows of each
side (with the fixed `SEED`, so that a re-run of the same inputs gives the same report), keeps
the columns Evidently can compare (the numerical `monitoring.features.FEATURES`, and
`ANSWERED` where both sides are answers, that have a value on both sides, and the categorical
`CATEGORICAL`), runs Evidently's ``DataDriftPreset``
and returns its share of drifted columns (Evidently's own ``DriftedColumnsCount``), the
per-column scores and verdicts, and the HTML page, titled with what was compared.
`json_default` encodes the numpy scalars and paths of a report's summary as JSON.

pandas and evidently are imported inside the functions that use them, not at module level.
"""

from __future__ import annotations

import math
import warnings
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ml.params import DriftParams
from monitoring.features import FEATURES

if TYPE_CHECKING:  # pragma: no cover
    import pandas

SEED = 0
"""Seed of the row sampling, so that a re-run of the same inputs gives the same report."""
CATEGORICAL = ("emotion",)
ANSWERED = ("confidence",)
"""Numerical columns only answers have (live traffic, and a reference the champion answered):
compared when both sides have them."""

_DRIFTED_COLUMNS_COUNT = "evidently:metric_v2:DriftedColumnsCount"
_VALUE_DRIFT = "evidently:metric_v2:ValueDrift"
_EMBEDDINGS_DRIFT = "evidently:metric_v2:EmbeddingsDrift"
EMBEDDINGS = "face"
"""The name of the face-embedding group in the report."""


def compare(
    cur_df: pandas.DataFrame,
    ref_df: pandas.DataFrame,
    params: DriftParams,
    *,
    title: str,
    embedding_columns: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Sample both sides, drop unusable features, run the report; `_run_report`'s summary plus
    ``cur_sampled``, ``ref_sampled`` and ``dropped``. `embedding_columns` (face embedding
    components on both sides, `monitoring.embedding_drift`) are scored as one embedding group
    by Evidently's model method; the summary then has ``embedding_score`` (ROC AUC)."""
    cur_sample = _sample(cur_df, params.max_rows, embedding_columns)
    ref_sample = _sample(ref_df, params.max_rows, embedding_columns)
    numerical, dropped = _usable_numerical(cur_sample, ref_sample)
    summary = _run_report(
        cur_sample,
        ref_sample,
        numerical=numerical,
        drift_share=params.share_threshold,
        title=title,
        embedding_columns=list(embedding_columns),
        embedding_threshold=params.embedding_threshold,
    )
    return {
        **summary,
        "cur_sampled": len(cur_sample),
        "ref_sampled": len(ref_sample),
        "dropped": dropped,
    }


def _sample(df: pandas.DataFrame, max_rows: int, extra: tuple[str, ...] = ()) -> pandas.DataFrame:
    if len(df) > max_rows:
        df = df.sample(n=max_rows, random_state=SEED)
    answered = [name for name in ANSWERED if name in df.columns]
    return df[[*FEATURES, *answered, *CATEGORICAL, *extra]].reset_index(drop=True)


def _usable_numerical(cur: pandas.DataFrame, ref: pandas.DataFrame) -> tuple[list[str], list[str]]:
    """Features (and `ANSWERED` columns both sides have) with at least one value on both sides
    (Evidently refuses an all-NaN column: ``ValueError: An empty column 'face_cx' was
    provided``), and those left out."""
    usable, dropped = [], []
    answered = [name for name in ANSWERED if name in cur.columns and name in ref.columns]
    for name in (*FEATURES, *answered):
        if cur[name].notna().any() and ref[name].notna().any():
            usable.append(name)
        else:
            dropped.append(name)
    return usable, dropped


def _run_report(
    cur: pandas.DataFrame,
    ref: pandas.DataFrame,
    *,
    numerical: list[str],
    drift_share: float,
    title: str,
    embedding_columns: list[str] | None = None,
    embedding_threshold: float = 0.55,
) -> dict[str, Any]:
    """Run Evidently's DataDriftPreset (and, with `embedding_columns`, its embedding drift);
    return the share, per-column verdicts, the embedding score and the HTML."""
    import evidently
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics.embeddings import EmbeddingsDrift, ModelDriftMethod
    from evidently.presets import DataDriftPreset

    columns = [*numerical, *CATEGORICAL]
    embedding_columns = embedding_columns or []
    definition = DataDefinition(
        numerical_columns=[*numerical, *embedding_columns],
        categorical_columns=list(CATEGORICAL),
        embeddings={EMBEDDINGS: embedding_columns} if embedding_columns else None,
    )
    metrics: list = [DataDriftPreset(columns=columns, drift_share=drift_share)]
    if embedding_columns:
        method = ModelDriftMethod(threshold=embedding_threshold, bootstrap=False)
        metrics.append(EmbeddingsDrift(embeddings_name=EMBEDDINGS, drift_method=method))
    report = Report(metrics, include_tests=True)
    with warnings.catch_warnings():
        # Constant columns make numpy warn (division by a zero std) inside Evidently.
        warnings.simplefilter("ignore", RuntimeWarning)
        snapshot = report.run(
            Dataset.from_pandas(cur[columns + embedding_columns], data_definition=definition),
            Dataset.from_pandas(ref[columns + embedding_columns], data_definition=definition),
        )
        html = snapshot.get_html_str(as_iframe=False)
    data = snapshot.dict()

    share = count = embedding_score = None
    per_column: dict[str, dict[str, Any]] = {}
    by_id: dict[str, str] = {}
    for metric in data.get("metrics", []):
        config = metric.get("config", {})
        if config.get("type") == _EMBEDDINGS_DRIFT:
            embedding_score = _float(metric.get("value"))
        elif config.get("type") == _DRIFTED_COLUMNS_COUNT:
            share = float(metric["value"]["share"])
            count = int(metric["value"]["count"])
        elif config.get("type") == _VALUE_DRIFT:
            column = config["column"]
            by_id[metric["id"]] = column
            per_column[column] = {
                "column": column,
                "method": config.get("method"),
                "threshold": config.get("threshold"),
                "score": _float(metric.get("value")),
                "drifted": None,
            }
    if share is None:
        raise RuntimeError(
            f"evidently {evidently.__version__}: no {_DRIFTED_COLUMNS_COUNT} result in the "
            "report; the drift step expects evidently 0.7's DataDriftPreset"
        )
    for test in data.get("tests", []):
        column = by_id.get(test.get("metric_config", {}).get("metric_id"))
        if column is not None:
            status = getattr(test.get("status"), "value", test.get("status"))
            per_column[column]["drifted"] = status == "FAIL"
    return {
        "share": share,
        "count": count,
        "embedding_score": embedding_score,
        "columns": [per_column[c] for c in columns if c in per_column],
        "html": _titled(html, title),
        "evidently": evidently.__version__,
    }


def _titled(html: str, title: str) -> str:
    """Give Evidently's page a <title> and a one-line header naming what was compared."""
    text = escape(title)
    html = html.replace("</head>", f"<title>{text}</title>\n</head>", 1)
    header = f'<h2 style="font-family:sans-serif;margin:16px 24px 0" id="emoflow-title">{text}</h2>'
    return html.replace("<body>", f"<body>\n{header}", 1)


def _float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def json_default(value: Any) -> Any:
    """`json.dumps` ``default``: numpy scalars as Python numbers, paths as strings."""
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
