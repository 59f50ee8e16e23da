"""The web page at /ui/ in a real browser (Debian's Chromium driven by Playwright) against the
real service over HTTP: a photo's faces and boxes (a real photograph, whose face the service's
face detector finds, and a drawn crop the model reads itself), the service's errors, the webcam
loop (a camera showing the real photograph).

Boxes are checked in screenshots: pixels of the page's box colour must lie along the edges of
the first face's box (scaled from image to screen pixels) and not away from every box.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from ml.config import EMOTIONS, Settings

# The model and the service are module fixtures of tests/serving/conftest.py: this module
# starts its own.

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--use-fake-ui-for-media-stream",  # camera permission granted without asking
    "--use-fake-device-for-media-stream",
]
TIMEOUT_MS = 60_000  # one CPU inference takes well under a second; the machine may be busy

BOX_RGB = np.array([0x00, 0xE0, 0xFF])  # BOX_COLOUR in serving/static/page.js
TOLERANCE = 32  # per channel: screenshots of a scaled canvas blend edges
LINE_PX = 3  # LINE_PX in page.js: the line lies inside the box, on screen pixels
LABEL_W, LABEL_H = 160, 26  # at least the size of a label "surprise 0.87" (FONT_PX 14)


# ---------------------------------------------------------------- browser


def astronaut_frame(photo_scenes) -> tuple[np.ndarray, list[float]]:
    """scikit-image's astronaut photo scaled to 480x480 in the middle of a grey 640x480 frame,
    and her face box in it."""
    _, photo, (box,) = photo_scenes.faces[0]
    frame = np.full((480, 640, 3), 128, np.uint8)
    frame[:, 80:560] = np.asarray(
        Image.fromarray(photo).resize((480, 480), Image.Resampling.BILINEAR)
    )
    scale = 480 / photo.shape[0]
    return frame, [box[0] * scale + 80, box[1] * scale, box[2] * scale + 80, box[3] * scale]


def iou(a: list[float], b: list[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return w * h / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h)


@pytest.fixture(scope="module")
def camera_file(tmp_path_factory: pytest.TempPathFactory, photo_scenes) -> Path:
    """One Y4M frame (the fake camera loops it): the astronaut photo, 640x480."""
    image = Image.fromarray(astronaut_frame(photo_scenes)[0])
    y, cb, cr = image.convert("YCbCr").split()
    half = (image.width // 2, image.height // 2)
    planes = [y.tobytes(), cb.resize(half).tobytes(), cr.resize(half).tobytes()]
    path = tmp_path_factory.mktemp("camera") / "face.y4m"
    header = f"YUV4MPEG2 W{image.width} H{image.height} F30:1 Ip A1:1 C420jpeg\nFRAME\n"
    path.write_bytes(header.encode() + b"".join(planes))
    return path


@pytest.fixture(scope="module")
def browser(camera_file: Path) -> Iterator:
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: run `make setup` (it installs Debian's chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Python Playwright is missing: run `make setup` (the dev extra has it)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=[*CHROMIUM_ARGS, f"--use-file-for-fake-video-capture={camera_file}"],
        )
        yield browser
        browser.close()


class Page:
    """A fresh browser page, and the JavaScript errors it raised."""

    def __init__(self, browser, width: int, height: int) -> None:
        self.context = browser.new_context(
            viewport={"width": width, "height": height}, device_scale_factor=1
        )
        self.context.set_default_timeout(TIMEOUT_MS)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))


@pytest.fixture()
def open_page(browser) -> Iterator:
    pages: list[Page] = []

    def open_(url: str, width: int = 1280, height: int = 900, init_script: str = "") -> Page:
        page = Page(browser, width, height)
        pages.append(page)
        if init_script:
            page.context.add_init_script(init_script)
        page.page.goto(url)
        page.page.wait_for_function("document.getElementById('model-version').dataset.version")
        return page

    yield open_
    for page in pages:
        page.context.close()


# ---------------------------------------------------------------- pixels


def screenshot(locator, path: Path) -> np.ndarray:
    locator.screenshot(path=path)
    with Image.open(path) as shot:
        return np.asarray(shot.convert("RGB"))


def box_colour(pixels: np.ndarray) -> np.ndarray:
    return (np.abs(pixels.astype(int) - BOX_RGB) <= TOLERANCE).all(axis=-1)


def on_screen(box: list[float], answer_size: tuple[int, int], shot: np.ndarray) -> list[float]:
    """A box in image pixels -> screenshot pixels (the canvas shows the whole image)."""
    sx, sy = shot.shape[1] / answer_size[0], shot.shape[0] / answer_size[1]
    return [box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy]


def edge_coverage(mask: np.ndarray, box: list[float]) -> dict[str, float]:
    """For each edge of `box`: the share of points along its middle 80% that have a
    box-colour pixel where the line should be (inside the box, LINE_PX wide, +-2 px)."""
    height, width = mask.shape
    x1, y1, x2, y2 = box

    def band(lo: float) -> slice:
        return slice(max(0, int(lo) - 2), int(lo + LINE_PX) + 3)

    def share(samples: list[np.ndarray]) -> float:
        return float(np.mean([sample.any() for sample in samples]))

    ys = np.linspace(y1 + 0.1 * (y2 - y1), y2 - 0.1 * (y2 - y1), 25).astype(int).clip(0, height - 1)
    xs = np.linspace(x1 + 0.1 * (x2 - x1), x2 - 0.1 * (x2 - x1), 25).astype(int).clip(0, width - 1)
    return {
        "left": share([mask[y, band(x1)] for y in ys]),
        "right": share([mask[y, band(x2 - LINE_PX)] for y in ys]),
        "top": share([mask[band(y1), x] for x in xs]),
        "bottom": share([mask[band(y2 - LINE_PX), x] for x in xs]),
    }


def away_from_boxes(shape: tuple[int, int], boxes: list[list[float]]) -> np.ndarray:
    """Pixels no box line or label can cover: outside every box edge's band and label."""
    height, width = shape
    free = np.ones(shape, bool)
    margin = LINE_PX + 4
    for x1, y1, x2, y2 in boxes:
        ring = np.zeros(shape, bool)
        ring[
            max(0, int(y1) - margin) : int(y2) + margin, max(0, int(x1) - margin) : int(x2) + margin
        ] = True
        inner = (slice(int(y1) + LINE_PX + margin, max(0, int(y2) - LINE_PX - margin)),
                 slice(int(x1) + LINE_PX + margin, max(0, int(x2) - LINE_PX - margin)))  # fmt: skip
        ring[inner] = False
        free &= ~ring
        left = max(0, min(int(x1), width - LABEL_W))  # labels shift left at the right border
        free[
            max(0, int(y1) - LABEL_H - 4) : int(y1) + LABEL_H + 4, max(0, left - 4) : left + LABEL_W
        ] = False
    return free


def assert_boxes_drawn(shot: np.ndarray, boxes: list[list[float]]) -> None:
    mask = box_colour(shot)
    coverage = edge_coverage(mask, boxes[0])
    assert min(coverage.values()) >= 0.8, f"box colour along the first box's edges: {coverage}"
    free = away_from_boxes(mask.shape, boxes)
    assert free.sum() >= 0.05 * free.size, "too little of the picture is away from every box"
    stray = mask[free].mean()
    assert stray < 0.02, f"{stray:.1%} of the pixels away from every box have the box colour"


# ---------------------------------------------------------------- the page


def predict(service_url: str, data: bytes, name: str = "face.png") -> httpx.Response:
    return httpx.post(f"{service_url}/predict", files={"image": (name, data, "image/png")})


def upload(page, name: str, data: bytes, mime: str = "image/png") -> str:
    """Choose a file in the page's file input; the state the photo status ends in."""
    page.set_input_files("#file-input", files=[{"name": name, "mimeType": mime, "buffer": data}])
    page.wait_for_function(
        "['done', 'error'].includes(document.getElementById('photo-status').dataset.state)"
    )
    return page.get_attribute("#photo-status", "data-state")


@pytest.mark.parametrize(
    "name",
    [pytest.param("astronaut.png", id="real-photo"),
     pytest.param("sideways.jpg", id="exif-rotated-crop")],
)  # fmt: skip
def test_photo_upload_lists_faces_and_draws_boxes(
    open_page, service_url: str, champion_settings: Settings, tmp_path: Path, name: str,
    champion_version, png_bytes, upright_exif_jpeg, photo_scenes,
) -> None:  # fmt: skip
    if name == "astronaut.png":  # the face detector's box on a real photograph
        _, photo, (truth,) = photo_scenes.faces[0]
        data = png_bytes(photo)
    else:  # a drawn crop, stored on its side, upright by its EXIF orientation
        data = upright_exif_jpeg()[0]
    direct = predict(service_url, data, name)
    assert direct.status_code == 200, direct.text
    answer = direct.json()
    assert answer["faces"], "no face found in the test image"
    if name == "astronaut.png":
        assert len(answer["faces"]) == 1 and iou(answer["faces"][0]["box"], truth) > 0.6
    version = champion_version(champion_settings)
    assert answer["model_version"] == version

    view = open_page(f"{service_url}/ui/")
    page = view.page
    state = upload(page, name, data, "image/jpeg" if name.endswith(".jpg") else "image/png")
    assert state == "done", page.inner_text("#photo-error")

    faces = page.locator("#photo-faces > li")
    assert faces.count() == len(answer["faces"])
    assert page.inner_text("#model-version") == str(version)
    assert [faces.nth(i).get_attribute("data-emotion") for i in range(faces.count())] == [
        face["emotion"] for face in answer["faces"]
    ]
    first = faces.first
    assert first.locator(".scores dt").all_inner_texts() == list(EMOTIONS)
    assert first.locator(".scores .value").all_inner_texts() == [
        f"{answer['faces'][0]['scores'][emotion]:.2f}" for emotion in EMOTIONS
    ]
    assert page.is_hidden("#photo-error")

    shot = screenshot(page.locator("#photo-canvas"), tmp_path / "photo.png")
    size = (answer["width"], answer["height"])
    # Upright as the service saw it: an image drawn ignoring its EXIF turn would be portrait.
    assert shot.shape[1] / shot.shape[0] == pytest.approx(size[0] / size[1], rel=0.03)
    assert_boxes_drawn(shot, [on_screen(face["box"], size, shot) for face in answer["faces"]])
    page.screenshot(path=tmp_path / "page.png", full_page=True)
    assert view.errors == []


def test_error_shows_the_services_detail(
    open_page, service_url: str, tmp_path: Path, drawn_image, png_bytes
) -> None:
    data = b"this is a text file, whatever its name says"
    direct = predict(service_url, data, "notes.png")
    assert direct.status_code == 400
    detail = direct.json()["detail"]

    view = open_page(f"{service_url}/ui/")
    page = view.page
    assert upload(page, "notes.png", data) == "error"
    assert page.is_visible("#photo-error")
    assert detail in page.inner_text("#photo-error")
    assert page.locator("#photo-faces > li").count() == 0
    assert page.is_hidden("#photo-canvas")
    canvas_box_pixels = page.evaluate(
        """() => {
            const c = document.getElementById('photo-canvas');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0;
            for (let i = 0; i < d.length; i += 4) if (d[i + 3] && d[i + 2] > 200 && d[i] < 40) n++;
            return n;
        }"""
    )
    assert canvas_box_pixels == 0
    page.screenshot(path=tmp_path / "error.png")

    # A good photo afterwards replaces the message with a result.
    assert upload(page, "face.png", png_bytes(drawn_image())) == "done"
    assert page.is_hidden("#photo-error")
    assert view.errors == []


def test_webcam_loop_draws_boxes_and_stops(
    open_page, service_url: str, tmp_path: Path, photo_scenes
) -> None:
    view = open_page(f"{service_url}/ui/")
    page = view.page
    page.click("#webcam-start")
    page.wait_for_function("Number(document.getElementById('webcam-status').dataset.frames) >= 2")
    assert page.is_hidden("#webcam-error")
    assert int(page.get_attribute("#webcam-status", "data-faces")) > 0, "no face in the frames"

    listed = page.locator("#webcam-faces")
    size = (int(listed.get_attribute("data-width")), int(listed.get_attribute("data-height")))
    assert size == (640, 480)  # the fake camera's frames, sent whole
    # The fake camera shows one still frame, so every answer has the same boxes: the
    # detector's box on the astronaut's face.
    listed_boxes = listed.evaluate("list => [...list.children].map(item => item.dataset.box)")
    boxes = [[float(v) for v in box.split(",")] for box in listed_boxes]
    assert len(boxes) == 1 and iou(boxes[0], astronaut_frame(photo_scenes)[1]) > 0.6, boxes
    shot = screenshot(page.locator(".stage"), tmp_path / "webcam.png")
    assert_boxes_drawn(shot, [on_screen(box, size, shot) for box in boxes])

    page.click("#webcam-stop")
    assert page.get_attribute("#webcam-status", "data-state") == "off"
    assert page.is_hidden("#webcam-result")
    assert page.evaluate("document.getElementById('webcam-video').srcObject") is None
    frames = page.get_attribute("#webcam-status", "data-frames")
    page.wait_for_timeout(1500)  # an answer still on its way when Stop was clicked is dropped
    assert page.get_attribute("#webcam-status", "data-frames") == frames
    assert page.is_enabled("#webcam-start") and page.is_disabled("#webcam-stop")
    assert view.errors == []


@pytest.mark.parametrize(
    ("name", "says"),
    [("NotAllowedError", "Camera access was refused"), ("NotFoundError", "No camera found")],
)
def test_webcam_refused_or_absent_is_said(
    open_page, service_url: str, name: str, says: str
) -> None:
    refuse = (
        "navigator.mediaDevices.getUserMedia = () => "
        f"Promise.reject(new DOMException('test', '{name}'));"
    )
    view = open_page(f"{service_url}/ui/", init_script=refuse)
    page = view.page
    page.click("#webcam-start")
    page.wait_for_selector("#webcam-error:not([hidden])")
    assert says in page.inner_text("#webcam-error")
    assert page.get_attribute("#webcam-status", "data-state") == "off"
    assert page.is_enabled("#webcam-start")
    assert view.errors == []


def test_links_to_the_api_docs_and_reports(open_page, service_url: str) -> None:
    page = open_page(f"{service_url}/ui/").page
    docs = page.get_by_role("link", name="API docs").evaluate("a => a.href")
    reports = page.get_by_role("link", name="Drift reports").evaluate("a => a.href")
    assert (docs, reports) == (f"{service_url}/docs", f"{service_url}/reports/")
    swagger = httpx.get(docs)  # BentoML's Swagger UI, which lists the service's own routes
    assert swagger.status_code == 200 and "swagger-ui" in swagger.text.lower()
    assert "/predict" in httpx.get(f"{service_url}/docs.json").json()["paths"]


def test_page_fits_a_phone(
    open_page, service_url: str, tmp_path: Path, drawn_image, png_bytes
) -> None:
    view = open_page(f"{service_url}/ui/", width=360, height=740)
    page = view.page
    assert upload(page, "face.png", png_bytes(drawn_image(640, 480))) == "done"
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    canvas = page.locator("#photo-canvas").bounding_box()
    assert canvas and 0 < canvas["x"] and canvas["x"] + canvas["width"] <= 360
    for selector in ("#file-input", "#webcam-start", "#webcam-stop"):  # every control is named
        assert page.locator(selector).evaluate(
            "e => (e.labels && e.labels.length > 0) || !!e.textContent.trim()"
        )
    page.screenshot(path=tmp_path / "phone.png", full_page=True)
    assert view.errors == []
