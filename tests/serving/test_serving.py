"""The serving room: pre/post-processing, parity with ultralytics, and the real BentoML service."""

from __future__ import annotations

import io
import json
import multiprocessing
import re
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from emoflow import services
from emoflow.steps import request_reload
from ml import registry, yolo
from ml.config import EMOTIONS, PROJECT_ROOT, Settings
from ml.dataset_format import Letterbox, letterbox
from ml.records import ModelRef
from serving.model import Detector, decode, load_version, nms, unletterbox
from serving.requests import ApiError, decode_image

HAPPY = EMOTIONS.index("happy")
MAX_PIXELS = Settings.model_fields["max_pixels"].default


@pytest.fixture(scope="session")
def png(drawn_image, png_bytes) -> bytes:
    """The default drawn image as PNG (a face the fixture model finds)."""
    return png_bytes(drawn_image())


@pytest.fixture(scope="session")
def tiny_png(drawn_image, png_bytes) -> bytes:
    return png_bytes(drawn_image(16, 16))


# ---------------------------------------------------------------- pre/post-processing (no model)


def test_letterbox_maps_content_and_boxes_back() -> None:
    image = np.zeros((100, 200, 3), np.uint8)
    image[10:60, 20:120] = 255  # a white box x1=20 y1=10 x2=120 y2=60
    padded, fit = letterbox(image, (96, 96))

    assert padded.shape == (96, 96, 3)
    assert fit == Letterbox(gain_x=0.48, gain_y=0.48, pad_x=0, pad_y=24)
    assert (padded[:24] == 114).all() and (padded[-24:] == 114).all()  # centred padding
    ys, xs = np.nonzero(padded[..., 0] > 200)
    found = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32)
    back = unletterbox(found, fit, width=200, height=100)
    np.testing.assert_allclose(back[0], [20, 10, 120, 60], atol=1 / fit.gain_x)

    box = np.array([[20.0, 10.0, 120.0, 60.0]])
    forward = box * 0.48 + [0, 24, 0, 24]
    np.testing.assert_allclose(unletterbox(forward, fit, 200, 100), box, atol=1e-4)


def test_unletterbox_clips_to_the_image() -> None:
    fit = Letterbox(gain_x=0.5, gain_y=0.5, pad_x=0, pad_y=10)
    out = unletterbox(np.array([[-5.0, 0.0, 200.0, 80.0]]), fit, width=150, height=100)
    np.testing.assert_allclose(out[0], [0, 0, 150, 100])


def test_nms_keeps_the_best_of_overlapping_boxes() -> None:
    boxes = np.array(
        [[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 14]], np.float32
    )  # IoU(0,1) = 0.818; IoU(0,3) = 0.714; box 2 overlaps nothing
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    assert nms(boxes, scores, iou=0.7).tolist() == [0, 2]
    assert nms(boxes, scores, iou=0.75).tolist() == [0, 2, 3]
    assert nms(boxes, scores[::-1].copy(), iou=0.7).tolist() == [3, 2, 1]  # IoU(3,1) = 0.6
    half = np.array([[0, 0, 10, 10], [0, 0, 10, 5]], np.float32)  # IoU exactly 0.5
    assert nms(half, np.array([0.9, 0.8], np.float32), iou=0.5).tolist() == [0, 1]


def test_nms_agrees_with_torchvision() -> None:
    import torch
    import torchvision

    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 80, (300, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 30, (300, 2))], axis=1).astype(np.float32)
    scores = rng.uniform(0, 1, 300).astype(np.float32)
    expected = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), 0.5)
    assert nms(boxes, scores, iou=0.5).tolist() == expected.tolist()


def test_decode_hand_made_output() -> None:
    nc = len(EMOTIONS)
    rows = np.zeros((5, 4 + nc), np.float32)
    rows[:, :4] = [
        [50, 50, 20, 20],
        [51, 50, 20, 20],
        [50, 50, 20, 20],
        [10, 10, 4, 4],
        [80, 20, 10, 6],
    ]
    rows[0, 4 + HAPPY] = 0.9  # kept
    rows[1, 4 + HAPPY] = 0.8  # same place and class as 0: suppressed
    rows[2, 4 + 6] = 0.6  # same place, other class (sad): kept
    rows[3, 4:] = 0.1  # below the threshold
    rows[4, 4 + 0], rows[4, 4 + 7] = 0.3, 0.5  # surprise wins over anger
    boxes, scores, classes = decode(rows.T, conf=0.25, iou=0.7, max_det=300)

    assert classes.tolist() == [HAPPY, 6, 7]
    np.testing.assert_allclose(boxes, [[40, 40, 60, 60], [40, 40, 60, 60], [75, 17, 85, 23]])
    np.testing.assert_allclose(scores, rows[[0, 2, 4], 4:])
    assert decode(rows.T, conf=0.25, iou=0.7, max_det=2)[2].tolist() == [HAPPY, 6]
    assert decode(rows.T, conf=0.95, iou=0.7, max_det=300)[0].shape == (0, 4)


# ---------------------------------------------------------------- image decoding (no model)


def test_decode_image_applies_exif_orientation() -> None:
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.new("RGB", (40, 20), (10, 200, 30)).save(buf, format="JPEG", exif=exif)
    image = decode_image(buf.getvalue(), MAX_PIXELS)
    assert image.shape == (40, 20, 3) and image.dtype == np.uint8


def test_decode_image_converts_to_rgb() -> None:
    buf = io.BytesIO()
    Image.new("L", (8, 6), 77).save(buf, format="PNG")
    image = decode_image(buf.getvalue(), MAX_PIXELS)
    assert image.shape == (6, 8, 3) and (image == 77).all()


@pytest.mark.parametrize(
    ("data", "status", "error"),
    [
        pytest.param(lambda png: b"hello, I am text", 400, "not an image", id="text"),
        pytest.param(lambda png: png[:300], 400, "unreadable image", id="cut"),
        # a format the service does not take
        pytest.param(lambda png: b"GIF89a" + bytes(40), 400, "not an image", id="gif"),
    ],
)
def test_decode_image_rejects_bad_bytes(png: bytes, data, status: int, error: str) -> None:
    with pytest.raises(ApiError) as caught:
        decode_image(data(png), MAX_PIXELS)
    assert (caught.value.status, caught.value.error) == (status, error)


def test_decode_image_bounds_pixels(png_bytes) -> None:
    with pytest.raises(ApiError) as caught:
        decode_image(png_bytes(np.zeros((20, 20, 3), np.uint8)), max_pixels=399)
    assert caught.value.status == 413


# ---------------------------------------------------------------- a real model


@pytest.mark.parametrize(
    ("width", "height", "conf"), [(160, 120, 0.25), (90, 130, 0.25), (160, 120, 0.9)]
)
def test_detector_matches_ultralytics(
    weights: Path, onnx_path: Path, yolo_dir: Path, imgsz: int, drawn_image, width: int,
    height: int, conf: float,
) -> None:  # fmt: skip
    detector = Detector(onnx_path)
    assert detector.names == list(EMOTIONS) and detector.imgsz == (imgsz, imgsz)
    image = drawn_image(width, height, seed=100)

    ours = detector.predict(image, conf=conf, iou=0.7)
    model = yolo.load(yolo_dir).YOLO(str(weights))
    (result,) = model.predict(
        image[..., ::-1], imgsz=imgsz, conf=conf, iou=0.7, rect=False, device="cpu", verbose=False
    )  # ultralytics takes numpy images as BGR; rect=False: the full square, as the service does
    theirs = result.boxes

    assert len(ours) == len(theirs) > 0
    np.testing.assert_allclose([face.box for face in ours], theirs.xyxy.numpy(), atol=0.05)
    assert [EMOTIONS.index(face.emotion) for face in ours] == theirs.cls.int().tolist()
    np.testing.assert_allclose([face.confidence for face in ours], theirs.conf.numpy(), atol=1e-4)
    for face in ours:
        assert list(face.scores) == list(EMOTIONS)
        assert face.scores[face.emotion] == face.confidence == max(face.scores.values())


def test_torch_runtime_matches_onnx_runtime(weights: Path, onnx_path: Path, drawn_image) -> None:
    """The runtime the service uses on a GPU (torch on the .pt weights) gives the ONNX export's
    output. Run here on the CPU in full precision; on CUDA the same code runs in half."""
    onnx = Detector(onnx_path)
    torch_cpu = Detector(onnx_path, weights=weights, device="cpu")
    assert torch_cpu.runtime == "torch cpu" and onnx.runtime.startswith("onnxruntime")
    image = drawn_image(640, 480, seed=7)  # tiled: many views in one batch
    prepared = onnx.prepare(image)
    assert len(prepared.views) > 1
    expected, got = onnx.run(prepared.batch), torch_cpu.run(prepared.batch)
    assert got.shape == expected.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-2)
    ours, theirs = torch_cpu.predict(image), onnx.predict(image)
    assert len(ours) == len(theirs) > 0
    assert [face.emotion for face in ours] == [face.emotion for face in theirs]
    np.testing.assert_allclose([f.box for f in ours], [f.box for f in theirs], atol=0.05)


# ---------------------------------------------------------------- the service over HTTP


_together: threading.Barrier | None = None  # in each worker process of the test below


def _meet_at(barrier: threading.Barrier) -> None:
    global _together
    _together = barrier


def _load_together(settings: Settings, ref: ModelRef, times: int) -> list[list[str]]:
    """In a worker process: wait for the others, load `ref` `times` times, say its classes."""
    _together.wait(timeout=120)
    return [load_version(settings, ref, 1).detector.names for _ in range(times)]


def test_workers_load_a_version_at_once(
    champion_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a hot swap every worker process loads the new version at the same moment; each must
    get a whole model, not a file another one is still writing. (Five loads each, so that some
    overlap whatever the timing.)"""
    # The spawned processes import this module by its name, tests.serving.test_serving: they
    # take the parent's sys.path, which in pytest's importlib mode lacks the project root.
    monkeypatch.syspath_prepend(str(PROJECT_ROOT))
    ref = registry.version_by_alias(champion_settings, registry.CHAMPION)
    spawn = multiprocessing.get_context("spawn")
    barrier = spawn.Barrier(4)
    with ProcessPoolExecutor(
        4, mp_context=spawn, initializer=_meet_at, initargs=(barrier,)
    ) as pool:
        loads = [pool.submit(_load_together, champion_settings, ref, 5) for _ in range(4)]
        names = [names for load in loads for names in load.result()]
    assert names == [list(EMOTIONS)] * 20


def test_health_and_ready(service_url: str, champion_settings: Settings, champion_version) -> None:
    version = champion_version(champion_settings)
    health = httpx.get(f"{service_url}/health").json()
    assert health == {"status": "ok", "model_version": version, "worker": health["worker"]}
    assert health["worker"] in range(1, champion_settings.serve_workers + 1)
    ready = httpx.get(f"{service_url}/ready")
    assert ready.status_code == 200
    name = champion_settings.model_name
    assert ready.json() == {"model": name, "version": version, "model_version": version}


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/health", 200),
        ("GET", "/ready", 200),
        ("GET", "/reports/nothing.html", 404),
        ("GET", "/predict", 405),
        ("POST", "/predict", 415),
        ("POST", "/reload", 401),
    ],
)
def test_every_answer_names_the_model_version(
    service_url: str, champion_settings: Settings, champion_version, method: str, path: str,
    status: int,
) -> None:  # fmt: skip
    response = httpx.request(method, f"{service_url}{path}")
    version = champion_version(champion_settings)
    assert response.status_code == status, response.text
    assert response.headers["X-Model-Version"] == str(version)
    assert response.json()["model_version"] == version
    if status >= 400:
        assert response.json()["error"] and response.json()["detail"]


ODD_PATHS = [
    ("/reports/%00", 400),
    ("/reports/index.html%00.png", 400),
    ("/reports/../../etc/passwd", 400),
    ("/reports/..%2f..%2fetc%2fpasswd", 400),
    ("/reports/%2e%2e/%2e%2e/etc/passwd", 400),
    ("/reports//etc/passwd", 400),
    ("/reports/%2Fetc%2Fpasswd", 400),
    ("/reports/..%5c..%5cetc%5cpasswd", 400),
    ("/reports/" + "x" * 5000 + ".html", 404),  # longer than a file name may be
    ("/reports/nothing.html", 404),
    ("/reports/outside.html", 404),  # a link out of the reports folder
    ("/data-docs/%00", 400),
    ("/data-docs/../../../etc/passwd", 400),
]


def test_odd_report_paths_get_a_4xx_json_that_names_no_local_path(
    service_url: str, champion_settings: Settings, tmp_path: Path
) -> None:
    """Sent as written (no client tidies the path): every odd path is refused in JSON, and no
    answer names a folder of the service's machine."""
    import http.client
    from urllib.parse import urlsplit

    reports = champion_settings.reports_dir
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "present.html").write_text("<p>a report</p>")
    secret = tmp_path / "secret.html"
    secret.write_text("not for the web")
    (reports / "outside.html").unlink(missing_ok=True)
    (reports / "outside.html").symlink_to(secret)
    address = urlsplit(service_url)
    for path, status in [*ODD_PATHS, ("/reports/present.html", 200)]:
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read().decode()
        connection.close()
        assert response.status == status, (path, body)
        if status == 200:
            assert body == "<p>a report</p>"
            continue
        answer = json.loads(body)
        assert answer["error"] and answer["detail"], path
        for local in (str(champion_settings.home), str(reports), str(tmp_path), "/tmp/"):
            assert local not in body, (path, body)


def test_a_request_past_its_pixel_budget_is_refused(
    service_url: str, champion_settings: Settings, png_bytes
) -> None:
    """Each image under the per-image cap, together past the request's budget: a 413 that names
    the limit and the image that passed it."""
    limit = champion_settings.serve_max_request_pixels
    side = int((limit / 2.5) ** 0.5)  # two fit, three do not
    blank = png_bytes(np.zeros((side, side, 3), np.uint8))  # a few kB: under the upload limit
    assert httpx.post(f"{service_url}/predict/batch", **_batch(blank, blank)).status_code == 200
    response = httpx.post(f"{service_url}/predict/batch", **_batch(blank, blank, blank))
    assert response.status_code == 413, response.text
    answer = response.json()
    assert answer["error"] == "request too large" and answer["limit"] == limit
    assert answer["index"] == 2
    assert f"{limit} decoded pixels" in answer["detail"]
    assert "EMOFLOW_SERVE_MAX_REQUEST_PIXELS" in answer["detail"]


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """The Prometheus page at `url` as {(sample name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    response = httpx.get(f"{url}/metrics")
    assert response.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_metrics_count_requests_by_route_and_status(
    service_url: str, champion_settings: Settings, champion_version, png: bytes
) -> None:
    predict_ok = (("method", "POST"), ("route", "/predict"), ("status", "200"))
    predict_bad = (("method", "POST"), ("route", "/predict"), ("status", "400"))
    before = scrape(service_url)
    for _ in range(3):
        httpx.post(f"{service_url}/predict", **_upload(png, "image/png"))
    httpx.post(f"{service_url}/predict", **_upload(b"text", "text/plain"))
    after = scrape(service_url)

    def grew(name: str, labels: tuple) -> float:
        return after[(name, labels)] - before.get((name, labels), 0.0)

    assert grew("emoflow_requests_total", predict_ok) == 3
    assert grew("emoflow_requests_total", predict_bad) == 1
    assert grew("emoflow_request_duration_seconds_count", (("route", "/predict"),)) == 4
    assert grew("emoflow_request_duration_seconds_sum", (("route", "/predict"),)) > 0
    assert after[("emoflow_model_version", ())] == champion_version(champion_settings)
    assert any(name.startswith("bentoml_") for name, _ in after)  # BentoML's own still there


def test_predict_png(
    service_url: str, champion_settings: Settings, onnx_path: Path, drawn_image, png_bytes
) -> None:
    image = drawn_image()
    response = httpx.post(
        f"{service_url}/predict", files={"image": ("face.png", png_bytes(image), "image/png")}
    )

    assert response.status_code == 200, response.text
    body = response.json()
    version = registry.version_by_alias(champion_settings, registry.CHAMPION).version
    assert body["model_version"] == version
    assert response.headers["X-Model-Version"] == str(version)
    assert (body["width"], body["height"]) == (160, 120)
    expected = Detector(onnx_path).predict(image)
    assert len(body["faces"]) == len(expected) > 0
    assert body["emotion"] == expected[0].emotion
    assert body["confidence"] == pytest.approx(expected[0].confidence, abs=1e-5)
    for face, want in zip(body["faces"], expected, strict=True):
        assert set(face) == {"box", "emotion", "confidence", "scores"}
        assert face["box"] == pytest.approx(want.box, abs=1e-3)
        assert 0 <= face["box"][0] <= face["box"][2] <= 160
        assert 0 <= face["box"][1] <= face["box"][3] <= 120
        assert list(face["scores"]) == list(EMOTIONS)


def test_predict_jpeg_labelled_as_png(service_url: str, drawn_image) -> None:
    buf = io.BytesIO()
    Image.fromarray(drawn_image()).save(buf, format="JPEG")
    response = httpx.post(
        f"{service_url}/predict", files={"image": ("face.png", buf.getvalue(), "image/jpg")}
    )
    assert response.status_code == 200, response.text


def png_header(width: int, height: int) -> bytes:
    """A PNG of a few dozen bytes that declares `width` x `height` pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"")
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def _upload(data: bytes, content_type: str, field: str = "image") -> dict:
    return {"files": {field: ("upload", data, content_type)}}


# Each request built from the default PNG and the service's upload limit, which are fixtures.
BAD_REQUESTS = [
    pytest.param(lambda png, limit: _upload(b"some text", "text/plain"), 400, "not an image",
                 id="text"),
    pytest.param(lambda png, limit: _upload(png[:200], "image/png"), 400, "unreadable image",
                 id="cut"),
    pytest.param(lambda png, limit: _upload(b"", "image/png"), 400, "empty file", id="empty-file"),
    pytest.param(lambda png, limit: _upload(png, "image/png", field="photo"), 400,
                 "missing field", id="wrong-field"),
    pytest.param(
        lambda png, limit: {
            "data": {"image": "http://169.254.169.254/latest/"}, "files": {"x": ("x", b"x")}
        },
        400, "not a file", id="text-value",
    ),
    pytest.param(lambda png, limit: {"content": b""}, 415, "unsupported media type", id="no-body"),
    pytest.param(lambda png, limit: {"json": {"image": "aGVsbG8="}}, 415,
                 "unsupported media type", id="json"),
    pytest.param(
        lambda png, limit: {"content": b"--x", "headers": {"content-type": "multipart/form-data"}},
        400, "bad multipart body", id="no-boundary",
    ),
    pytest.param(
        lambda png, limit: _upload(bytes(limit + 1), "image/png"),
        413, "upload too large", id="too-large",
    ),
    pytest.param(
        lambda png, limit: {
            "content": b"", "headers": {"content-type": "multipart/form-data; boundary=x"}
        },
        400, "missing field", id="empty-multipart",
    ),
    pytest.param(lambda png, limit: _upload(b"GIF89a" + bytes(40), "image/gif"), 400,
                 "not an image", id="gif"),
    pytest.param(
        lambda png, limit: _upload(png_header(6000, 6000), "image/png"), 413, "image too large",
        id="over-max-pixels",
    ),
    pytest.param(
        lambda png, limit: _upload(png_header(100_000, 100_000), "image/png"), 413,
        "image too large", id="bomb",
    ),
    pytest.param(
        lambda png, limit: {
            "files": [("image", ("a.png", png, "image/png")), ("image", ("b.png", png, "image/png"))]
        },
        400, "bad multipart body", id="two-files",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("request_args", "status", "error"), BAD_REQUESTS)
def test_predict_rejects_bad_input(
    service_url: str, champion_settings: Settings, png: bytes, request_args, status: int,
    error: str,
) -> None:  # fmt: skip
    request = request_args(png, champion_settings.max_upload_bytes)
    response = httpx.post(f"{service_url}/predict", **request)
    assert response.status_code == status, response.text
    assert response.json()["error"] == error
    assert response.json()["detail"]
    assert "Traceback" not in response.text


def test_predict_bounds_a_chunked_upload(service_url: str, champion_settings: Settings) -> None:
    limit = champion_settings.max_upload_bytes
    boundary = "emoflow-test-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()

    def body() -> Iterator[bytes]:  # no Content-Length: sent chunked
        yield head
        for _ in range(limit // 65536 + 1):
            yield bytes(65536)
        yield f"\r\n--{boundary}--\r\n".encode()

    response = httpx.post(
        f"{service_url}/predict",
        content=body(),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 413
    assert response.json()["error"] == "upload too large"


IMAGE_CASES = ["grey", "rgba", "png-16-bit", "palette", "exif-rotated-jpeg"]


def image_case(case: str, drawn_image, encoded, upright_exif_jpeg) -> tuple[bytes, np.ndarray]:
    """(upload bytes, the RGB pixels the service should see) for a mode or format it takes."""
    rgb = drawn_image()
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    grey16 = grey.astype(np.uint16) * 256 + 100  # 16-bit: the low byte must not matter
    palette = Image.fromarray(rgb).quantize(64)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])
    cases = {
        "grey": lambda: (encoded(Image.fromarray(grey), "PNG"), np.dstack([grey] * 3)),
        "rgba": lambda: (encoded(Image.fromarray(rgba), "PNG"), rgb),
        "png-16-bit": lambda: (
            encoded(Image.fromarray(grey16), "PNG"),
            np.dstack([grey16 >> 8] * 3),
        ),
        "palette": lambda: (encoded(palette, "PNG"), np.asarray(palette.convert("RGB"))),
        "exif-rotated-jpeg": upright_exif_jpeg,
    }
    return cases[case]()


@pytest.mark.parametrize("case", IMAGE_CASES)
def test_predict_takes_every_mode(
    service_url: str, onnx_path: Path, drawn_image, encoded, upright_exif_jpeg, case: str
) -> None:
    data, pixels = image_case(case, drawn_image, encoded, upright_exif_jpeg)
    response = httpx.post(f"{service_url}/predict", **_upload(data, "image/png"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["width"], body["height"]) == (pixels.shape[1], pixels.shape[0])
    expected = Detector(onnx_path).predict(pixels.astype(np.uint8))
    assert [face["emotion"] for face in body["faces"]] == [face.emotion for face in expected]
    for face, want in zip(body["faces"], expected, strict=True):
        assert face["box"] == pytest.approx(want.box, abs=1e-3)


def test_service_answers_after_bad_input(service_url: str, png: bytes) -> None:
    """Runs after the bad-input tests above: the service is still up and serving."""
    assert httpx.get(f"{service_url}/health").status_code == 200
    assert httpx.post(f"{service_url}/predict", **_upload(png, "image/png")).status_code == 200


def _batch(*files: bytes) -> dict:
    return {"files": [("images", (f"{i}.png", data, "image/png")) for i, data in enumerate(files)]}


def test_predict_batch_answers_in_order(
    service_url: str, champion_settings: Settings, champion_version, drawn_image, png_bytes
) -> None:
    images = [drawn_image(160, 120, seed=1), drawn_image(90, 130, seed=2), drawn_image(64, 64)]
    response = httpx.post(f"{service_url}/predict/batch", **_batch(*map(png_bytes, images)))

    assert response.status_code == 200, response.text
    body = response.json()
    version = champion_version(champion_settings)
    assert body["model_version"] == version == int(response.headers["X-Model-Version"])
    answers = body["predictions"]
    assert [(a["width"], a["height"]) for a in answers] == [(160, 120), (90, 130), (64, 64)]
    single = httpx.post(f"{service_url}/predict", **_upload(png_bytes(images[1]), "image/png"))
    assert answers[1] == single.json()


def test_the_prediction_log_gets_each_image_embedding(
    service_url: str, champion_settings: Settings, onnx_path: Path, drawn_image, png_bytes,
    tmp_path: Path,
) -> None:  # fmt: skip
    """Every logged answer carries the champion's embedding of its image (the whole view), the
    one `ml.embedding.image_embeddings` gives for the same file; the answer has none."""
    from ml.embedding import EMBEDDING_OUTPUT, image_embeddings
    from monitoring.prediction_table import read_predictions

    sizes = [(131, 77), (71, 133), (401, 299)]  # sizes no other test sends; the last is tiled
    images = [drawn_image(w, h, seed=40 + i) for i, (w, h) in enumerate(sizes)]
    single = httpx.post(f"{service_url}/predict", **_upload(png_bytes(images[0]), "image/png"))
    batch = httpx.post(f"{service_url}/predict/batch", **_batch(*map(png_bytes, images[1:])))
    assert single.status_code == batch.status_code == 200, (single.text, batch.text)
    assert EMBEDDING_OUTPUT not in single.json()
    assert all(EMBEDDING_OUTPUT not in answer for answer in batch.json()["predictions"])
    deadline, rows = time.monotonic() + 30, None
    while time.monotonic() < deadline:  # the log writes off the request path
        frame = read_predictions(champion_settings.prediction_log)
        rows = frame[[(w, h) in sizes for w, h in zip(frame.width, frame.height, strict=True)]]
        if len(rows) >= len(sizes):
            break
        time.sleep(0.3)
    assert rows is not None and len(rows) == len(sizes)
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(image).save(paths[-1])
    assert len(Detector(onnx_path).prepare(images[2]).views) > 1
    expected = dict(zip(sizes, image_embeddings(onnx_path, paths), strict=True))
    for width, height, vector in zip(rows.width, rows.height, rows.embedding, strict=True):
        assert vector.dtype == np.float32 and vector.shape == (256,)  # yolov8n's SPPF channels
        np.testing.assert_allclose(vector, expected[(width, height)], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("files", "status", "error", "index"),
    [
        pytest.param(lambda png, tiny: (png, b"not an image", png), 400, "not an image", 1,
                     id="text"),
        pytest.param(lambda png, tiny: (png, png, png[:300]), 400, "unreadable image", 2,
                     id="cut"),
        pytest.param(lambda png, tiny: (png_header(10**5, 10**5),), 413, "image too large", 0,
                     id="bomb"),
        pytest.param(lambda png, tiny: (png, b""), 400, "empty file", 1, id="empty"),
        pytest.param(lambda png, tiny: (tiny,) * 33, 400, "bad multipart body", None,
                     id="too-many"),
    ],
)  # fmt: skip
def test_predict_batch_names_the_bad_image(
    service_url: str, png: bytes, tiny_png: bytes, files, status: int, error: str,
    index: int | None,
) -> None:  # fmt: skip
    response = httpx.post(f"{service_url}/predict/batch", **_batch(*files(png, tiny_png)))
    assert response.status_code == status, response.text
    assert response.json()["error"] == error
    assert response.json().get("index") == index


def test_predict_batch_wants_the_images_field(service_url: str, png: bytes) -> None:
    response = httpx.post(f"{service_url}/predict/batch", **_upload(png, "image/png"))
    assert response.status_code == 400
    assert "'images'" in response.json()["detail"]


def test_fuzz_the_openapi_schema(service_url: str) -> None:
    """Schemathesis: examples generated from /docs.json for each of our routes; none gives 5xx."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings

    schema = schemathesis.openapi.from_url(f"{service_url}/docs.json")
    operations = [
        result.ok()
        for result in schema.include(
            path_regex="^/(predict|reload|health|ready|reports)"
        ).get_all_operations()
    ]
    assert {op.path for op in operations} >= {"/predict", "/predict/batch", "/reload"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=20, deadline=None, database=None, phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )  # fmt: skip
        def no_server_error(case) -> None:
            response = case.call(base_url=service_url, timeout=30)
            assert response.status_code < 500, f"{case.method} {case.path}: {response.text}"

        no_server_error()


def access_log_paths(settings: Settings, wait_for: str) -> list[str]:
    """The paths in the service's access-log lines, once a line for `wait_for` is written."""
    pattern = re.compile(r"\(scheme=\w+,method=\w+,path=([^,]*),")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        paths = pattern.findall(services.log_file(settings, "service").read_text())
        if wait_for in paths:
            return paths
        time.sleep(0.2)
    raise AssertionError(f"no access-log line for {wait_for} within 30 s")


def test_access_log_leaves_out_predict(
    service_url: str, champion_settings: Settings, png: bytes
) -> None:
    """By default (serve_request_log off) BentoML logs no access line for the predict routes;
    test_service_without_champion checks that it does when asked."""
    assert httpx.post(f"{service_url}/predict", **_upload(png, "image/png")).status_code == 200
    assert httpx.get(f"{service_url}/docs").status_code == 200
    paths = access_log_paths(champion_settings, "/docs")
    assert not {"/predict", "/predict/batch"} & set(paths), paths


@pytest.fixture()
def no_champion(
    mlflow_settings: Settings, tmp_path: Path, free_port, service_settings
) -> Iterator[Settings]:
    """The service over a registry in which its model name has no version, hence no champion;
    with BentoML's access log and tracing of every request (serve_request_log)."""
    settings = service_settings(
        mlflow_settings,
        tmp_path,
        "emotion-detector-never-registered",
        free_port(),
        serve_request_log=True,
    )
    server = services.bento_service(settings)
    health = services.Server(
        server.name, server.command, f"{settings.service_url}/health", server.env
    )
    services.start(health, settings, timeout=180)  # /ready stays 503, so wait for /health
    yield settings
    services.stop(settings, "service")


def test_service_without_champion(no_champion: Settings, drawn_image, png_bytes) -> None:
    no_champion_url = no_champion.service_url
    assert httpx.get(f"{no_champion_url}/health").status_code == 200
    ready = httpx.get(f"{no_champion_url}/ready")
    assert ready.status_code == 503
    assert ready.json()["error"] == "no model"
    response = httpx.post(
        f"{no_champion_url}/predict",
        files={"image": ("face.png", png_bytes(drawn_image()), "image/png")},
    )
    assert response.status_code == 503
    assert response.json()["error"] == "no model"
    assert "registered as champion" in response.json()["detail"]
    assert response.headers["X-Model-Version"] == "None"
    assert response.json()["model_version"] is None
    reload = httpx.post(f"{no_champion_url}/reload", headers={"Authorization": "Bearer x"})
    assert reload.status_code == 403
    assert reload.json()["error"] == "reload disabled"
    assert "/predict" in access_log_paths(no_champion, "/predict")


# ---------------------------------------------------------------- hot reload (moves the champion)


def test_reload_swaps_the_model_under_load(
    service_url: str, champion_settings: Settings, weights: Path, onnx_path: Path, png: bytes,
    champion_version, register_fixture_model,
) -> None:  # fmt: skip
    """Clients send /predict in a loop, each request on a new connection so that both workers
    answer, while a new version becomes champion and /reload runs: no request fails, and once
    any answer names the new version, every request sent after it gets the new version."""
    old = champion_version(champion_settings)
    new = register_fixture_model(champion_settings, weights, onnx_path).version
    answers: list[tuple[float, float, int, int | None, str]] = []  # sent, answered, status, ...
    done = threading.Event()

    def client() -> None:
        for _ in range(2000):  # bounded; stopped by `done` long before
            sent = time.monotonic()
            response = httpx.post(f"{service_url}/predict", timeout=30, **_upload(png, "image/png"))
            version = response.json().get("model_version")
            header = response.headers["X-Model-Version"]
            answers.append((sent, time.monotonic(), response.status_code, version, header))
            if done.is_set():
                return

    def wait_for(count: int) -> None:
        deadline = time.monotonic() + 60
        while len(answers) < count and time.monotonic() < deadline:
            time.sleep(0.05)

    clients = [threading.Thread(target=client) for _ in range(4)]
    for thread in clients:
        thread.start()
    try:
        wait_for(20)
        wrong = httpx.post(f"{service_url}/reload", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"] == "unauthorized"
        registry.promote(champion_settings, new, reason="test hot reload")
        reload = request_reload(champion_settings)  # what the DAG's promote task sends
        wait_for(len(answers) + 40)
    finally:
        done.set()
        for thread in clients:
            thread.join()

    assert reload.startswith("reload answered 200"), reload
    result = json.loads(reload.split(": ", 1)[1])
    assert result["model_version"] == new
    assert result["workers"] == champion_settings.serve_workers
    print(f"{reload}; {len(answers)} requests during the test")
    assert [status for _, _, status, _, _ in answers] == [200] * len(answers)
    assert all(str(version) == header for _, _, _, version, header in answers)
    first_new = min(answered for _, answered, _, version, _ in answers if version == new)
    assert {version for sent, _, _, version, _ in answers if sent > first_new} == {new}
    assert any(version == old for _, _, _, version, _ in answers)
    # new connections reach every worker (so the answers above came from all of them)
    workers = {httpx.get(f"{service_url}/health").json()["worker"] for _ in range(40)}
    assert workers == set(range(1, champion_settings.serve_workers + 1))


def test_poll_follows_the_champion(service_url: str, champion_settings: Settings) -> None:
    """Without /reload: a rollback of the alias is served within a few poll periods."""
    rolled = registry.rollback(champion_settings).champion
    deadline = time.monotonic() + 10 * champion_settings.serve_poll_seconds
    while time.monotonic() < deadline:
        if httpx.get(f"{service_url}/health").json()["model_version"] == rolled:
            break
        time.sleep(0.5)
    assert httpx.get(f"{service_url}/ready").json()["model_version"] == rolled
    assert scrape(service_url)[("emoflow_model_version", ())] == rolled
