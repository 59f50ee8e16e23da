"""The BentoML service: `bentoml serve serving.service:EmotionService`.

Routes are FastAPI functions of the app the service mounts (`@bentoml.asgi_app`), so the
service reads the upload itself: BentoML's own `PIL.Image` input answers 500 (or fetches a text
part as a URL) before any of our code runs. Every bad input gets a 4xx JSON `{"error", "detail"}`.

    POST /predict        multipart file field `image` (PNG, JPEG, WEBP or BMP) -> faces, emotions
    POST /predict/batch  multipart file fields `images` (at most 32) -> one answer per image
    POST /reload         serve the version `champion` names now (bearer token)
    GET  /health         liveness, and which worker process answered
    GET  /ready          200 with the model version once the champion is loaded, else 503
    GET  /reports/       the drift report pages (the files under <home>/reports)
    GET  /ui/            the web page: upload a photo or use the webcam, see faces and emotions
    GET  /metrics        Prometheus (served by BentoML; ours are the `emoflow_*` series)

Every response of these routes carries the served version in the header `X-Model-Version`,
and every JSON body in `model_version`. What is served follows the alias `champion`: a poll
every `serve_poll_seconds` and POST /reload have every worker process load the new version
beside the old one, then all switch at once (serving/switch.py); a request in flight finishes
on the model it started with.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import io
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from http import HTTPStatus
from pathlib import Path

import bentoml
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from PIL import Image, ImageOps
from prometheus_client import Counter, Gauge, Histogram
from starlette.datastructures import MutableHeaders, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ml import registry
from ml.config import Settings
from serving.batching import Batcher
from serving.model import Face, Prepared, ServedModel, load_version
from serving.prediction_log import PredictionLog
from serving.switch import WATCH_SECONDS, Switchboard

logger = logging.getLogger(__name__)

IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP")
STATIC_DIR = Path(__file__).parent / "static"
IMAGE_FIELD, BATCH_FIELD = "image", "images"
MAX_BATCH = 32
VERSION_HEADER = "X-Model-Version"

# BentoML answers GET /metrics itself, before our app, from prometheus_client's multiprocess
# files; metrics made with prometheus_client in the worker are written there and show up.
REQUESTS = Counter(
    "emoflow_requests", "Requests answered, by route and status.", ["method", "route", "status"]
)
LATENCY = Histogram(
    "emoflow_request_duration_seconds", "Seconds from request to the end of the answer, by route.",
    ["route"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)  # fmt: skip
MODEL_VERSION = Gauge(
    "emoflow_model_version", "Registry version of the served model (0: none).",
    multiprocess_mode="livemostrecent",
)  # fmt: skip

app = FastAPI(title="emoflow emotion service")


def multipart_body(field: str, max_items: int) -> dict:
    """OpenAPI of a multipart upload of image files in `field` (the routes read it themselves)."""
    binary = {"type": "string", "format": "binary"}
    files = {"type": "array", "items": binary, "minItems": 1, "maxItems": max_items}
    schema = {"type": "object", "required": [field], "properties": {field: files}}
    return {
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}
    }


class ApiError(Exception):
    """A request the service cannot answer; becomes a JSON `{"error", "detail", ...}`."""

    def __init__(self, status: int, error: str, detail: str, **extra: object) -> None:
        super().__init__(f"{error}: {detail}")
        self.status, self.error, self.detail, self.extra = status, error, detail, extra


def current_version() -> int | None:
    served = served_by().served
    return served.ref.version if served else None


def error_response(
    status: int, error: str, detail: str, headers: dict | None = None, **extra: object
) -> JSONResponse:
    body = {"error": error, "detail": detail, **extra, "model_version": current_version()}
    return JSONResponse(body, status_code=status, headers=headers)


@app.exception_handler(ApiError)
async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
    return error_response(exc.status, exc.error, exc.detail, **exc.extra)


@app.exception_handler(HTTPException)
async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
    """FastAPI's own errors (a wrong method, say) in the same JSON shape."""
    error = HTTPStatus(exc.status_code).phrase.lower()
    return error_response(exc.status_code, error, str(exc.detail), headers=exc.headers)


class Observe:
    """ASGI middleware: count and time every request by its route template, and stamp the
    served version on every response. (Plain ASGI: Starlette's `BaseHTTPMiddleware` would run
    each request through an extra task and memory stream.)"""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def stamped(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message).setdefault(VERSION_HEADER, str(current_version()))
            await send(message)

        try:
            await self.app(scope, receive, stamped)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            REQUESTS.labels(scope["method"], route, str(status)).inc()
            LATENCY.labels(route).observe(time.perf_counter() - start)


app.add_middleware(Observe)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "upload too large", f"the request body exceeds {limit} bytes")


async def _bounded(stream: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    size = 0
    async for chunk in stream:
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        yield chunk


async def read_files(request: Request, field: str, max_files: int, limit: int) -> list[bytes]:
    """The bytes of each multipart file in `field` (1 to `max_files`), at most `limit` in all."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "multipart/form-data":
        raise ApiError(
            415, "unsupported media type",
            f"expected multipart/form-data with a file field '{field}', "
            f"got {content_type or 'no content type'}",
        )  # fmt: skip
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    parser = MultiPartParser(
        request.headers, _bounded(request.stream(), limit), max_files=max_files, max_fields=8
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise ApiError(400, "bad multipart body", exc.message) from None
    except ClientDisconnect:  # counted as nginx does, not as a failure of the service
        detail = "the client left before its upload arrived"
        raise ApiError(499, "client closed request", detail) from None
    try:
        uploads = form.getlist(field)
        if not uploads:
            fields = ", ".join(f"'{key}'" for key in form.keys()) or "none"
            raise ApiError(
                400, "missing field", f"expected a file field '{field}'; fields sent: {fields}"
            )
        if not all(isinstance(upload, UploadFile) for upload in uploads):
            raise ApiError(
                400, "not a file", f"field '{field}' must be a file upload, not a text value"
            )
        files = [await upload.read() for upload in uploads]
    finally:
        await form.close()
    for index, data in enumerate(files):
        if not data:
            raise ApiError(
                400, "empty file", f"file {index} in field '{field}' has no bytes", index=index
            )
    return files


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Image bytes -> (H, W, 3) uint8 RGB, upright per its EXIF orientation."""
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
            if image.width * image.height > max_pixels:
                raise ApiError(
                    413, "image too large",
                    f"{image.width}x{image.height} pixels; at most {max_pixels} are accepted",
                )  # fmt: skip
            image.load()
            upright = ImageOps.exif_transpose(image)
            if upright.mode.startswith("I"):  # 16-bit grey: Pillow's convert would clip to 255
                upright = Image.fromarray((np.asarray(upright) >> 8).clip(0, 255).astype(np.uint8))
            return np.asarray(upright.convert("RGB"))
    except ApiError:
        raise
    except Image.DecompressionBombError as exc:
        raise ApiError(413, "image too large", str(exc)) from None
    except Image.UnidentifiedImageError:
        raise ApiError(
            400, "not an image", f"the upload is not a {', '.join(IMAGE_FORMATS)} image"
        ) from None
    except Exception as exc:  # anything Pillow raises while decoding untrusted bytes
        raise ApiError(400, "unreadable image", f"{type(exc).__name__}: {exc}") from None


def decode_images(files: list[bytes], max_pixels: int) -> list[np.ndarray]:
    """Every image decoded, or the first bad one's error naming its index."""
    images = []
    for index, data in enumerate(files):
        try:
            images.append(decode_image(data, max_pixels))
        except ApiError as exc:
            raise ApiError(
                exc.status, exc.error, f"image {index}: {exc.detail}", index=index
            ) from None
    return images


def static_file(folder: Path, path: str, what: str) -> FileResponse:
    """The file `path` under `folder` (its index.html for an empty path), never outside it."""
    root = folder.resolve()
    target = (root / (path or "index.html")).resolve()
    if not target.is_relative_to(root) or not target.is_file():
        raise ApiError(404, "not found", f"no {what} named {path!r} in {root}")
    return FileResponse(target)


def answer(served: ServedModel, image: np.ndarray, faces: list[Face]) -> dict:
    best = faces[0] if faces else None
    return {
        "emotion": best.emotion if best else None,
        "confidence": best.confidence if best else None,
        "faces": [dict(vars(face)) for face in faces],  # asdict: 80x slower (deep copies)
        "model_version": served.ref.version,
        "width": image.shape[1],
        "height": image.shape[0],
    }


# One worker process per core by default, each with single-threaded inference: HTTP, decoding
# and post-processing are Python and share a process's one interpreter lock, so one process
# cannot keep two cores busy. Every worker serves the same version (serving/switch.py).
SETTINGS = Settings()
WORKERS = SETTINGS.serve_workers or os.cpu_count() or 1
SWAP_TIMEOUT = 120.0  # seconds the workers get to load a new version before a swap gives up
# BentoML writes an access-log line and opens a trace span for every request, which costs the
# predict routes about 15 % of their throughput; unless asked for, they skip both (BentoML's
# own request metrics, ours and the prediction log still count every request).
PREDICT_ROUTES = ["/predict", "/predict/batch"]
QUIET_PREDICT = {
    "logging": {"access": {"skip_paths": ["/metrics", "/healthz", "/livez", "/readyz",
                                          *PREDICT_ROUTES]}},
    "tracing": {"excluded_urls": PREDICT_ROUTES},
}  # fmt: skip


@bentoml.service(workers=WORKERS, **({} if SETTINGS.serve_request_log else QUIET_PREDICT))
@bentoml.asgi_app(app, path="/")
class EmotionService:
    """Detects faces and their emotion with the model registered as `champion`."""

    def __init__(self) -> None:
        self.settings = SETTINGS
        self.load_error: str | None = None
        self.models: dict[int, ServedModel] = {}  # loaded in this worker, by version
        self.last_served: ServedModel | None = None
        self.switch = Switchboard(
            self.settings.home / "run", self.settings.serve_port,
            bentoml.server_context.worker_index or 1, WORKERS,
        )  # fmt: skip
        self.threads = max(1, (os.cpu_count() or 1) // WORKERS)  # inference threads per worker
        self.reload_lock, self.load_lock = asyncio.Lock(), asyncio.Lock()
        self.tasks: list[asyncio.Task] = []
        # Model calls on one thread, in batches of whatever requests wait together (adaptive
        # batching); decoding and letterboxing run beside it in worker threads.
        self.batcher = Batcher()
        # Features and answers of every prediction, written by its own thread off the request path.
        self.prediction_log = PredictionLog(self.settings.prediction_log)

    @property
    def served(self) -> ServedModel | None:
        """The model of the version all workers serve now; until this worker has it (just
        started), the one it served last."""
        model = self.models.get(self.switch.serving)
        if model is not None:
            self.last_served = model
        return self.last_served

    @bentoml.on_startup
    async def _start(self) -> None:
        self.prediction_log.start()
        with contextlib.suppress(Exception):  # the service stays up and says why in /ready
            await self.follow_champion()
        self.tasks.append(asyncio.create_task(self._watch()))
        if self.settings.serve_poll_seconds > 0:
            self.tasks.append(asyncio.create_task(self._poll()))
        # What is loaded by now lives as long as the process: leave it out of the collector's
        # full passes, which would otherwise stall requests for tens of milliseconds.
        gc.freeze()

    @bentoml.on_shutdown
    async def _stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.to_thread(self.batcher.close)
        # every record queued so far is written before the process exits
        await asyncio.to_thread(self.prediction_log.close)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.serve_poll_seconds)
            with contextlib.suppress(Exception):  # logged; the served model stays
                await self.follow_champion()

    async def _watch(self) -> None:
        """Load the versions another worker wants or serves; forget the ones nobody needs."""
        failed: set[int] = set()
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            needed = {self.switch.wanted, self.switch.serving} - {0}
            for version in needed - set(self.models) - failed:
                try:
                    await self._load(version)
                except Exception:
                    logger.exception("could not load version %s that another worker wants", version)
                    failed.add(version)
            for version in set(self.models) - needed:
                del self.models[version]  # a request still using it keeps it until it answers
                self.switch.report_loaded(set(self.models))

    async def _load(self, version: int) -> ServedModel:
        """Version `version` loaded beside the others (download, inference session)."""
        async with self.load_lock:
            if version not in self.models:
                ref = await asyncio.to_thread(registry.version_ref, self.settings, version)
                self.models[version] = await asyncio.to_thread(
                    load_version, self.settings, ref, self.threads
                )
                self.switch.report_loaded(set(self.models))
            return self.models[version]

    async def _swap(self, version: int) -> None:
        """Make every worker serve `version`: all load it, then all switch (serving/switch.py)."""
        self.switch.want(version)
        await self._load(version)
        deadline = time.monotonic() + SWAP_TIMEOUT
        while missing := self.switch.missing(version):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"worker(s) {missing} of {WORKERS} did not load version {version} within "
                    f"{SWAP_TIMEOUT:g} s; every worker goes on serving what it served"
                )
            await asyncio.sleep(WATCH_SECONDS / 2)
        if self.switch.wanted == version:  # else a newer champion came meanwhile: it goes next
            self.switch.serve(version)

    async def follow_champion(self) -> dict:
        """Serve the version `champion` names if it is not the one served: every worker loads
        it beside the current one, then all swap at once."""
        async with self.reload_lock:
            old = self.served
            try:
                ref = await asyncio.to_thread(
                    registry.version_by_alias, self.settings, registry.CHAMPION
                )
                if ref is not None and (old is None or old.ref.version != ref.version):
                    await self._swap(ref.version)
                self.load_error = None
            except Exception as exc:
                logger.exception("could not load the champion model")
                self.load_error = f"{type(exc).__name__}: {exc}"
                raise
            new = self.served
            version = new.ref.version if new else None
            MODEL_VERSION.set(version or 0)
            return {
                "reloaded": new is not old,
                "previous_version": old.ref.version if old else None,
                "model_version": version,
                "workers": WORKERS,
            }

    def _model(self) -> ServedModel:
        if self.served is not None:
            return self.served
        if self.load_error:
            raise ApiError(503, "model not loaded", self.load_error)
        raise ApiError(
            503, "no model",
            f"no version of '{self.settings.model_name}' is registered as champion "
            f"in {self.settings.mlflow_tracking_uri}",
        )  # fmt: skip

    async def _predict(
        self, served: ServedModel, decode: Callable[[], list[np.ndarray]], route: str
    ) -> list[dict]:
        """Decode and prepare each image, run all their views in one batched call, answer."""
        detector = served.detector

        def prepare() -> tuple[list[np.ndarray], list[Prepared]]:
            images = decode()
            return images, [detector.prepare(image) for image in images]

        images, prepared = await asyncio.to_thread(prepare)
        output = await self.batcher.run(detector, np.concatenate([p.batch for p in prepared]))

        def finish() -> list[dict]:
            answers, start = [], 0
            for image, item in zip(images, prepared, strict=True):
                rows = output[start : start + len(item.views)]
                start += len(item.views)
                answers.append(answer(served, image, detector.faces(item, rows)))
                self.prediction_log.record(image, answers[-1], route)  # queued, written elsewhere
            return answers

        return await asyncio.to_thread(finish)


# The routes are module functions, not methods of the service: BentoML would give a method its
# `self` through a synchronous FastAPI dependency, which costs every request a trip through a
# worker thread. `served_by()` reads the same instance from BentoML's context instead.


def served_by() -> EmotionService:
    return bentoml.get_current_service()


@app.get("/health")
async def health() -> dict:
    """Liveness, with the served version and the worker process (1-based) that answered."""
    service = served_by()
    served = service.served
    return {
        "status": "ok", "model_version": served.ref.version if served else None,
        "worker": service.switch.index,
    }  # fmt: skip


@app.get("/ready")
async def ready() -> dict:
    served = served_by()._model()
    return {
        "model": served.ref.name, "version": served.ref.version,
        "model_version": served.ref.version,
    }  # fmt: skip


@app.post("/reload")
async def reload(request: Request) -> JSONResponse:
    service = served_by()
    token = service.settings.serve_reload_token
    if not token:
        raise ApiError(
            403, "reload disabled", "set EMOFLOW_SERVE_RELOAD_TOKEN to enable POST /reload"
        )
    sent = request.headers.get("authorization", "").encode()
    if not hmac.compare_digest(sent, f"Bearer {token}".encode()):
        return error_response(
            401, "unauthorized", "expected the header 'Authorization: Bearer <reload token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )  # fmt: skip
    start = time.perf_counter()
    try:
        result = await service.follow_champion()
    except Exception as exc:
        raise ApiError(502, "reload failed", service.load_error or str(exc)) from None
    return JSONResponse({**result, "seconds": round(time.perf_counter() - start, 3)})


@app.get("/reports/{path:path}")
async def reports(path: str) -> Response:
    return static_file(served_by().settings.reports_dir, path, "report")


@app.get("/ui/{path:path}", include_in_schema=False)
async def ui(path: str) -> Response:
    return static_file(STATIC_DIR, path, "page")


@app.post("/predict", openapi_extra=multipart_body(IMAGE_FIELD, 1))
async def predict(request: Request) -> JSONResponse:
    service = served_by()
    served, settings = service._model(), service.settings
    (data,) = await read_files(request, IMAGE_FIELD, 1, settings.max_upload_bytes)
    decode = lambda: [decode_image(data, settings.max_pixels)]  # noqa: E731
    (body,) = await service._predict(served, decode, "/predict")
    return JSONResponse(body, headers={VERSION_HEADER: str(served.ref.version)})


@app.post("/predict/batch", openapi_extra=multipart_body(BATCH_FIELD, MAX_BATCH))
async def predict_batch(request: Request) -> JSONResponse:
    service = served_by()
    served, settings = service._model(), service.settings
    files = await read_files(request, BATCH_FIELD, MAX_BATCH, settings.max_upload_bytes)
    decode = lambda: decode_images(files, settings.max_pixels)  # noqa: E731
    answers = await service._predict(served, decode, "/predict/batch")
    return JSONResponse(
        {"predictions": answers, "model_version": served.ref.version},
        headers={VERSION_HEADER: str(served.ref.version)},
    )
