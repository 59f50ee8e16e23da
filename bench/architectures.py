"""YOLO26n against YOLOv8n, trained from scratch on the same drawn faces with the same settings.

For each architecture: training wall time, test mAP50 / mAP50-95, top-1 emotion accuracy and
macro-F1 of the matched faces (`ml.scoring.score`), the ONNX export's median ONNX Runtime CPU
latency at the served size, batch 1 (`ml.scoring.measure_latency`, as the gate times it), and
the median time of the service's post-processing of that output (`serving.model.decode`: NMS).
For YOLO26 also its NMS-free (end-to-end) head, the alternative export: its test mAP50
(ultralytics' validator with `nms=False`), its output shape and latency. Prints them side by
side and writes them with the machine to bench/results/architectures.json.

    OMP_NUM_THREADS=2 flock /tmp/emoflow-heavy.lock .venv/bin/python bench/architectures.py \
        [--train 1200 --valid 200 --test 400 --epochs 20 --imgsz 96]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from machine import cpu_model

from ml import scoring, yolo
from ml.config import Settings
from ml.records import DatasetRef
from ml.sample_data import generate

ARCHITECTURES = ("yolov8n.yaml", "yolo26n.yaml")


def decode_ms(onnx_path: Path, images: list[Path]) -> float:
    """Median milliseconds of the service's decoding (`serving.model.decode`: threshold 0.25,
    per-class NMS) of one image's output of the export."""
    from ml.embedding import read_rgb
    from serving.model import Detector, decode

    detector = Detector(onnx_path)
    times = []
    for path in images:
        output = detector.run(detector.prepare(read_rgb(path)).batch)[0]
        start = time.perf_counter()
        decode(output, 0.25, 0.7, 300)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def end_to_end(weights: Path, dataset: DatasetRef, imgsz: int, settings: Settings) -> dict:
    """YOLO26's NMS-free head: test mAP50 by ultralytics' validator, and its ONNX export's
    output shape and latency (exported beside `weights` under another name)."""
    import onnxruntime as ort

    ultralytics = yolo.load(settings.home / "ultralytics")
    metrics = ultralytics.YOLO(str(weights)).val(
        data=str(dataset.path / "data.yaml"), split="test", imgsz=imgsz, batch=32, nms=False,
        device="cpu", plots=False, verbose=False, project=str(settings.runs_dir / "eval"),
        name="end2end", exist_ok=True,
    )  # fmt: skip
    copy = weights.with_name("end2end.pt")
    copy.write_bytes(weights.read_bytes())
    exported = ultralytics.YOLO(str(copy)).export(
        format="onnx", imgsz=imgsz, dynamic=True, simplify=True, nms=False, verbose=False
    )
    images = scoring.split_images(dataset, 50)
    output = ort.InferenceSession(exported, providers=["CPUExecutionProvider"]).get_outputs()[0]
    return {
        "test_map50": round(float(metrics.box.map50), 4),
        "output_shape": [str(dim) for dim in output.shape],
        "onnx_cpu_ms": round(scoring.measure_latency(Path(exported), images, imgsz), 3),
    }


def one(name: str, dataset: DatasetRef, args, settings: Settings) -> tuple[dict, Path]:
    ultralytics = yolo.load(settings.home / "ultralytics")
    model = ultralytics.YOLO(name)
    started = time.monotonic()
    model.train(
        data=str(dataset.path / "data.yaml"), imgsz=args.imgsz, epochs=args.epochs, batch=32,
        patience=args.epochs, seed=0, deterministic=True, device="cpu", workers=0, amp=False,
        plots=False, project=str(settings.runs_dir), name=name, exist_ok=True, verbose=False,
    )  # as ml.train.train does  # fmt: skip
    seconds = time.monotonic() - started
    weights = Path(model.trainer.best)
    scored = scoring.score(weights, dataset, args.imgsz, None, settings, weights.parent)
    onnx_path = yolo.export_onnx(weights, args.imgsz, settings.home / "ultralytics")
    images = scoring.split_images(dataset, 50)
    return {
        "architecture": yolo.architecture(model),
        "train_s": round(seconds, 1),
        "test_map50": round(scored.map50, 4),
        "test_map50_95": round(scored.map50_95, 4),
        "accuracy": scored.accuracy and round(scored.accuracy, 4),
        "macro_f1": scored.macro_f1 and round(scored.macro_f1, 4),
        "matched_faces": f"{scored.matched_faces}/{scored.faces}",
        "onnx_cpu_ms": round(scoring.measure_latency(onnx_path, images, args.imgsz), 3),
        "decode_ms": round(decode_ms(onnx_path, images), 3),
    }, weights  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag, default in (("train", 1200), ("valid", 200), ("test", 400), ("epochs", 20),
                          ("imgsz", 96)):  # fmt: skip
        parser.add_argument(f"--{flag}", type=int, default=default)
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="emoflow-architectures-") as tmp:
        settings = Settings(_env_file=None, home=Path(tmp) / "home")
        path = Path(tmp) / "data"
        generate(path, train=args.train, valid=args.valid, test=args.test, seed=0)
        dataset = DatasetRef(revision="bench", commit="none", digest="none", path=path)
        rows, weights = {}, {}
        for name in ARCHITECTURES:
            rows[name], weights[name] = one(name, dataset, args, settings)
        nms_free = end_to_end(weights["yolo26n.yaml"], dataset, args.imgsz, settings)
    result = {
        "machine": {"processor": cpu_model(), "cpu_count": os.cpu_count(),
                    "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
        "data": {"train": args.train, "valid": args.valid, "test": args.test, "seed": 0},
        "epochs": args.epochs, "imgsz": args.imgsz, "batch": 32, "device": "cpu",
        "architectures": rows, "yolo26n_nms_free_head": nms_free,
        "bench_s": round(time.monotonic() - started, 1),
    }  # fmt: skip
    keys = [key for key in rows[ARCHITECTURES[0]] if key != "architecture"]
    print(f"{'':16}" + "".join(f"{rows[n]['architecture']:>14}" for n in ARCHITECTURES))
    for key in keys:
        print(f"{key:16}" + "".join(f"{rows[n][key]!s:>14}" for n in ARCHITECTURES))
    print(f"yolo26n NMS-free head: test mAP50 {nms_free['test_map50']}, output "
          f"{nms_free['output_shape']}, ONNX CPU {nms_free['onnx_cpu_ms']} ms")  # fmt: skip
    out = Path(__file__).parent / "results" / "architectures.json"
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
