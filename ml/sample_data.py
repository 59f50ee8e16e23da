"""Drawn sample data: face crops in the AffectNet YOLO layout, for tests and the demo.

AffectNet itself cannot be downloaded here, so the project draws its own faces: each image is a
96x96 RGB crop holding one cartoon face drawn by `ml.face_drawing.draw_face` (re-exported here
with `Shift` and `IMAGE_SIZE`), whose emotion shows in drawn features. The label is one YOLO
line, ``class cx cy w h``, whose box is the face ellipse's bounding box. `compose_frame` places
such crops on a camera-like frame.

Layout written by :func:`generate` (the same as the public ``affectnet-yolo-format`` set)::

    <out>/data.yaml
    <out>/{train,valid,test}/images/<prefix><seed>_<split>_<index:06d>.png
    <out>/{train,valid,test}/labels/<prefix><seed>_<split>_<index:06d>.txt

``data.yaml`` has no ``path:`` key on purpose: ultralytics (8.4, ``check_det_dataset``) then
resolves ``train``/``val``/``test`` against the folder that holds the YAML file, so the dataset
works from any working directory and keeps working after it is moved or pulled elsewhere.
(``path: .`` would be resolved against the working directory instead.)

Output is deterministic: each image draws from its own random generator seeded by
``(seed, split, index)``, so the same arguments give byte-identical files, and a batch made
with another ``shift`` (drift) shows the same faces under other conditions.

The class mix is `Shift.class_weights`: uniform by default; ``ml.params.class_weights("affectnet")``
gives AffectNet's skew (happy and neutral dominate, contempt and disgust are rare), as
``sample.class_mix`` and ``emoflow data add-batch --sample --class-mix`` do.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from ml.config import EMOTIONS
from ml.dataset_format import SPLITS, write_data_yaml
from ml.face_drawing import IMAGE_SIZE, Shift, background, draw_face

__all__ = ["IMAGE_SIZE", "Shift", "compose_frame", "draw_face", "generate"]

log = logging.getLogger(__name__)

_MAX_PER_SPLIT = 1_000_000  # file names hold a six-digit index
# The seed follows the prefix in file names: a trailing digit would let "b1"+"0" meet "b"+"10".
_PREFIX = re.compile(r"[A-Za-z](?:[A-Za-z0-9-]{0,30}[A-Za-z-])?")


def _check_args(
    out_dir: Path, counts: dict[str, int], seed: int, shift: Shift, prefix: str
) -> None:
    for split, count in counts.items():
        if isinstance(count, bool) or not isinstance(count, int):
            raise TypeError(f"{split} must be an int (number of images), got {count!r}")
        if not 0 <= count < _MAX_PER_SPLIT:
            raise ValueError(f"{split} must be in 0..{_MAX_PER_SPLIT - 1} images, got {count}")
    if sum(counts.values()) == 0:
        raise ValueError("train, valid and test are all 0: nothing to generate")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if not isinstance(shift, Shift):
        raise TypeError(f"shift must be a ml.sample_data.Shift, got {type(shift).__name__}")
    if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
        raise ValueError(
            "prefix must be 1-32 ASCII letters, digits or '-', start with a letter and not end "
            f"with a digit (file names are <prefix><seed>_...), got {prefix!r}"
        )
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(
            f"{out_dir} already exists and is not an empty folder; "
            "choose a new folder or remove it first"
        )


def generate(
    out_dir: Path,
    *,
    train: int,
    valid: int,
    test: int,
    seed: int = 0,
    shift: Shift = Shift(),  # noqa: B008 - frozen model, safe as a default
    prefix: str = "s",
) -> Path:
    """Write a drawn dataset in the AffectNet YOLO layout into ``out_dir``; return data.yaml.

    Everything is written into a temporary sibling folder first and renamed into place at the
    end, so ``out_dir`` either holds the complete dataset or is left as it was. ``out_dir``
    must not exist, or be an empty folder.
    """
    out_dir = Path(out_dir)
    counts = {"train": train, "valid": valid, "test": test}
    _check_args(out_dir, counts, seed, shift, prefix)

    weights = np.full(len(EMOTIONS), 1.0 / len(EMOTIONS))
    if shift.class_weights is not None:
        weights = np.asarray(shift.class_weights, dtype=np.float64)
        weights = weights / weights.sum()

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        for split_no, split in enumerate(SPLITS):
            images, labels = tmp / split / "images", tmp / split / "labels"
            images.mkdir(parents=True)
            labels.mkdir(parents=True)
            for i in range(counts[split]):
                rng = np.random.default_rng([seed, split_no, i])
                emotion = int(rng.choice(len(EMOTIONS), p=weights))
                img, (bx, by, bw, bh) = draw_face(rng, emotion, shift)
                stem = f"{prefix}{seed}_{split}_{i:06d}"
                img.save(images / f"{stem}.png", format="PNG", compress_level=1)
                (labels / f"{stem}.txt").write_text(
                    f"{emotion} {bx:.6f} {by:.6f} {bw:.6f} {bh:.6f}\n", encoding="ascii"
                )
            log.info("sample data: %s %d images", split, counts[split])
        write_data_yaml(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        if out_dir.is_dir():  # an empty folder (checked above): replace it
            out_dir.rmdir()
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir / "data.yaml"


def compose_frame(
    faces: list[tuple[Image.Image, tuple[float, float, float, float], int]],
    *,
    width: int = 640,
    height: int = 480,
    sizes: tuple[int, int] = (80, 140),
    seed: int = 0,
) -> tuple[Image.Image, list[tuple[tuple[float, float, float, float], int]]]:
    """A camera-like frame: `faces` (crop image, its normalised YOLO face box, class id), each
    scaled to a side in `sizes` and placed apart from the others on a drawn background.

    Returns the frame and, per face, its box in frame pixels (x1, y1, x2, y2) and class id.
    Raises ValueError when the faces do not fit apart in the frame.
    """
    rng = np.random.default_rng(seed)
    frame = background(rng, max(width, height)).crop((0, 0, width, height))
    placed: list[tuple[float, float, float, float]] = []
    truth = []
    for crop, (cx, cy, bw, bh), class_id in faces:
        side = int(rng.integers(sizes[0], sizes[1] + 1))
        for _ in range(200):
            x, y = int(rng.integers(0, width - side)), int(rng.integers(0, height - side))
            if all(x + side <= a or a + (c - a) <= x or y + side <= b or d <= y
                   for a, b, c, d in placed):  # fmt: skip
                break
        else:
            raise ValueError(f"{len(faces)} faces of up to {sizes[1]} px do not fit apart in "
                             f"{width}x{height}")  # fmt: skip
        frame.paste(crop.convert("RGB").resize((side, side), Image.Resampling.BILINEAR), (x, y))
        placed.append((x, y, x + side, y + side))
        box = (x + (cx - bw / 2) * side, y + (cy - bh / 2) * side,
               x + (cx + bw / 2) * side, y + (cy + bh / 2) * side)  # fmt: skip
        truth.append((box, class_id))
    return frame, truth
