"""The service's inference path on a GPU, with and without adaptive batching, beside the CPU.

For one model and one set of images, on the GPU as the service runs a version where torch sees
one (the PyTorch weights in half precision, `serving.model.torch_forward`) and on the CPU as it
runs without one (the ONNX export in ONNX Runtime, one worker's threads):

  no batching  one caller, one image after another: `Detector.predict` (letterbox, model call,
               decode and NMS)
  batching     N requests at once, each handled as the service handles one: decode-side work in
               a worker thread, the model call through `serving.batching.Batcher` (one inference
               thread takes every queued input), then the answer's decode

HTTP is left out on purpose: bench/serving_speed.py measures the whole service over HTTP on the
CPU, and the GPU machine this runs on has no BentoML. Writes bench/results/gpu_serving.json.

    python bench/gpu_serving.py --weights best.pt --onnx best.onnx [--seconds 8]
        [--concurrency 1,8,32,128] [--images 64]

Without --weights/--onnx it builds an untrained YOLOv8n (8 classes, --imgsz) and exports it:
speed does not depend on training, though decode does less work when nothing is found.
It also runs where no GPU is (the CPU rows only), which is how it is checked.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from machine import cpu_model

from ml.config import EMOTIONS, PROJECT_ROOT
from serving.batching import Batcher, batch_rows_histogram
from serving.model import Detector

RESULTS = PROJECT_ROOT / "bench" / "results" / "gpu_serving.json"


def untrained_model(folder: Path, imgsz: int) -> tuple[Path, Path]:
    """An untrained YOLOv8n with the eight emotions as classes, saved and exported to ONNX."""
    import torch

    from ml import yolo

    ultralytics = yolo.load(folder / "ultralytics")
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel("yolov8n.yaml", nc=len(EMOTIONS), verbose=False)
    model.names = dict(enumerate(EMOTIONS))
    model.args = {"imgsz": imgsz}
    weights = folder / "untrained.pt"
    torch.save({"model": model, "train_args": {"imgsz": imgsz}}, weights)
    del ultralytics
    return weights, yolo.export_onnx(weights, imgsz, folder / "ultralytics")


def bench_images(folder: Path, count: int) -> list[np.ndarray]:
    """`count` drawn sample faces, JPEG-encoded and decoded as the service decodes uploads."""
    from PIL import Image

    from ml.sample_data import generate

    generate(folder, train=0, valid=0, test=count, seed=12345, prefix="bench")
    images = []
    for path in sorted((folder / "test" / "images").iterdir()):
        buffer = io.BytesIO()
        with Image.open(path) as image:
            image.convert("RGB").save(buffer, format="JPEG", quality=90)
        with Image.open(buffer) as image:
            images.append(np.asarray(image.convert("RGB")))
    return images


def summary(latencies: list[float], seconds: float, **extra: object) -> dict:
    ms = np.asarray(latencies) * 1000
    p50, p95, p99 = np.percentile(ms, [50, 95, 99]) if len(ms) else (np.nan,) * 3
    return {
        "images_per_s": round(len(ms) / seconds, 1), "p50_ms": round(float(p50), 2),
        "p95_ms": round(float(p95), 2), "p99_ms": round(float(p99), 2), **extra,
    }  # fmt: skip


def no_batching(detector: Detector, images: list[np.ndarray], seconds: float) -> dict:
    for image in images[:8]:  # warm-up (CUDA kernels, allocator)
        detector.predict(image)
    latencies, index = [], 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        sent = time.perf_counter()
        detector.predict(images[index % len(images)])
        latencies.append(time.perf_counter() - sent)
        index += 1
    return summary(latencies, time.perf_counter() - start)


def batch_rows() -> tuple[float, float]:
    """Rows and model calls the Batcher has observed so far."""
    values = {
        s.name: s.value for metric in batch_rows_histogram().collect() for s in metric.samples
    }
    return values.get("emoflow_batch_rows_sum", 0.0), values.get("emoflow_batch_rows_count", 0.0)


async def _batching(
    detector: Detector, images: list[np.ndarray], clients: int, seconds: float
) -> dict:
    batcher = Batcher()
    latencies: list[float] = []
    end = time.perf_counter() + seconds

    async def client(offset: int) -> None:
        index = offset
        while (sent := time.perf_counter()) < end:
            image = images[index % len(images)]
            index += clients
            prepared = await asyncio.to_thread(detector.prepare, image)
            output = await batcher.run(detector, prepared.batch)
            await asyncio.to_thread(detector.faces, prepared, output)
            latencies.append(time.perf_counter() - sent)

    try:
        await asyncio.gather(*(client(k) for k in range(min(clients, 8))))  # warm-up
        latencies.clear()
        end = time.perf_counter() + seconds
        rows_before, calls_before = batch_rows()
        start = time.perf_counter()
        await asyncio.gather(*(client(k) for k in range(clients)))
        elapsed = time.perf_counter() - start
        rows, calls = batch_rows()
    finally:
        await asyncio.to_thread(batcher.close)
    mean_rows = (rows - rows_before) / max(calls - calls_before, 1)
    return summary(latencies, elapsed, clients=clients, mean_batch_rows=round(mean_rows, 1))


def batching(detector: Detector, images: list[np.ndarray], clients: int, seconds: float) -> dict:
    return asyncio.run(_batching(detector, images, clients, seconds))


def machine() -> dict:
    import onnxruntime
    import torch

    cuda = torch.cuda.is_available()
    return {
        "cpu": cpu_model(), "cores": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "torch": torch.__version__, "cuda": torch.version.cuda if cuda else None,
        "onnxruntime": onnxruntime.__version__, "python": platform.python_version(),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, help="the model's .pt (with --onnx)")
    parser.add_argument("--onnx", type=Path, help="the same model's ONNX export")
    parser.add_argument("--imgsz", type=int, default=96, help="input size of the untrained model")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per row")
    parser.add_argument("--concurrency", default="1,8,32,128", help="requests at once (batching)")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if (args.weights is None) != (args.onnx is None):
        parser.error("give both --weights and --onnx, or neither")
    levels = [int(c) for c in args.concurrency.split(",")]

    import torch

    folder = Path(tempfile.mkdtemp(prefix="emoflow-bench-gpu-serving-"))
    weights, onnx_path = args.weights, args.onnx
    source = f"{weights} and {onnx_path}"
    if weights is None:
        weights, onnx_path = untrained_model(folder, args.imgsz)
        source = f"untrained YOLOv8n, {len(EMOTIONS)} classes, imgsz {args.imgsz}"
    images = bench_images(folder / "images", args.images)
    runtimes = {"cpu": Detector(onnx_path)}
    if torch.cuda.is_available():
        runtimes = {"gpu": Detector(onnx_path, weights=weights, device="cuda"), **runtimes}
    results: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine(), "model": source,
        "images": f"{len(images)} drawn sample faces {images[0].shape[1]}x{images[0].shape[0]}, "
        "JPEG-decoded", "seconds_per_row": args.seconds,
    }  # fmt: skip
    for name, detector in runtimes.items():
        rows = {
            "runtime": detector.runtime,
            "no_batching": no_batching(detector, images, args.seconds),
        }
        print(f"{name} ({detector.runtime}) no batching: {rows['no_batching']}", flush=True)
        for clients in levels:
            rows[f"batching_{clients}"] = batching(detector, images, clients, args.seconds)
            print(f"{name} batching, {clients} at once: {rows[f'batching_{clients}']}", flush=True)
        results[name] = rows
    if "gpu" in results:
        best = max((v for k, v in results["gpu"].items() if k.startswith("batching_")),
                   key=lambda row: row["images_per_s"])  # fmt: skip
        results["gpu_batching_gain"] = round(
            best["images_per_s"] / results["gpu"]["no_batching"]["images_per_s"], 2
        )
        print(f"GPU: best batching / no batching = {results['gpu_batching_gain']}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"machine: {results['machine']}\nwritten: {args.out}")


if __name__ == "__main__":
    main()
