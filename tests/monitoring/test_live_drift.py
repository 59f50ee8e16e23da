"""Live traffic vs the champion's training data: `monitoring.drift.check_live_drift` and the
step `emoflow.steps.monitor`.

The reference is a small drawn dataset (`ml.sample_data.generate`); the traffic is more faces
drawn the same way (other seeds), recorded through the real `PredictionLog` into a SQLite file
and read back with `read_predictions`, as the service and the DAG do. `monitor` finds
its champion in the real MLflow server (`mlflow_settings`) and pulls the champion's data
revision from a real DVC data registry made here with `ml.data_batches.add_batch`.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ml import data_batches, data_registry
from ml.config import EMOTIONS, Settings
from ml.data_registry import Revision
from ml.dataset_format import label_path
from ml.params import DriftParams, Params
from ml.records import DatasetRef, DriftResult, ModelRef, TrainResult
from ml.sample_data import IMAGE_SIZE, draw_face, generate
from monitoring.features import FEATURES, first_box
from monitoring.prediction_log import PredictionLog
from monitoring.prediction_table import read_predictions

LIVE_HEADING = "Live traffic vs training data"


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> DatasetRef:
    root = tmp_path_factory.mktemp("live-reference") / "r1"
    generate(root, train=60, valid=20, test=20, seed=0)
    return DatasetRef(revision="r1", commit="c0ffee" * 6, digest="md5-r1", path=root)


def traffic(
    count: int, *, seed: int, darken: float = 1.0, no_face_every: int = 0
) -> list[tuple[np.ndarray, dict, str]]:
    """`count` (image, answer, route) as the service records them: drawn 96x96 faces, the box
    and emotion of the drawing as the answer (a perfect model). `darken` multiplies the pixels
    (a dim camera); every `no_face_every`-th answer finds no face."""
    cases = []
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        emotion = int(rng.integers(len(EMOTIONS)))
        image, (cx, cy, w, h) = draw_face(rng, emotion)
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32) * darken
        pixels = np.clip(pixels, 0, 255).astype(np.uint8)
        faces = []
        if not (no_face_every and i % no_face_every == 0):
            box = [(cx - w / 2) * IMAGE_SIZE, (cy - h / 2) * IMAGE_SIZE,
                   (cx + w / 2) * IMAGE_SIZE, (cy + h / 2) * IMAGE_SIZE]  # fmt: skip
            faces = [{"box": box, "emotion": EMOTIONS[emotion], "confidence": 0.9}]
        answer = {
            "emotion": faces[0]["emotion"] if faces else None,
            "confidence": 0.9 if faces else None,
            "faces": faces,
            "model_version": 3,
            "width": IMAGE_SIZE,
            "height": IMAGE_SIZE,
        }
        cases.append((pixels, answer, "/predict"))
    return cases


def log_traffic(uri: str, cases: list[tuple]):
    """Record `cases` ((image, answer, route[, embedding])) through the real prediction log
    and read them back."""
    log = PredictionLog(uri)
    log.start()
    for case in cases:
        log.record(*case)
    assert log.close() == 0
    return read_predictions(uri)


def live_check(reference, predictions, reports_dir: Path, params=None, **kwargs) -> DriftResult:
    from monitoring.drift import check_live_drift

    return check_live_drift(
        reference, predictions, params or DriftParams(), reports_dir, 3, **kwargs
    )


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]


def test_traffic_like_the_training_data_is_not_drifted(reference, tmp_path: Path):
    predictions = log_traffic(f"sqlite:///{tmp_path / 'log.db'}", traffic(80, seed=7))
    assert len(predictions) == 80 and predictions["brightness"].notna().all()
    reports = tmp_path / "reports"

    result = live_check(reference, predictions, reports)

    assert not result.drifted and result.share < 0.5
    assert result.reference == "r1 (training data of model v3)"
    assert result.html_path.parent == (reports / "live").resolve()
    last = predictions["created_at"].max().strftime("%Y%m%dT%H%M%SZ")
    assert result.html_path.name == f"live-{last}-vs-r1.html"
    html = result.html_path.read_text(encoding="utf-8")
    assert "drawDashboard" in html and "emoflow live drift: 80 predictions" in html
    summary = json.loads(result.html_path.with_suffix(".json").read_text())
    assert summary["kind"] == "live-drift" and summary["model_version"] == 3
    assert summary["current"]["rows"] == 80 and summary["current"]["without_face"] == 0
    assert summary["current"]["model_versions"] == {"3": 80}
    assert summary["reference"]["revision"] == "r1" and summary["reference"]["rows"] == 100
    assert summary["result"]["share"] == result.share
    by_column = {c["column"]: c for c in summary["columns"]}
    assert set(by_column) == {*FEATURES, "emotion"}
    assert by_column["brightness"]["drifted"] is False
    assert by_column["emotion"]["method"].startswith("chi-square")  # compared as categories

    index = (reports / "index.html").read_text(encoding="utf-8")
    live_section = index[index.index(LIVE_HEADING) :]
    assert f'href="live/{result.html_path.name}"' in live_section
    assert "no drift" in live_section
    assert 'href="history.html"' in index  # the promotion history (ml/history.py) beside them
    assert not (reports / "drift").exists()  # the dataset-drift section stays empty
    assert leftovers(reports) == []


def test_darkened_traffic_is_drifted_with_brightness_among_the_drifted_columns(
    reference, tmp_path: Path
):
    cases = traffic(80, seed=8, darken=0.35, no_face_every=8)
    predictions = log_traffic(f"sqlite:///{tmp_path / 'log.db'}", cases)
    reports = tmp_path / "reports"
    # Darkening alone moves brightness, contrast and sharpness: 3 of the 8 columns, below the
    # default share of 0.5, so the verdict is asked at 0.3 (the faceless answers may move
    # emotion too; the test does not count on it).
    result = live_check(reference, predictions, reports, DriftParams(share_threshold=0.3))

    assert result.drifted and result.share >= 0.3
    summary = json.loads(result.html_path.with_suffix(".json").read_text())
    by_column = {c["column"]: c for c in summary["columns"]}
    assert by_column["brightness"]["drifted"] is True
    assert summary["current"]["without_face"] == 10  # rows 0, 8, ..., 72: emotion "none"
    assert summary["dropped_columns"] == []  # face columns are NaN only where no face was found
    index = (reports / "index.html").read_text(encoding="utf-8")
    live_section = index[index.index(LIVE_HEADING) :]
    assert f'href="live/{result.html_path.name}"' in live_section
    assert "DRIFTED" in live_section
    assert leftovers(reports) == []


def test_too_few_predictions_is_a_clear_error_and_writes_nothing(reference, tmp_path: Path):
    from monitoring.drift import DriftError

    uri = f"sqlite:///{tmp_path / 'log.db'}"
    predictions = log_traffic(uri, traffic(5, seed=9))
    reports = tmp_path / "reports"

    with pytest.raises(DriftError) as error:
        live_check(reference, predictions, reports, log_uri=uri)
    message = str(error.value)
    assert "5 predictions" in message and "50" in message and str(tmp_path / "log.db") in message
    assert not reports.exists()

    secret = "postgresql://emoflow:hunter2@db.example:5432/predictions"
    with pytest.raises(DriftError, match="5 predictions") as error:
        live_check(reference, predictions, reports, log_uri=secret)
    assert "hunter2" not in str(error.value) and "db.example" in str(error.value)


# ------------------------------------------------------------------- emoflow.steps.monitor


LIVE_PARAMS = Params.model_validate({"drift": {"min_live_rows": 20, "max_rows": 30}})


def live_settings(home: Path, mlflow_settings: Settings, model_name: str) -> Settings:
    """Settings for `home`, the real MLflow server and the model `model_name` (its own, so other
    tests' models stay out), with the prediction log beside `home`."""
    return mlflow_settings.model_copy(
        update={"home": home, "model_name": model_name, "data_repo": None,
                "dvc_remote_url": None,
                "prediction_log_uri": f"sqlite:///{home.parent / 'log.db'}"}
    )  # fmt: skip


@pytest.fixture(scope="module")
def untrained_export(tmp_path_factory, untrained_weights, reference) -> Path:
    """An untrained YOLOv8n (batch norm fitted on the reference faces), exported as emoflow's
    training step exports: a champion whose answers are its own, and which has an embedding."""
    from ml import yolo

    folder = tmp_path_factory.mktemp("untrained")
    images = reference.path / "train" / "images"
    faces = np.stack(
        [np.asarray(Image.open(p).convert("RGB")) for p in sorted(images.glob("*"))[:8]]
    )
    return yolo.export_onnx(
        untrained_weights(faces, folder / "best.pt", folder), IMAGE_SIZE, folder
    )


def answered_by(onnx_path: Path, cases: list[tuple[np.ndarray, dict, str]]):
    """The same images, answered (and embedded) by the model at `onnx_path` as the service
    answers them: (image, answer, route, embedding)."""
    from serving.model import Detector

    detector = Detector(onnx_path)
    out = []
    for image, answer, route in cases:
        prepared = detector.prepare(image)
        output = detector.run(prepared.batch)
        faces = [vars(face) for face in detector.faces(prepared, output)]
        top = faces[0] if faces else {}
        answer = {**answer, "faces": faces, "emotion": top.get("emotion"),
                  "confidence": top.get("confidence")}  # fmt: skip
        out.append((image, answer, route, detector.embedding(output)))
    return out


def register_trained_on(
    settings: Settings, revision: Revision, folder: Path, onnx_file: Path
) -> ModelRef:
    """A run with model files (`onnx_file` as its ONNX export) logged in the real MLflow server
    and registered as a new version of `settings.model_name`, trained (its tags say) on the
    data revision `revision`."""
    import mlflow

    from ml import registry

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)  # the fluent run below logs there
    mlflow.set_experiment("test-live-drift")
    folder.mkdir(parents=True)
    weights = folder / "best.pt"
    weights.write_bytes(b"weights trained on " + revision.name.encode())
    with mlflow.start_run() as run:
        model_uri = registry.log_model_files(weights, shutil.copy(onnx_file, folder / "best.onnx"))
    train = TrainResult(
        run_id=run.info.run_id, model_uri=model_uri, weights=weights, onnx=folder / "best.onnx",
        metrics={"map50": 0.5}, device="cpu", seconds=0.0, imgsz=IMAGE_SIZE,
    )  # fmt: skip
    dataset = DatasetRef(
        revision=revision.name, commit=revision.commit, digest=revision.digest,
        path=Path(settings.registry_repo) / data_registry.DATASET,
    )  # fmt: skip
    return registry.register(
        train, dataset, {"source": "tests/monitoring/test_live_drift.py"}, settings
    )


def test_monitor_skips_without_enough_traffic_or_a_champion(
    free_port,
    tmp_path: Path,
    mlflow_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
):
    from emoflow import steps

    # A model name with nothing registered under it: the real server has no champion for it.
    settings = live_settings(tmp_path / "home", mlflow_settings, "live-drift-none")
    # While traffic is too thin the registry must not be asked: until then the tracking URI
    # names a loopback port nothing listens on, and MLflow does not retry, so asking fails.
    nowhere = settings.model_copy(update={"mlflow_tracking_uri": f"http://127.0.0.1:{free_port()}"})
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    caplog.set_level(logging.INFO, logger="emoflow.steps")
    assert steps.monitor(settings=nowhere, params=LIVE_PARAMS) is None  # no log file yet
    assert "0 predictions" in caplog.text and str(tmp_path / "log.db") in caplog.text

    uri = f"sqlite:///{tmp_path / 'log.db'}"
    log_traffic(uri, traffic(19, seed=10))
    assert steps.monitor(settings=nowhere, params=LIVE_PARAMS) is None
    assert "19 predictions" in caplog.text and "20 needed" in caplog.text
    assert "no champion yet" not in caplog.text

    log_traffic(uri, traffic(1, seed=11))
    assert steps.monitor(settings=settings, params=LIVE_PARAMS) is None
    assert "no champion yet" in caplog.text
    assert not (tmp_path / "home" / "reports").exists()


def test_monitor_compares_the_newest_predictions_with_the_champions_data(
    untrained_export, tiny_onnx, reference, tmp_path: Path, mlflow_settings: Settings
):
    from emoflow import steps
    from ml import registry

    home = tmp_path / "home"
    settings = live_settings(home, mlflow_settings, "live-drift-champion")
    # The real data registry: r1 holds the drawn reference dataset, r2 adds a few more faces.
    r1 = data_batches.add_batch(settings, reference.path, "drawn faces, seed 0")
    more = tmp_path / "more"
    generate(more, train=4, valid=2, test=2, seed=5, prefix="m")
    r2 = data_batches.add_batch(settings, more, "drawn faces, seed 5")
    assert (r1.name, r2.name) == ("r1", "r2")
    # The champion, v1, was trained on r1; a newer challenger, v2, on r2 (the latest revision).
    champion = register_trained_on(settings, r1, tmp_path / "v1", untrained_export)
    challenger = register_trained_on(settings, r2, tmp_path / "v2", tiny_onnx(tmp_path / "t.onnx"))
    assert (champion.version, challenger.version) == (1, 2)
    assert registry.promote(settings, champion.version, "test fixture").champion == 1
    tags = registry.client(settings).get_model_version(settings.model_name, "1").tags
    assert tags["data_revision"] == "r1"
    shutil.rmtree(home / "workspaces")  # recording r2 pulled r1 to stage it: monitor must pull r1
    # traffic like r1, answered by the champion (as the service would)
    log_traffic(
        f"sqlite:///{tmp_path / 'log.db'}", answered_by(untrained_export, traffic(40, seed=12))
    )

    result = steps.monitor(settings=settings, params=LIVE_PARAMS)

    assert isinstance(result, DriftResult) and not result.drifted
    assert result.reference == "r1 (training data of model v1)"
    assert result.html_path.parent == (home / "reports" / "live").resolve()
    summary = json.loads(result.html_path.with_suffix(".json").read_text())
    assert summary["model_version"] == 1
    assert summary["current"]["rows"] == 30  # drift.max_rows: the newest 30 of 40
    assert summary["current"]["source"] == f"sqlite:///{tmp_path / 'log.db'}"
    # The champion's revision, pulled from the DVC registry: r1's identity and its 100 faces.
    assert summary["reference"]["revision"] == "r1"
    assert summary["reference"]["commit"] == r1.commit
    assert summary["reference"]["digest"] == r1.digest
    assert summary["reference"]["rows"] == 100
    # the reference is what the champion answers for r1's faces, embeddings included
    assert summary["reference"]["faces"] == "answered by model v1"
    assert summary["embedding_components"] == 10 and result.embedding_score is not None
    assert [p.name for p in (home / "workspaces").iterdir()] == [f"r1-{r1.digest[:12]}"]
    assert (home / "reports" / "index.html").is_file()


def chroma_4x4(image: np.ndarray) -> np.ndarray:
    """A stand-in for the champion's backbone embedding (that one needs a trained model: see
    tests/ml/test_embedding.py): the mean colour (Cb, Cr) of a 4x4 grid, 32 numbers that see
    what colour the faces are, which the grey-level image statistics do not."""
    ycc = np.asarray(Image.fromarray(image).convert("YCbCr"), dtype=np.float32) / 255
    return ycc[:, :, 1:].reshape(4, 24, 4, 24, 2).mean(axis=(1, 3)).reshape(-1)


def other_colours(image: np.ndarray) -> np.ndarray:
    """The same luma (so the same brightness, contrast and sharpness), the two colour channels
    swapped: faces of other colours, as a new population or a new camera would bring."""
    luma, cb, cr = Image.fromarray(image).convert("YCbCr").split()
    return np.asarray(Image.merge("YCbCr", (luma, cr, cb)).convert("RGB"))


def steady_error(box: tuple[float, ...], class_id: int) -> tuple[tuple[float, ...], str]:
    """A model wrong in its own steady way: boxes 30 % smaller and 0.05 higher than the face,
    and only two emotions (happy for even class ids, sad for odd)."""
    cx, cy, w, h = box
    return (cx, cy - 0.05, w * 0.7, h * 0.7), EMOTIONS[4 if class_id % 2 == 0 else 6]


def answered(paths: list[Path], model=None, embed=chroma_4x4) -> pd.DataFrame:
    """What `check_live_drift`'s `answers` gives (`emoflow.steps.champion_answers` runs the
    champion: see the monitor test above), here from each image's label: the answers of a
    perfect model (confidence 0.9, as `traffic`'s), or of `model` (`steady_error`, confidence
    spread over 0.4-0.9), with `embed`'s embedding."""
    rows = []
    for i, path in enumerate(paths):
        class_id, box = first_box(label_path(path))
        emotion = EMOTIONS[class_id]
        if model is not None:
            box, emotion = model(box, class_id)
        cx, cy, w, h = box
        rows.append({"face_width": w, "face_height": h, "face_cx": cx, "face_cy": cy,
                     "emotion": emotion, "confidence": confidence(i) if model else 0.9,
                     "embedding": embed(np.asarray(Image.open(path).convert("RGB")))
                     if embed else None})  # fmt: skip
    return pd.DataFrame(rows)


def confidence(i: int) -> float:
    return float(np.random.default_rng([5, i]).uniform(0.4, 0.9))


def test_faces_of_other_colours_are_seen_by_embeddings_not_by_image_statistics(
    reference, tmp_path: Path
):
    cases = [
        (other_colours(image), answer, route) for image, answer, route in traffic(120, seed=21)
    ]
    predictions = log_traffic(f"sqlite:///{tmp_path / 'log.db'}", cases)
    predictions["embedding"] = [chroma_4x4(image) for image, _, _ in cases]

    no_embedding = lambda paths: answered(paths, embed=None)  # noqa: E731
    statistics_only = live_check(reference, predictions, tmp_path / "a", answers=no_embedding)
    with_embeddings = live_check(reference, predictions, tmp_path / "b", answers=answered)

    assert not statistics_only.drifted and statistics_only.embedding_score is None
    assert with_embeddings.drifted and with_embeddings.embedding_score >= 0.9
    assert with_embeddings.share == statistics_only.share < 0.5
    summary = json.loads(with_embeddings.html_path.with_suffix(".json").read_text())
    assert summary["embedding_components"] == 10 and summary["embedding_threshold"] == 0.6


def test_embeddings_of_traffic_like_the_training_data_do_not_drift(reference, tmp_path: Path):
    cases = traffic(120, seed=22)
    predictions = log_traffic(f"sqlite:///{tmp_path / 'log.db'}", cases)
    predictions["embedding"] = [chroma_4x4(image) for image, _, _ in cases]

    result = live_check(reference, predictions, tmp_path / "r", answers=answered)
    assert not result.drifted and result.embedding_score < 0.6


def test_answers_are_compared_with_the_champions_answers_not_with_the_labels(
    reference, tmp_path: Path
):
    """Traffic like the training data, answered by a model wrong in its steady way: against
    the labels its boxes and emotions look drifted in every window; against its own answers
    for the training images they do not, and its confidence is compared as well."""
    cases = traffic(120, seed=23)
    for i, (_, answer, _) in enumerate(cases):
        face = answer["faces"][0]
        x1, y1, x2, y2 = (v / IMAGE_SIZE for v in face["box"])
        true = ((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1)
        (cx, cy, w, h), emotion = steady_error(true, EMOTIONS.index(face["emotion"]))
        face["box"] = [v * IMAGE_SIZE for v in (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)]
        face["emotion"] = answer["emotion"] = emotion
        face["confidence"] = answer["confidence"] = confidence(1000 + i)
    predictions = log_traffic(f"sqlite:///{tmp_path / 'log.db'}", cases)

    against_labels = live_check(reference, predictions, tmp_path / "a")
    own = lambda paths: answered(paths, steady_error, embed=None)  # noqa: E731
    against_answers = live_check(reference, predictions, tmp_path / "b", answers=own)

    assert against_labels.drifted and not against_answers.drifted
    summary = json.loads(against_answers.html_path.with_suffix(".json").read_text())
    by_column = {c["column"]: c for c in summary["columns"]}
    assert set(by_column) == {*FEATURES, "confidence", "emotion"}
    answer_columns = {"face_width", "face_height", "face_cx", "face_cy", "emotion", "confidence"}
    assert not [c for c in by_column.values() if c["drifted"] and c["column"] in answer_columns]
    assert summary["reference"]["faces"] == "answered by model v3"
    labelled = json.loads(against_labels.html_path.with_suffix(".json").read_text())
    assert labelled["reference"]["faces"] == "as labelled"
    assert {c["column"] for c in labelled["columns"] if c["drifted"]} >= {
        "face_width", "face_height", "face_cy", "emotion"
    }  # fmt: skip
