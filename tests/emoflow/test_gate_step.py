"""The gate step on a real registry of two revisions with a champion: both models are also
scored on the test images the earlier revision added (forgetting), the revision x class table
lands in the report, the JSON, a CSV and MLflow's metrics, and the shadow log's comparison of
this champion/challenger pair is shown as information. The champion is a tiny untrained
YOLOv8n (built from YAML, nothing downloaded) whose answers are the test labels; the challenger
is the same model that no longer answers one class, so it forgets that class on r1. A real
MLflow server, 64 px."""

from __future__ import annotations

import csv
import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from emoflow import steps
from ml import data_batches, data_registry, registry, scoring
from ml.config import EMOTIONS
from ml.dataset_format import list_images
from ml.params import Params
from ml.records import DatasetRef, ModelRef, TrainResult
from ml.sample_data import generate

IMGSZ = 64


def images_of(folder: Path) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.open(p).convert("RGB").resize((IMGSZ, IMGSZ)))
                     for p in list_images(folder)])  # fmt: skip


BOX = 16  # px of the 64 px input: the side of every box the test models predict


def with_fixed_boxes(weights: Path, path: Path) -> Path:
    """The model with its box head set to predict, at every anchor, a BOX x BOX square around
    it (distribution focal loss bins: each side's expected distance BOX / 2), so its boxes
    stay inside the image and its answers differ only by class; saved to `path`."""
    import torch

    checkpoint = torch.load(weights, weights_only=False)
    head = checkpoint["model"].model[-1]
    with torch.no_grad():
        for branch, stride in zip(head.cv2, head.stride.tolist(), strict=True):
            conv = branch[-1]
            conv.weight.zero_()
            bins = conv.bias.view(4, head.reg_max)  # per side, logits of distance 0, 1, ...
            bins.fill_(-30.0)
            distance = BOX / 2 / stride
            low, share = int(distance), distance - int(distance)
            bins[:, low] = math.log(1 - share)
            if share:
                bins[:, low + 1] = math.log(share)
    torch.save(checkpoint, path)
    return path


def label_with_answers(weights: Path, dataset: Path, out: Path) -> None:
    """Overwrite the test labels of `dataset` with the model's most confident whole box (not
    cut by the image border) on each image, as ultralytics' validator, which the gate scores
    with, finds it: on these images that model is right."""
    from ultralytics import YOLO

    YOLO(str(weights)).val(
        data=str(dataset / "data.yaml"), split="test", imgsz=IMGSZ, batch=32, device="cpu",
        plots=False, verbose=False, save_txt=True, save_conf=True, project=str(out), name="val",
    )  # fmt: skip
    side = BOX / IMGSZ
    for answers in (out / "val" / "labels").glob("*.txt"):
        rows = [line.split() for line in answers.read_text().splitlines()]  # cls cx cy w h conf
        whole = [r for r in rows if abs(float(r[3]) - side) + abs(float(r[4]) - side) < 1e-3]
        best = max(whole, key=lambda row: float(row[-1]))[:5]
        (dataset / "test" / "labels" / answers.name).write_text(" ".join(best) + "\n")


def without_class(weights: Path, class_id: int, path: Path) -> Path:
    """The same model with class `class_id`'s logits pushed far down on every level: it no
    longer answers that class, and answers the others as before."""
    import torch

    checkpoint = torch.load(weights, weights_only=False)
    with torch.no_grad():
        for branch in checkpoint["model"].model[-1].cv3:
            branch[-1].bias[class_id] -= 50.0
    torch.save(checkpoint, path)
    return path


def registered(settings, weights: Path, dataset: DatasetRef, tiny_onnx) -> TrainResult:
    """A finished training run holding `weights` and an ONNX file, registered as a version."""
    import mlflow

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_experiment(settings.model_name)
    with mlflow.start_run() as run:
        mlflow.log_param("imgsz", IMGSZ)
        uri = registry.log_model_files(weights, tiny_onnx(weights.with_suffix(".onnx")))
    trained = TrainResult(
        run_id=run.info.run_id, model_uri=uri, weights=weights, onnx=weights.with_suffix(".onnx"),
        metrics={}, device="cpu", seconds=1.0, imgsz=IMGSZ,
    )  # fmt: skip
    registry.register(trained, dataset, {}, settings)
    return trained


def log_shadow(uri: str, pairs: list[tuple[int, int, str, str]]) -> None:
    """Rows of the shadow log as the service writes them: (champion v, challenger v, answers)."""
    from monitoring.prediction_table import engine_for, metadata, shadow_predictions

    rows = [
        {"created_at": datetime.now(UTC), "route": "/predict", "champion_version": a,
         "challenger_version": b, "champion_emotion": ca, "challenger_emotion": cb,
         "champion_confidence": 0.8, "challenger_confidence": 0.6, "champion_faces": 1,
         "challenger_faces": 1, "challenger_answer": "[]", "dropped_before": 0}
        for a, b, ca, cb in pairs
    ]  # fmt: skip
    engine = engine_for(uri)
    with engine.begin() as connection:
        metadata.create_all(connection, tables=[shadow_predictions])
        connection.execute(shadow_predictions.insert(), rows)
    engine.dispose()


def test_the_gate_scores_each_earlier_revisions_own_test_images_and_logs_the_table(
    mlflow_settings, untrained_weights, tiny_onnx, tmp_path: Path
):
    settings = mlflow_settings.model_copy(
        update={"model_name": f"gate-forgetting-{tmp_path.name}", "home": tmp_path / "home"}
    )
    # every test label is the champion's own answer; the challenger is the champion that no
    # longer answers the class it finds best on r1's test images
    batches = tmp_path / "batches"
    generate(batches / "b1" / "YOLO_format", train=8, valid=4, test=6, seed=1)
    generate(batches / "b2" / "YOLO_format", train=8, valid=4, test=4, seed=2, prefix="b")
    sets = [batches / b / "YOLO_format" for b in ("b1", "b2")]
    calibrated = untrained_weights(
        np.concatenate([images_of(d / "test" / "images") for d in sets]),
        tmp_path / "calibrated.pt", tmp_path / "ultralytics",
    )  # fmt: skip
    old = with_fixed_boxes(calibrated, tmp_path / "v1.pt")
    for dataset in sets:
        label_with_answers(old, dataset, tmp_path / "answers" / dataset.parent.name)
    data_batches.add_batch(settings, batches / "b1", "first batch")
    data_batches.add_batch(settings, batches / "b2", "second batch")
    r1, r2 = steps.pull("r1", settings=settings), steps.pull("r2", settings=settings)
    direct = scoring.score(old, r1, IMGSZ, 1, settings, stats_dir=tmp_path / "direct")
    forgotten = max(direct.per_class_recall, key=direct.per_class_recall.__getitem__)
    assert direct.per_class_recall[forgotten] >= 0.5  # the champion finds it on r1
    new = without_class(old, EMOTIONS.index(forgotten), tmp_path / "v2.pt")
    champion_run = registered(settings, old, r1, tiny_onnx)
    trained = registered(settings, new, r2, tiny_onnx)
    client = registry.client(settings)
    client.set_registered_model_alias(settings.model_name, registry.CHAMPION, "1")
    challenger = registry.version_by_alias(settings, registry.CHALLENGER)
    assert challenger == ModelRef(name=settings.model_name, version=2, run_id=trained.run_id)
    assert registry.version_by_alias(settings, registry.CHAMPION).run_id == champion_run.run_id
    Path(settings.prediction_log.removeprefix("sqlite:///")).parent.mkdir(exist_ok=True)
    log_shadow(settings.prediction_log, [(1, 2, "happy", "happy"), (1, 2, "happy", "sad"),
                                         (1, 3, "sad", "sad")])  # fmt: skip

    gate = {"min_map50": 0.0, "min_map50_95": 0.0, "min_improvement": -1.0,
            "max_recall_regression": 1.0, "max_latency_ms": None, "bootstrap_samples": 20,
            "forgetting_min_faces": 1}  # r1 has a few faces of each class: rule them all  # fmt: skip
    params = Params.model_validate({"gate": gate})
    result = steps.gate(challenger, trained, r2, settings=settings, params=params)

    # r1's own test images are its 6; r2's gated split holds them and r2's 4
    assert result.test_revision == "r2" and result.challenger.images == 10
    (earlier,) = result.forgetting
    assert earlier.revision == "r1" and earlier.challenger.images == earlier.champion.images == 6
    # the same figures as scoring r1's whole test split (r1 added all of it)
    assert earlier.champion.map50 == pytest.approx(direct.map50)
    assert earlier.champion.per_class_recall == pytest.approx(direct.per_class_recall)
    assert earlier.champion.per_class_faces == direct.per_class_faces
    assert sum(direct.per_class_faces.values()) == direct.faces > 0

    # the challenger forgot `forgotten` on r1: refused, naming the revision and the class
    assert earlier.champion.per_class_recall[forgotten] > 0.05
    assert earlier.challenger.per_class_recall.get(forgotten, 0.0) == 0.0
    drop = earlier.champion.map50 - earlier.challenger.map50
    recall_drops = {cls: old - earlier.challenger.per_class_recall.get(cls, 0.0)
                    for cls, old in earlier.champion.per_class_recall.items()}  # fmt: skip
    assert not result.passed
    (recall_rule,) = (c for c in result.checks if c.rule == "max_forgetting_recall")
    assert not recall_rule.passed and f"forgotten: r1 {forgotten} " in recall_rule.reason
    (map50_rule,) = (c for c in result.checks if c.rule == "max_forgetting_map50")
    assert map50_rule.passed == (drop <= 0.01 + 1e-12) and map50_rule.value.endswith("(r1)")

    text = result.markdown_path.read_text()
    assert "| r2 | gated test split | 10 |" in text and "| r1 | test images it added | 6 |" in text
    assert "## Shadow scoring on live traffic (information, not a rule)" in text
    assert "2 live images answered by champion v1 and challenger v2" in text
    assert "| happy | 2 | 50% | 0.800 | 0.600 |" in text
    assert result.shadow is not None and result.shadow.images == 2

    run = client.get_run(trained.run_id)
    assert run.data.metrics["forgetting/r1/map50_drop"] == pytest.approx(drop)
    assert {k.removeprefix("forgetting/r1/recall_drop/"): v for k, v in run.data.metrics.items()
            if k.startswith("forgetting/r1/recall_drop/")} == pytest.approx(recall_drops)  # fmt: skip
    logged = {a.path for a in client.list_artifacts(trained.run_id, "gate")}
    assert "gate/forgetting-v2.csv" in logged
    table = Path(client.download_artifacts(trained.run_id, "gate/forgetting-v2.csv", str(tmp_path)))
    rows = list(csv.DictReader(table.open()))
    r1_map50 = next(r for r in rows if (r["revision"], r["metric"]) == ("r1", "map50"))
    assert float(r1_map50["drop"]) == pytest.approx(drop, abs=1e-4) and r1_map50["images"] == "6"
    assert {r["revision"] for r in rows} == {"r1", "r2"}
    assert data_registry.split_image_names(settings, "r1", "test") == {
        p.name for p in list_images(r1.path / "test" / "images")
    }


def test_the_step_reads_this_challengers_shadow_comparisons_and_survives_a_broken_log(
    make_settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    settings = make_settings(tmp_path / "home")
    challenger = ModelRef(name="m", version=2, run_id="none")
    assert steps.shadow_comparisons(settings, challenger) == []  # no log yet
    log_file = Path(settings.prediction_log.removeprefix("sqlite:///"))
    log_file.parent.mkdir(parents=True)
    log_shadow(settings.prediction_log, [(1, 2, "happy", "sad"), (1, 3, "sad", "sad"),
                                         (0, 2, None, None)])  # fmt: skip
    pairs = steps.shadow_comparisons(settings, challenger)
    assert sorted((p.champion_version, p.challenger_version, p.images) for p in pairs) == [
        (0, 2, 1), (1, 2, 1)
    ]  # fmt: skip
    log_file.write_bytes(b"not a database " * 100)
    assert steps.shadow_comparisons(settings, challenger) == []
    assert "the shadow log could not be read (DatabaseError" in caplog.text
