"""The serving room's shared fixtures: drawn test images, frames of real photographs with known
face boxes, an untrained model exported to ONNX, registered as champion in the real MLflow
server, and the real BentoML service over HTTP.

The model and the service are module fixtures, as they were when the modules bound
test_serving's: each module that asks for them gets its own model, registration and service.
Helpers are fixtures that return the function (test modules never import each other).
"""

from __future__ import annotations

import functools
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from emoflow import services
from ml import registry, yolo
from ml.config import Settings
from ml.records import DatasetRef, ModelRef, TrainResult
from ml.sample_photos import (
    ASTRONAUT_FACE,
    Box,
    astronauts,
    iou,
    resized,
    rgb,
    tiles_on_photo,
)

IMGSZ = 96  # the fixture model's input side
TEST_MODEL = "emotion-detector-serving-test"  # own registry name: other modules share the server
UPLOAD_LIMIT = 1024 * 1024  # the test service's max_upload_bytes
RELOAD_TOKEN = "test-reload-token"
SERVICE_WORKERS = 2  # the hot-reload test needs more than one worker, whatever the core count
REQUEST_PIXELS = 4_000_000  # the test service's serve_max_request_pixels
FACE_FREE_PHOTOS = (
    "coffee", "chelsea", "rocket", "brick", "grass", "gravel", "hubble_deep_field", "coins",
    "horse", "page", "text", "moon", "retina", "immunohistochemistry",
)  # fmt: skip
"""scikit-image's photographs without a human face (chelsea is a cat)."""


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


# ---------------------------------------------------------------- real photographs


@dataclass(frozen=True)
class PhotoScenes:
    """Frames made of real photographs (scikit-image's): `faces` with their face boxes in frame
    pixels, `face_free` with none. Each is (name, (H, W, 3) uint8 RGB, boxes)."""

    faces: list[tuple[str, np.ndarray, list[Box]]]
    face_free: list[tuple[str, np.ndarray, list[Box]]]


@functools.cache
def _photo_scenes() -> PhotoScenes:
    """138 faces in 33 frames and 25 face-free images, from scikit-image's photographs:

    - the astronaut photo as it is; 2, 4, 6 and 12 copies of it in 640x480 frames (faces of 64
      down to 32 px); three close-ups of her face scaled to 320x320;
    - LFW's 100 faces (`lfw_subset`: 25x25 grey crops), five at a time scaled to 48-140 px on a
      face-free photo in 640x480 frames, and ten at 110-140 px in five 400x320 frames;
    - face-free: the photos of FACE_FREE_PHOTOS and the stereo motorcycle, and LFW's 100
      non-face crops, ten at a time on a face-free photo.
    """
    from skimage import data

    free = [rgb(getattr(data, name)()) for name in FACE_FREE_PHOTOS]
    free.append(rgb(data.stereo_motorcycle()[0]))
    lfw = data.lfw_subset()
    faces, non_faces = lfw[:100], lfw[100:]
    scenes = [("astronaut", data.astronaut(), [ASTRONAUT_FACE])]
    for columns, rows in [(2, 1), (2, 2), (3, 2), (4, 3)]:
        scenes.append((f"astronaut {columns}x{rows}", *astronauts(columns, rows)))
    astronaut = data.astronaut()
    for x1, y1, x2, y2 in [(125, 20, 325, 220), (100, 0, 350, 250), (60, 0, 400, 340)]:
        scale = 320 / (x2 - x1)
        box = [
            tuple((v - o) * scale for v, o in zip(ASTRONAUT_FACE, (x1, y1, x1, y1), strict=True))
        ]
        scenes.append(
            (f"astronaut close-up {x2 - x1}", resized(astronaut[y1:y2, x1:x2], 320, 320), box)
        )
    for k in range(20):
        scenes.append((f"lfw {k}", *tiles_on_photo(faces[k * 5 : k * 5 + 5], free, (48, 140), k)))
    for k in range(5):
        frame, boxes = tiles_on_photo(faces[k * 2 : k * 2 + 2], free, (110, 140), 200 + k, 400, 320)
        scenes.append((f"lfw large {k}", frame, boxes))
    names = [*FACE_FREE_PHOTOS, "stereo_motorcycle"]
    face_free = [(name, image, []) for name, image in zip(names, free, strict=True)]
    for k in range(10):
        frame, _ = tiles_on_photo(non_faces[k * 10 : k * 10 + 10], free, (48, 110), 100 + k)
        face_free.append((f"lfw non-faces {k}", frame, []))
    return PhotoScenes(scenes, face_free)


def _match_faces(found: list, truth: list[Box], min_iou: float = 0.4) -> tuple[int, int]:
    """Faces of `truth` that a box of `found` covers (IoU >= `min_iou`, one box per face), and
    boxes of `found` left over."""
    used: set[int] = set()
    for box in truth:
        free = [i for i in range(len(found)) if i not in used]
        best = max(free, key=lambda i: iou(found[i], box), default=None)
        if best is not None and iou(found[best], box) >= min_iou:
            used.add(best)
    return len(used), len(found) - len(used)


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
def photo_scenes() -> PhotoScenes:
    """Frames of real photographs with known face boxes, and face-free ones (`_photo_scenes`)."""
    return _photo_scenes()


@pytest.fixture(scope="session")
def match_faces():
    """A function `(found boxes, true boxes, min_iou=0.4) -> (faces found, boxes left over)`."""
    return _match_faces


@pytest.fixture(scope="session")
def face_detector_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where these tests' face detectors keep their converted ONNX files (made once)."""
    return tmp_path_factory.mktemp("face-detector")


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
        serve_workers=SERVICE_WORKERS, serve_max_request_pixels=REQUEST_PIXELS,
    )  # fmt: skip
    ref = _register_fixture_model(settings, weights, onnx_path)
    registry.promote(settings, ref.version, reason="test fixture")
    return settings


@pytest.fixture(scope="module")
def service_url(champion_settings: Settings) -> Iterator[str]:
    services.start(services.bento_service(champion_settings), champion_settings, timeout=180)
    yield champion_settings.service_url
    services.stop(champion_settings, "service")
