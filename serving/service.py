"""The BentoML service: `bentoml serve emoflow.bento:EmotionService` (made by `build_service`).

Routes are FastAPI functions of the app the service mounts (`@bentoml.asgi_app`), so the
service reads the upload itself (serving/requests.py): BentoML's own `PIL.Image` input answers
500 (or fetches a text part as a URL) before any of our code runs. Every bad input gets a 4xx
JSON `{"error", "detail"}`.

    POST /predict        multipart file field `image` (PNG, JPEG, WEBP or BMP) -> faces, emotions
    POST /predict/batch  multipart file fields `images` (at most 32) -> one answer per image
    POST /reload         serve the version `champion` names now (bearer token)
    GET  /health         liveness, and which worker process answered
    GET  /ready          200 with the model version once the champion is loaded, else 503
    GET  /reports/       the drift report pages (the files under <home>/reports)
    GET  /data-docs/     Great Expectations' Data Docs of the validate step
    GET  /ui/            the web page: upload a photo or use the webcam, see faces and emotions
    GET  /metrics        Prometheus (served by BentoML; ours are the `emoflow_*` series)

Faces: an image larger than a crop goes to a face detector first, and the emotion model reads
each face it finds (serving/faces.py); a crop is read by the model itself (`serve_faces`).

Every response of these routes carries the served version in the header `X-Model-Version`
(serving/middleware.py), and every JSON body in `model_version`. What is served follows the
alias `champion`: a poll every `serve_poll_seconds` and POST /reload have every worker process
load the new version beside the old one, then all switch at once (serving/champion.py,
serving/switch.py); a request in flight finishes on the model it started with.

Nothing here reads settings: `build_service(settings)` makes the BentoML service class, and
emoflow/bento.py, the entry module, calls it with the settings of the environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import logging
import os
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path

import bentoml
import cv2
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException

from ml.config import Settings
from monitoring.face_store import FaceStore
from monitoring.prediction_log import PredictionLog
from monitoring.shadow_report import shadow_report_page
from serving.batching import Batcher
from serving.champion import ChampionFollower
from serving.faces import FaceCrops, FaceDetector, prepare_crops, read_emotions, use_face_detector
from serving.memory import IdleTrim
from serving.middleware import VERSION_HEADER, Observe
from serving.model import Face, Prepared, ServedModel
from serving.requests import (
    ApiError,
    PixelBudget,
    decode_image,
    decode_images,
    error_response,
    multipart_body,
    read_files,
    static_file,
)
from serving.shadow import ShadowScorer

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
SHADOW_POLL_SECONDS = 30.0  # how often shadow scoring looks at the challenger without a poll
IMAGE_FIELD, BATCH_FIELD = "image", "images"
MAX_BATCH = 32
# BentoML writes an access-log line and opens a trace span for every request, which costs the
# predict routes about 15 % of their throughput; unless asked for, they skip both (BentoML's
# own request metrics, ours and the prediction log still count every request).
PREDICT_ROUTES = ["/predict", "/predict/batch"]
QUIET_PREDICT = {
    "logging": {"access": {"skip_paths": ["/metrics", "/healthz", "/livez", "/readyz",
                                          *PREDICT_ROUTES]}},
    "tracing": {"excluded_urls": PREDICT_ROUTES},
}  # fmt: skip


app = FastAPI(title="emoflow emotion service")


def current_version() -> int | None:
    served = served_by().served
    return served.ref.version if served else None


@app.exception_handler(ApiError)
async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
    return error_response(exc.status, exc.error, exc.detail, current_version(), **exc.extra)


@app.exception_handler(HTTPException)
async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
    """FastAPI's own errors (a wrong method, say) in the same JSON shape."""
    error = HTTPStatus(exc.status_code).phrase.lower()
    return error_response(
        exc.status_code, error, str(exc.detail), current_version(), headers=exc.headers
    )


app.add_middleware(Observe, version=current_version)


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


class EmotionWorker:
    """The service in one of its worker processes: the champion it follows (serving/champion.py),
    the batcher and the prediction log. `build_service` makes the BentoML service class of it;
    BentoML makes one instance per worker process."""

    def __init__(self, settings: Settings, workers: int) -> None:
        self.settings = settings
        # BentoML's logging leaves the root logger at WARNING: say what this worker loaded
        # (versions, the face detector, shadow scoring) in the service log too.
        for package in ("serving", "monitoring"):
            logging.getLogger(package).setLevel(logging.INFO)
        index = bentoml.server_context.worker_index or 1
        self.champion = ChampionFollower(settings, workers, index)
        self.tasks: list[asyncio.Task] = []
        # Model calls on one thread, in batches of whatever requests wait together (adaptive
        # batching); decoding and letterboxing run beside it in worker threads.
        self.batcher = Batcher()
        # Features and answers of every prediction, written by its own thread off the request path.
        images = FaceStore(settings.images_dir) if settings.prediction_images else None
        self.prediction_log = PredictionLog(settings.prediction_log, images=images)
        self.face_detector: FaceDetector | None = None  # loaded at startup (`_load_face_detector`)
        self.face_detector_lock = threading.Lock()
        # The alias challenger, answering a sampled share of requests unseen (serving/shadow.py).
        self.shadow = ShadowScorer(settings)
        self.idle_trim = IdleTrim()  # freed memory back to the system after a load (memory.py)

    @property
    def served(self) -> ServedModel | None:
        """The model this worker answers with now (`ChampionFollower.served`)."""
        return self.champion.served

    @bentoml.on_startup
    async def _start(self) -> None:
        cv2.setNumThreads(self.champion.threads)  # letterboxing's: this worker's share of the cores
        self.prediction_log.start()
        with contextlib.suppress(Exception):  # the service stays up and says why in /ready
            await self.champion.follow()
        self.tasks.append(asyncio.create_task(self.champion.watch()))
        self.tasks.append(asyncio.create_task(self.idle_trim.run()))
        if self.settings.serve_poll_seconds > 0:
            self.tasks.append(asyncio.create_task(self.champion.poll()))
        if self.shadow.enabled:  # ready once the challenger is loaded too (or failed to)
            await self._follow_challenger()
            self.tasks.append(asyncio.create_task(self._poll_challenger()))
        if self.settings.serve_faces != "model":  # a failure is said again by the first frame
            with contextlib.suppress(ApiError):
                await asyncio.to_thread(self._load_face_detector, "at startup")
        # What is loaded by now lives as long as the process: leave it out of the collector's
        # full passes, which would otherwise stall requests for tens of milliseconds.
        gc.freeze()

    async def _follow_challenger(self) -> None:
        """Shadow scoring follows the alias challenger (serving/shadow.py)."""
        served = self.served
        try:
            await asyncio.to_thread(self.shadow.follow, served.ref.version if served else None)
        except Exception:  # logged; shadow scoring goes on with what it has
            logger.exception("could not follow the challenger for shadow scoring")

    async def _poll_challenger(self) -> None:
        while True:
            await asyncio.sleep(self.settings.serve_poll_seconds or SHADOW_POLL_SECONDS)
            await self._follow_challenger()

    @bentoml.on_shutdown
    async def _stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.to_thread(self.batcher.close)
        await asyncio.to_thread(self.shadow.close)
        # every record queued so far is written before the process exits
        await asyncio.to_thread(self.prediction_log.close)

    def _model(self) -> ServedModel:
        if self.served is not None:
            return self.served
        if self.champion.load_error:
            raise ApiError(503, "model not loaded", self.champion.load_error)
        raise ApiError(
            503, "no model",
            f"no version of '{self.settings.model_name}' is registered as champion "
            f"in {self.settings.mlflow_tracking_uri}",
        )  # fmt: skip

    def _load_face_detector(self, when: str) -> FaceDetector:
        """The face detector of this worker, loaded (its ONNX file converted, on a new emoflow
        home) at startup, so that no frame waits for it; loaded again by a frame if that failed."""
        with self.face_detector_lock:
            if self.face_detector is None:
                started = time.perf_counter()
                try:
                    self.face_detector = FaceDetector(
                        self.settings.face_detector_dir, threads=self.champion.threads
                    )
                except Exception as exc:
                    detail = f"the face detector did not load: {type(exc).__name__}: {exc}"
                    logger.error("%s", detail)
                    raise ApiError(503, "face detector not loaded", detail) from None
                logger.info(
                    "face detector loaded %s in %.2f s", when, time.perf_counter() - started
                )
            return self.face_detector

    def faces_of(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The face detector's boxes and scores for `image`."""
        return self._load_face_detector("by a frame").find(image)

    def _prepare(self, served: ServedModel, image: np.ndarray) -> Prepared | FaceCrops:
        """An image as model input: its detected faces, or the model's own views of it."""
        imgsz = served.detector.imgsz
        if use_face_detector(self.settings.serve_faces, *image.shape[:2], max(imgsz)):
            return prepare_crops(image, self.faces_of(image)[0], imgsz)
        return served.detector.prepare(image)

    async def _predict(
        self, served: ServedModel, decode: Callable[[], list[np.ndarray]], route: str
    ) -> list[dict]:
        """Decode and prepare each image, run all their faces or views in one batched call,
        answer."""
        self.idle_trim.busy()
        detector = served.detector

        def prepare() -> tuple[list[np.ndarray], list[Prepared | FaceCrops]]:
            images = decode()
            return images, [self._prepare(served, image) for image in images]

        images, prepared = await asyncio.to_thread(prepare)
        output = await self.batcher.run(detector, np.concatenate([p.batch for p in prepared]))

        def finish() -> list[dict]:
            answers, start = [], 0
            for image, item in zip(images, prepared, strict=True):
                rows = output[start : start + len(item.batch)]
                start += len(item.batch)
                if isinstance(item, FaceCrops):
                    faces = read_emotions(detector.names, item, rows)
                else:
                    faces = detector.faces(item, rows)
                answers.append(answer(served, image, faces))
                embedding = detector.embedding(rows)  # (C,) float32, or None
                self.prediction_log.record(image, answers[-1], route, embedding)  # queued
                self.shadow.offer(served, image, item, answers[-1], route)  # sampled, queued
            return answers

        return await asyncio.to_thread(finish)


def build_service(settings: Settings) -> bentoml.Service[EmotionWorker]:
    """The BentoML service `EmotionService` for `settings`: its worker processes (one per core
    by default) and whether BentoML logs and traces every predict request are fixed here, when
    the class is made."""
    # One worker process per core by default, each with single-threaded inference: HTTP,
    # decoding and post-processing are Python and share a process's one interpreter lock, so one
    # process cannot keep two cores busy. Every worker serves the same version (serving/switch.py).
    workers = settings.serve_workers or os.cpu_count() or 1
    quiet = {} if settings.serve_request_log else QUIET_PREDICT

    @bentoml.service(workers=workers, **quiet)
    @bentoml.asgi_app(app, path="/")
    class EmotionService(EmotionWorker):
        """Detects faces and their emotion with the model registered as `champion`."""

        def __init__(self) -> None:
            super().__init__(settings, workers)

    return EmotionService


# The routes are module functions, not methods of the service: BentoML would give a method its
# `self` through a synchronous FastAPI dependency, which costs every request a trip through a
# worker thread. `served_by()` reads the same instance from BentoML's context instead.


def served_by() -> EmotionWorker:
    return bentoml.get_current_service()


@app.get("/health")
async def health() -> dict:
    """Liveness, with the served version and the worker process (1-based) that answered."""
    service = served_by()
    served = service.served
    return {
        "status": "ok", "model_version": served.ref.version if served else None,
        "worker": service.champion.switch.index,
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
            current_version(), headers={"WWW-Authenticate": "Bearer"},
        )  # fmt: skip
    start = time.perf_counter()
    try:
        result = await service.champion.follow()
    except Exception as exc:
        raise ApiError(502, "reload failed", service.champion.load_error or str(exc)) from None
    return JSONResponse({**result, "seconds": round(time.perf_counter() - start, 3)})


@app.get("/reports/shadow.html")
async def shadow_report() -> HTMLResponse:
    """Champion and challenger compared on the images scored in shadow (the shadow log)."""
    uri = served_by().settings.prediction_log
    return HTMLResponse(await asyncio.to_thread(shadow_report_page, uri))


@app.get("/reports/{path:path}")
async def reports(path: str) -> Response:
    return static_file(served_by().settings.reports_dir, path, "report")


@app.get("/data-docs/{path:path}")
async def data_docs(path: str) -> Response:
    """Great Expectations' Data Docs of the validate step (what Airflow's validate task links)."""
    return static_file(served_by().settings.data_docs_dir, path, "Data Docs page")


@app.get("/ui/{path:path}", include_in_schema=False)
async def ui(path: str) -> Response:
    return static_file(STATIC_DIR, path, "page")


@app.post("/predict", openapi_extra=multipart_body(IMAGE_FIELD, 1))
async def predict(request: Request) -> JSONResponse:
    service = served_by()
    served, settings = service._model(), service.settings
    (data,) = await read_files(request, IMAGE_FIELD, 1, settings.max_upload_bytes)
    budget = PixelBudget(settings.serve_max_request_pixels)
    decode = lambda: [decode_image(data, settings.max_pixels, budget)]  # noqa: E731
    (body,) = await service._predict(served, decode, "/predict")
    return JSONResponse(body, headers={VERSION_HEADER: str(served.ref.version)})


@app.post("/predict/batch", openapi_extra=multipart_body(BATCH_FIELD, MAX_BATCH))
async def predict_batch(request: Request) -> JSONResponse:
    service = served_by()
    served, settings = service._model(), service.settings
    files = await read_files(request, BATCH_FIELD, MAX_BATCH, settings.max_upload_bytes)
    budget = PixelBudget(settings.serve_max_request_pixels)
    decode = lambda: decode_images(files, settings.max_pixels, budget)  # noqa: E731
    answers = await service._predict(served, decode, "/predict/batch")
    return JSONResponse(
        {"predictions": answers, "model_version": served.ref.version},
        headers={VERSION_HEADER: str(served.ref.version)},
    )
