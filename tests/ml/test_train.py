"""Training params that come from the data, and base models that are never downloaded."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from ml.config import PROJECT_ROOT
from ml.params import TrainParams, load_params
from ml.train import TrainingError, base_model, data_imgsz


def images_of(tmp_path: Path, sizes: list[tuple[int, int]]) -> Path:
    folder = tmp_path / "train" / "images"
    folder.mkdir(parents=True)
    for i, size in enumerate(sizes):
        Image.new("RGB", size).save(folder / f"{i}.png")
    return tmp_path


@pytest.mark.parametrize(
    ("sizes", "expected"),
    [
        ([(96, 96)] * 5, 96),  # AffectNet crops: no upscaling to 640
        ([(96, 96), (100, 90), (120, 120)], 128),  # median longer side 100 -> next multiple of 32
        ([(640, 480), (1280, 720), (1920, 1080)], 640),  # camera frames: capped at 640
        ([(20, 20)] * 3, 32),  # tiny images: at least one stride
    ],
)
def test_image_size_comes_from_the_data(tmp_path: Path, sizes, expected: int) -> None:
    assert data_imgsz(images_of(tmp_path, sizes)) == expected


def test_image_size_needs_train_images(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="no images"):
        data_imgsz(images_of(tmp_path, []))


def test_default_params_size_the_input_from_the_data() -> None:
    assert load_params(PROJECT_ROOT / "params.yaml").train.imgsz == "auto"
    assert TrainParams(imgsz=640).imgsz == 640
    for bad in ("large", 16):
        with pytest.raises(ValueError):
            TrainParams(imgsz=bad)


def test_base_model_is_an_architecture_or_weights_on_disk(tmp_path: Path) -> None:
    assert base_model(TrainParams(model="yolov8s.yaml")) == "yolov8s.yaml"
    weights = tmp_path / "mine.pt"
    weights.write_bytes(b"weights")
    assert base_model(TrainParams(model=str(weights))) == str(weights)
    for name in ("yolov8n.pt", str(tmp_path / "missing.pt"), "model.onnx"):
        with pytest.raises(TrainingError, match="never downloads"):
            base_model(TrainParams(model=name))
