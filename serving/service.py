"""The BentoML service: `bentoml serve serving.service:EmotionService`.

Routes are FastAPI methods of the service class (`@bentoml.asgi_app`), so the service reads
the upload itself: BentoML's own `PIL.Image` input answers 500 (or fetches a text part as a
URL) before any of our code runs. Every bad input gets a 4xx JSON `{"error", "detail"}`.

    POST /predict   multipart field `image` (PNG, JPEG, WEBP or BMP) -> faces and emotions
    GET  /health    liveness
    GET  /ready     200 with the model version once the champion is loaded, else 503
    GET  /reports/  the drift report pages (the files under <home>/reports)
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

import bentoml
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from PIL import Image, ImageOps
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from ml.config import Settings
from serving.model import Face, ServedModel, load_champion

logger = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 10 * 1024 * 1024
MAX_PIXELS = 25_000_000
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP")
IMAGE_FIELD = "image"

app = FastAPI(title="emoflow emotion service")


class BadInput(Exception):
    """A request the service cannot use; becomes a JSON `{"error", "detail"}` with `status`."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(f"{error}: {detail}")
        self.status, self.error, self.detail = status, error, detail


@app.exception_handler(BadInput)
async def _bad_input(_: Request, exc: BadInput) -> JSONResponse:
    return error_response(exc.status, exc.error, exc.detail)


def error_response(status: int, error: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status)


def _too_large(limit: int) -> BadInput:
    return BadInput(413, "upload too large", f"the request body exceeds {limit} bytes")


async def _bounded(stream: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    size = 0
    async for chunk in stream:
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        yield chunk


async def read_upload(request: Request) -> bytes:
    """The bytes of the multipart file field `image`, at most MAX_UPLOAD_BYTES in all."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "multipart/form-data":
        raise BadInput(
            415, "unsupported media type",
            f"expected multipart/form-data with a file field '{IMAGE_FIELD}', "
            f"got {content_type or 'no content type'}",
        )  # fmt: skip
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_UPLOAD_BYTES:
        raise _too_large(MAX_UPLOAD_BYTES)
    parser = MultiPartParser(
        request.headers, _bounded(request.stream(), MAX_UPLOAD_BYTES), max_files=1, max_fields=8
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise BadInput(400, "malformed multipart body", exc.message) from None
    try:
        upload = form.get(IMAGE_FIELD)
        if upload is None:
            fields = ", ".join(f"'{key}'" for key in form.keys()) or "none"
            raise BadInput(
                400, "missing field",
                f"expected a file field '{IMAGE_FIELD}'; fields sent: {fields}",
            )  # fmt: skip
        if not isinstance(upload, UploadFile):
            raise BadInput(
                400, "not a file", f"field '{IMAGE_FIELD}' must be a file upload, not a text value"
            )
        data = await upload.read()
    finally:
        await form.close()
    if not data:
        raise BadInput(400, "empty file", f"the file in field '{IMAGE_FIELD}' has no bytes")
    return data


def decode_image(data: bytes) -> np.ndarray:
    """Image bytes -> (H, W, 3) uint8 RGB, upright per its EXIF orientation."""
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
            if image.width * image.height > MAX_PIXELS:
                raise BadInput(
                    413, "image too large",
                    f"{image.width}x{image.height} pixels; at most {MAX_PIXELS} are accepted",
                )  # fmt: skip
            image.load()
            upright = ImageOps.exif_transpose(image)
            return np.asarray(upright.convert("RGB"))
    except BadInput:
        raise
    except Image.DecompressionBombError as exc:
        raise BadInput(413, "image too large", str(exc)) from None
    except Image.UnidentifiedImageError:
        raise BadInput(
            400, "not an image", f"the upload is not a {', '.join(IMAGE_FORMATS)} image"
        ) from None
    except Exception as exc:  # anything Pillow raises while decoding untrusted bytes
        raise BadInput(400, "unreadable image", f"{type(exc).__name__}: {exc}") from None


def prediction(served: ServedModel, faces: list[Face], width: int, height: int) -> dict:
    best = faces[0] if faces else None
    return {
        "emotion": best.emotion if best else None,
        "confidence": best.confidence if best else None,
        "faces": [asdict(face) for face in faces],
        "model_version": served.ref.version,
        "width": width,
        "height": height,
    }


@bentoml.service(workers=1)
@bentoml.asgi_app(app, path="/")
class EmotionService:
    """Detects faces and their emotion with the model registered as `champion`."""

    def __init__(self) -> None:
        self.settings = Settings()
        self.load_error: str | None = None
        self.served: ServedModel | None = None
        try:
            self.served = load_champion(self.settings)
        except Exception as exc:  # the service stays up and says why in /ready
            logger.exception("could not load the champion model")
            self.load_error = f"{type(exc).__name__}: {exc}"
        # One inference at a time, off the event loop; ONNX Runtime uses the cores.
        self.inference = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")

    def _not_ready(self) -> JSONResponse:
        if self.load_error:
            return error_response(503, "model not loaded", self.load_error)
        return error_response(
            503, "no model",
            f"no version of '{self.settings.model_name}' is registered as champion "
            f"in {self.settings.mlflow_tracking_uri}",
        )  # fmt: skip

    @app.get("/health")
    async def health(self) -> dict:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready(self) -> JSONResponse:
        if self.served is None:
            return self._not_ready()
        return JSONResponse({"model": self.served.ref.name, "version": self.served.ref.version})

    @app.get("/reports/{path:path}")
    async def reports(self, path: str) -> Response:
        root = self.settings.reports_dir.resolve()
        target = (root / (path or "index.html")).resolve()
        if not target.is_relative_to(root) or not target.is_file():
            return error_response(404, "not found", f"no report named {path!r} in {root}")
        return FileResponse(target)

    @app.post("/predict")
    async def predict(self, request: Request) -> JSONResponse:
        served = self.served
        if served is None:
            return self._not_ready()
        data = await read_upload(request)

        def run() -> dict:
            image = decode_image(data)
            faces = served.detector.predict(image)
            return prediction(served, faces, width=image.shape[1], height=image.shape[0])

        body = await asyncio.get_running_loop().run_in_executor(self.inference, run)
        return JSONResponse(body, headers={"X-Model-Version": str(served.ref.version)})
