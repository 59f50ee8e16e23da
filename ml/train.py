"""Training: an ultralytics detector (YOLOv8, or YOLO26: `train.model`, docs/architectures.md)
on a pulled data revision, tracked in one MLflow run.

emoflow owns MLflow logging (ultralytics' own callback is off, see `ml.yolo`). One run holds
the params (and the image size used), per-epoch metrics, MLflow system metrics, the dataset as
an input named by revision and digest, the architecture trained (param `architecture`, also a
tag of the registered version), lineage tags, energy and its cost, the weights and their
ONNX export, the results table, per-class metrics and the validation plots (confusion matrix,
precision/recall curves). A run is found again by its tags: training the same data digest with
the same params and code returns the earlier run instead of training a second time (unless
`reuse=False`, as `model reproduce` asks).

A training whose process died (killed, out of memory, a lost worker) leaves its run RUNNING.
The next attempt with the same identity (the Airflow task's retry, or the same command again on
that host) finds it by its owner tag and resumes it from its last checkpoint, in the same run:
one run, one model version, no epoch trained twice.

Continual training (params `train.init`, `train.data`, `train.balance`): a warm start begins
from the champion's weights, in its architecture (whatever `train.model` says) and at its image
size, with the fine-tuning schedule; replay trains on what came in since the champion's
revision plus a class-balanced sample of the earlier images (`ml.replay`). The champion such a
run builds on is its parent: tags `parent_version` and `parent_run` (part of the run's
identity), so `ml.lineage.chain` walks the versions back. With no champion yet, the run trains
from scratch on the cumulative data and says so.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import statistics
import time
from pathlib import Path

from ml import data_registry, registry, replay, yolo
from ml.config import PROJECT_ROOT, Settings, resolve_device
from ml.energy import EnergyMeter
from ml.lineage import PARENT_RUN_TAG, PARENT_TAG, UNKNOWN
from ml.params import TrainParams
from ml.records import DatasetRef, ModelRef, ReproduceResult, TrainResult

log = logging.getLogger("emoflow.train")
EXPERIMENT = "emotion-detector"
MAX_AUTO_IMGSZ, STRIDE = 640, 32
PLOTS = (
    "confusion_matrix.png", "confusion_matrix_normalized.png", "BoxPR_curve.png",
    "BoxP_curve.png", "BoxR_curve.png", "BoxF1_curve.png",
)  # fmt: skip
OWNER_TAG = "emoflow.owner"
RESUMED_TAG = "emoflow.resumed_from_epoch"
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
    """The newest finished run with these tags; none when the code is unknown (no git, no
    build commit), since runs of any code would match."""
    import mlflow

    if tags.get("git_commit", UNKNOWN) == UNKNOWN:
        return None

    query = " and ".join(f"tags.{k} = '{v}'" for k, v in tags.items())
    runs = mlflow.search_runs(
        experiment_names=[EXPERIMENT],
        filter_string=f"{query} and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    return runs[0].info.run_id if runs else None


def owner() -> str:
    """Who trains: the Airflow task (its retries share the name) or this host's process."""
    task = [os.environ.get(f"AIRFLOW_CTX_{key}") for key in ("DAG_ID", "DAG_RUN_ID", "TASK_ID")]
    if all(task):
        return "airflow:" + "/".join(task)  # type: ignore[arg-type]
    return f"process:{socket.gethostname()}:{os.getpid()}"


def _dead(run_owner: str) -> bool:
    """Whether the trainer that tagged a run RUNNING is gone: an earlier attempt of this very
    Airflow task (Airflow runs one attempt at a time), or a process of this host that is no
    longer alive. A trainer elsewhere cannot be checked and is left alone."""
    if run_owner.startswith("airflow:"):
        return run_owner == owner()
    kind, _, where = run_owner.partition(":")
    host, _, pid = where.rpartition(":")
    if kind != "process" or host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _orphan_run(tags: dict[str, str]):
    """The newest RUNNING run with these tags whose trainer died, if any."""
    import mlflow

    query = " and ".join(f"tags.{k} = '{v}'" for k, v in tags.items())
    running = mlflow.search_runs(
        experiment_names=[EXPERIMENT],
        filter_string=f"{query} and attributes.status = 'RUNNING'",
        order_by=["attributes.start_time DESC"],
        output_format="list",
    )
    return next((run for run in running if _dead(run.data.tags.get(OWNER_TAG, ""))), None)


class TrainingError(ValueError):
    """The training params cannot be used; the message names the param and what was expected."""


def data_imgsz(dataset: Path, sample: int = 500) -> int:
    """The image size the data needs: the median longer side of (up to `sample`) train images,
    rounded up to a multiple of 32, at most 640. AffectNet's 96 px crops give 96."""
    from PIL import Image

    images = sorted((dataset / "train" / "images").iterdir())[:sample]
    if not images:
        raise TrainingError(f"{dataset}/train/images: no images to size the model input from")
    sides = []
    for path in images:
        with Image.open(path) as image:
            sides.append(max(image.size))
    side = statistics.median(sides)
    return int(min(MAX_AUTO_IMGSZ, max(STRIDE, -(-side // STRIDE) * STRIDE)))


def base_model(params: TrainParams) -> str:
    """The architecture or weights to start from; a .pt must be a file here (no downloads)."""
    if params.model.endswith((".yaml", ".yml")):
        return params.model
    path = Path(params.model)
    path = path if path.is_absolute() else PROJECT_ROOT / path
    if path.suffix != ".pt" or not path.is_file():
        raise TrainingError(
            f"train.model: {params.model!r} is neither a YAML architecture (e.g. yolov8n.yaml) "
            "nor a .pt weights file that exists; name weights by path (emoflow never downloads)"
        )
    return str(path)


def parent_of(params: TrainParams, settings: Settings) -> ModelRef | None:
    """The champion a run with these params builds on (its weights for `init: champion`, its
    revision for `data: replay`); None when the params need none, or there is no champion."""
    if params.init == "scratch" and params.data == "cumulative":
        return None
    champion = registry.version_by_alias(settings, registry.CHAMPION)
    if champion is None:
        log.info(
            "train.init %s, train.data %s: '%s' has no champion yet, so this run trains from "
            "scratch on the cumulative data", params.init, params.data, settings.model_name,
        )  # fmt: skip
    return champion


def _warm_start(settings: Settings, parent: ModelRef, out_dir: Path) -> tuple[str, int | None]:
    """The parent's weights (checked by `ml.safe_weights` before anything loads them) and the
    image size it was trained at."""
    from ml.safe_weights import load_checkpoint

    weights = registry.download_weights(
        settings, parent, out_dir / "parents" / f"v{parent.version}"
    )
    load_checkpoint(weights)
    return str(weights), registry.trained_imgsz(settings, parent)


def _fine_tuning(params: TrainParams) -> dict:
    """ultralytics train arguments of a warm start: a named optimizer (with `auto` it ignores
    lr0), a low learning rate and a short warm-up whose bias rate starts at 0 (ultralytics'
    default 0.1 would throw the trained biases off)."""
    return dict(optimizer=params.finetune_optimizer, lr0=params.finetune_lr0,
                lrf=params.finetune_lrf, warmup_epochs=params.finetune_warmup_epochs,
                warmup_bias_lr=0.0)  # fmt: skip


def _train_list(
    params: TrainParams, dataset: DatasetRef, parent: ModelRef | None, settings: Settings,
    run_dir: Path,
) -> replay.TrainList:  # fmt: skip
    """Inside the run: the replay and/or balanced training list, written under `run_dir` and
    logged (its counts as params, class mix in data/train_list.json, names in
    data/train_list.txt)."""
    import mlflow

    base = None
    if parent is not None and params.data == "replay":
        tags = registry.client(settings).get_run(parent.run_id).data.tags
        if "data_revision" not in tags:
            raise TrainingError(
                f"replay: the champion v{parent.version} (run {parent.run_id}) has no "
                "data_revision tag, so the images added since its revision are unknown"
            )
        base = data_registry.pull(settings, tags["data_revision"]).path
    listing = replay.build(dataset.path, run_dir / "train-list", params, base)
    mlflow.log_params({
        "train_list_images": len(listing.images), "replay_new_images": listing.new,
        "replay_earlier_images": listing.earlier, "balance_repeats": listing.repeats,
    })  # fmt: skip
    summary = listing.model_dump(mode="json", exclude={"data_yaml", "images"})
    mlflow.log_dict(summary, "data/train_list.json")
    mlflow.log_text("".join(f"{name}\n" for name in listing.images), "data/train_list.txt")
    log.info("training list: %d images (%d new, %d earlier, %d repeats), per class %s",
             len(listing.images), listing.new, listing.earlier, listing.repeats,
             listing.classes)  # fmt: skip
    return listing


def _result_of_run(run_id: str, out_dir: Path, settings: Settings) -> TrainResult:
    import mlflow

    run = mlflow.get_run(run_id)
    (logged,) = run.outputs.model_outputs
    local = Path(
        mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path="weights", dst_path=str(out_dir)
        )
    )
    params = run.data.params
    return TrainResult(
        run_id=run_id,
        model_uri=f"models:/{logged.model_id}",
        weights=next(local.glob("*.pt")),
        onnx=next(local.glob("*.onnx")),
        metrics={k: run.data.metrics[k] for k in FINAL_METRICS if k in run.data.metrics},
        device=params.get("device_used", params.get("device", "unknown")),
        seconds=run.data.metrics.get("train_seconds", 0.0),
        imgsz=int(params.get("imgsz_used", params.get("imgsz", 0))),
    )


def _log_evaluation(model, data_yaml: Path, imgsz: int, device: str, save_dir: Path) -> None:
    """Validate the best weights once more with plots on; log the plots, the per-class table
    and per-class metrics, and a per-class precision/recall chart."""
    import mlflow

    metrics = model.val(
        data=str(data_yaml), imgsz=imgsz, device=device, plots=True, project=str(save_dir),
        name="val", exist_ok=True, verbose=False,
    )  # fmt: skip
    plots_dir = Path(metrics.save_dir)
    for name in PLOTS:
        if (plots_dir / name).is_file():
            mlflow.log_artifact(str(plots_dir / name), artifact_path="plots")
    box, names = metrics.box, metrics.names
    rows = [
        {"class": names[int(c)], "precision": float(box.p[i]), "recall": float(box.r[i]),
         "map50": float(box.ap50[i]), "map50_95": float(box.ap[i])}
        for i, c in enumerate(box.ap_class_index)
    ]  # fmt: skip
    table = "class,precision,recall,map50,map50_95\n" + "".join(
        f"{r['class']},{r['precision']:.4f},{r['recall']:.4f},{r['map50']:.4f},{r['map50_95']:.4f}\n"
        for r in rows
    )
    mlflow.log_text(table, "plots/per_class.csv")
    mlflow.log_metrics(
        {f"val_{key}_{r['class']}": r[key] for r in rows for key in ("precision", "recall")}
    )
    mlflow.log_figure(_per_class_chart(rows), "plots/per_class_precision_recall.png")


def _per_class_chart(rows: list[dict]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 4))
    positions = range(len(rows))
    axes.bar([x - 0.2 for x in positions], [r["precision"] for r in rows], 0.4, label="precision")
    axes.bar([x + 0.2 for x in positions], [r["recall"] for r in rows], 0.4, label="recall")
    axes.set_xticks(list(positions), [r["class"] for r in rows], rotation=30)
    axes.set_ylim(0, 1)
    axes.set_title("Validation precision and recall per emotion (best weights)")
    axes.legend()
    figure.tight_layout()
    plt.close(figure)
    return figure


def train(
    params: TrainParams,
    dataset: DatasetRef,
    out_dir: Path,
    settings: Settings,
    lineage: dict[str, str],
    reuse: bool = True,
    parent: ModelRef | None = None,
) -> TrainResult:
    """Train on `dataset`, export ONNX, log everything to MLflow; reuse an identical earlier run
    unless `reuse` is False. `parent`: the version a warm start or replay builds on (default:
    the champion now, if the params need one)."""
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    ultralytics = yolo.load(settings.home / "ultralytics")
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)  # the fluent run below logs there
    mlflow.set_experiment(EXPERIMENT)
    parent = parent or parent_of(params, settings)
    identity = {"data_digest": dataset.digest, **lineage}
    if parent is not None:
        identity |= {PARENT_TAG: str(parent.version), PARENT_RUN_TAG: parent.run_id}
    warm = parent is not None and params.init == "champion"
    if reuse and (earlier := _find_earlier_run(identity)) is not None:
        return _result_of_run(earlier, out_dir / earlier, settings)

    start_from, imgsz = (
        _warm_start(settings, parent, out_dir) if warm else (base_model(params), None)
    )
    device = resolve_device(params.device)
    if imgsz is None:
        imgsz = data_imgsz(dataset.path) if params.imgsz == "auto" else params.imgsz
    if parent is not None:
        log.info("builds on v%d: %s, %s data, imgsz %d", parent.version,
                 "its weights" if warm else "a new model", params.data, imgsz)  # fmt: skip
    started = time.monotonic()
    run_tags = {**identity, "data_revision": dataset.revision, "data_commit": dataset.commit}
    orphan = _orphan_run(identity) if reuse else None
    checkpoint = out_dir / orphan.info.run_id / "weights" / "last.pt" if orphan else None
    if orphan is not None and not checkpoint.is_file():  # died before its first epoch ended
        registry.client(settings).set_terminated(orphan.info.run_id, "FAILED")
        orphan = None
    mlflow.set_system_metrics_sampling_interval(5)
    with mlflow.start_run(
        run_id=orphan.info.run_id if orphan else None,
        run_name=None if orphan else f"train-{dataset.revision}",
        tags={**({} if orphan else run_tags), OWNER_TAG: owner()},
        log_system_metrics=True,
    ) as run:
        epochs = (params.finetune_epochs or params.epochs) if warm else params.epochs
        if orphan is None:
            mlflow.log_params({
                **params.model_dump(), "device_used": device, "imgsz_used": imgsz,
                "epochs_used": epochs,
                "init_used": "champion" if warm else "scratch",
                "data_used": params.data if parent else "cumulative",
            })  # fmt: skip
            mlflow.log_input(
                MetaDataset(
                    source=resolve_dataset_source(str(dataset.path)),
                    name=f"emotions@{dataset.revision}",
                    digest=dataset.digest,
                ),
                context="training",
            )
        else:
            logged = registry.client(settings).get_metric_history(
                run.info.run_id, _metric_name(FINAL_METRICS["map50"])
            )
            resumed = max((m.step for m in logged), default=-1) + 2  # 1-based, the next one
            mlflow.set_tag(RESUMED_TAG, str(resumed))
            log.info("resuming run %s at epoch %d from %s", run.info.run_id, resumed, checkpoint)

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

        data_yaml = dataset.path / "data.yaml"
        if orphan is None and ((parent and params.data == "replay") or params.balance == "sample"):
            listing = _train_list(params, dataset, parent, settings, out_dir / run.info.run_id)
            data_yaml = listing.data_yaml
        model = ultralytics.YOLO(str(checkpoint) if orphan else start_from)
        # what is trained: `model` for a scratch run, the weights' own for a warm start or resume
        mlflow.log_param(registry.ARCHITECTURE_TAG, yolo.architecture(model))
        model.add_callback("on_fit_epoch_end", log_epoch)
        with EnergyMeter(price_per_kwh=settings.energy_price_per_kwh) as meter:
            if orphan is not None:  # its own arguments, from the checkpoint
                model.train(resume=True)
            else:
                model.train(
                    data=str(data_yaml),
                    imgsz=imgsz,
                    epochs=epochs,
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
                    **(_fine_tuning(params) if warm else {}),
                )
        energy = meter.reading()
        mlflow.log_metrics(energy.as_metrics())
        mlflow.set_tags(energy.as_tags())
        log.info("energy: %.6f kWh, cost %.6f (%s)", energy.total_kwh, energy.cost, energy.note)
        weights = Path(model.trainer.best)
        final = {k: float(model.trainer.metrics[v]) for k, v in FINAL_METRICS.items()}
        save_dir = Path(model.trainer.save_dir)
        mlflow.log_artifact(str(save_dir / "results.csv"), artifact_path="plots")
        _log_evaluation(ultralytics.YOLO(str(weights)), dataset.path / "data.yaml", imgsz,
                        device, save_dir)  # fmt: skip
        onnx_path = yolo.export_onnx(weights, imgsz, settings.home / "ultralytics")
        seconds = time.monotonic() - started
        mlflow.log_metrics({**final, "train_seconds": seconds})
        model_uri = registry.log_model_files(weights, onnx_path)
    return TrainResult(
        run_id=run.info.run_id, model_uri=model_uri, weights=weights, onnx=onnx_path, metrics=final,
        device=device, seconds=seconds, imgsz=imgsz,
    )  # fmt: skip


def reproduce(settings: Settings, version: int) -> ReproduceResult:
    """Retrain `version` from the data revision, train params and seed its run recorded, in a
    new run tagged `reproduces_version`, and compare the final validation metrics."""
    from ml.lineage import code_commit

    client = registry.client(settings)
    model_version = client.get_model_version(settings.model_name, str(version))
    run = client.get_run(model_version.run_id)
    recorded = run.data.params
    params = TrainParams.model_validate({  # MLflow logged a None as "None"
        key: None if recorded[key] == "None" else recorded[key]
        for key in TrainParams.model_fields if key in recorded
    })  # fmt: skip
    revision, digest = run.data.tags["data_revision"], run.data.tags["data_digest"]
    parent = None
    if PARENT_TAG in run.data.tags:
        parent = registry.version_ref(settings, int(run.data.tags[PARENT_TAG]))
    else:  # it had no champion to build on, whatever its params asked for
        params = params.model_copy(update={"init": "scratch", "data": "cumulative"})
    dataset = data_registry.pull(settings, revision)
    if dataset.digest != digest:
        raise TrainingError(
            f"revision {revision} now has digest {dataset.digest}, but version {version} was "
            f"trained on {digest}: the data registry was rewritten"
        )
    commit = code_commit()
    lineage = {
        "git_commit": commit,
        "params_digest": run.data.tags.get("params_digest", "unknown"),
        "reproduces_version": str(version),
        "reproduces_run": run.info.run_id,
    }
    result = train(
        params, dataset, settings.runs_dir, settings, lineage, reuse=False, parent=parent
    )
    before = {k: run.data.metrics[k] for k in FINAL_METRICS if k in run.data.metrics}
    return ReproduceResult(
        version=version, run_id=run.info.run_id, reproduced_run_id=result.run_id,
        data_revision=revision, recorded_commit=run.data.tags.get("git_commit", "unknown"),
        commit=commit, recorded=before, reproduced=result.metrics,
        difference={k: result.metrics[k] - before[k] for k in before if k in result.metrics},
    )  # fmt: skip
