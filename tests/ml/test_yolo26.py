"""YOLO26 as a second architecture: `train.model` names it, and it is trained, exported, scored,
registered, served and warm-started the way YOLOv8 is (real ultralytics, real MLflow over HTTP,
real DVC, the service's own detector in process)."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from ml import data_batches, data_registry, registry, scoring, train, yolo
from ml.config import EMOTIONS, ConfigError
from ml.embedding import EMBEDDING_OUTPUT, read_rgb
from ml.params import ARCHITECTURES, TrainParams, load_params
from ml.sample_data import generate
from serving.model import Detector, ServedModel
from serving.service import answer


def test_train_model_takes_each_architecture_ultralytics_ships(tmp_path: Path) -> None:
    ultralytics = yolo.load(tmp_path / "ultralytics")
    shipped = {p.name for p in Path(ultralytics.__file__).parent.glob("cfg/models/*/*.yaml")}
    assert {"yolo26n.yaml", "yolo26s.yaml", "yolov8n.yaml"} <= set(ARCHITECTURES)
    for name in ARCHITECTURES:
        assert TrainParams(model=name).model == name
        family = name[:-6] + ".yaml"  # yolo26n.yaml is yolo26.yaml at scale n
        assert family in shipped, f"{name}: ultralytics ships no {family}"


@pytest.mark.parametrize("name", ["yolo26n-seg.yaml", "yolov9n.yaml", "yolo26.yaml", "my.yml"])
def test_an_unknown_architecture_is_refused_with_what_is_accepted(tmp_path, name: str) -> None:
    with pytest.raises(ValueError, match=f"{name!r} is not an architecture emoflow trains"):
        TrainParams(model=name)
    params = tmp_path / "params.yaml"
    params.write_text(f"train:\n  model: {name}\n")
    with pytest.raises(ConfigError, match=r"train\.model: .*yolov8n\.yaml, .*yolo26n\.yaml"):
        load_params(params)


@pytest.fixture
def settings(mlflow_settings, tmp_path: Path, request):
    """The shared MLflow server; a data registry and a registered model name of this test's own."""
    return mlflow_settings.model_copy(
        update={"home": tmp_path / "home", "model_name": f"yolo26-{request.node.name[:40]}"}
    )


@pytest.mark.slow
def test_yolo26_is_trained_scored_served_and_warm_started_as_itself(settings, tmp_path: Path):
    batch = generate(tmp_path / "a", train=24, valid=8, test=8, seed=3, prefix="a")
    data_batches.add_batch(settings, batch.parent, "batch a")
    dataset = data_registry.pull(settings, "r1")
    code = {"git_commit": f"yolo26-{uuid.uuid4().hex[:8]}", "params_digest": "p"}
    quick = dict(epochs=1, batch=8, workers=0, device="cpu", patience=5)

    first = train.train(
        TrainParams(model="yolo26n.yaml", imgsz=64, **quick), dataset, settings.runs_dir,
        settings, code,
    )  # fmt: skip
    params = registry.client(settings).get_run(first.run_id).data.params
    assert (params["model"], params["architecture"]) == ("yolo26n.yaml", "yolo26n")

    # the export has the YOLOv8 layout (batch, 4 + nc, anchors) and the embedding output
    outputs = ort.InferenceSession(str(first.onnx)).get_outputs()
    assert outputs[0].shape == ["batch", 4 + len(EMOTIONS), "anchors"]
    assert outputs[1].name == EMBEDDING_OUTPUT

    # the gate's measurements
    scored = scoring.score(first.weights, dataset, first.imgsz, None, settings, tmp_path)
    assert (scored.images, scored.faces) == (8, 8) and 0 <= scored.map50 <= 1
    assert scored.stats_path.is_file()
    test_images = scoring.split_images(dataset, 4)
    assert scoring.measure_latency(first.onnx, test_images, first.imgsz, warmup=1) > 0

    # the service's detector answers as it does for YOLOv8, box for box what ultralytics finds
    image = read_rgb(test_images[0])
    detector = Detector(first.onnx)
    assert detector.names == list(EMOTIONS) and detector.imgsz == (64, 64)
    # one epoch of training leaves every score low: take the threshold between the 5th and 6th
    # best box score of the model's own output, so that a few boxes pass it
    best = np.sort(np.asarray(detector.run(detector.prepare(image).batch))[0, 4:].max(axis=0))
    conf = float(best[-6:-4].mean())
    faces = detector.predict(image, conf=conf)
    (theirs,) = (
        yolo.load(settings.home / "ultralytics")
        .YOLO(str(first.weights))
        .predict(
            image[..., ::-1], imgsz=64, conf=conf, iou=0.7, rect=False, device="cpu", verbose=False
        )
    )  # ultralytics takes numpy images as BGR; rect=False: the full square, as the service does
    assert len(faces) == len(theirs.boxes) > 0
    np.testing.assert_allclose([f.box for f in faces], theirs.boxes.xyxy.numpy(), atol=0.05)
    np.testing.assert_allclose([f.confidence for f in faces], theirs.boxes.conf.numpy(), atol=1e-4)
    ref = registry.register(first, dataset, code, settings)
    answered = answer(ServedModel(ref, detector), image, faces)
    assert answered["emotion"] == faces[0].emotion and answered["model_version"] == ref.version
    for face in answered["faces"]:
        assert set(face) == {"box", "emotion", "confidence", "scores"}
        assert list(face["scores"]) == list(EMOTIONS)
        assert face["scores"][face["emotion"]] == face["confidence"]

    # the registered version says what it is; a warm start keeps it, whatever `model` says
    version = registry.client(settings).get_model_version(settings.model_name, str(ref.version))
    assert version.tags["architecture"] == "yolo26n"
    registry.promote(settings, ref.version, "the first model")
    warm = TrainParams(model="yolov8n.yaml", imgsz=32, init="champion", **quick)
    second = train.train(warm, dataset, settings.runs_dir, settings, code)
    params = registry.client(settings).get_run(second.run_id).data.params
    assert (params["init_used"], params["architecture"], second.imgsz) == (
        "champion",
        "yolo26n",
        64,
    )
    assert yolo.architecture(
        yolo.load(settings.home / "ultralytics").YOLO(str(second.weights))
    ) == ("yolo26n")
