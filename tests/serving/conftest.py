"""The serving room's shared fixtures: drawn test images, an untrained model exported to ONNX,
registered as champion in the real MLflow server, and the real BentoML service over HTTP.

The model and the service are module fixtures, as they were when the modules bound
test_serving's: each module that asks for them gets its own model, registration and service.
Helpers are fixtures that return the function (test modules never import each other).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from emoflow import services
from ml import registry, yolo
from ml.config import Settings
from ml.records import DatasetRef, ModelRef, TrainResult

IMGSZ = 96  # the fixture model's input side
TEST_MODEL = "emotion-detector-serving-test"  # own registry name: other modules share the server
UPLOAD_LIMIT = 1024 * 1024  # the test service's max_upload_bytes
RELOAD_TOKEN = "test-reload-token"
SERVICE_WORKERS = 2  # the hot-reload test needs more than one worker, whatever the core count


def _drawn_image(width: int = 160, height: int = 120, seed: int = 0) -> np.ndarray:
    """An RGB image with a face-like ellipse on a noisy background."""
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(background)
    draw = ImageDraw.Draw(image)
    draw.ellipse([width * 0.3, height * 0.2, width * 0.7, height * 0.9], fill=(224, 172, 105))
    draw.arc(
        [width * 0.4, height * 0.55, width * 0.6, height * 0.75], 20, 160, fill=(0, 0, 0), width=3
    )
    return np.asarray(image)


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    return buf.getvalue()


def _png_bytes(image: np.ndarray) -> bytes:
    return _encoded(Image.fromarray(image), "PNG")


def _upright_exif_jpeg() -> tuple[bytes, np.ndarray]:
    """A JPEG stored on its side with EXIF orientation 6, and the upright pixels it shows."""
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = _encoded(Image.fromarray(np.rot90(_drawn_image()).copy()), "JPEG", exif=exif, quality=95)
    with Image.open(io.BytesIO(data)) as stored:  # the stored pixels, orientation ignored
        return data, np.rot90(np.asarray(stored.convert("RGB")), k=-1)


def _service_settings(base: Settings, home: Path, model_name: str, port: int, **values) -> Settings:
    return base.model_copy(
        update={"home": home, "serve_port": port, "model_name": model_name, **values}
    )


def _register_fixture_model(settings: Settings, weights: Path, onnx_path: Path) -> ModelRef:
    """The fixture model logged in a new run and registered: a new version, same weights."""
    import mlflow

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)  # the fluent run below logs there
    mlflow.set_experiment("test-serving")
    with mlflow.start_run() as run:
        model_uri = registry.log_model_files(weights, onnx_path)
    train = TrainResult(
        run_id=run.info.run_id,
        model_uri=model_uri,
        weights=weights,
        onnx=onnx_path,
        metrics={},
        device="cpu",
        seconds=0.0,
        imgsz=IMGSZ,
    )
    dataset = DatasetRef(
        revision="test-fixture", commit="none", digest="none", path=weights.parent
    )  # an untrained model: it saw no data
    return registry.register(train, dataset, {"source": "tests/serving/test_serving.py"}, settings)


def _champion_version(settings: Settings) -> int:
    return registry.version_by_alias(settings, registry.CHAMPION).version


# ---------------------------------------------------------------- helpers


@pytest.fixture(scope="session")
def drawn_image():
    """A function `(width=160, height=120, seed=0) -> (H, W, 3) uint8`: a face-like ellipse."""
    return _drawn_image


@pytest.fixture(scope="session")
def encoded():
    """A function `(PIL image, format, **options) -> bytes`."""
    return _encoded


@pytest.fixture(scope="session")
def png_bytes():
    """A function `(RGB array) -> PNG bytes`."""
    return _png_bytes


@pytest.fixture(scope="session")
def upright_exif_jpeg():
    """A function `() -> (JPEG bytes stored on its side, the upright pixels it shows)`."""
    return _upright_exif_jpeg


@pytest.fixture(scope="session")
def service_settings():
    """A function `(base, home, model_name, port, **values) -> Settings` for a test service."""
    return _service_settings


@pytest.fixture(scope="session")
def register_fixture_model():
    """A function `(settings, weights, onnx_path) -> ModelRef`: a new version, same weights."""
    return _register_fixture_model


@pytest.fixture(scope="session")
def champion_version():
    """A function `(settings) -> int`: the version the alias `champion` names now."""
    return _champion_version


@pytest.fixture(scope="session")
def imgsz() -> int:
    """The fixture model's input side."""
    return IMGSZ


# ---------------------------------------------------------------- a real model and service


@pytest.fixture(scope="module")
def yolo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ultralytics")


@pytest.fixture(scope="module")
def weights(yolo_dir: Path, untrained_weights) -> Path:
    """An untrained YOLOv8n whose class scores spread over (0, 1) (see `untrained_weights`)."""
    images = np.stack([_drawn_image(IMGSZ, IMGSZ, seed) for seed in range(8)])
    return untrained_weights(images, yolo_dir / "fixture.pt", yolo_dir)


@pytest.fixture(scope="module")
def onnx_path(weights: Path, yolo_dir: Path) -> Path:
    return yolo.export_onnx(weights, IMGSZ, yolo_dir)


@pytest.fixture(scope="module")
def champion_settings(
    free_port,
    mlflow_settings: Settings,
    weights: Path,
    onnx_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Settings:
    """The fixture model registered and promoted to champion in the real MLflow server; the
    service's settings (`max_upload_bytes`, `serve_workers`, ...) as its tests expect them."""
    settings = _service_settings(
        mlflow_settings, tmp_path_factory.mktemp("serve-home"), TEST_MODEL, free_port(),
        max_upload_bytes=UPLOAD_LIMIT, serve_reload_token=RELOAD_TOKEN, serve_poll_seconds=3,
        serve_workers=SERVICE_WORKERS,
    )  # fmt: skip
    ref = _register_fixture_model(settings, weights, onnx_path)
    registry.promote(settings, ref.version, reason="test fixture")
    return settings


@pytest.fixture(scope="module")
def service_url(champion_settings: Settings) -> Iterator[str]:
    services.start(services.bento_service(champion_settings), champion_settings, timeout=180)
    yield champion_settings.service_url
    services.stop(champion_settings, "service")
