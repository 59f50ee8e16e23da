"""Drift to labelling and back: the prediction log keeps the answered images, a window of it
becomes a labelling batch (lowest confidence first, answers as pre-annotations, YOLO layout
and Label Studio tasks), and a Label Studio export of it comes back as a canonical batch."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from ml import label_studio, layouts
from ml.config import EMOTIONS
from ml.params import LabellingParams
from ml.sample_data import draw_face
from monitoring.face_store import FaceStore
from monitoring.labelling import export_batch, split_of
from monitoring.prediction_log import PredictionLog
from monitoring.prediction_table import read_predictions


def answer(image: np.ndarray, emotion: str | None, confidence: float | None) -> dict:
    h, w = image.shape[:2]
    faces = [] if emotion is None else [{
        "box": [w * 0.2, h * 0.1, w * 0.8, h * 0.9], "emotion": emotion,
        "confidence": confidence, "scores": {e: 0.0 for e in EMOTIONS} | {emotion: confidence},
    }]  # fmt: skip
    return {"emotion": emotion, "confidence": confidence, "faces": faces, "model_version": 4,
            "width": w, "height": h}  # fmt: skip


@pytest.fixture()
def logged(tmp_path: Path):
    """Ten answered images in a real SQLite prediction log, their images in a face store."""
    rng = np.random.default_rng(0)
    store = FaceStore(tmp_path / "images")
    uri = f"sqlite:///{tmp_path / 'log.db'}"
    log = PredictionLog(uri, images=store)
    log.start()
    answers = []
    for i in range(10):
        image = np.asarray(draw_face(rng, i % len(EMOTIONS))[0].convert("RGB"))
        emotion = None if i == 7 else EMOTIONS[i % len(EMOTIONS)]
        answers.append(answer(image, emotion, None if emotion is None else 0.3 + i * 0.05))
        log.record(image, answers[-1], "/predict")
    assert log.close(timeout=60) == 0
    return read_predictions(uri), store, answers


def test_the_log_keeps_each_answered_image_under_its_key_as_jpeg(logged):
    """Each answered image is kept as a JPEG (cheap to encode on the service's cores), close to
    the image answered."""
    frame, store, answers = logged
    assert frame["image_key"].notna().all() and frame["image_key"].is_unique
    key = frame["image_key"].iloc[0]
    assert store.path(key).suffix == ".jpg"
    assert store.path(key).read_bytes()[:3] == b"\xff\xd8\xff"  # JPEG's start of image
    first = store.load(key)
    assert first is not None and first.shape == (answers[0]["height"], answers[0]["width"], 3)
    assert sorted(p.suffix for p in store.folder.iterdir()) == [".jpg"] * len(frame)


def test_an_older_stores_png_images_are_still_found_exported_and_pruned(logged, tmp_path):
    """A store written by an emoflow that kept PNGs: its images stay usable beside the JPEGs."""
    import cv2

    frame, store, _ = logged
    key = frame["image_key"].iloc[0]
    image = store.load(key)
    store.path(key).unlink()
    cv2.imwrite(str(store.folder / f"{key}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert store.path(key).name == f"{key}.png"
    assert np.array_equal(store.load(key), image)

    batch = export_batch(frame, store, tmp_path / "b", LabellingParams(max_images=50), 4)
    exported = {p.name for p in batch.path.glob("*/images/*")}
    assert f"{key}.png" in exported and len(exported) == len(frame)
    assert store.prune(keep=0, max_age_days=None) == len(frame)
    assert list(store.folder.iterdir()) == []


def test_a_batch_holds_the_least_sure_answers_first_with_them_as_labels(logged, tmp_path):
    frame, store, answers = logged
    params = LabellingParams(max_images=5, valid_share=0.2, test_share=0.2)

    batch = export_batch(frame, store, tmp_path / "batch", params, model_version=4)

    assert batch.images == 5 and sum(batch.splits.values()) == 5
    tasks = json.loads(batch.tasks_path.read_text())
    keys = [Path(t["data"]["image"]).stem for t in tasks]
    # no face first (index 7), then confidence 0.30, 0.35, 0.40, 0.45 (indexes 0..3)
    expected = frame.iloc[[7, 0, 1, 2, 3]]["image_key"].tolist()
    assert keys == expected
    for key, item in zip(keys, tasks, strict=True):
        split = split_of(key, params)
        assert item["data"]["split"] == split
        label = (batch.path / split / "labels" / f"{key}.txt").read_text()
        assert (batch.path / split / "images" / f"{key}.jpg").is_file()
        index = frame.index[frame["image_key"] == key][0]
        emotion = answers[index]["emotion"]
        if emotion is None:
            assert label == "" and item["predictions"][0]["result"] == []
        else:
            class_id, cx, cy, w, h = label.split()
            assert EMOTIONS[int(class_id)] == emotion
            assert (float(cx), float(w)) == pytest.approx((0.5, 0.6), abs=1e-3)
            (rect,) = item["predictions"][0]["result"]
            assert rect["value"]["rectanglelabels"] == [emotion]
            assert rect["value"]["x"] == pytest.approx(20.0, abs=0.1)
    assert (batch.path / "data.yaml").is_file() and (batch.path / "label-config.xml").is_file()
    # exporting the same window again (an Airflow retry) returns the batch already written
    again = export_batch(frame, store, tmp_path / "batch", params, model_version=4)
    assert again == batch


def test_pruned_images_are_left_out_of_a_batch(logged, tmp_path):
    frame, store, _ = logged
    keys = frame["image_key"].tolist()
    old = time.time() - 30 * 86400
    os.utime(store.path(keys[0]), (old, old))
    assert store.prune(keep=100, max_age_days=14) == 1  # by age
    assert store.prune(keep=7, max_age_days=None) == 2  # by count: the oldest go
    left = {p.stem for p in store.folder.glob("*.jpg")}
    assert len(left) == 7 and keys[0] not in left

    batch = export_batch(frame, store, tmp_path / "b", LabellingParams(max_images=50), 4)
    assert batch.images == 7
    assert {p.stem for p in batch.path.glob("*/images/*.jpg")} == left


def test_a_label_studio_export_of_the_batch_comes_back_as_a_canonical_batch(logged, tmp_path):
    """A person corrects one label and annotates all but one task; Label Studio's export
    (annotations, upload-renamed image paths) becomes the canonical layout."""
    frame, store, _ = logged
    batch = export_batch(frame, store, tmp_path / "batch", LabellingParams(max_images=4), 4)
    tasks = json.loads(batch.tasks_path.read_text())
    exported = []
    for number, item in enumerate(tasks[:3], start=1):
        result = item["predictions"][0]["result"]
        if number == 2:
            result[0]["value"]["rectanglelabels"] = ["Surprised"]  # an alias: surprise
        name = Path(item["data"]["image"]).name
        exported.append({
            "id": number, "data": {"image": f"/data/upload/1/0a1b2c3d-{name}",
                                   "split": item["data"]["split"]},
            "annotations": [{"result": result, "was_cancelled": False}],
        })  # fmt: skip
    exported.append({"id": 4, "data": tasks[3]["data"], "annotations": []})  # not labelled
    export = batch.path / "export.json"
    export.write_text(json.dumps(exported))

    counts = layouts.to_canonical(export, tmp_path / "canonical")

    out = tmp_path / "canonical"
    labels = sorted(out.glob("*/labels/*.txt"))
    assert len(labels) == 3 and (out / "data.yaml").is_file()
    assert sum(c["unlabelled"] for c in counts.values()) == 1
    second = Path(tasks[1]["data"]["image"]).stem
    (corrected,) = [p for p in labels if p.stem == second]
    assert corrected.read_text().split()[0] == str(EMOTIONS.index("surprise"))


def test_a_label_studio_export_naming_a_missing_image_is_a_clear_error(tmp_path):
    export = tmp_path / "export.json"
    export.write_text(json.dumps([{"id": 9, "data": {"image": "/data/upload/1/nope.png"},
                                   "annotations": [{"result": []}]}]))  # fmt: skip
    with pytest.raises(layouts.LayoutError, match="task 9: image '/data/upload/1/nope.png'"):
        layouts.to_canonical(export, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert "RectangleLabels" in label_studio.LABEL_CONFIG
