"""The one definition of emoflow's dataset format: splits, image files, label lines, data.yaml,
and the letterbox that fits an image into the model's square input.

Canonical layout (what every step reads and writes)::

    <root>/data.yaml                     the splits below, names = ml.config.EMOTIONS, nc = 8
    <root>/{train,valid,test}/images/    image files
    <root>/{train,valid,test}/labels/    <image stem>.txt: one ``class cx cy w h`` line per face,
                                         class = EMOTIONS index, coordinates normalised to [0, 1]

Every module that lists images, reads labels, writes data.yaml or letterboxes an image uses
these definitions, so validation, training, drift reports, the gate and the service agree on
which files are images and what a label line says.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ml.config import EMOTIONS

if TYPE_CHECKING:
    import numpy as np

SPLITS: tuple[str, ...] = ("train", "valid", "test")
"""The canonical split folders, in this order everywhere."""

IMAGE_SUFFIXES = frozenset({".bmp", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp"})
"""File suffixes (lower case) that count as images: the formats of `ml.config.ImageFormat`,
which both Pillow and ultralytics read. What a file really holds is checked by validation."""

LABEL_SUFFIX = ".txt"
PAD_VALUE = 114
"""Grey of the letterbox padding, as ultralytics pads."""


def is_image(path: str | os.PathLike) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_SUFFIXES


def list_images(folder: Path, recursive: bool = False) -> list[Path]:
    """The image files in `folder` (and its sub-folders), sorted; none if it does not exist.
    Hidden files and folders (a leading dot) are left out."""
    if not folder.is_dir():
        return []
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        p for p in found
        if is_image(p) and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )  # fmt: skip


def label_path(image: Path) -> Path:
    """The label file of ``<root>/<split>/images/<stem>.<ext>``: ``.../labels/<stem>.txt``."""
    return image.parent.parent / "labels" / f"{image.stem}{LABEL_SUFFIX}"


@dataclass(frozen=True)
class LabelLine:
    """One non-blank line of a YOLO label file, as written; `box` says what it means."""

    number: int  # 1-based line number in its file
    fields: tuple[str, ...]  # the whitespace-separated fields
    text: str  # the line without surrounding white space

    @property
    def values(self) -> tuple[float, float, float, float, float]:
        """(class_id, cx, cy, w, h) as floats; NaN for a field that is not a number, and all
        NaN unless the line has exactly five fields."""
        values = [math.nan] * 5
        if len(self.fields) == 5:
            for i, item in enumerate(self.fields):
                try:
                    values[i] = float(item)  # "nan" stays NaN, "inf" is out of every range
                except ValueError:
                    pass
        return tuple(values)  # type: ignore[return-value]

    @property
    def box(self) -> tuple[int, tuple[float, float, float, float]] | None:
        """``(class_id, (cx, cy, w, h))`` for a well-formed line (five fields, an integer class
        of the eight emotions, finite coordinates), else None. Ranges are validation's job."""
        class_id, *coords = self.values
        if not (class_id.is_integer() and 0 <= class_id < len(EMOTIONS)):
            return None
        if not all(map(math.isfinite, coords)):
            return None
        cx, cy, w, h = coords
        return int(class_id), (cx, cy, w, h)


def parse_label(text: str) -> list[LabelLine]:
    """The non-blank lines of a label file's text."""
    lines = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = tuple(line.split())
        if fields:
            lines.append(LabelLine(number, fields, line.strip()))
    return lines


def read_label(path: Path) -> list[LabelLine]:
    """The non-blank lines of the label file at `path` (raises OSError if it cannot be read)."""
    return parse_label(path.read_text(encoding="utf-8", errors="replace"))


def data_yaml_text() -> str:
    """The canonical data.yaml. No ``path:`` key on purpose: ultralytics then resolves the
    splits against the file's own folder, so the dataset works from any working directory."""
    names = "\n".join(f"  - {name}" for name in EMOTIONS)
    return (
        "# emoflow dataset (ml/dataset_format.py): splits relative to this file's folder.\n"
        "train: train/images\n"
        "val: valid/images\n"
        "test: test/images\n"
        f"nc: {len(EMOTIONS)}\n"
        f"names:\n{names}\n"
    )


def write_data_yaml(root: Path) -> Path:
    """Write the canonical ``<root>/data.yaml``; return its path."""
    path = root / "data.yaml"
    path.write_text(data_yaml_text(), encoding="utf-8")
    return path


@dataclass(frozen=True)
class Letterbox:
    """How an image was fitted into the model input: scale per axis, then padding (pixels)."""

    gain_x: float
    gain_y: float
    pad_x: int
    pad_y: int


def letterbox(image: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, Letterbox]:
    """Resize `image` (H, W, 3) uint8 into `shape` (h, w) keeping its aspect ratio (bilinear),
    centred on grey padding, exactly as ultralytics' predictor does; also say how."""
    import cv2

    height, width = image.shape[:2]
    ratio = min(shape[0] / height, shape[1] / width)
    new_w, new_h = max(round(width * ratio), 1), max(round(height * ratio), 1)
    if (new_w, new_h) != (width, height):
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    dw, dh = (shape[1] - new_w) / 2, (shape[0] - new_h) / 2
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    padded = cv2.copyMakeBorder(
        image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3
    )
    return padded, Letterbox(new_w / width, new_h / height, left, top)


def to_tensor(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (1, 3, H, W) float32 in [0, 1]: the model's input."""
    import numpy as np

    return np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0
