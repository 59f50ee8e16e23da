"""The face detector stage on real photographs (scikit-image's astronaut and LFW faces, tiled
and scaled into frames with known face boxes; see `photo_scenes` in conftest.py): the anchors
and crops, the choice of detector by measured recall, stray boxes and speed (the figures of
docs/faces.md), and frames through the real service over HTTP."""

from __future__ import annotations

import io
import statistics
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from emoflow import services
from ml.config import EMOTIONS, Settings
from ml.dataset_format import letterbox
from serving import faces
from serving.faces import (
    BACK_CAMERA,
    FACE_SHARE,
    FULL_RANGE,
    PASSES,
    SHORT_RANGE,
    FaceCrops,
    FaceDetector,
    anchor_centres,
    crop_box,
    input_shape,
    model_file,
    onnx_file,
    read_emotions,
    use_face_detector,
)

CANDIDATES = {  # name -> (model, passes)
    "short range, 128 (MediaPipe's own use)": (SHORT_RANGE, (128,)),
    "full range, 192": (FULL_RANGE, (192,)),
    "back camera, 256": (BACK_CAMERA, (256,)),
    "back camera, 448": (BACK_CAMERA, (448,)),
    "short range, 128 + 448 (served)": (SHORT_RANGE, PASSES),
}
SERVED = "short range, 128 + 448 (served)"


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def jpeg(image: np.ndarray) -> bytes:
    """As a camera sends it (and small enough for the test service's upload limit)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


# ---------------------------------------------------------------- pieces


@pytest.mark.parametrize(
    ("model", "shape", "anchors"),
    [(SHORT_RANGE, (128, 128), 896), (SHORT_RANGE, (352, 448), 44 * 56 * 2 + 22 * 28 * 6),
     (FULL_RANGE, (192, 192), 48 * 48), (BACK_CAMERA, (256, 256), 896)],
)  # fmt: skip
def test_one_anchor_per_model_output(
    model, shape: tuple[int, int], anchors: int, face_detector_dir: Path
) -> None:
    """The anchor layout matches the model files: one anchor per output row, for the models'
    own squares and for the short-range model on a 640x480 frame at 448 (352 x 448)."""
    detector = FaceDetector(face_detector_dir, model, (max(shape),))
    logits, regressors = detector.forward(np.zeros((1, 3, *shape), np.float32))
    assert len(anchor_centres(model, *shape)) == anchors == logits.size == regressors.size // 16


@pytest.mark.parametrize(
    ("model", "shape"),
    [(SHORT_RANGE, (128, 128)), (SHORT_RANGE, (352, 448)), (FULL_RANGE, (192, 192)),
     (BACK_CAMERA, (256, 256)), (BACK_CAMERA, (352, 448))],
)  # fmt: skip
def test_the_onnx_model_answers_as_the_tflite_file(
    model, shape: tuple[int, int], face_detector_dir: Path, photo_scenes
) -> None:
    """The converted model gives the numbers the wheel's `.tflite` gives when another reader
    runs it (OpenCV's DNN module) on a real photo, at the models' own squares and at a frame's
    448 pass."""
    import cv2

    reference = cv2.dnn.readNetFromTFLite(str(model_file(model)), engine=cv2.dnn.ENGINE_CLASSIC)
    names = sorted(reference.getUnconnectedOutLayersNames(), key=lambda name: "regress" in name)
    image = photo_scenes.faces[0][1]  # the astronaut
    padded, _ = letterbox(image, shape)
    blob = np.ascontiguousarray(padded.transpose(2, 0, 1)[None], dtype=np.float32) / 127.5 - 1
    reference.setInput(blob)
    expected = reference.forward(names)
    got = FaceDetector(face_detector_dir, model, (max(shape),)).forward(blob)
    assert expected[0].max() > 0  # a face is there: a real comparison, not of zeros
    for ours, theirs in zip(got, expected, strict=True):
        np.testing.assert_allclose(ours.ravel(), theirs.ravel(), atol=2e-3)


def test_the_model_is_converted_once_and_a_failed_conversion_leaves_no_file(
    tmp_path: Path, monkeypatch
) -> None:
    """The ONNX file is made on first use and reused; a `.tflite` that cannot be converted
    gives an error naming it, and no file (the next start tries again)."""
    first = onnx_file(SHORT_RANGE, tmp_path / "good")
    made = first.stat().st_mtime_ns
    assert onnx_file(SHORT_RANGE, tmp_path / "good") == first
    assert first.stat().st_mtime_ns == made

    broken = tmp_path / "face_detection_short_range.tflite"
    broken.write_bytes(b"not a flatbuffer")
    monkeypatch.setattr(faces, "model_file", lambda model: broken)
    with pytest.raises(RuntimeError, match="face_detection_short_range.tflite: the conversion"):
        onnx_file(SHORT_RANGE, tmp_path / "bad")
    assert list((tmp_path / "bad").iterdir()) == []


def test_the_full_range_model_takes_only_its_own_square() -> None:
    assert input_shape(FULL_RANGE, 480, 640, 448) == (192, 192)
    assert input_shape(SHORT_RANGE, 480, 640, 128) == (96, 128)  # the letterbox's content


def test_auto_reads_crops_with_the_model_and_larger_images_with_the_detector() -> None:
    assert not use_face_detector("auto", 96, 96, 96)
    assert not use_face_detector("auto", 150, 192, 96)  # up to twice the model input: a crop
    assert use_face_detector("auto", 480, 640, 96)
    assert use_face_detector("detector", 96, 96, 96)
    assert not use_face_detector("model", 480, 640, 96)


def test_a_face_is_cut_with_the_training_margin() -> None:
    x1, y1, x2, y2 = crop_box(np.array([200.0, 100, 300, 220]), 480, 640)
    assert (x2 - x1) == (y2 - y1) == pytest.approx(120 / FACE_SHARE, abs=2)
    assert (x1 + x2) / 2 == pytest.approx(250, abs=1) and (y1 + y2) / 2 == pytest.approx(160, abs=1)
    assert crop_box(np.array([0.0, 0, 50, 60]), 480, 640)[:2] == (0, 0)  # clipped at the border
    assert crop_box(np.array([600.0, 420, 640, 480]), 480, 640)[2:] == (640, 480)


def test_the_answer_has_the_detectors_box_and_the_models_emotion() -> None:
    """Each face's box is the detector's; emotion and scores are of the emotion model's most
    confident box in its crop (row 0 is the whole image's view, which answers nothing)."""
    nc, anchors = len(EMOTIONS), 6
    output = np.zeros((3, 4 + nc, anchors), np.float32)
    output[:, :4] = np.array([48, 48, 40, 40], np.float32)[:, None]  # xywh, model pixels
    output[0, 4 + 2, 0] = 0.99  # the whole view: ignored
    output[1, 4 + 4, 3] = 0.8  # face 1: happy
    output[1, 4 + 6, 1] = 0.3
    output[2, 4 + 7, 5] = 0.6  # face 2: surprise
    boxes = np.array([[10.0, 20, 110, 140], [300, 40, 380, 130]])
    faces = read_emotions(list(EMOTIONS), FaceCrops(np.zeros((3, 3, 96, 96)), boxes), output)
    assert [f.emotion for f in faces] == ["happy", "surprise"]
    assert [f.box for f in faces] == boxes.tolist()
    assert faces[0].confidence == pytest.approx(0.8)
    assert faces[0].scores["sad"] == 0 and list(faces[0].scores) == list(EMOTIONS)


# ---------------------------------------------------------------- the choice, measured


def measure(detector: FaceDetector, photo_scenes, match_faces) -> dict:
    """Face recall, boxes left over on face frames, boxes per face-free image, and the
    detector's median milliseconds per 640x480 frame (the best of three runs of each)."""
    found = faces = extra = stray = 0
    times = []
    for _, image, truth in [*photo_scenes.faces, *photo_scenes.face_free]:
        runs = []
        for _ in range(3):
            start = time.perf_counter()
            boxes, _ = detector.find(image)
            runs.append(time.perf_counter() - start)
        if image.shape[:2] == (480, 640):
            times.append(min(runs) * 1000)
        if truth:
            hit, left = match_faces(boxes.tolist(), truth)
            found, faces, extra = found + hit, faces + len(truth), extra + left
        else:
            stray += len(boxes)
    return {
        "recall": found / faces, "extra": extra,
        "stray": stray / len(photo_scenes.face_free), "ms": statistics.median(times),
    }  # fmt: skip


def test_the_served_detector_is_the_best_of_the_candidates(
    photo_scenes, match_faces, face_detector_dir: Path
) -> None:
    """The figures docs/faces.md quotes (`pytest -s` prints them): the served detector finds
    more of the faces than any other candidate, and puts at most one box on 25 face-free
    images."""
    figures = {  # one thread, as in a service worker on this machine (one per core)
        name: measure(FaceDetector(face_detector_dir, *c, threads=1), photo_scenes, match_faces)
        for name, c in CANDIDATES.items()
    }
    faces, free = sum(len(t) for *_, t in photo_scenes.faces), len(photo_scenes.face_free)
    print(f"\n{faces} faces in {len(photo_scenes.faces)} frames, {free} face-free images")
    for name, f in figures.items():
        print(f"{name:40} recall {f['recall']:.2f}  extra boxes {f['extra']:3}  "
              f"boxes per face-free image {f['stray']:.2f}  {f['ms']:.1f} ms per 640x480 frame")  # fmt: skip
    served = figures.pop(SERVED)
    assert served["recall"] >= 0.9
    assert served["recall"] > max(f["recall"] for f in figures.values())
    assert served["stray"] <= 1 / free and served["extra"] <= 2


# ---------------------------------------------------------------- over HTTP


def test_every_worker_loads_the_face_detector_at_startup(
    service_url: str, champion_settings: Settings
) -> None:
    """This module's service started on a new emoflow home: each worker converted (or found) the
    detector's ONNX file and loaded it before answering anything, so no frame waits for it."""
    workers, deadline = champion_settings.serve_workers, time.monotonic() + 60
    while time.monotonic() < deadline:  # the service is ready once one worker is: wait for all
        log = services.log_file(champion_settings, "service").read_text()
        if log.count("Completed async startup hook") >= workers:
            break
        time.sleep(0.2)
    assert log.count("face detector loaded at startup") == workers, log[-2000:]
    assert "face detector loaded by a frame" not in log
    assert list((champion_settings.home / "face-detector").glob("*.onnx"))


def test_frames_of_real_photos_over_http(
    service_url: str, photo_scenes, match_faces, face_detector_dir: Path
) -> None:
    """Each frame's faces come back where the detector puts them (its boxes, in the upload's
    pixels), each with an emotion of the model; nearly every face is found."""
    detector = FaceDetector(face_detector_dir)
    found = faces = extra = 0
    for name, image, truth in photo_scenes.faces:
        response = httpx.post(f"{service_url}/predict", files={"image": ("f.png", png(image))})
        assert response.status_code == 200, (name, response.text)
        answer = response.json()
        assert (answer["width"], answer["height"]) == (image.shape[1], image.shape[0])
        boxes = [face["box"] for face in answer["faces"]]
        expected, _ = detector.find(image)
        assert sorted(map(tuple, np.round(boxes, 2))) == sorted(
            map(tuple, np.round(expected.tolist(), 2))
        ), name
        for face in answer["faces"]:
            assert face["emotion"] in EMOTIONS and list(face["scores"]) == list(EMOTIONS)
            assert face["confidence"] == max(face["scores"].values())
        if answer["faces"]:
            assert answer["emotion"] == answer["faces"][0]["emotion"]
        hit, left = match_faces(boxes, truth)
        found, faces, extra = found + hit, faces + len(truth), extra + left
    assert found >= 0.9 * faces, (found, faces)
    assert extra <= 2


def test_no_face_on_face_free_images_over_http(service_url: str, photo_scenes) -> None:
    """No box on LFW's non-face crops; at most one on 15 face-free photographs (docs/faces.md:
    a motorcycle's headlight)."""
    boxes = {}
    for name, image, _ in photo_scenes.face_free:
        response = httpx.post(f"{service_url}/predict", files={"image": ("f.jpg", jpeg(image))})
        assert response.status_code == 200, (name, response.text)
        boxes[name] = len(response.json()["faces"])
    assert sum(n for name, n in boxes.items() if name.startswith("lfw")) == 0, boxes
    assert sum(boxes.values()) <= 1, boxes


def test_a_batch_of_a_crop_and_a_frame(service_url: str, photo_scenes, drawn_image) -> None:
    """A crop is read by the model itself, a frame through the detector, in one request."""
    crop = drawn_image(96, 96, seed=5)
    name, frame, truth = photo_scenes.faces[2]  # four astronauts
    files = [("images", ("crop.png", png(crop))), ("images", ("frame.png", png(frame)))]
    response = httpx.post(f"{service_url}/predict/batch", files=files)
    assert response.status_code == 200, response.text
    crop_answer, frame_answer = response.json()["predictions"]
    alone = httpx.post(f"{service_url}/predict", files={"image": ("c.png", png(crop))}).json()
    assert crop_answer == alone
    assert len(frame_answer["faces"]) == len(truth), name
