"""ml/embedding.py: the export's `embedding` output (the SPPF block's global average pool), the
detections left as they were, and `image_embeddings` giving what the service computes."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image, ImageDraw

from ml import embedding, yolo
from serving.model import Detector

IMGSZ = 96
CHANNELS = 256  # SPPF of yolov8n: 1024 x width 0.25


def _drawn(width: int, height: int, seed: int) -> np.ndarray:
    """A face-like ellipse on noise."""
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    ImageDraw.Draw(image).ellipse(
        [width * 0.3, height * 0.2, width * 0.7, height * 0.9], fill=(224, 172, 105)
    )
    return np.asarray(image)


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory, untrained_weights) -> dict[str, Path]:
    """An untrained YOLOv8n exported by `yolo.export_onnx` ("embedded"), and the same weights
    exported with the surgery left out ("plain"), plus the .pt file ("weights")."""
    folder = tmp_path_factory.mktemp("embedding")
    images = np.stack([_drawn(IMGSZ, IMGSZ, seed) for seed in range(8)])
    weights = untrained_weights(images, folder / "fixture.pt", folder)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(embedding, "add_embedding_output", lambda path: 0)
        plain = shutil.copyfile(yolo.export_onnx(weights, IMGSZ, folder), folder / "plain.onnx")
    embedded = yolo.export_onnx(weights, IMGSZ, folder)
    return {"weights": weights, "plain": Path(plain), "embedded": embedded}


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_the_export_gives_the_embedding_and_keeps_the_rest(exports: dict[str, Path]) -> None:
    plain, embedded = _session(exports["plain"]), _session(exports["embedded"])
    assert [o.name for o in plain.get_outputs()] == ["output0"]
    outputs = embedded.get_outputs()
    assert [o.name for o in outputs] == ["output0", embedding.EMBEDDING_OUTPUT]
    assert outputs[0].shape == plain.get_outputs()[0].shape
    assert outputs[1].shape == [outputs[0].shape[0], CHANNELS]  # the same dynamic batch axis
    assert isinstance(outputs[0].shape[0], str)
    plain_meta = plain.get_modelmeta().custom_metadata_map
    embedded_meta = embedded.get_modelmeta().custom_metadata_map
    assert {k: v for k, v in embedded_meta.items() if k != "date"} == {
        k: v for k, v in plain_meta.items() if k != "date"
    }
    batch = np.random.default_rng(0).random((3, 3, IMGSZ, IMGSZ), dtype=np.float32)
    (expected,) = plain.run(None, {"images": batch})
    detections, vectors = embedded.run(None, {"images": batch})
    np.testing.assert_array_equal(detections, expected)
    assert vectors.shape == (3, CHANNELS) and vectors.dtype == np.float32
    assert np.isfinite(vectors).all() and not np.allclose(vectors[0], vectors[1])


def test_the_embedding_is_the_mean_of_the_backbone_output(exports: dict[str, Path]) -> None:
    """Layers 0-9 of the PyTorch model (the backbone, SPPF last), averaged over the grid."""
    import torch

    checkpoint = torch.load(exports["weights"], map_location="cpu", weights_only=False)
    model = (checkpoint.get("ema") or checkpoint["model"]).float().eval()
    assert type(model.model[9]).__name__ == "SPPF"
    batch = np.random.default_rng(1).random((2, 3, IMGSZ, IMGSZ), dtype=np.float32)
    with torch.no_grad():
        x = torch.from_numpy(batch)
        for layer in model.model[:10]:
            x = layer(x)
    expected = x.mean(dim=(2, 3)).numpy()
    (got,) = _session(exports["embedded"]).run([embedding.EMBEDDING_OUTPUT], {"images": batch})
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_image_embeddings_are_what_the_service_computes(
    exports: dict[str, Path], tmp_path: Path
) -> None:
    """Files (a crop, an odd shape, a camera frame cut into windows) embedded in batches equal
    the service's embedding of the same decoded images (their whole view)."""
    images = [_drawn(IMGSZ, IMGSZ, 1), _drawn(150, 70, 2), _drawn(640, 480, 3), _drawn(33, 61, 4)]
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(image).save(paths[-1])
    got = embedding.image_embeddings(exports["embedded"], paths, batch=3)
    assert got.shape == (len(images), CHANNELS) and got.dtype == np.float32
    detector = Detector(exports["embedded"])
    prepared = [detector.prepare(image) for image in images]
    assert len(prepared[2].views) > 1
    output = detector.run(np.concatenate([p.batch for p in prepared]))  # as the service batches
    start = 0
    for row, item, image in zip(got, prepared, images, strict=True):
        rows = output[start : start + len(item.views)]
        start += len(item.views)
        served = detector.embedding(rows)
        assert served.shape == (CHANNELS,) and served.dtype == np.float32
        np.testing.assert_allclose(row, served, rtol=1e-5, atol=1e-5)
        assert detector.faces(item, rows) == detector.predict(image)
    empty = embedding.image_embeddings(exports["embedded"], [])
    assert empty.shape == (0, CHANNELS)


def test_a_model_without_the_output_gives_no_embedding(exports: dict[str, Path]) -> None:
    detector = Detector(exports["plain"])
    prepared = detector.prepare(_drawn(IMGSZ, IMGSZ, 5))
    output = detector.run(prepared.batch)
    assert detector.embedding(output) is None and detector.embedding(output[:1]) is None
    with pytest.raises(ValueError, match="no 'embedding' output"):
        embedding.image_embeddings(exports["plain"], [])


def test_adding_it_twice_changes_nothing(exports: dict[str, Path], tmp_path: Path) -> None:
    copy = Path(shutil.copyfile(exports["embedded"], tmp_path / "again.onnx"))
    before = copy.read_bytes()
    assert embedding.add_embedding_output(copy) == CHANNELS
    assert copy.read_bytes() == before


def test_another_architecture_is_a_clear_error(tiny_onnx, tmp_path: Path) -> None:
    path = tiny_onnx(tmp_path / "other.onnx")
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"other\.onnx: no SPPF block"):
        embedding.add_embedding_output(path)
    assert path.read_bytes() == before and list(tmp_path.iterdir()) == [path]


def test_rows_taken_from_an_output_keep_their_embeddings() -> None:
    detections = np.arange(5 * 12 * 7, dtype=np.float32).reshape(5, 12, 7)
    vectors = np.arange(5 * 4, dtype=np.float32).reshape(5, 4)
    output = embedding.Output.of(detections, vectors)
    np.testing.assert_array_equal(output, detections)
    part = output[1:4]
    np.testing.assert_array_equal(part.embedding, vectors[1:4])
    np.testing.assert_array_equal(part[1:].embedding, vectors[2:4])
    np.testing.assert_array_equal(Detector.embedding(part), vectors[1])
    assert output[2].embedding is None and output.T.embedding is None  # not rows: none
    assert type(np.asarray(output)) is np.ndarray
