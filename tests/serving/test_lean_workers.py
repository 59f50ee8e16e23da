"""Lean workers: a worker process of the real service holds no pyarrow, pandas, MLflow client or
torch (on a machine without a GPU): it reads the registry over MLflow's REST API
(serving/registry_api.py). Checked in the running service (the shared libraries its workers
have mapped) and in a fresh interpreter doing a worker's whole job (its `sys.modules`)."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil

from emoflow import services
from ml.config import PROJECT_ROOT, Settings

GPU_HOST = Path("/proc/driver/nvidia").exists()  # a GPU worker loads torch on purpose
TORCH = ("torch/lib", "libtorch")
HEAVY_LIBRARIES = ("pyarrow", "pandas/_libs", "libarrow", "scipy/", *(() if GPU_HOST else TORCH))
"""Pieces of the paths of the shared objects that pyarrow, pandas, scipy (which the MLflow
client brings) and, on a CPU host, torch map into a process."""
HEAVY_MODULES = (
    "mlflow",
    "onnx",  # the face detector's converter runs in a helper process (serving/faces.py)
    "pandas",
    "pyarrow",
    "scipy",
    "tflite2onnx",
    "ultralytics",
    *(() if GPU_HOST else ("torch",)),
)


def _workers(settings: Settings) -> tuple[psutil.Process, list[psutil.Process]]:
    supervisor = psutil.Process(services.running_pid(settings, "service"))
    children = supervisor.children(recursive=True)
    return supervisor, [p for p in children if "_bentoml_impl.worker" in " ".join(p.cmdline())]


def _heavy_maps(pid: int) -> list[str]:
    lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return sorted({line.split()[-1] for line in lines if any(k in line for k in HEAVY_LIBRARIES)})


def test_the_running_workers_map_no_pyarrow_pandas_or_torch(
    service_url: str, champion_settings: Settings, png_bytes, drawn_image, photo_scenes
) -> None:
    """After crops, frames (the face detector too) and a reload from several clients, no worker
    has a library of pyarrow, pandas, scipy or torch mapped; their memory is printed."""
    crop, frame = png_bytes(drawn_image(96, 96)), png_bytes(photo_scenes.faces[2][1])

    def send(k: int) -> int:
        data = frame if k % 3 == 0 else crop
        files = {"image": ("image.png", data, "image/png")}
        return httpx.post(f"{service_url}/predict", files=files, timeout=60).status_code

    with ThreadPoolExecutor(4) as pool:
        assert set(pool.map(send, range(60))) == {200}
    reload = httpx.post(
        f"{service_url}/reload",
        headers={"Authorization": f"Bearer {champion_settings.serve_reload_token}"},
        timeout=60,
    )
    assert reload.status_code == 200, reload.text
    supervisor, workers = _workers(champion_settings)
    assert len(workers) == champion_settings.serve_workers
    for worker in workers:
        assert _heavy_maps(worker.pid) == [], f"worker {worker.pid} maps heavy libraries"
    processes = [supervisor, *supervisor.children(recursive=True)]
    memory = {p.pid: p.memory_full_info() for p in processes}
    for p in processes:
        print(f"pid {p.pid} {p.name()}: RSS {memory[p.pid].rss / 2**20:.0f} MiB, "
              f"PSS {memory[p.pid].pss / 2**20:.0f} MiB")  # fmt: skip
    print(f"service: RSS {sum(m.rss for m in memory.values()) / 2**20:.0f} MiB, "
          f"PSS {sum(m.pss for m in memory.values()) / 2**20:.0f} MiB")  # fmt: skip


WORKER_JOB = """
import json, sys, tempfile
import numpy as np
from ml.config import Settings
from ml.registry import CHAMPION
from monitoring.prediction_log import PredictionLog
from serving import registry_api
from serving.faces import FaceDetector
from serving.model import load_version
import serving.service  # what the service's entry module imports

settings = Settings()
ref = registry_api.version_by_alias(settings, CHAMPION)
served = load_version(settings, registry_api.version_ref(settings, ref.version), 1)
image = np.zeros((480, 640, 3), np.uint8)
FaceDetector(settings.face_detector_dir, threads=1).find(image)
log = PredictionLog(settings.prediction_log)
log.start()
log.record(image[:96, :96], {"width": 96, "height": 96, "faces": []}, "/predict")
assert log.close() == 0
heavy = [name for name in sys.modules if name.split(".")[0] in json.loads(sys.argv[1])]
print(json.dumps({"version": served.ref.version, "heavy": sorted(heavy)}))
"""


def test_a_worker_imports_no_mlflow_pandas_pyarrow_or_torch(
    champion_settings: Settings, champion_version
) -> None:
    """A fresh interpreter finds the champion, downloads and opens it, runs the face detector and
    writes the prediction log, as a worker does: none of `HEAVY_MODULES` is imported."""
    done = subprocess.run(
        [sys.executable, "-c", WORKER_JOB, json.dumps(HEAVY_MODULES)],
        env=services.settings_env(champion_settings), cwd=PROJECT_ROOT,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result == {"version": champion_version(champion_settings), "heavy": []}
