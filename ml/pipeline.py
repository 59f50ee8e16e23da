"""The continual-training steps as Airflow tasks and the CLI call them.

Each function reads the settings and params itself, calls one step of the library and returns
its record; the DAG file only wires these. `overrides` are the `train` values a manual run
sets through the DAG's Params (None = keep params.yaml).
"""

from __future__ import annotations

from ml import data_registry, registry
from ml.config import Params, Settings, load_params
from ml.lineage import lineage_tags
from ml.records import (
    DatasetRef,
    GateResult,
    ModelRef,
    PromoteResult,
    TrainResult,
    ValidationResult,
)


def _params(overrides: dict | None) -> Params:
    return load_params(Settings().params_file, overrides={"train": overrides or {}})


def pull(revision: str = "latest") -> DatasetRef:
    return data_registry.pull(Settings(), revision)


def validate(dataset: DatasetRef) -> ValidationResult:
    """Validate the revision; raises `InvalidDataError` (the run stops) when it has errors."""
    from ml import validate as validation

    settings = Settings()
    result = validation.validate(dataset, _params(None).validate_, settings.home / "gx")
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
        model, trained.weights, test_set, params.train.imgsz, params.gate, settings, out_dir,
        challenger_onnx=trained.onnx,
    )  # fmt: skip


def champion_dataset() -> DatasetRef | None:
    """The data revision the current champion was trained on (the drift reference), if any."""
    settings = Settings()
    champion = registry.version_by_alias(settings, registry.CHAMPION)
    if champion is None:
        return None
    tags = registry.client(settings).get_model_version(champion.name, str(champion.version)).tags
    return data_registry.pull(settings, tags["data_revision"])


def promote(model: ModelRef, gate: GateResult) -> PromoteResult:
    """Move `champion` to the challenger only when the gate passed."""
    settings = Settings()
    if gate.passed:
        return registry.promote(settings, model.version, reason="; ".join(gate.reasons))
    current = registry.version_by_alias(settings, registry.CHAMPION)
    previous = registry.version_by_alias(settings, registry.PREVIOUS)
    return PromoteResult(
        promoted=False,
        champion=current.version if current else None,
        previous=previous.version if previous else None,
        reason="gate refused: " + "; ".join(r for r in gate.reasons if r.startswith("FAIL")),
    )
