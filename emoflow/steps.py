"""The steps: one function per Airflow task, named as the task is.

    emotion_ct       pull -> validate -> train -> register -> gate -> drift -> promote
    emotion_monitor  monitor -> alarm
    emotion_labelling export

A step takes the records of the steps before it, the `overrides` a manual run sets through the
DAG's Params (`train` values; None keeps params.yaml), and `settings` and `params` (None: read
from the environment and params.yaml, as Airflow tasks do; tests pass their own). It calls one
part of the library and returns one record. Airflow tasks go through `call`, which turns the
XCom dicts into records and the record back into a dict; the CLI and tests call the steps
directly.

Only identifiers travel between the steps (a data revision and its digest, an MLflow run id, a
model version); the paths in the records are information, never read by another step, as each
task may run on another worker. A step that needs files fetches them itself: the revision from
the data registry and its DVC remote into its own workspace (`_pulled_here`), the challenger's
files from MLflow.

Heavy libraries (ultralytics, MLflow, GX, Evidently) are imported inside the steps, so the
DAG files stay cheap to parse.
"""

from __future__ import annotations

import inspect
import logging
import os
import tempfile
import typing
from datetime import UTC, datetime
from pathlib import Path

import httpx

from ml import data_registry, registry
from ml.config import Settings
from ml.lineage import lineage_tags
from ml.params import Params, load_params
from ml.records import (
    DatasetRef,
    DriftResult,
    GateResult,
    LabellingBatch,
    ModelRef,
    PromoteResult,
    Record,
    TrainResult,
    ValidationResult,
)
from ml.safe_weights import UnsafeWeights

log = logging.getLogger("emoflow.steps")


def _resolve(
    settings: Settings | None, params: Params | None, overrides: dict | None = None
) -> tuple[Settings, Params]:
    """The settings and params a step runs with: the given ones, else the environment's and
    params.yaml's, with a manual run's `train` overrides on top (None values keep the file's;
    `epochs` sets `finetune_epochs` as well)."""
    settings = settings or Settings()  # the environment and .env, as in an Airflow task
    train = {k: v for k, v in (overrides or {}).items() if v is not None}
    if "epochs" in train:  # a run's epochs are a warm start's too
        train["finetune_epochs"] = train["epochs"]
    if params is None:
        return settings, load_params(settings.params_file, overrides={"train": train})
    if not train:
        return settings, params
    merged = params.model_dump(by_alias=True)
    merged["train"].update(train)
    return settings, Params.model_validate(merged)


# ---------------------------------------------------------------------------- emotion_ct


def pull(revision: str = "latest", *, settings: Settings | None = None) -> DatasetRef:
    """The data revision `revision` (a tag such as r3; "latest" only where a run starts)."""
    return data_registry.pull(settings or Settings(), revision)


def validate(
    dataset: DatasetRef, *, settings: Settings | None = None, params: Params | None = None
) -> ValidationResult:
    """Validate the revision (class mix against the one before it); raises `InvalidDataError`
    (the run stops) when it has errors."""
    from ml import validate as validation

    settings, params = _resolve(settings, params)
    dataset = _pulled_here(dataset, settings)
    names = [revision.name for revision in data_registry.revisions(settings)]
    position = names.index(dataset.revision) if dataset.revision in names else 0
    previous = data_registry.pull(settings, names[position - 1]) if position > 0 else None
    result = validation.validate(dataset, params.validate_, settings.gx_dir, previous)
    return validation.ensure_valid(result)


def train(
    dataset: DatasetRef,
    overrides: dict | None = None,
    *,
    settings: Settings | None = None,
    params: Params | None = None,
) -> TrainResult:
    from ml import train as training

    settings, params = _resolve(settings, params, overrides)
    dataset = _pulled_here(dataset, settings)
    return training.train(params.train, dataset, settings.runs_dir, settings, lineage_tags(params))


def register(
    trained: TrainResult,
    dataset: DatasetRef,
    overrides: dict | None = None,
    *,
    settings: Settings | None = None,
    params: Params | None = None,
) -> ModelRef:
    settings, params = _resolve(settings, params, overrides)
    return registry.register(trained, dataset, lineage_tags(params), settings)


def gate(
    model: ModelRef,
    trained: TrainResult,
    dataset: DatasetRef,
    overrides: dict | None = None,
    *,
    settings: Settings | None = None,
    params: Params | None = None,
) -> GateResult:
    """Challenger against champion on one test split: the new revision's, or the frozen
    `gate.test_revision`; and on each earlier revision's own test images (forgetting), which
    the new revision holds. The challenger's weights and ONNX export come from MLflow (its
    version), not from `trained`'s paths, which are the training worker's. The shadow log's
    comparison of the two on live traffic, if any, goes into the report as information."""
    from ml import gate as gating

    settings, params = _resolve(settings, params, overrides)
    frozen = params.gate.test_revision
    trained_on = _pulled_here(dataset, settings)
    test_set = data_registry.pull(settings, frozen) if frozen else trained_on
    out_dir = settings.runs_dir / "gate" / f"v{model.version}"
    weights = registry.download_weights(settings, model, out_dir / "challenger")
    onnx = registry.download_onnx(settings, model, out_dir / "challenger-onnx")
    return gating.gate(
        model, weights, test_set, trained.imgsz, params.gate, settings, out_dir,
        challenger_onnx=onnx, trained_on=trained_on, shadow=shadow_comparisons(settings, model),
    )  # fmt: skip


def shadow_comparisons(settings: Settings, challenger: ModelRef) -> list[GateResult.Shadow]:
    """The shadow log's comparisons of `challenger` with each champion it was scored beside
    (`monitoring.shadow_report.shadow_summary`); none when the log cannot be read (logged):
    the gate shows them as information and never needs them."""
    import sqlalchemy as sa

    from monitoring.shadow_report import shadow_summary

    try:
        summary = shadow_summary(settings.prediction_log)
    except sa.exc.SQLAlchemyError as exc:
        log.warning("gate: the shadow log could not be read (%s: %s); the report goes without it",
                    type(exc).__name__, str(exc).splitlines()[0][:200])  # fmt: skip
        return []
    return [GateResult.Shadow.model_validate(pair) for pair in summary
            if pair["challenger_version"] == challenger.version]  # fmt: skip


def drift(
    dataset: DatasetRef, *, settings: Settings | None = None, params: Params | None = None
) -> DriftResult:
    """Evidently report: the new revision against the data the champion was trained on."""
    from monitoring.drift import check_drift

    settings, params = _resolve(settings, params)
    reference = champion_dataset(settings)
    return check_drift(
        _pulled_here(dataset, settings), reference, params.drift, settings.reports_dir
    )


def promote(
    model: ModelRef,
    gate: GateResult,
    approval: dict | None = None,
    *,
    settings: Settings | None = None,
) -> PromoteResult:
    """Move `champion` to the challenger only when the gate passed and the champion is still
    the version the gate compared against (else `PromotionConflict`), then tell the service.
    The promotion history records it as kind gate, its actor the DAG run id (Airflow's
    ``AIRFLOW_CTX_DAG_RUN_ID`` in a task; outside Airflow, this OS user); or, when a person
    approved it (`approval`, the answer of `emoflow.approval`), as kind approval by them."""
    settings = settings or Settings()
    if gate.passed:
        compared = gate.champion.version if gate.champion else None
        reason, kind, actor = (
            "; ".join(gate.reasons),
            "gate",
            os.environ.get("AIRFLOW_CTX_DAG_RUN_ID"),
        )
        if approval and approval.get("by"):
            kind, actor = "approval", approval["by"]
            reason = f"approved by {actor}" + (
                f": {approval['reason']}" if approval["reason"] else ""
            )
        result = registry.promote(
            settings, model.version, reason=reason, if_champion=compared, kind=kind, actor=actor,
            link=gate_report_link(settings, model, gate),
        )  # fmt: skip
        if result.promoted:
            log.info("service: %s", request_reload(settings))
        return result
    current = registry.version_by_alias(settings, registry.CHAMPION)
    previous = registry.version_by_alias(settings, registry.PREVIOUS)
    return PromoteResult(
        promoted=False,
        champion=current.version if current else None,
        previous=previous.version if previous else None,
        reason="gate refused: " + "; ".join(r for r in gate.reasons if r.startswith("FAIL")),
    )


def approval_request(gate: GateResult, *, settings: Settings | None = None) -> str:
    """What a person reads before approving: the gate's summary (verdict, rules) and links to
    its report and to the challenger's MLflow run."""
    from ml.gate import summary

    settings = settings or Settings()
    ref = registry.version_ref(settings, gate.challenger.version)
    lines = [summary(gate), f"- MLflow run: {registry.run_page(settings, ref.run_id)}"]
    if (report := gate_report_link(settings, ref, gate)) is not None:
        lines.append(f"- Gate report: {report}")
    lines.append(f"- Served now: {settings.service_ui_url}/ready")
    return "\n".join(lines) + "\n"


def reject(
    model: ModelRef, gate: GateResult, decision: dict, *, settings: Settings | None = None
) -> None:
    """Record a person's rejection of the challenger (or the approval's time-out) in the
    promotion history; nothing moves, the champion stays."""
    settings = settings or Settings()
    champion = registry.version_by_alias(settings, registry.CHAMPION)
    now = champion.version if champion else None
    why = f"v{model.version} rejected by {decision['by']}"
    why += f": {decision['reason']}" if decision["reason"] else ""
    registry.record_event(
        settings,
        "rejection",
        now,
        now,
        why,
        decision["by"],
        gate_report_link(settings, model, gate),
    )
    log.info("promotion history: %s", why)


# ---------------------------------------------------------------------------- emotion_monitor


def monitor(
    *, settings: Settings | None = None, params: Params | None = None
) -> DriftResult | None:
    """Drift of live traffic: the newest ``drift.max_rows`` predictions of the prediction log vs
    the data the champion was trained on (`monitoring.drift.check_live_drift`).

    Returns None, with a log line, while there is not enough traffic yet (fewer than
    ``drift.min_live_rows`` predictions) or no champion: neither is a failure.
    """
    from monitoring.drift import check_live_drift
    from monitoring.face_store import FaceStore
    from monitoring.prediction_table import database_url, read_predictions

    settings, params = _resolve(settings, params)
    kept = params.labelling
    pruned = FaceStore(settings.images_dir).prune(kept.keep_images, kept.image_retention_days)
    log.info("answered images kept for labelling: %d deleted (retention)", pruned)
    drift_params = params.drift
    predictions = read_predictions(settings.prediction_log, limit=drift_params.max_rows)
    if len(predictions) < drift_params.min_live_rows:
        log.info(
            "live drift: skipped, not enough traffic yet: %d predictions in %s, %d needed "
            "(drift.min_live_rows)",
            len(predictions),
            database_url(settings.prediction_log).render_as_string(hide_password=True),
            drift_params.min_live_rows,
        )
        return None
    champion = registry.version_by_alias(settings, registry.CHAMPION)
    if champion is None:
        log.info("live drift: skipped, no champion yet (no training data to compare with)")
        return None
    with tempfile.TemporaryDirectory(prefix="champion-", dir=settings.home) as folder:
        return check_live_drift(
            champion_dataset(settings, champion),
            predictions,
            drift_params,
            settings.reports_dir,
            champion.version,
            log_uri=settings.prediction_log,
            answers=champion_answers(settings, champion, Path(folder)),
        )


def champion_answers(settings: Settings, champion: ModelRef, folder: Path):
    """Image files -> the champion's answer for each, as the service gives and logs it (its
    ONNX export through `serving.model.Detector`, the first face's box, emotion and confidence,
    the face embedding where the export has that output): the table
    `monitoring.drift.check_live_drift` compares live answers with."""
    import pandas as pd

    from ml.embedding import read_rgb
    from monitoring.drift import ANSWER_COLUMNS
    from monitoring.features import NO_LABEL_EMOTION, normalised_box
    from serving.model import Detector

    detector = Detector(registry.download_onnx(settings, champion, folder))

    def answer(path: Path) -> dict:
        image = read_rgb(path)
        prepared = detector.prepare(image)
        output = detector.run(prepared.batch)
        faces = detector.faces(prepared, output)
        nan = float("nan")
        cx, cy, w, h = (nan,) * 4
        if faces:
            cx, cy, w, h = normalised_box(faces[0].box, prepared.width, prepared.height)
        return {
            "face_width": w, "face_height": h, "face_cx": cx, "face_cy": cy,
            "emotion": faces[0].emotion if faces else NO_LABEL_EMOTION,
            "confidence": faces[0].confidence if faces else nan,
            "embedding": detector.embedding(output),
        }  # fmt: skip

    return lambda paths: pd.DataFrame([answer(path) for path in paths], columns=ANSWER_COLUMNS)


def alarm(live: DriftResult | None, *, settings: Settings | None = None) -> dict:
    """The `extra` of the live-drift asset event when live traffic drifted: the report (a link
    under the service's /reports/), the window of predictions and the model that answered them.
    Without drift (or without a report) the task is skipped, and no event is sent."""
    if live is None or not live.drifted:
        from airflow.sdk.exceptions import AirflowSkipException

        raise AirflowSkipException("live traffic did not drift: no alarm")
    settings = settings or Settings()
    return {
        "report": f"{settings.service_ui_url}/reports/live/{live.html_path.name}",
        "share": live.share,
        "model_version": live.model_version,
        "window": {
            "first": live.window_first.isoformat() if live.window_first else None,
            "last": live.window_last.isoformat() if live.window_last else None,
            "rows": live.window_rows,
        },
    }


# ---------------------------------------------------------------------------- emotion_labelling


def export(
    alarm: dict, *, settings: Settings | None = None, params: Params | None = None
) -> LabellingBatch:
    """The labelling batch of the window a live-drift alarm names (`alarm` is the event's
    extra): under `<home>/labelling/`, named by the window's end and the model version."""
    from monitoring.face_store import FaceStore
    from monitoring.labelling import export_batch
    from monitoring.prediction_table import read_predictions

    settings, params = _resolve(settings, params)
    window = alarm.get("window") or {}
    first, last = (datetime.fromisoformat(window[k]) if window.get(k) else None
                   for k in ("first", "last"))  # fmt: skip
    predictions = read_predictions(settings.prediction_log, since=first, until=last)
    version = alarm.get("model_version")
    stamp = (last or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    batch = export_batch(
        predictions, FaceStore(settings.images_dir),
        settings.labelling_dir / f"drift-{stamp}-v{version}", params.labelling, version,
        (first, last),
    )  # fmt: skip
    log.info("labelling batch: %d images (%s) in %s; label them, then "
             "`emoflow data add-batch --from %s`", batch.images, batch.splits, batch.path,
             batch.path)  # fmt: skip
    return batch


# ---------------------------------------------------------------------------- helpers


def _pulled_here(dataset: DatasetRef, settings: Settings) -> DatasetRef:
    """The revision `dataset` names, pulled by its name into this worker's own workspace (the
    record's path may be another worker's); its digest must be the one the run pulled."""
    here = data_registry.pull(settings, dataset.revision)
    if here.digest != dataset.digest:
        raise data_registry.DataRegistryError(
            f"data revision {dataset.revision}: the registry now gives digest {here.digest}, but "
            f"this run pulled {dataset.digest} (the tag was moved); start a new run"
        )
    return here


def champion_dataset(settings: Settings, champion: ModelRef | None = None) -> DatasetRef | None:
    """The data revision `champion` (default: the current champion) was trained on (the drift
    reference), if there is a champion."""
    champion = champion or registry.version_by_alias(settings, registry.CHAMPION)
    if champion is None:
        return None
    tags = registry.client(settings).get_model_version(champion.name, str(champion.version)).tags
    return data_registry.pull(settings, tags["data_revision"])


def gate_report_link(settings: Settings, model: ModelRef, gate: GateResult) -> str | None:
    """The gate's Markdown report in the MLflow UI (an artifact of the challenger's training
    run), the address the gate task's Airflow link gives."""
    if gate.markdown_path is None:
        return None
    return registry.run_page(settings, model.run_id, f"gate/{gate.markdown_path.name}")


def request_reload(settings: Settings) -> str:
    """Ask a running service to load the new champion now; it also finds it by polling."""
    if not settings.serve_reload_token:
        return f"reload not requested (no token); it polls every {settings.serve_poll_seconds} s"
    try:
        response = httpx.post(
            f"{settings.service_url}/reload", timeout=120,
            headers={"Authorization": f"Bearer {settings.serve_reload_token}"},
        )  # fmt: skip
    except httpx.HTTPError as exc:
        return f"not reachable at {settings.service_url} ({type(exc).__name__}); it loads on start"
    return f"reload answered {response.status_code}: {response.text[:200]}"


def _record_type(hint: object) -> type[Record] | None:
    """The record class a parameter is typed as (`DatasetRef`, or `DriftResult | None`)."""
    for kind in (hint, *typing.get_args(hint)):
        if isinstance(kind, type) and issubclass(kind, Record):
            return kind
    return None


STEPS = {
    step.__name__: step
    for step in (pull, validate, train, register, gate, drift, promote, monitor, alarm, export)
}
"""Every step by its task name."""


def call(name: str, *args: object) -> dict | None:
    """Run step `name` as an Airflow task does: each argument that the step types as a record
    arrives as its JSON dict (XCom) and becomes that record; a record returned goes back as
    JSON (a dict or None as it is)."""
    return run_with_xcom(STEPS[name], *args)


def run_with_xcom(step, *args: object):
    """`call` for any function of this module (the approval task's `approval_request` and
    `reject` too)."""
    hints = typing.get_type_hints(step)
    records = []
    for parameter, value in zip(inspect.signature(step).parameters.values(), args, strict=False):
        kind = _record_type(hints.get(parameter.name))
        records.append(kind.model_validate(value) if kind and value is not None else value)
    try:
        result = step(*records)
    except (registry.PromotionConflict, UnsafeWeights) as exc:
        from airflow.sdk.exceptions import AirflowFailException

        # a retry would meet the same champion, or the same refused file
        raise AirflowFailException(str(exc)) from exc
    except Exception as exc:
        if (fault := registry.unreachable(exc)) is not None:
            raise fault from exc  # a clear line in the task log; Airflow retries the task
        raise
    return result.model_dump(mode="json") if isinstance(result, Record) else result
