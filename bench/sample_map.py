"""How well YOLOv8n learns the drawn sample faces, trained through emoflow's own steps.

In one run, on the same generated dataset and the same training configuration:
  emoflow   ml.train.train (MLflow run, per-epoch metrics, ONNX export) + ml.scoring.score
  baseline  a plain ultralytics `YOLO(...).train(...)` + `.val(split="test")`, nothing else
It prints test mAP50 / mAP50-95 and training throughput (images/s) of both, and writes them with
the machine's description to bench/results/sample_map.json.

    .venv/bin/python bench/sample_map.py [--train 2400 --valid 400 --test 400 --epochs 30 --imgsz 96]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from emoflow import services
from ml import data_batches, data_registry
from ml.config import PROJECT_ROOT, Settings
from ml.params import TrainParams
from ml.sample_data import generate
from ml.scoring import score
from ml.train import train
from ml.yolo import load


def machine() -> str:
    import os

    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {gpu}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("train", 2400), ("valid", 400), ("test", 400), ("epochs", 30),
                          ("imgsz", 96), ("batch", 32), ("seed", 0)):  # fmt: skip
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="emoflow-bench-"))
    settings = Settings(_env_file=None, home=home, mlflow_tracking_uri="http://127.0.0.1:5871")
    params = TrainParams(epochs=args.epochs, imgsz=args.imgsz, batch=args.batch, seed=args.seed,
                         patience=args.epochs, device=args.device)  # fmt: skip
    batch = home / "sample"
    generate(batch, train=args.train, valid=args.valid, test=args.test, seed=args.seed)
    data_batches.add_batch(settings, batch, "bench sample")
    dataset = data_registry.pull(settings)
    services.start(services.mlflow_server(settings), settings, timeout=240)
    rows = {}
    try:
        started = time.monotonic()
        trained = train(params, dataset, home / "runs", settings, {"git_commit": "bench"})
        seconds = time.monotonic() - started
        result = score(trained.weights, dataset, args.imgsz, None, settings)
        rows["emoflow"] = (seconds, result.map50, result.map50_95)

        ultralytics = load(home / "ultralytics")
        model = ultralytics.YOLO(params.model)
        started = time.monotonic()
        model.train(data=str(dataset.path / "data.yaml"), imgsz=args.imgsz, epochs=args.epochs,
                    batch=args.batch, patience=args.epochs, seed=args.seed, deterministic=True,
                    device=trained.device, workers=params.workers, plots=False,
                    project=str(home / "baseline"), name="train", verbose=False)  # fmt: skip
        seconds = time.monotonic() - started
        metrics = ultralytics.YOLO(model.trainer.best).val(
            data=str(dataset.path / "data.yaml"), split="test", imgsz=args.imgsz, plots=False,
            project=str(home / "baseline"), name="val", verbose=False,
        )  # fmt: skip
        rows["plain ultralytics"] = (seconds, float(metrics.box.map50), float(metrics.box.map))
    finally:
        services.stop(settings, "mlflow")

    images = args.train * args.epochs
    print(f"\nmachine: {machine()}")
    print(f"data: {args.train}/{args.valid}/{args.test} images, imgsz {args.imgsz}, "
          f"{args.epochs} epochs, batch {args.batch}\n")  # fmt: skip
    print(f"{'':18} {'train s':>8} {'img/s':>7} {'test mAP50':>10} {'mAP50-95':>9}")
    for name, (seconds, map50, map50_95) in rows.items():
        print(f"{name:18} {seconds:8.0f} {images / seconds:7.1f} {map50:10.3f} {map50_95:9.3f}")
    ratio = rows["plain ultralytics"][0] / rows["emoflow"][0]
    print(f"\nemoflow throughput / plain ultralytics: {ratio:.2f}")
    out = PROJECT_ROOT / "bench" / "results" / "sample_map.json"
    out.write_text(json.dumps({
        "machine": machine(), "args": vars(args), "throughput_ratio": ratio,
        "rows": {k: {"train_seconds": s, "images_per_s": images / s, "test_map50": m50,
                     "test_map50_95": m} for k, (s, m50, m) in rows.items()},
        "date": time.strftime("%Y-%m-%d"),
    }, indent=2))  # fmt: skip
    print(f"written: {out}")


if __name__ == "__main__":
    main()
