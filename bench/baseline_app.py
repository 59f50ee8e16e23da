"""The baseline of bench/serving_speed.py: how a public course project served this task.

A FastAPI app with one handler that opens the upload with Pillow and calls ultralytics'
`model.predict` on the .pt weights, per request; run by uvicorn with one worker:

    BENCH_WEIGHTS=best.pt BENCH_IMGSZ=96 YOLO_CONFIG_DIR=/tmp/yolo \
        uvicorn baseline_app:app --app-dir bench --workers 1 --port 8000

The handler is `async def` and calls `predict` directly, as such projects do: requests are
served one at a time (one ultralytics predictor is not safe to share between threads).
ultralytics is imported through `ml.yolo.load` (offline, no integrations, torch on every core),
so the baseline is if anything a little stronger than the original.

    POST /predict   multipart file field `image` -> faces (box, emotion, confidence)
    GET  /health    200 once the model is loaded and has answered one warm-up image
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np
from fastapi import FastAPI, File, UploadFile
from PIL import Image

from ml import yolo

WEIGHTS = Path(os.environ["BENCH_WEIGHTS"])
IMGSZ = int(os.environ.get("BENCH_IMGSZ", "640"))
CONFIG_DIR = Path(os.environ.get("YOLO_CONFIG_DIR") or tempfile.mkdtemp(prefix="yolo-"))

model = yolo.load(CONFIG_DIR).YOLO(str(WEIGHTS))
# The first call builds ultralytics' predictor (model fusing, warm-up): do it before /health.
model.predict(Image.fromarray(np.zeros((IMGSZ, IMGSZ, 3), np.uint8)), imgsz=IMGSZ,
              device="cpu", verbose=False)  # fmt: skip

app = FastAPI(title="baseline: ultralytics predict per request")


@app.get("/health")
async def health() -> dict:
    return {"status": "ok"}


@app.post("/predict")
async def predict(image: UploadFile = File(...)) -> dict:  # noqa: B008 - FastAPI's idiom
    picture = Image.open(io.BytesIO(await image.read()))
    (result,) = model.predict(picture, imgsz=IMGSZ, device="cpu", verbose=False)
    boxes = result.boxes
    faces = [
        {"box": box, "emotion": result.names[int(cls)], "confidence": conf}
        for box, cls, conf in zip(
            boxes.xyxy.tolist(), boxes.cls.tolist(), boxes.conf.tolist(), strict=True
        )
    ]
    return {
        "emotion": faces[0]["emotion"] if faces else None,
        "faces": faces,
        "width": picture.width,
        "height": picture.height,
    }
