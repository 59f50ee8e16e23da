"""What the face detector stage costs per camera frame: `FaceDetector.find` as served (the
BlazeFace model converted to ONNX, read by ONNX Runtime) against the same model and passes read
by OpenCV's DNN module from the wheel's `.tflite` (how the service read it before, one network
per input shape, as OpenCV re-plans a network when the shape changes). One thread each, as in a
service worker on 2 cores; the frames bench's 22 JPEG frames (640x480, 76 faces), decoded once.
Readers alternate frame by frame, so that both see the same machine. Prints both side by side,
how many boxes they agree on, and writes bench/results/face_detector.json.

    .venv/bin/python bench/face_detector.py [--rounds 10]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
from frames_speed import frames
from machine import cpu_model
from PIL import Image

from serving.faces import PASSES, SHORT_RANGE, BlazeFace, FaceDetector, model_file


class OpenCvDetector(FaceDetector):
    """The served model and passes, read by OpenCV's DNN module (the service's reader until
    2026-12-04): one network per input shape."""

    def __init__(self, model: BlazeFace = SHORT_RANGE, passes: tuple[int, ...] = PASSES) -> None:
        self.model, self.passes, self.nets = model, passes, {}
        self.path = str(model_file(model))

    def forward(self, blob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        net = self.nets.get(blob.shape)
        if net is None:
            net = cv2.dnn.readNetFromTFLite(self.path, engine=cv2.dnn.ENGINE_CLASSIC)
            self.nets[blob.shape] = net
        names = sorted(net.getUnconnectedOutLayersNames(), key=lambda name: "regress" in name)
        net.setInput(blob)
        logits, regressors = net.forward(names)
        return logits, regressors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="times each frame is read")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    images = [np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")) for _, jpeg, _ in frames(3)]
    with tempfile.TemporaryDirectory() as folder:
        readers = {"onnxruntime": FaceDetector(Path(folder), threads=1),
                   "opencv_dnn": OpenCvDetector()}  # fmt: skip
        boxes = {name: [reader.find(image)[0] for image in images]  # warm-up, and the answers
                 for name, reader in readers.items()}  # fmt: skip
        times: dict[str, list[float]] = {name: [] for name in readers}
        for _ in range(args.rounds):
            for image in images:
                for name, reader in readers.items():
                    start = time.perf_counter()
                    reader.find(image)
                    times[name].append((time.perf_counter() - start) * 1000)
    same = sum(
        len(a) == len(b) and np.allclose(a, b, atol=0.5)
        for a, b in zip(boxes["onnxruntime"], boxes["opencv_dnn"], strict=True)
    )
    result = {
        "what": "FaceDetector.find on a 640x480 frame (two passes, 128 and 448), one thread",
        "machine": f"{cpu_model()}, {os.cpu_count()} cores",
        "date": datetime.now(UTC).date().isoformat(),
        "frames": len(images), "rounds": args.rounds,
        **{name: {"median_ms": round(statistics.median(t), 2),
                  "p95_ms": round(float(np.percentile(t, 95)), 2)}
           for name, t in times.items()},
        "frames_with_the_same_boxes": same,
    }  # fmt: skip
    result["opencv_vs_onnxruntime"] = round(
        result["opencv_dnn"]["median_ms"] / result["onnxruntime"]["median_ms"], 2
    )
    for name in readers:
        print(f"{name:12} median {result[name]['median_ms']:6.2f} ms, "
              f"p95 {result[name]['p95_ms']:6.2f} ms a frame")  # fmt: skip
    print(f"OpenCV's DNN module takes {result['opencv_vs_onnxruntime']}x as long; the same boxes "
          f"in {same} of {len(images)} frames")  # fmt: skip
    out = Path(__file__).parent / "results" / "face_detector.json"
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
