"""An image embedding from the model's own backbone, for drift that sees what faces look like.

`add_embedding_output` gives an ultralytics YOLOv8 or YOLO26 ONNX export a second graph output,
`EMBEDDING_OUTPUT` of shape (batch, C): the global average pool of the backbone's SPPF block
(layer 9 of yolov8n.yaml, its last, and of yolo26n.yaml, before C2PSA: its nodes are named
``/model.9/...`` in the export), flattened.
The first output and the metadata stay as they were. The service reads the embedding of each
image's whole view next to its detections; `image_embeddings` computes the same numbers for
image files (the monitor's reference: the champion's training images), through the service's
preprocessing (`ml.dataset_format.letterbox` + `to_tensor` at the input size in the export's
metadata).
"""

from __future__ import annotations

import ast
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

EMBEDDING_OUTPUT = "embedding"
BACKBONE_END = "/model.9/"
"""Name prefix of the backbone's SPPF block (layer 9) in ultralytics' exported graph."""


def _block_output(graph, path: Path) -> str:
    """The tensor the SPPF block hands to the rest of the graph: the output of its last node
    (in graph order, which is topological) that a node outside the block, or the graph output,
    reads."""
    block = [node for node in graph.node if node.name.startswith(BACKBONE_END)]
    if not block or not any(node.op_type == "MaxPool" for node in block):
        raise ValueError(
            f"{path}: no SPPF block named {BACKBONE_END}... in the ONNX graph; the embedding "
            "output needs an ultralytics YOLOv8 or YOLO26 detection export (layer 9 = SPPF)"
        )
    produced = {name for node in block for name in node.output}
    read_outside = {
        name
        for node in graph.node
        if not node.name.startswith(BACKBONE_END)
        for name in node.input
        if name in produced
    } | {output.name for output in graph.output if output.name in produced}
    for node in reversed(block):
        for name in node.output:
            if name in read_outside:
                return name
    return block[-1].output[0]


def _channels(model, tensor: str, path: Path) -> int:
    """The channel count (dim 1) of `tensor`, by ONNX shape inference."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    for info in inferred.graph.value_info:
        if info.name == tensor:
            dims = info.type.tensor_type.shape.dim
            if len(dims) == 4 and dims[1].HasField("dim_value"):
                return int(dims[1].dim_value)
    raise ValueError(f"{path}: the channel count of {tensor!r} is not known to shape inference")


def has_embedding_output(onnx_path: Path) -> bool:
    """Whether the export at `onnx_path` has the output `EMBEDDING_OUTPUT` (exports made
    before emoflow added it do not)."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return any(output.name == EMBEDDING_OUTPUT for output in graph.output)


def add_embedding_output(onnx_path: Path) -> int:
    """Add the output `EMBEDDING_OUTPUT` (batch, C) to the export at `onnx_path`, in place
    (written to a temporary file, then renamed); returns C. A file that has it already is
    left alone."""
    import onnx
    from onnx import helper

    onnx_path = Path(onnx_path)
    model = onnx.load(str(onnx_path))
    graph = model.graph
    for output in graph.output:
        if output.name == EMBEDDING_OUTPUT:
            return int(output.type.tensor_type.shape.dim[1].dim_value)
    source = _block_output(graph, onnx_path)
    channels = _channels(model, source, onnx_path)
    pooled = f"{EMBEDDING_OUTPUT}/GlobalAveragePool_output_0"
    graph.node.extend(
        [
            helper.make_node("GlobalAveragePool", [source], [pooled], name="/embedding/Pool"),
            helper.make_node("Flatten", [pooled], [EMBEDDING_OUTPUT], name="/embedding/Flatten"),
        ]
    )
    batch = graph.output[0].type.tensor_type.shape.dim[0]
    batch_dim = batch.dim_param or (batch.dim_value if batch.HasField("dim_value") else None)
    graph.output.append(
        helper.make_tensor_value_info(
            EMBEDDING_OUTPUT, onnx.TensorProto.FLOAT, [batch_dim, channels]
        )
    )
    onnx.checker.check_model(model)
    fd, tmp = tempfile.mkstemp(prefix=f".{onnx_path.name}.", suffix=".tmp", dir=onnx_path.parent)
    os.close(fd)
    try:
        onnx.save(model, tmp)
        os.chmod(tmp, onnx_path.stat().st_mode)  # mkstemp's file is private to its owner
        os.replace(tmp, onnx_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return channels


class Output(np.ndarray):
    """The model output (n, 4 + nc, N) of a batch, an array like any other, that carries each
    row's backbone embedding (n, C) float32 along, or None (a model without one). A range of
    rows (``output[a:b]``, as batching and the service take each request's and each image's)
    keeps its rows' embeddings; any other array derived from it has none."""

    embedding: np.ndarray | None

    @classmethod
    def of(cls, detections: np.ndarray, embedding: np.ndarray | None) -> Output:
        out = detections.view(cls)
        out.embedding = embedding
        return out

    def __array_finalize__(self, obj) -> None:
        self.embedding = None  # a derived array: rows unknown, unless `__getitem__` says

    def __getitem__(self, key):
        out = super().__getitem__(key)
        if isinstance(key, slice) and isinstance(out, Output) and self.embedding is not None:
            out.embedding = self.embedding[key]
        return out


def first_embedding(rows: np.ndarray) -> np.ndarray | None:
    """The embedding (C,) float32 of the first row of an image's output (its whole view), or
    None when the model gives none."""
    embedding = getattr(rows, "embedding", None)
    if embedding is None or len(embedding) == 0:
        return None
    return np.array(embedding[0], dtype=np.float32)  # a copy: the batch's array can go


def input_size(session) -> tuple[int, int]:
    """The model input (h, w) from the metadata ultralytics writes on export (as the service
    reads it)."""
    meta = session.get_modelmeta().custom_metadata_map
    if "imgsz" not in meta:
        raise ValueError("not an ultralytics ONNX export (metadata 'imgsz' missing)")
    imgsz = ast.literal_eval(meta["imgsz"])
    if isinstance(imgsz, int):
        imgsz = [imgsz, imgsz]
    return int(imgsz[0]), int(imgsz[1])


def read_rgb(path: Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB, upright per its EXIF orientation (as the service
    decodes uploads)."""
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        image.load()
        upright = ImageOps.exif_transpose(image)
        if upright.mode.startswith("I"):  # 16-bit grey: Pillow's convert would clip to 255
            upright = Image.fromarray((np.asarray(upright) >> 8).clip(0, 255).astype(np.uint8))
        return np.asarray(upright.convert("RGB"))


def image_embeddings(
    onnx_path: Path, image_paths: Iterable[Path], batch: int = 32, threads: int = 0
) -> np.ndarray:
    """The embedding (n, C) float32 of each image file, each image letterboxed whole, in
    batches of `batch`, by ONNX Runtime on the CPU with `threads` threads (0: one per core)."""
    import onnxruntime as ort

    from ml.dataset_format import letterbox, to_tensor

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    if EMBEDDING_OUTPUT not in names:
        raise ValueError(f"{onnx_path}: the model has no {EMBEDDING_OUTPUT!r} output")
    shape = input_size(session)
    input_name = session.get_inputs()[0].name
    paths, step = list(image_paths), max(batch, 1)
    parts = []
    for start in range(0, len(paths), step):
        rows = [to_tensor(letterbox(read_rgb(p), shape)[0]) for p in paths[start : start + step]]
        parts.append(session.run([EMBEDDING_OUTPUT], {input_name: np.concatenate(rows)})[0])
    if not parts:
        channels = session.get_outputs()[names.index(EMBEDDING_OUTPUT)].shape[1]
        return np.zeros((0, int(channels)), dtype=np.float32)
    return np.concatenate(parts).astype(np.float32, copy=False)
