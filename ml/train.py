"""Training: ultralytics YOLOv8 on a pulled data revision, tracked in one MLflow run.

emoflow owns MLflow logging (ultralytics' own callback is off, see `ml.yolo`). A run is found
again by its tags: training the same data digest with the same params and code returns the
earlier run instead of training a second time.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

from ml import registry, yolo
from ml.config import Settings, TrainParams, resolve_device
from ml.records import DatasetRef, TrainResult

log = logging.getLogger("emoflow.train")
EXPERIMENT = "emotion-detector"
FINAL_METRICS = {
    "map50": "metrics/mAP50(B)",
    "map50_95": "metrics/mAP50-95(B)",
    "precision": "metrics/precision(B)",
    "recall": "metrics/recall(B)",
}


def _metric_name(key: str) -> str:
    """ultralytics' `metrics/mAP50(B)` becomes MLflow's `metrics/mAP50B`."""
    return re.sub(r"[()]", "", key)


def _find_earlier_run(tags: dict[str, str]) -> str | None:
    import mlflow

    query = " and ".join(f"tags.{k} = '{v}'" for k, v in tags.items())
    runs = mlflow.search_runs(
        experiment_names=[EXPERIMENT],
        filter_string=f"{query} and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    return runs[0].info.run_id if runs else None


def _result_of_run(run_id: str, out_dir: Path, settings: Settings) -> TrainResult:
    import mlflow

    run = mlflow.get_run(run_id)
    (logged,) = run.outputs.model_outputs
    local = Path(
        mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path="weights", dst_path=str(out_dir)
        )
    )
    return TrainResult(
        run_id=run_id,
        model_uri=f"models:/{logged.model_id}",
        weights=next(local.glob("*.pt")),
        onnx=next(local.glob("*.onnx")),
        metrics={k: run.data.metrics[k] for k in FINAL_METRICS if k in run.data.metrics},
        device=run.data.params.get("device", "unknown"),
        seconds=run.data.metrics.get("train_seconds", 0.0),
    )


def train(
    params: TrainParams,
    dataset: DatasetRef,
    out_dir: Path,
    settings: Settings,
    lineage: dict[str, str],
) -> TrainResult:
    """Train on `dataset`, export ONNX, log everything to MLflow; reuse an identical earlier run."""
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    ultralytics = yolo.load(settings.home / "ultralytics")
    registry.client(settings)
    mlflow.set_experiment(EXPERIMENT)
    identity = {"data_digest": dataset.digest, **lineage}
    if (earlier := _find_earlier_run(identity)) is not None:
        return _result_of_run(earlier, out_dir / earlier, settings)

    device = resolve_device(params.device)
    started = time.monotonic()
    run_tags = {**identity, "data_revision": dataset.revision, "data_commit": dataset.commit}
    with mlflow.start_run(run_name=f"train-{dataset.revision}", tags=run_tags) as run:
        mlflow.log_params({**params.model_dump(), "device": device})
        mlflow.log_input(
            MetaDataset(
                source=resolve_dataset_source(str(dataset.path)),
                name=f"emotions@{dataset.revision}",
                digest=dataset.digest,
            ),
            context="training",
        )

        def log_epoch(trainer) -> None:
            metrics = {**trainer.label_loss_items(trainer.tloss, prefix="train"), **trainer.metrics}
            mlflow.log_metrics(
                {_metric_name(k): float(v) for k, v in metrics.items()}, step=trainer.epoch
            )
            # ultralytics calls this once more after training, validating the best weights
            # from file (then its validator is not in training mode).
            log.info(
                "%s: val mAP50 %.3f, mAP50-95 %.3f (%.0f s)",
                f"epoch {trainer.epoch + 1}/{trainer.epochs}"
                if trainer.validator.training else "best weights",
                metrics.get(FINAL_METRICS["map50"], 0.0),
                metrics.get(FINAL_METRICS["map50_95"], 0.0), time.monotonic() - started,
            )  # fmt: skip

        model = ultralytics.YOLO(params.model)
        model.add_callback("on_fit_epoch_end", log_epoch)
        model.train(
            data=str(dataset.path / "data.yaml"),
            imgsz=params.imgsz,
            epochs=params.epochs,
            batch=params.batch,
            patience=params.patience,
            seed=params.seed,
            deterministic=True,
            device=device,
            workers=params.workers,
            amp=device != "cpu",
            plots=False,
            project=str(out_dir),
            name=run.info.run_id,
            exist_ok=True,
            verbose=False,
        )
        weights = Path(model.trainer.best)
        final = {k: float(model.trainer.metrics[v]) for k, v in FINAL_METRICS.items()}
        onnx_path = yolo.export_onnx(weights, params.imgsz, settings.home / "ultralytics")
        seconds = time.monotonic() - started
        mlflow.log_metrics({**final, "train_seconds": seconds})
        model_uri = registry.log_model_files(weights, onnx_path)
    return TrainResult(
        run_id=run.info.run_id, model_uri=model_uri, weights=weights, onnx=onnx_path, metrics=final,
        device=device, seconds=seconds,
    )  # fmt: skip
