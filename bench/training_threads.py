"""Two CPU trainings side by side: each with every core's worth of torch threads, then each with
its share (`OMP_NUM_THREADS`, which ml/yolo.py honours). Prints the wall time of both arms and
writes bench/results/training_threads.json.

    .venv/bin/python bench/training_threads.py [--images 400] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_model

ONE_TRAINING = """
import sys
from pathlib import Path
from ml import yolo
data, out, epochs = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
model = yolo.load(out / "config").YOLO("yolov8n.yaml")
model.train(data=str(data / "data.yaml"), epochs=epochs, imgsz=96, batch=32, workers=0,
            device="cpu", project=str(out), name="run", verbose=False, plots=False, amp=False)
"""


def side_by_side(data: Path, work: Path, epochs: int, threads: int) -> float:
    """Wall seconds of two trainings started together, each with `threads` torch threads."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    started = time.monotonic()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                ONE_TRAINING,
                str(data),
                str(work / f"{threads}-{k}"),
                str(epochs),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        for k in range(2)
    ]
    if any(proc.wait() != 0 for proc in procs):
        raise SystemExit(f"a training with {threads} threads failed")
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    from ml.sample_data import generate

    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        generate(work / "data", train=args.images, valid=40, test=10, seed=0)
        every_core = side_by_side(work / "data", work, args.epochs, cores)
        shared = side_by_side(work / "data", work, args.epochs, max(1, cores // 2))
    result = {
        "machine": {"processor": cpu_model(), "cpu_count": cores},
        "trainings": 2, "images": args.images, "epochs": args.epochs, "imgsz": 96,
        "wall_s_both_every_core_each": round(every_core, 1),
        "wall_s_both_a_share_each": round(shared, 1),
        "ratio": round(every_core / shared, 2),
    }  # fmt: skip
    print(f"two trainings side by side, {cores} cores: {cores} threads each {every_core:.1f} s, "
          f"{max(1, cores // 2)} each {shared:.1f} s ({every_core / shared:.2f}x)")  # fmt: skip
    out = Path(__file__).parent / "results" / "training_threads.json"
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
