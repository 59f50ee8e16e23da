"""Live traffic vs the champion's training data: `monitoring.drift.check_live_drift` and the
step `ml.pipeline.monitor_live`.

The reference is a small drawn dataset (`ml.sample_data.generate`); the traffic is more faces
drawn the same way (other seeds), recorded through the real `PredictionLog` into a SQLite file
and read back with `read_predictions`, as the service and the DAG do.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from ml.config import EMOTIONS, DriftParams
from ml.records import DatasetRef, DriftResult, ModelRef
from ml.sample_data import IMAGE_SIZE, draw_face, generate
from monitoring.features import FEATURES
from serving.prediction_log import PredictionLog, read_predictions

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


def log_traffic(uri: str, cases: list[tuple[np.ndarray, dict, str]]):
    """Record `cases` through the real prediction log and read them back."""
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


# ------------------------------------------------------------------- ml.pipeline.monitor_live


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Settings for `monitor_live`: home and prediction log in tmp_path, min_live_rows 20."""
    params = tmp_path / "params.yaml"
    params.write_text("drift:\n  min_live_rows: 20\n  max_rows: 30\n")
    monkeypatch.setenv("EMOFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("EMOFLOW_PARAMS_FILE", str(params))
    monkeypatch.setenv("EMOFLOW_PREDICTION_LOG_URI", f"sqlite:///{tmp_path / 'log.db'}")
    return tmp_path


def test_monitor_live_skips_without_enough_traffic_or_a_champion(
    home: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    from ml import pipeline

    def no_registry(*args):
        raise AssertionError("the registry is not asked while traffic is too thin")

    monkeypatch.setattr(pipeline.registry, "version_by_alias", no_registry)
    caplog.set_level(logging.INFO, logger="emoflow.pipeline")
    assert pipeline.monitor_live() is None  # no log file at all yet
    assert "0 predictions" in caplog.text and str(home / "log.db") in caplog.text

    uri = f"sqlite:///{home / 'log.db'}"
    log_traffic(uri, traffic(19, seed=10))
    assert pipeline.monitor_live() is None
    assert "19 predictions" in caplog.text and "20 needed" in caplog.text

    log_traffic(uri, traffic(1, seed=11))
    monkeypatch.setattr(pipeline.registry, "version_by_alias", lambda settings, alias: None)
    assert pipeline.monitor_live() is None
    assert "no champion yet" in caplog.text
    assert not (home / "home" / "reports").exists()


def test_monitor_live_compares_the_newest_predictions_with_the_champions_data(
    reference, home: Path, monkeypatch: pytest.MonkeyPatch
):
    from ml import pipeline

    log_traffic(f"sqlite:///{home / 'log.db'}", traffic(40, seed=12))
    champion = ModelRef(name="emotion-detector", version=4, run_id="run")
    monkeypatch.setattr(pipeline.registry, "version_by_alias", lambda settings, alias: champion)
    asked = []
    monkeypatch.setattr(
        pipeline, "champion_dataset", lambda model: asked.append(model) or reference
    )

    result = pipeline.monitor_live()

    assert asked == [champion]
    assert isinstance(result, DriftResult) and not result.drifted
    assert result.reference == "r1 (training data of model v4)"
    assert result.html_path.parent == (home / "home" / "reports" / "live").resolve()
    summary = json.loads(result.html_path.with_suffix(".json").read_text())
    assert summary["current"]["rows"] == 30  # drift.max_rows: the newest 30 of 40
    assert summary["current"]["source"] == f"sqlite:///{home / 'log.db'}"
    assert (home / "home" / "reports" / "index.html").is_file()
