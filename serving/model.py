"""The served model: load the champion's ONNX export and turn images into faces.

Pre- and post-processing follow ultralytics' own predictor for YOLOv8 and YOLO26 detection
exports (YOLO26's default export, not its NMS-free head: `ml.yolo.export_onnx`):
letterbox (`ml.dataset_format.letterbox`: cv2 bilinear resize, centred padding of value 114),
RGB, /255, NCHW float32 (`ml.dataset_format.to_tensor`); the output (1, 4 + nc, N) holds xywh
boxes in input pixels and per-class scores; best class per box, confidence threshold, per-class
NMS, boxes mapped back to the original image and clipped.

Crops and frames. The model is trained on face crops at a small input size (96 px for
AffectNet). A face crop is answered from one view of the whole image, exactly as ultralytics
would. A camera frame with several small faces would shrink each face to a few pixels in that
one view, so an image more than twice the model input is also cut into overlapping square
windows, each letterboxed like a crop: sides of 1/2, 1/3, ... of the image's shorter side
while a window stays at least 1.5 x the model input and the views stay at most `MAX_VIEWS`,
half a window apart, so a face up to half a window wide lies wholly inside one window (a 640 x
480 frame at 96 px: 15 windows of 240 px and 35 of 160 px).
Every view goes through the model in one batch; boxes found in the windows are mapped back to
the frame, those cut by a window's inner edge are dropped, at most `MAX_BOXES_PER_VIEW` per
view are kept, and one box is kept per face (class-agnostic suppression by overlap or
containment, most confident first). The service reads frames this way only when
`serve_faces` is `model`; otherwise a real face detector finds a frame's faces and this model
reads each one as a crop (serving/faces.py).
"""

from __future__ import annotations

import ast
import functools
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ml.config import Settings
from ml.dataset_format import Letterbox, letterbox, to_tensor
from ml.embedding import EMBEDDING_OUTPUT, Output, first_embedding
from ml.records import ModelRef
from serving import registry_api
from serving.torch_runtime import cuda_present, torch_forward

logger = logging.getLogger(__name__)

MAX_WH = 7680  # per-class box offset for class-aware NMS, as ultralytics does
TILE_ABOVE = 2.0  # cut an image into windows when its longer side exceeds this x model input
MIN_WINDOW = 1.5  # smallest window side, x model input
MAX_VIEWS = 64  # whole image + windows; finer levels are left out beyond this
CUT_MARGIN = 2.0  # px: a window box this close to an inner window edge is a cut face
CONTAINED = 0.6  # a box this much inside a kept box (intersection / its area) is the same face
MAX_BOXES_PER_VIEW = 20  # of a frame's views, only this many boxes each go into the merge


@dataclass(frozen=True)
class Face:
    box: list[float]  # x1, y1, x2, y2 in original image pixels
    emotion: str
    confidence: float
    scores: dict[str, float]  # every class name -> its score


def unletterbox(boxes: np.ndarray, fit: Letterbox, width: int, height: int) -> np.ndarray:
    """Map xyxy boxes from model-input pixels back to the original image, clipped to it."""
    out = boxes.astype(np.float32, copy=True)
    out[:, [0, 2]] = (out[:, [0, 2]] - fit.pad_x) / fit.gain_x
    out[:, [1, 3]] = (out[:, [1, 3]] - fit.pad_y) / fit.gain_y
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, width)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, height)
    return out


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


@dataclass(frozen=True)
class View:
    """A window of the image (x, y, width, height in image pixels) and how it was letterboxed."""

    x: int
    y: int
    width: int
    height: int
    fit: Letterbox


@dataclass(frozen=True)
class Prepared:
    """An image ready for the model: one input row per view, the first view the whole image."""

    batch: np.ndarray  # (views, 3, h, w) float32
    views: list[View]
    width: int
    height: int


def windows(height: int, width: int, input_side: int) -> list[tuple[int, int, int, int]]:
    """The views of an image as (x, y, w, h): the whole image, plus overlapping square windows
    when the image is more than `TILE_ABOVE` x the model input (see the module docstring)."""
    views = [(0, 0, width, height)]
    if max(height, width) <= TILE_ABOVE * input_side:
        return views
    for fraction in range(2, 9):
        side = min(height, width) // fraction
        if side < MIN_WINDOW * input_side:
            break
        stride = max(side // 2, 1)
        xs = [*range(0, width - side, stride), width - side]
        ys = [*range(0, height - side, stride), height - side]
        level = [(x, y, side, side) for y in dict.fromkeys(ys) for x in dict.fromkeys(xs)]
        if len(views) + len(level) > MAX_VIEWS:
            break
        views += level
    return views


def _cut_by_window(boxes: np.ndarray, view: View, width: int, height: int) -> np.ndarray:
    """Mask of boxes (window pixels) touching an edge of the window that is inside the image
    (none for the whole image)."""
    cut = np.zeros(len(boxes), dtype=bool)
    if view.x > 0:
        cut |= boxes[:, 0] <= CUT_MARGIN
    if view.y > 0:
        cut |= boxes[:, 1] <= CUT_MARGIN
    if view.x + view.width < width:
        cut |= boxes[:, 2] >= view.width - CUT_MARGIN
    if view.y + view.height < height:
        cut |= boxes[:, 3] >= view.height - CUT_MARGIN
    return cut


def merge_views(boxes: np.ndarray, confidences: np.ndarray, iou: float) -> np.ndarray:
    """Indices of the boxes kept across views: most confident first, a box goes when it
    overlaps a kept one by IoU > `iou` or lies inside it by more than `CONTAINED`."""
    areas = (boxes[:, 2] - boxes[:, 0]).clip(0) * (boxes[:, 3] - boxes[:, 1]).clip(0)
    keep: list[int] = []
    for i in np.argsort(-confidences, kind="stable"):
        if keep:
            kept = boxes[keep]
            w = (np.minimum(kept[:, 2], boxes[i, 2]) - np.maximum(kept[:, 0], boxes[i, 0])).clip(0)
            h = (np.minimum(kept[:, 3], boxes[i, 3]) - np.maximum(kept[:, 1], boxes[i, 1])).clip(0)
            inter = w * h
            union = areas[keep] + areas[i] - inter
            inside = inter / np.maximum(np.minimum(areas[keep], areas[i]), 1e-9)
            if ((inter / np.maximum(union, 1e-9)) > iou).any() or (inside > CONTAINED).any():
                continue
        keep.append(int(i))
    return np.array(keep, dtype=np.int64)


@functools.cache
def _shared_cpu_arena() -> None:
    """Registers, once per process, one CPU memory arena that every session of `onnx_session`
    draws from, grown by what each call asks for (not to the next power of two). Sessions with
    their own arenas each keep their own peak: in a probe of a worker's two sessions (the face
    detector's 448 pass, the emotion model's batches of 1-32), their own arenas and memory plans
    held 148 MiB, one shared arena without plans 103 MiB (2026-12-04)."""
    import onnxruntime as ort

    same_as_requested = 1  # ONNX Runtime's ArenaExtendStrategy::kSameAsRequested
    config = ort.OrtArenaCfg(0, same_as_requested, -1, -1)  # no cap; default chunk sizes
    cpu = ort.OrtMemoryInfo(
        "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
    )
    ort.create_and_register_allocator(cpu, config)


def onnx_session(path: Path, threads: int = 0):
    """An ONNX Runtime session of `path` on CUDA where onnxruntime-gpu has it, else the CPU, with
    `threads` intra-op threads (0: one per core). Its CPU memory comes from the process's one
    shared arena (`_shared_cpu_arena`), without per-shape memory plans: the face detector reads
    every frame size and the emotion model every batch size, and each plan would keep its own
    buffers."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    _shared_cpu_arena()
    options = ort.SessionOptions()
    # ONNX Runtime's pool threads spin for a while after each call by default, burning the
    # cores that the service's HTTP, decoding and post-processing need between calls.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.use_env_allocators", "1")
    options.enable_mem_pattern = False
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=providers)


class Detector:
    """A YOLOv8 or YOLO26 detection export: ONNX Runtime (CPU, or CUDA with onnxruntime-gpu), or, given
    the PyTorch `weights` and a `device`, torch on that device."""

    def __init__(
        self, onnx_path: Path, threads: int = 0, weights: Path | None = None, device: str = "cpu"
    ) -> None:
        """`threads`: ONNX Runtime's intra-op threads (0: one per core)."""
        self.session = onnx_session(onnx_path, threads)
        self.input_name = self.session.get_inputs()[0].name
        outputs = [output.name for output in self.session.get_outputs()]
        # by name: the detections are ultralytics' first output; the embedding, where the export
        # has one (ml.embedding), is asked for with them (a few hundred floats per row)
        self.outputs = [outputs[0]] + ([EMBEDDING_OUTPUT] if EMBEDDING_OUTPUT in outputs else [])
        self.names, self.imgsz = _metadata(self.session, onnx_path)
        self.torch = torch_forward(weights, device) if weights is not None else None
        provider = self.session.get_providers()[0]
        self.runtime = f"torch {device}" if self.torch else f"onnxruntime {provider}"

    def prepare(self, image: np.ndarray) -> Prepared:
        """An (H, W, 3) uint8 RGB image as model input: every view letterboxed, stacked."""
        height, width = image.shape[:2]
        rows, views = [], []
        for x, y, w, h in windows(height, width, max(self.imgsz)):
            padded, fit = letterbox(image[y : y + h, x : x + w], self.imgsz)
            rows.append(to_tensor(padded))
            views.append(View(x, y, w, h, fit))
        return Prepared(np.concatenate(rows), views, width, height)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """The raw model output (n, 4 + nc, N) of a stacked input (n, 3, h, w): an `Output`
        with each row's embedding where the ONNX export has one (see `embedding`)."""
        if self.torch is not None:
            return self.torch(batch)
        results = self.session.run(self.outputs, {self.input_name: batch})
        return Output.of(results[0], results[1] if len(results) > 1 else None)

    @staticmethod
    def embedding(rows: np.ndarray) -> np.ndarray | None:
        """The embedding (C,) float32 of an image, from its rows of `run`'s output (its first
        view: the whole image), or None (an export without one, the torch runtime)."""
        return first_embedding(rows)

    def faces(
        self, prepared: Prepared, output: np.ndarray, conf: float = 0.25, iou: float = 0.7,
        max_det: int = 300,
    ) -> list[Face]:  # fmt: skip
        """The faces in the model's output for `prepared`, most confident first."""
        output = np.asarray(output)  # a plain array: `Output`'s bookkeeping has no use here
        found = []
        per_view = max_det if len(prepared.views) == 1 else min(max_det, MAX_BOXES_PER_VIEW)
        for view, rows in zip(prepared.views, output, strict=True):
            boxes, scores, classes = decode(rows, conf, iou, per_view)
            boxes = unletterbox(boxes, view.fit, view.width, view.height)
            kept = ~_cut_by_window(boxes, view, prepared.width, prepared.height)
            boxes, scores, classes = boxes[kept], scores[kept], classes[kept]
            found.append((boxes + [view.x, view.y, view.x, view.y], scores, classes))
        boxes = np.concatenate([f[0] for f in found])
        scores = np.concatenate([f[1] for f in found])
        classes = np.concatenate([f[2] for f in found])
        if len(prepared.views) > 1:
            kept = merge_views(boxes, scores[np.arange(len(classes)), classes], iou)[:max_det]
            boxes, scores, classes = boxes[kept], scores[kept], classes[kept]
        return [
            Face(
                box=[float(v) for v in box],
                emotion=self.names[cls],
                confidence=float(row[cls]),
                scores={name: float(s) for name, s in zip(self.names, row, strict=True)},
            )
            for box, row, cls in zip(boxes, scores, classes, strict=True)
        ]

    def predict(
        self, image: np.ndarray, conf: float = 0.25, iou: float = 0.7, max_det: int = 300
    ) -> list[Face]:
        """Faces in an (H, W, 3) uint8 RGB image, most confident first."""
        prepared = self.prepare(image)
        return self.faces(prepared, self.run(prepared.batch), conf, iou, max_det)


@dataclass(frozen=True)
class ServedModel:
    ref: ModelRef
    detector: Detector


def load_version(settings: Settings, ref: ModelRef, threads: int = 0) -> ServedModel:
    """A registered version, downloaded and opened (the caller decides when to serve it): its
    PyTorch weights on the GPU where torch sees one, else its ONNX export on the CPU with
    `threads` inference threads."""
    # Each worker process downloads its own copy: two writing one folder at once could give one
    # of them a half-written file. The model lives in memory once loaded; the copy goes.
    parent = settings.home / "serving"
    parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"{ref.name}-v{ref.version}-", dir=parent) as dst:
        onnx_path = registry_api.download_onnx(settings, ref, Path(dst))
        weights = (
            registry_api.download_weights(settings, ref, Path(dst)) if cuda_present() else None
        )
        detector = Detector(onnx_path, threads, weights, "cuda" if weights else "cpu")
    logger.info("loaded %s version %s (%s)", ref.name, ref.version, detector.runtime)
    return ServedModel(ref, detector)
