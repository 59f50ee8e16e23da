"""The training step on a GPU worker against a plain `yolo train` of the same configuration.

In one run, on one machine, on the same generated dataset:
  plain     `yolo detect train ...` (ultralytics' own command line), nothing of emoflow
  emoflow   `ml.train.train`, the Airflow task's step: MLflow run with system metrics, energy,
            plots, ONNX export (tracked in a local SQLite MLflow store)
  imgsz     the same plain training at 640 px instead of the data-matched size (cost vs mAP50)
  infer     the trained model's raw forward pass on the GPU at batch 1 and larger batches
Throughput is training images per second of the training loop (epochs x train images / the
`time` ultralytics writes in results.csv); GPU utilisation, memory and energy come from NVML,
sampled by `ml.energy.EnergyMeter` around each training. The goal: emoflow / plain >= 0.95.
Writes everything with the machine's description to bench/results/gpu_train.json.

    python bench/gpu_train.py [--train 4000 --valid 500 --epochs 10 --batch 64 --workers 8]

It also runs on a CPU (device cpu) with small sizes, which is how it is checked without a GPU.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from machine import cpu_model

from ml.config import EMOTIONS, PROJECT_ROOT, Settings, resolve_device
from ml.dataset_format import SPLITS, write_data_yaml
from ml.energy import EnergyMeter
from ml.params import TrainParams
from ml.records import DatasetRef
from ml.sample_data import generate
from ml.train import data_imgsz, train
from ml.yolo import load

RESULTS = PROJECT_ROOT / "bench" / "results" / "gpu_train.json"


def machine() -> dict:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu_model(), "cores": os.cpu_count(), "gpu": gpu,
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
    }  # fmt: skip


def _chunk(args: tuple[Path, int, int, int]) -> Path:
    out, train_n, valid_n, seed = args
    generate(out, train=train_n, valid=valid_n, test=1, seed=seed)  # names carry the seed
    return out


def sample_dataset(root: Path, train_n: int, valid_n: int, workers: int) -> Path:
    """The drawn sample faces, generated in parallel chunks and merged into one YOLO folder."""
    chunks = max(1, min(workers, train_n // 100))
    jobs = [(root / f"chunk{k}", train_n // chunks + (k < train_n % chunks),
             valid_n // chunks + (k < valid_n % chunks), k) for k in range(chunks)]  # fmt: skip
    data = root / "data"
    with ProcessPoolExecutor(chunks) as pool:
        for part in pool.map(_chunk, jobs):
            for split in SPLITS:
                for kind in ("images", "labels"):
                    target = data / split / kind
                    target.mkdir(parents=True, exist_ok=True)
                    for file in (part / split / kind).iterdir():
                        file.rename(target / file.name)
            shutil.rmtree(part)
    write_data_yaml(data)
    return data


def results_table(save_dir: Path) -> dict[str, float]:
    """The last row of ultralytics' results.csv: epochs run, loop seconds, val mAP50(-95)."""
    with (save_dir / "results.csv").open() as fh:
        rows = [{k.strip(): float(v) for k, v in row.items()} for row in csv.DictReader(fh)]
    last = rows[-1]
    return {
        "epochs": len(rows), "loop_seconds": last["time"],
        "map50": max(r["metrics/mAP50(B)"] for r in rows),
        "map50_95": max(r["metrics/mAP50-95(B)"] for r in rows),
    }  # fmt: skip


def summary(
    name: str, table: dict, wall: float, energy: tuple[dict, dict], n_train: int, imgsz: int
) -> dict:
    """One row: the results table, wall time, throughput and the energy (metrics, tags)."""
    metrics, tags = energy
    row = {"run": name, "imgsz": imgsz, **table, "wall_seconds": round(wall, 1),
           "images_per_second": round(table["epochs"] * n_train / table["loop_seconds"], 1),
           **{k: round(v, 6) for k, v in metrics.items()}, **tags}  # fmt: skip
    print(json.dumps(row), flush=True)
    return row


def plain_train(data: Path, out: Path, config: Path, imgsz: int, args) -> tuple[Path, float]:
    """ultralytics' own `yolo detect train` (what its `yolo` script runs), in a new process."""
    command = [
        sys.executable, "-c", "from ultralytics.cfg import entrypoint; entrypoint()",
        "detect", "train", f"data={data / 'data.yaml'}", "model=yolov8n.yaml", f"imgsz={imgsz}",
        f"epochs={args.epochs}", f"batch={args.batch}", f"patience={args.epochs}", "seed=0",
        "deterministic=True", f"device={args.device}", f"workers={args.workers}", "plots=False",
        f"project={out}", f"name=plain{imgsz}", "exist_ok=True",
    ]  # fmt: skip
    env = {**os.environ, "YOLO_CONFIG_DIR": str(config), "YOLO_OFFLINE": "true"}
    started = time.monotonic()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return out / f"plain{imgsz}", time.monotonic() - started


def inference(weights: Path, imgsz: int, device: str, seconds: float = 3.0) -> list[dict]:
    """Raw forward passes of the trained model (no HTTP, no pre/post-processing), by batch."""
    import torch

    ultralytics = load(Path(os.environ["YOLO_CONFIG_DIR"]))
    target = torch.device("cpu" if device == "cpu" else "cuda:0")
    model = ultralytics.YOLO(str(weights)).model.eval().to(target)
    half = target.type == "cuda"
    model = model.half() if half else model.float()
    rows = []
    for batch in (1, 8, 32, 128):
        x = torch.rand(batch, 3, imgsz, imgsz, device=target)
        x = x.half() if half else x
        with torch.inference_mode():
            for _ in range(5):
                model(x)
            if half:
                torch.cuda.synchronize()
            count, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds:
                model(x)
                count += 1
            if half:
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - started
        rows.append({"batch": batch, "ms_per_batch": round(1000 * elapsed / count, 3),
                     "images_per_second": round(count * batch / elapsed, 1),
                     "precision": "fp16" if half else "fp32"})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    return rows


def served_latency(onnx_path: Path, imgsz: int, runs: int = 200) -> dict:
    """The service's own detector (ONNX Runtime) on one image: median ms and the providers used
    (CUDA only where onnxruntime-gpu is installed)."""
    import numpy as np

    from serving.model import Detector

    detector = Detector(onnx_path)
    image = np.random.default_rng(0).integers(0, 255, (imgsz, imgsz, 3), dtype=np.uint8)
    times = []
    for i in range(runs + 10):
        started = time.perf_counter()
        detector.predict(image)
        if i >= 10:
            times.append(1000 * (time.perf_counter() - started))
    row = {"providers": detector.session.get_providers(),
           "median_ms": round(sorted(times)[len(times) // 2], 3)}  # fmt: skip
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("train", 4000), ("valid", 500), ("epochs", 10), ("imgsz", 96),
                          ("compare-imgsz", 640), ("batch", 64), ("workers", 8)):  # fmt: skip
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--commit", default="unknown", help="git commit of the code measured")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.device = resolve_device(args.device)

    home = Path(tempfile.mkdtemp(prefix="emoflow-gpu-bench-"))
    config = home / "ultralytics"
    os.environ["YOLO_CONFIG_DIR"] = str(config)
    load(config)  # integrations off, font staged: the same ultralytics settings for every run
    started = time.monotonic()
    data = sample_dataset(home, args.train, args.valid, os.cpu_count() or 1)
    print(f"generated {args.train}+{args.valid} images in {time.monotonic() - started:.0f} s; "
          f"emoflow's imgsz 'auto' gives {data_imgsz(data)} for them")  # fmt: skip
    rows = []

    with EnergyMeter() as meter:
        plain_dir, wall = plain_train(data, home / "plain", config, args.imgsz, args)
    energy = meter.reading()
    rows.append(summary("plain yolo train", results_table(plain_dir), wall,
                        (energy.as_metrics(), energy.as_tags()), args.train, args.imgsz))  # fmt: skip

    settings = Settings(
        _env_file=None, home=home, mlflow_tracking_uri=f"sqlite:///{home}/mlflow.db"
    )
    params = TrainParams(epochs=args.epochs, imgsz=args.imgsz, batch=args.batch, seed=0,
                         patience=args.epochs, device=args.device, workers=args.workers)  # fmt: skip
    dataset = DatasetRef(revision="bench", commit="none", digest="bench", path=data)
    os.chdir(home)  # MLflow's default artifact folder for a SQLite store is ./mlruns
    began = time.monotonic()
    trained = train(params, dataset, home / "runs", settings,
                    {"git_commit": args.commit, "params_digest": "bench"})  # fmt: skip
    wall = time.monotonic() - began
    import mlflow

    run = mlflow.get_run(trained.run_id)  # the energy as the training step logged it
    logged = ({k: v for k, v in run.data.metrics.items() if k.startswith(("energy_", "gpu_"))},
              {k: v for k, v in run.data.tags.items() if k.startswith("energy_")})  # fmt: skip
    rows.append(summary("emoflow training step", results_table(home / "runs" / trained.run_id),
                        wall, logged, args.train, args.imgsz))  # fmt: skip
    system = sorted(k for k in run.data.metrics if k.startswith("system/"))

    with EnergyMeter() as meter:
        big_dir, wall = plain_train(data, home / "plain", config, args.compare_imgsz, args)
    energy = meter.reading()
    rows.append(summary("plain yolo train", results_table(big_dir), wall,
                        (energy.as_metrics(), energy.as_tags()), args.train,
                        args.compare_imgsz))  # fmt: skip

    ratio = rows[1]["images_per_second"] / rows[0]["images_per_second"]
    result = {
        "machine": machine(), "device": args.device, "commit": args.commit,
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "classes": list(EMOTIONS), "runs": rows,
        "throughput_ratio_emoflow_vs_plain": round(ratio, 3), "goal_ratio": 0.95,
        "goal_met": ratio >= 0.95, "mlflow_system_metrics": system,
        "inference_raw_forward": inference(trained.weights, args.imgsz, args.device),
        "served_detector": served_latency(trained.onnx, args.imgsz),
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"throughput emoflow/plain = {ratio:.3f} (goal >= 0.95: {'met' if ratio >= 0.95 else 'NOT met'})"
    )
    print(f"imgsz {args.imgsz}: {rows[0]['images_per_second']} img/s, mAP50 {rows[0]['map50']:.3f}; "
          f"imgsz {args.compare_imgsz}: {rows[2]['images_per_second']} img/s, "
          f"mAP50 {rows[2]['map50']:.3f}")  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
