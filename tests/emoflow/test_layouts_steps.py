"""Each accepted layout, from the user's folder through `data add-batch` to the pull and
validate steps (real DVC registry, real Great Expectations checkpoint)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml
from PIL import Image

from emoflow import steps
from ml import data_batches

PER_SPLIT = 8  # the default params' minimum images per split


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    image = Image.new("RGB", (96, 96), (40 + seed * 7 % 200, 90, 140))
    image.paste((200, 160, 130), (14, 10, 82, 88))
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data) if isinstance(data, bytes) else path.write_text(data)


def affectnet(root: Path) -> Path:
    """The published AffectNet YOLO release: YOLO_format/, split `valid`, capitalised names."""
    base = root / "YOLO_format"
    names = ["Anger", "Contempt", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise"]
    write(base / "data.yaml", yaml.safe_dump({"train": "../train/images", "val": "../valid/images",
                                              "test": "../test/images", "nc": 8, "names": names}))  # fmt: skip
    for s, split in enumerate(("train", "valid", "test")):
        for i in range(PER_SPLIT):
            write(base / split / "images" / f"img{s}_{i}.png", png(s * 50 + i))
            write(base / split / "labels" / f"img{s}_{i}.txt", f"{i % 8} 0.5 0.5 0.7 0.8\n")
    return root


def yolo_dict_names(root: Path) -> Path:
    """A two-class YOLO set with names as a dict and split key `val`."""
    write(root / "data.yaml", yaml.safe_dump({"path": ".", "train": "images/train",
                                              "val": "images/val", "test": "images/test",
                                              "names": {0: "Happiness", 1: "SADNESS"}}))  # fmt: skip
    for s, split in enumerate(("train", "val", "test")):
        for i in range(PER_SPLIT):
            write(root / "images" / split / f"f{s}_{i}.png", png(s * 50 + i))
            write(root / "labels" / split / f"f{s}_{i}.txt", f"{i % 2} 0.5 0.5 0.7 0.8\n")
    return root


def class_folders(root: Path) -> Path:
    """split/<emotion>/*.jpg with aliases as folder names; one face per image."""
    for s, split in enumerate(("train", "val", "test")):
        for i in range(PER_SPLIT):
            emotion = ("angry", "surprised", "neutral", "happy")[i % 4]
            buffer = io.BytesIO()
            Image.open(io.BytesIO(png(s * 50 + i))).save(buffer, format="JPEG")
            write(root / split / emotion / f"{i}.jpg", buffer.getvalue())
    return root


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (affectnet, {"anger": 1, "contempt": 1, "surprise": 1}),
        (yolo_dict_names, {"happy": 4, "sad": 4, "anger": 0}),
        (class_folders, {"anger": 2, "surprise": 2, "neutral": 2, "happy": 2}),
    ],
)
def test_layout_goes_through_the_pull_and_validate_steps(
    make_settings, build, expected: dict[str, int], tmp_path: Path
):
    settings = make_settings(tmp_path / "home")
    revision = data_batches.add_batch(settings, build(tmp_path / "src"), build.__name__)
    for emotion, count in expected.items():
        assert revision.counts["train"]["classes"][emotion] == count, emotion

    dataset = steps.pull(revision.name, settings=settings)
    assert dataset.digest == revision.digest
    assert sorted(p.name for p in dataset.path.iterdir()) == ["data.yaml", "test", "train", "valid"]
    result = steps.validate(dataset, settings=settings)
    assert result.ok, result.errors
    assert result.counts["images"] == 3 * PER_SPLIT
