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
The report itself (row sampling, the columns compared, Evidently's run) is built by
`monitoring.evidently_report`; the share of drifted columns is Evidently's own
(``DriftedColumnsCount``), not recomputed.

``check_live_drift(reference, predictions, params, reports_dir, model_version)`` runs the same
report on live traffic: the rows of the prediction log (`monitoring.prediction_log`, whose image
features are the same `FEATURES`; the face box, the categorical ``emotion`` and its
``confidence`` are the answered ones, emotion ``"none"`` for an image without a face) against
every image of ``reference`` (the champion's training revision). Answers are compared with
answers: given the champion's answers for the reference images (`answers`), the reference's
face box and emotion are the champion's, not the labels, and its confidence is compared too;
so a model that is wrong in its own steady way (boxes a little small, one class too often) does
not make every window look drifted. It writes
``reports_dir/live/live-<time of the newest prediction>-vs-<reference>.html`` and ``.json`` the
same way (a re-run over the same traffic replaces its report) and
refreshes the index, where live reports have their own section.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ml.params import DriftParams
from ml.records import DatasetRef, DriftResult
from monitoring.embedding_drift import with_components
from monitoring.evidently_report import CATEGORICAL, SEED, compare, json_default
from monitoring.features import FEATURES

if TYPE_CHECKING:  # pragma: no cover
    import pandas

log = logging.getLogger(__name__)

DRIFT_DIR = "drift"
REPORT_KIND = "dataset-drift"
LIVE_DIR = "live"
LIVE_REPORT_KIND = "live-drift"


ANSWER_COLUMNS = ("face_width", "face_height", "face_cx", "face_cy", "emotion", "confidence",
                  "embedding")  # fmt: skip
"""The table `check_live_drift`'s `answers` gives: one row per image, box NaN and emotion
``"none"`` where no face was found, ``embedding`` an array or None."""


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

    compared = compare(
        cur_df,
        ref_df,
        params,
        title=f"emoflow data drift: {current.revision} ({cur_label}) vs {ref_label}",
    )
    share = compared["share"]
    drifted = share >= params.share_threshold
    stem = f"{safe_name(current.revision)}-vs-{safe_name(ref_file)}"
    html_path = (Path(reports_dir) / DRIFT_DIR / f"{stem}.html").resolve()
    result = DriftResult(drifted=drifted, share=share, reference=ref_label, html_path=html_path)
    record: dict[str, Any] = {
        "kind": REPORT_KIND,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "current": {
            "revision": current.revision,
            "digest": current.digest,
            "commit": current.commit,
            "data": cur_label,
            "rows": len(cur_df),
            "sampled": compared["cur_sampled"],
        },
        "reference": {
            "revision": reference.revision if reference else current.revision,
            "digest": reference.digest if reference else current.digest,
            "commit": reference.commit if reference else current.commit,
            "data": ref_label,
            "rows": len(ref_df),
            "sampled": compared["ref_sampled"],
        },
        "share_threshold": params.share_threshold,
        "max_rows": params.max_rows,
    }
    seconds = _publish(result, compared, record, Path(reports_dir), started, params)
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


def check_live_drift(
    reference: DatasetRef,
    predictions: pandas.DataFrame,
    params: DriftParams,
    reports_dir: Path,
    model_version: int | None,
    *,
    log_uri: str | None = None,
    answers: Callable[[list[Path]], pandas.DataFrame] | None = None,
) -> DriftResult:
    """Compare served traffic (prediction-log rows, `monitoring.prediction_table.read_predictions`)
    with the images of ``reference``, the revision the champion ``model_version`` trained on.

    Every row given is compared (the caller picks the window, e.g. the newest
    ``params.max_rows``); more than ``params.max_rows`` are sampled like dataset rows. Fewer
    than ``params.min_live_rows`` rows raise `DriftError` and write nothing. ``log_uri`` (where
    the rows were read, password hidden in messages) is named in that error and the summary.

    `answers` (image files -> the champion's answer for each, a table with the columns
    `ANSWER_COLUMNS`, as the service would answer and log them: `emoflow.steps.champion_answers`)
    makes the reference side the champion's answers (see the module's docstring). Its
    ``embedding`` column (the champion's face embedding, None where the model has none) adds
    the embeddings: live rows carry theirs (column ``embedding``; rows without one are left
    out), and the report scores the PCA components as one embedding group. Drifted: the share of
    drifted columns reaches ``share_threshold``, or the embedding score reaches
    ``embedding_threshold``.
    """
    import pandas as pd

    from monitoring.features import NO_LABEL_EMOTION, dataset_features

    started = time.perf_counter()
    where = _hide_password(log_uri) if log_uri else "the prediction log"
    if len(predictions) < params.min_live_rows:
        raise DriftError(
            f"{where}: {len(predictions)} predictions, fewer than the {params.min_live_rows} "
            "a live drift report needs (params.yaml drift.min_live_rows)"
        )
    missing = [c for c in (*FEATURES, *CATEGORICAL) if c not in predictions.columns]
    if missing:
        raise DriftError(f"{where}: the predictions have no column {', '.join(missing)}")
    cur_df = predictions.copy()
    cur_df["emotion"] = cur_df["emotion"].where(cur_df["emotion"].notna(), NO_LABEL_EMOTION)
    cur_df = cur_df.astype({name: "float64" for name in FEATURES} | {"emotion": "object"})
    ref_df = dataset_features(reference.path)
    if ref_df.empty:
        raise DriftError(f"{reference.path}: no decodable reference images to compare with")

    first, last = _time_range(cur_df)
    model = f"model v{model_version}" if model_version is not None else "no model version"
    cur_label = f"{len(cur_df)} predictions" + (
        f" up to {last:%Y-%m-%d %H:%M:%S} UTC" if last else ""
    )
    ref_label = f"{reference.revision} (training data of {model})"
    components: tuple[str, ...] = ()
    if answers is not None:
        answered = answers([Path(reference.path) / name for name in ref_df["file"]])
        ref_df = ref_df.assign(**{c: answered[c].to_numpy() for c in ANSWER_COLUMNS[:-1]})
        has_embeddings = "embedding" in cur_df.columns and cur_df["embedding"].notna().any()
        if has_embeddings and answered["embedding"].notna().all():
            reference_embeddings = np.stack(answered["embedding"].to_list())
            cur_df, ref_df, components = with_components(
                cur_df, ref_df, reference_embeddings, params.embedding_components
            )
    compared = compare(
        cur_df,
        ref_df,
        params,
        title=f"emoflow live drift: {cur_label} vs {ref_label}",
        embedding_columns=components,
    )
    share, embedding_score = compared["share"], compared["embedding_score"]
    drifted = share >= params.share_threshold or (
        embedding_score is not None and embedding_score >= params.embedding_threshold
    )
    when = (last or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    stem = f"live-{when}-vs-{safe_name(reference.revision)}"
    html_path = (Path(reports_dir) / LIVE_DIR / f"{stem}.html").resolve()
    result = DriftResult(
        drifted=drifted, share=share, reference=ref_label, html_path=html_path,
        window_first=first, window_last=last, window_rows=len(cur_df), model_version=model_version,
        embedding_score=embedding_score,
    )  # fmt: skip
    versions: dict[str, int] = {}
    if "model_version" in cur_df.columns:
        counts = cur_df["model_version"].value_counts(dropna=False)
        versions = {("none" if pd.isna(v) else str(v)): int(n) for v, n in counts.items()}
    record: dict[str, Any] = {
        "kind": LIVE_REPORT_KIND,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "model_version": model_version,
        "current": {
            "revision": f"live traffic, {model}",
            "data": cur_label,
            "source": where,
            "rows": len(cur_df),
            "sampled": compared["cur_sampled"],
            "first": first.isoformat() if first else None,
            "last": last.isoformat() if last else None,
            "without_face": int((cur_df["emotion"] == NO_LABEL_EMOTION).sum()),
            "model_versions": versions,
        },
        "reference": {
            "revision": reference.revision,
            "faces": f"answered by {model}" if answers is not None else "as labelled",
            "digest": reference.digest,
            "commit": reference.commit,
            "data": f"{reference.revision} all splits",
            "rows": len(ref_df),
            "sampled": compared["ref_sampled"],
        },
        "embedding_score": embedding_score,
        "embedding_threshold": params.embedding_threshold,
        "embedding_components": len(components),
        "share_threshold": params.share_threshold,
        "max_rows": params.max_rows,
        "min_live_rows": params.min_live_rows,
    }
    seconds = _publish(result, compared, record, Path(reports_dir), started, params)
    log.info(
        "live drift, %s vs %s: share %.3f (threshold %.2f) -> %s, %s (%.1f s)",
        cur_label,
        ref_label,
        share,
        params.share_threshold,
        "drifted" if drifted else "no drift",
        html_path,
        seconds,
    )
    return result


def _publish(
    result: DriftResult,
    compared: dict[str, Any],
    record: dict[str, Any],
    reports_dir: Path,
    started: float,
    params: DriftParams,
) -> float:
    """Write the HTML at ``result.html_path`` and the JSON summary (``record`` plus the report's
    figures) beside it, both atomically, delete the folder's reports beyond what params keep,
    then refresh the index; return the seconds taken."""
    from ml.files import atomic_write_text
    from monitoring.reports import prune_reports, write_index

    html_path = result.html_path
    html_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(html_path, compared["html"])
    seconds = time.perf_counter() - started
    record = {
        **record,
        "seed": SEED,
        "columns": compared["columns"],
        "dropped_columns": compared["dropped"],
        "drifted_count": compared["count"],
        "evidently": compared["evidently"],
        "seconds": round(seconds, 3),
        "html": html_path.name,
        "result": result.model_dump(mode="json"),
    }
    atomic_write_text(
        html_path.with_suffix(".json"), json.dumps(record, indent=2, default=json_default) + "\n"
    )
    prune_reports(
        reports_dir, html_path.parent.name, params.keep_reports, params.max_report_age_days
    )
    write_index(reports_dir)
    return seconds


def _time_range(df: pandas.DataFrame) -> tuple[datetime | None, datetime | None]:
    """Oldest and newest ``created_at`` (UTC) of the rows, or None when there is none."""
    import pandas as pd

    if "created_at" not in df.columns:
        return None, None
    times = pd.to_datetime(df["created_at"], utc=True).dropna()
    if times.empty:
        return None, None
    return times.min().to_pydatetime(), times.max().to_pydatetime()


def _hide_password(uri: str) -> str:
    """``uri`` with its password (if any) replaced by ``***``, for messages and reports."""
    import sqlalchemy as sa

    try:
        return sa.make_url(uri).render_as_string(hide_password=True)
    except (sa.exc.ArgumentError, ValueError):
        return uri
