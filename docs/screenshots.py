"""Screenshots of the Airflow UI: a task's links to what it made, and the approval page.

One throwaway emoflow home (free ports): MLflow and Airflow's scheduler start, r1 of the sample
data is recorded with ``gate.approval: human`` and tiny training, and once its run waits in
`approve` headless Chromium (Debian's, as tests/serving/test_web_page.py uses) opens two pages
with the admin's token and saves them under docs/screenshots/:

    task-links.png   the Details tab of that run's `train` task: its "MLflow run" link button
    approval.png     the `approve` task's required action: the gate's summary and links, a
                     reason, Approve / Reject

    .venv/bin/python docs/screenshots.py
"""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time
from pathlib import Path

import yaml

from emoflow import runs, services
from emoflow.airflow_api import AirflowApi
from ml.config import PROJECT_ROOT, Settings

OUT = PROJECT_ROOT / "docs" / "screenshots"
PARAMS = {
    "sample": {"seed": 0, "train": 48, "valid": 16, "test": 16},
    "train": {"epochs": 2, "imgsz": 64, "batch": 16, "workers": 0},
    "gate": {"min_map50": 0.0, "min_map50_95": 0.0, "approval": "human"},
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="emoflow-shots-"))
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    settings = Settings(
        _env_file=None, home=root / "home", params_file=root / "params.yaml",
        mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}", serve_port=free_port(),
        airflow_port=free_port(),
    )  # fmt: skip
    env = services.settings_env(settings)
    services.start(services.mlflow_server(settings), settings, timeout=240)
    try:
        subprocess.run([str(services.BIN / "emoflow"), "start", "airflow"], env=env, check=True)
        subprocess.run([str(services.BIN / "emoflow"), "data", "init", "--sample"], env=env,
                       check=True)  # fmt: skip
        api = AirflowApi(settings)
        deadline = time.monotonic() + 900
        while not (waiting := api.pending_approvals(runs.DAG_ID)):
            assert time.monotonic() < deadline, "no run asked for an approval"
            time.sleep(3)
        run_id = waiting[0]["task_instance"]["dag_run_id"]
        shoot(settings, api.token(), run_id)
    finally:
        services.stop_airflow(settings)
        services.stop(settings, "mlflow")


def shoot(settings: Settings, token: str, run_id: str) -> None:
    from playwright.sync_api import sync_playwright

    OUT.mkdir(parents=True, exist_ok=True)
    base = settings.airflow_url
    pages = {
        "task-links.png": f"{base}/dags/{runs.DAG_ID}/runs/{run_id}/tasks/train/details",
        "approval.png": f"{base}/dags/{runs.DAG_ID}/runs/{run_id}/tasks/approve/required_actions",
    }
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True)
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        context.add_cookies([{"name": "_token", "value": token, "url": base}])
        page = context.new_page()
        for name, url in pages.items():
            page.goto(url, wait_until="networkidle")
            page.wait_for_timeout(8000)  # the UI fetches its panels after the page loads
            page.screenshot(path=str(OUT / name), full_page=True)
            print(f"{OUT / name}: {url}")
        browser.close()


if __name__ == "__main__":
    main()
