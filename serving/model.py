"""The served model: load the champion's ONNX export and turn images into faces.

Pre- and post-processing follow ultralytics' own predictor for YOLOv8 detection exports:
letterbox (cv2 bilinear resize, centred padding of value 114), RGB, /255, NCHW float32; the
output (1, 4 + nc, N) holds xywh boxes in input pixels and per-class scores; best class per
box, confidence threshold, per-class NMS, boxes mapped back to the original image and clipped.
"""

from __future__ import annotations

import ast
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ml import registry
from ml.config import Settings
from ml.records import ModelRef

logger = logging.getLogger(__name__)

PAD_VALUE = 114
MAX_WH = 7680  # per-class box offset for class-aware NMS, as ultralytics does


@dataclass(frozen=True)
class Letterbox:
    """How an image was fitted into the model input: scale per axis, then padding (pixels)."""

    gain_x: float
    gain_y: float
    pad_x: int
    pad_y: int


@dataclass(frozen=True)
class Face:
    box: list[float]  # x1, y1, x2, y2 in original image pixels
    emotion: str
    confidence: float
    scores: dict[str, float]  # every class name -> its score


def letterbox(image: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, Letterbox]:
    """Resize `image` (H, W, 3) into `shape` (h, w) keeping its aspect ratio; pad the rest."""
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


def unletterbox(boxes: np.ndarray, fit: Letterbox, width: int, height: int) -> np.ndarray:
    """Map xyxy boxes from model-input pixels back to the original image, clipped to it."""
    out = boxes.astype(np.float32, copy=True)
    out[:, [0, 2]] = (out[:, [0, 2]] - fit.pad_x) / fit.gain_x
    out[:, [1, 3]] = (out[:, [1, 3]] - fit.pad_y) / fit.gain_y
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, width)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, height)
    return out


def to_tensor(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (1, 3, H, W) float32 in [0, 1]."""
    return np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    half = boxes[:, 2:4] / 2
    return np.concatenate([boxes[:, :2] - half, boxes[:, :2] + half], axis=1)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Greedy NMS on xyxy boxes: indices kept, best score first (a box goes when IoU > `iou`)."""
    areas = (boxes[:, 2] - boxes[:, 0]).clip(0) * (boxes[:, 3] - boxes[:, 1]).clip(0)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        x1 = np.maximum(boxes[best, 0], boxes[rest, 0])
        y1 = np.maximum(boxes[best, 1], boxes[rest, 1])
        x2 = np.minimum(boxes[best, 2], boxes[rest, 2])
        y2 = np.minimum(boxes[best, 3], boxes[rest, 3])
        inter = (x2 - x1).clip(0) * (y2 - y1).clip(0)
        overlap = inter / np.maximum(areas[best] + areas[rest] - inter, 1e-9)
        order = rest[overlap <= iou]
    return np.array(keep, dtype=np.int64)


def decode(
    output: np.ndarray, conf: float, iou: float, max_det: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's output (4 + nc, N) -> xyxy boxes (k, 4), class scores (k, nc), class ids (k,).

    Each box takes its best class; boxes whose best score is not above `conf` go; NMS runs per
    class; at most `max_det` remain, most confident first.
    """
    rows = output.T
    scores = rows[:, 4:]
    best = scores.max(axis=1)
    keep = best > conf
    boxes, scores, best = xywh_to_xyxy(rows[keep, :4]), scores[keep], best[keep]
    classes = scores.argmax(axis=1)
    kept = nms(boxes + classes[:, None] * MAX_WH, best, iou)[:max_det]
    return boxes[kept], scores[kept], classes[kept]


def _metadata(session, path: Path) -> tuple[list[str], tuple[int, int]]:
    """Class names and input size (h, w) from the metadata ultralytics writes on export."""
    meta = session.get_modelmeta().custom_metadata_map
    missing = [key for key in ("names", "imgsz") if key not in meta]
    if missing:
        raise ValueError(f"{path}: not an ultralytics ONNX export (metadata {missing} missing)")
    names = ast.literal_eval(meta["names"])
    imgsz = ast.literal_eval(meta["imgsz"])
    if isinstance(imgsz, int):
        imgsz = [imgsz, imgsz]
    return [names[i] for i in sorted(names)], (int(imgsz[0]), int(imgsz[1]))


class Detector:
    """An ONNX Runtime session over a YOLOv8 detection export."""

    def __init__(self, onnx_path: Path) -> None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        self.session = ort.InferenceSession(str(onnx_path), providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        self.names, self.imgsz = _metadata(self.session, onnx_path)

    def predict(
        self, image: np.ndarray, conf: float = 0.25, iou: float = 0.7, max_det: int = 300
    ) -> list[Face]:
        """Faces in an (H, W, 3) uint8 RGB image, most confident first."""
        height, width = image.shape[:2]
        padded, fit = letterbox(image, self.imgsz)
        (output,) = self.session.run(None, {self.input_name: to_tensor(padded)})
        boxes, scores, classes = decode(output[0], conf, iou, max_det)
        boxes = unletterbox(boxes, fit, width, height)
        return [
            Face(
                box=[float(v) for v in box],
                emotion=self.names[cls],
                confidence=float(row[cls]),
                scores={name: float(s) for name, s in zip(self.names, row, strict=True)},
            )
            for box, row, cls in zip(boxes, scores, classes, strict=True)
        ]


@dataclass(frozen=True)
class ServedModel:
    ref: ModelRef
    detector: Detector


def load_version(settings: Settings, ref: ModelRef) -> ServedModel:
    """A registered version, downloaded and opened (the caller decides when to serve it)."""
    dst = settings.home / "serving" / f"{ref.name}-v{ref.version}"
    dst.mkdir(parents=True, exist_ok=True)
    onnx_path = registry.download_onnx(settings, ref, dst)
    logger.info("loaded %s version %s from %s", ref.name, ref.version, onnx_path)
    return ServedModel(ref, Detector(onnx_path))
