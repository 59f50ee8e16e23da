"""The drift step: Evidently's data-drift report, new data revision vs the champion's data.

``check_drift(current, reference, params, reports_dir)`` compares the per-image features
(`monitoring.features.FEATURES`, numerical) and the labelled emotion (categorical) of every
image of the ``current`` revision with those of the ``reference`` revision (the dataset the
current champion was trained on). With no reference (first cycle, no champion yet) it compares
the revision's own ``valid`` + ``test`` splits (current) with its ``train`` split (reference).

It writes, under ``reports_dir/drift/``:

- ``<current>-vs-<reference>.html``: the Evidently report (it embeds sampled rows, at most
  ``params.max_rows`` per side);
- ``<current>-vs-<reference>.json``: the `DriftResult` plus per-column scores and verdicts,
  which `monitoring.reports.write_index` reads;

both written to a temporary name and then renamed, and then refreshes ``reports_dir/index.html``.
The share of drifted columns is Evidently's own (``DriftedColumnsCount``), not recomputed here.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
import warnings
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ml.config import DriftParams
from ml.records import DatasetRef, DriftResult
from monitoring.features import FEATURES

if TYPE_CHECKING:  # pragma: no cover
    import pandas

log = logging.getLogger(__name__)

SEED = 0
"""Seed of the row sampling, so that a re-run of the same inputs gives the same report."""
CATEGORICAL = ("emotion",)
DRIFT_DIR = "drift"
REPORT_KIND = "dataset-drift"

_DRIFTED_COLUMNS_COUNT = "evidently:metric_v2:DriftedColumnsCount"
_VALUE_DRIFT = "evidently:metric_v2:ValueDrift"


class DriftError(ValueError):
    """The data cannot be compared; the message names the dataset folder and what is missing."""


def safe_name(text: str) -> str:
    """A file-name-safe form of a revision name (``r3``, ``v1.2``; anything else becomes ``_``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "_"


def check_drift(
    current: DatasetRef,
    reference: DatasetRef | None,
    params: DriftParams,
    reports_dir: Path,
) -> DriftResult:
    """Compare ``current`` with ``reference`` (or with its own train split when None)."""
    from monitoring.features import dataset_features
    from monitoring.reports import atomic_write_text, write_index

    started = time.perf_counter()
    current_table = dataset_features(current.path)
    if reference is None:
        ref_df = current_table[current_table["split"] == "train"]
        cur_df = current_table[current_table["split"].isin(["valid", "test"])]
        ref_label = f"{current.revision} train split (no champion yet)"
        ref_file = f"{current.revision}-train"
        cur_label = f"{current.revision} valid+test splits"
        ref_where = f"{current.path} (train split)"
        cur_where = f"{current.path} (valid and test splits)"
    else:
        ref_df = dataset_features(reference.path)
        cur_df = current_table
        ref_label = reference.revision
        ref_file = reference.revision
        cur_label = f"{current.revision} all splits"
        ref_where = str(reference.path)
        cur_where = str(current.path)
    if cur_df.empty:
        raise DriftError(f"{cur_where}: no decodable images to check for drift")
    if ref_df.empty:
        raise DriftError(f"{ref_where}: no decodable reference images to compare with")

    cur_sample = _sample(cur_df, params.max_rows)
    ref_sample = _sample(ref_df, params.max_rows)
    numerical, dropped = _usable_numerical(cur_sample, ref_sample)
    summary = _run_report(
        cur_sample,
        ref_sample,
        numerical=numerical,
        drift_share=params.share_threshold,
        title=f"emoflow data drift: {current.revision} ({cur_label}) vs {ref_label}",
    )
    share = summary["share"]
    drifted = share >= params.share_threshold

    out_dir = Path(reports_dir) / DRIFT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{safe_name(current.revision)}-vs-{safe_name(ref_file)}"
    html_path = (out_dir / f"{stem}.html").resolve()
    result = DriftResult(drifted=drifted, share=share, reference=ref_label, html_path=html_path)

    atomic_write_text(html_path, summary["html"])
    seconds = time.perf_counter() - started
    record: dict[str, Any] = {
        "kind": REPORT_KIND,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "current": {
            "revision": current.revision,
            "digest": current.digest,
            "commit": current.commit,
            "data": cur_label,
            "rows": len(cur_df),
            "sampled": len(cur_sample),
        },
        "reference": {
            "revision": reference.revision if reference else current.revision,
            "digest": reference.digest if reference else current.digest,
            "commit": reference.commit if reference else current.commit,
            "data": ref_label,
            "rows": len(ref_df),
            "sampled": len(ref_sample),
        },
        "share_threshold": params.share_threshold,
        "max_rows": params.max_rows,
        "seed": SEED,
        "columns": summary["columns"],
        "dropped_columns": dropped,
        "drifted_count": summary["count"],
        "evidently": summary["evidently"],
        "seconds": round(seconds, 3),
        "html": html_path.name,
        "result": result.model_dump(mode="json"),
    }
    atomic_write_text(
        html_path.with_suffix(".json"), json.dumps(record, indent=2, default=_json_default) + "\n"
    )
    write_index(Path(reports_dir))
    log.info(
        "drift %s vs %s: share %.3f (threshold %.2f) -> %s, %s (%.1f s)",
        current.revision,
        ref_label,
        share,
        params.share_threshold,
        "drifted" if drifted else "no drift",
        html_path,
        seconds,
    )
    return result


def _sample(df: pandas.DataFrame, max_rows: int) -> pandas.DataFrame:
    if len(df) > max_rows:
        df = df.sample(n=max_rows, random_state=SEED)
    return df[[*FEATURES, *CATEGORICAL]].reset_index(drop=True)


def _usable_numerical(cur: pandas.DataFrame, ref: pandas.DataFrame) -> tuple[list[str], list[str]]:
    """Features with at least one value on both sides (Evidently refuses an all-NaN column:
    ``ValueError: An empty column 'face_cx' was provided``), and those left out."""
    usable, dropped = [], []
    for name in FEATURES:
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
) -> dict[str, Any]:
    """Run Evidently's DataDriftPreset; return its share, per-column verdicts and the HTML."""
    import evidently
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    columns = [*numerical, *CATEGORICAL]
    definition = DataDefinition(
        numerical_columns=list(numerical), categorical_columns=list(CATEGORICAL)
    )
    report = Report([DataDriftPreset(columns=columns, drift_share=drift_share)], include_tests=True)
    with warnings.catch_warnings():
        # Constant columns make numpy warn (division by a zero std) inside Evidently.
        warnings.simplefilter("ignore", RuntimeWarning)
        snapshot = report.run(
            Dataset.from_pandas(cur[columns], data_definition=definition),
            Dataset.from_pandas(ref[columns], data_definition=definition),
        )
        html = snapshot.get_html_str(as_iframe=False)
    data = snapshot.dict()

    share = count = None
    per_column: dict[str, dict[str, Any]] = {}
    by_id: dict[str, str] = {}
    for metric in data.get("metrics", []):
        config = metric.get("config", {})
        if config.get("type") == _DRIFTED_COLUMNS_COUNT:
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


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
