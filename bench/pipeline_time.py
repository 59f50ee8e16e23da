"""What one cycle of emotion_ct costs outside training, as users run it.

In one run, on the bundled sample data (params.yaml `sample` sizes) and 1 training epoch:
  scheduler  `emoflow data add-batch` while Airflow runs: the asset event starts the run, the
             scheduler and its LocalExecutor run each task in its own forked process, forked
             from a scheduler that imported the steps' libraries first (emoflow.airflow_preload)
  scheduler_no_preload  the same with `airflow_preload: false`: each task imports them
  baseline   the same DAG on the same revision with `airflow dags test` (every task in one
             process, no scheduler), a fresh Airflow home
For each it prints the run's wall time, the train task's and the rest ("outside training":
every other task plus the scheduling between them), with per-task seconds, and writes them
with the machine's description to bench/results/pipeline_time.json.

    .venv/bin/python bench/pipeline_time.py [--epochs 1]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml
from machine import cpu_model

from emoflow import runs, services
from emoflow.airflow_api import AirflowApi
from ml.config import PROJECT_ROOT, Settings
from ml.params import load_params

RESULTS = PROJECT_ROOT / "bench" / "results" / "pipeline_time.json"
GOAL_S = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def home_settings(root: Path, epochs: int, preload: bool = True) -> Settings:
    params = load_params(PROJECT_ROOT / "params.yaml").model_dump(by_alias=True)
    params["train"]["epochs"] = epochs
    params["schedule"]["fallback_cron"] = None
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return Settings(
        _env_file=None, home=root / "home", params_file=root / "params.yaml",
        mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}", airflow_port=free_port(),
        airflow_preload=preload,
    )  # fmt: skip


def scheduler_run(settings: Settings) -> dict:
    api = AirflowApi(settings)
    services.start_airflow(settings)
    since = datetime.now(UTC)
    revision = subprocess.run(
        [str(services.BIN / "emoflow"), "data", "add-batch", "--sample"],
        env=services.settings_env(settings), capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "emotion_ct will run" in revision, revision
    recorded = datetime.now(UTC)
    run_id = runs.wait_for_new_run(settings, since)
    run = runs.follow(settings, run_id, echo=lambda line: None)
    found = api._request("GET", f"/api/v2/dags/{runs.DAG_ID}/dagRuns/{run_id}/taskInstances")
    tasks = {t["task_id"]: round(t["duration"], 2) for t in found["task_instances"]}
    start = datetime.fromisoformat(run["start_date"])
    wall = (datetime.fromisoformat(run["end_date"]) - start).total_seconds()
    return {
        "run_id": run_id, "wall_s": round(wall, 2), "tasks_s": tasks,
        "event_to_start_s": round((start - recorded).total_seconds(), 2),
        "outside_training_s": round(wall - tasks["train"], 2),
    }  # fmt: skip


def debug_run(settings: Settings) -> dict:
    """The same revision through `airflow dags test`; the train task's time from its MLflow
    run (dags test prints no task durations to rely on)."""
    started = time.monotonic()
    runs.debug_run(settings, {"revision": "r1"}, echo=lambda line: None)
    wall = time.monotonic() - started
    from ml import registry

    client = registry.client(settings)
    (version,) = client.search_model_versions(f"name='{settings.model_name}'")
    train_s = client.get_run(version.run_id).data.metrics["train_seconds"]
    return {
        "wall_s": round(wall, 2), "train_s": round(train_s, 2),
        "outside_training_s": round(wall - train_s, 2),
    }  # fmt: skip


ARMS = (("scheduler", scheduler_run), ("scheduler_no_preload", scheduler_run),
        ("baseline_dags_test", None))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="emoflow-pipeline-"))
    arms = {}
    for arm, run in ARMS:
        settings = home_settings(root / arm, args.epochs, arm == "scheduler") if run else None
        if run is None:  # the baseline reads the scheduler arm's data registry, own Airflow home
            first = home_settings(root / "scheduler", args.epochs)
            settings = first.model_copy(
                update={"home": root / arm / "home", "data_repo": first.registry_repo,
                        "dvc_remote_url": first.remote_url}
            )  # fmt: skip
        services.start(services.mlflow_server(settings), settings, timeout=240)
        try:
            arms[arm] = run(settings) if run else debug_run(settings)
        finally:
            services.stop_airflow(settings)
            services.stop(settings, "mlflow")
        print(f"{arm:20} wall {arms[arm]['wall_s']:7.1f} s, outside training "
              f"{arms[arm]['outside_training_s']:6.1f} s", flush=True)  # fmt: skip
    result = {
        "what": "one emotion_ct cycle on the sample data, seconds outside the train task",
        "goal": f"outside training <= {GOAL_S:.0f} s under the scheduler",
        "machine": f"{cpu_model()}, {os.cpu_count()} cores",
        "date": datetime.now(UTC).date().isoformat(),
        "sample": load_params(PROJECT_ROOT / "params.yaml").sample.model_dump(),
        "epochs": args.epochs,
        **arms,
        "no_preload_vs_preload": {  # how many times longer without the preload
            key: round(arms["scheduler_no_preload"][key] / arms["scheduler"][key], 2)
            for key in ("wall_s", "outside_training_s")
        },
        "goal_met": arms["scheduler"]["outside_training_s"] <= GOAL_S,
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
