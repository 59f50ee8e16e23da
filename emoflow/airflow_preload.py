"""Airflow's task-running parts with the steps' libraries imported once, before they fork.

Airflow's LocalExecutor (in the scheduler) and a Celery worker fork a process for every task
try. Each step imports its libraries lazily, so without this every task imports them anew:
torch, ultralytics, MLflow, Great Expectations and Evidently take 10-15 s together on 2 cores,
which is most of what a task on small data costs. Imported here first, in the process Airflow
forks its task processes from, they are already in every task's memory (shared, copy on write).

Only imports: nothing here opens a connection or touches a GPU (CUDA must not be initialised
before a fork). Some libraries start idle native threads at import (allocator and cleaner
threads); a fork copies only the forking thread, and each library works in a forked task
process as in a fresh one (tests/emoflow/test_airflow_preload.py). ultralytics goes through
`ml.yolo.load` with the home's config folder, the same call the steps make. The setting
`airflow_preload: false` runs plain `airflow`.

    python -m emoflow.airflow_preload scheduler      # what `emoflow start airflow` runs
    python -m emoflow.airflow_preload celery worker  # the compose file's workers
"""

from __future__ import annotations

import importlib
import os
import sys

PRELOADED = (
    "torch",
    "onnxruntime",
    "mlflow",
    "mlflow.tracking",
    "great_expectations",
    "great_expectations.expectations",
    "evidently",
    "evidently.presets",
    "ml.train",
    "ml.gate",
    "ml.scoring",
    "ml.registry",
    "ml.validate",
    "monitoring.drift",
    "monitoring.evidently_report",
)
"""Third-party libraries the steps import inside their functions, and the step modules."""


def preload() -> None:
    """Import `PRELOADED` and ultralytics (through `ml.yolo.load`, as the steps do)."""
    from ml import yolo
    from ml.config import Settings

    # torch.cuda.is_available() through NVML: a CUDA check that leaves the process fork-safe
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    for name in PRELOADED:
        importlib.import_module(name)
    yolo.load(Settings().home / "ultralytics")


def main() -> None:
    """`airflow <args>` after `preload()`."""
    preload()
    from airflow.__main__ import main as airflow_main

    sys.argv = ["airflow", *sys.argv[1:]]
    airflow_main()


if __name__ == "__main__":
    main()
