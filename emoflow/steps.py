"""The continual-training steps as Airflow tasks and the CLI call them.

Each function reads the settings and params itself, calls one step of the library and returns
its record; the DAG file only wires these. `overrides` are the `train` values a manual run
sets through the DAG's Params (None = keep params.yaml).
"""

from __future__ import annotations

import logging

import httpx

from ml import data_registry, registry
from ml.config import Params, Settings, load_params
from ml.lineage import lineage_tags
from ml.records import (
    DatasetRef,
    DriftResult,
    GateResult,
    ModelRef,
    PromoteResult,
    TrainResult,
    ValidationResult,
)

log = logging.getLogger("emoflow.pipeline")


def _params(overrides: dict | None) -> Params:
    return load_params(Settings().params_file, overrides={"train": overrides or {}})


def pull(revision: str = "latest") -> DatasetRef:
    return data_registry.pull(Settings(), revision)


def validate(dataset: DatasetRef) -> ValidationResult:
    """Validate the revision (class mix against the one before it); raises `InvalidDataError`
    (the run stops) when it has errors."""
    from ml import validate as validation

    settings = Settings()
    names = [revision.name for revision in data_registry.revisions(settings)]
    position = names.index(dataset.revision) if dataset.revision in names else 0
    previous = data_registry.pull(settings, names[position - 1]) if position > 0 else None
    result = validation.validate(dataset, _params(None).validate_, settings.home / "gx", previous)
    return validation.ensure_valid(result)


def train(dataset: DatasetRef, overrides: dict | None = None) -> TrainResult:
    from ml import train as training

    settings, params = Settings(), _params(overrides)
    return training.train(params.train, dataset, settings.runs_dir, settings, lineage_tags(params))


def register(trained: TrainResult, dataset: DatasetRef, overrides: dict | None = None) -> ModelRef:
    return registry.register(trained, dataset, lineage_tags(_params(overrides)), Settings())


def evaluate(
    model: ModelRef, trained: TrainResult, dataset: DatasetRef, overrides: dict | None = None
) -> GateResult:
    from ml import evaluate as evaluation

    settings, params = Settings(), _params(overrides)
    frozen = params.gate.test_revision
    test_set = data_registry.pull(settings, frozen) if frozen else dataset
    out_dir = settings.runs_dir / "gate" / f"v{model.version}"
    return evaluation.gate(
        model, trained.weights, test_set, trained.imgsz, params.gate, settings, out_dir,
        challenger_onnx=trained.onnx,
    )  # fmt: skip


def champion_dataset(champion: ModelRef | None = None) -> DatasetRef | None:
    """The data revision `champion` (default: the current champion) was trained on (the drift
    reference), if there is a champion."""
    settings = Settings()
    champion = champion or registry.version_by_alias(settings, registry.CHAMPION)
    if champion is None:
        return None
    tags = registry.client(settings).get_model_version(champion.name, str(champion.version)).tags
    return data_registry.pull(settings, tags["data_revision"])


def monitor_live() -> DriftResult | None:
    """Drift of live traffic: the newest ``drift.max_rows`` predictions of the prediction log vs
    the data the champion was trained on (`monitoring.drift.check_live_drift`).

    Returns None, with a log line, while there is not enough traffic yet (fewer than
    ``drift.min_live_rows`` predictions) or no champion: neither is a failure.
    """
    from monitoring.drift import check_live_drift
    from serving.prediction_log import database_url, read_predictions

    settings, params = Settings(), _params(None).drift
    predictions = read_predictions(settings.prediction_log, limit=params.max_rows)
    if len(predictions) < params.min_live_rows:
        log.info(
            "live drift: skipped, not enough traffic yet: %d predictions in %s, %d needed "
            "(drift.min_live_rows)",
            len(predictions),
            database_url(settings.prediction_log).render_as_string(hide_password=True),
            params.min_live_rows,
        )
        return None
    champion = registry.version_by_alias(settings, registry.CHAMPION)
    if champion is None:
        log.info("live drift: skipped, no champion yet (no training data to compare with)")
        return None
    reference = champion_dataset(champion)
    return check_live_drift(
        reference,
        predictions,
        params,
        settings.reports_dir,
        champion.version,
        log_uri=settings.prediction_log,
    )


def promote(model: ModelRef, gate: GateResult) -> PromoteResult:
    """Move `champion` to the challenger only when the gate passed, then tell the service."""
    settings = Settings()
    if gate.passed:
        result = registry.promote(settings, model.version, reason="; ".join(gate.reasons))
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
