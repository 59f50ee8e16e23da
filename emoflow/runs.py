"""Runs of `emotion_ct`, as the CLI starts and follows them.

`follow` waits for a run through Airflow's REST API and echoes each task's state changes and
the training epochs (read from the train task's log file, which the embedded Airflow writes
under its home). `debug_run` runs the DAG in-process with `airflow dags test` instead: no
scheduler, no executor; for stepping through a task, not for production.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from emoflow import services
from emoflow.airflow_api import AirflowApi, AirflowApiError
from ml.config import Settings

DAG_ID = "emotion_ct"
EPOCH = re.compile(r"((?:epoch \d+/\d+|best weights): .*?\(\d+ s\))")


class RunFailed(RuntimeError):
    """The DAG run failed; the message names the failed tasks and where their logs are."""


def trigger(settings: Settings, conf: dict) -> str:
    return AirflowApi(settings).trigger(DAG_ID, conf)


def wait_for_new_run(settings: Settings, since: datetime, timeout: float = 300) -> str:
    """The id of the first run of `emotion_ct` created at or after `since` (aware): the run an
    asset event starts once the scheduler sees it."""
    api = AirflowApi(settings)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for run in api.dag_runs(DAG_ID):
            if datetime.fromisoformat(run["run_after"]) >= since:
                return run["dag_run_id"]
        time.sleep(1)
    raise AirflowApiError(f"no run of {DAG_ID} started within {timeout:.0f} s of {since}")


def task_log(settings: Settings, run_id: str, task: str, attempt: int = 1) -> Path:
    return (
        settings.airflow_home / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}"
        / f"task_id={task}" / f"attempt={attempt}.log"
    )  # fmt: skip


def follow(
    settings: Settings, run_id: str, timeout: float = 6 * 3600, echo: Callable[[str], None] = print
) -> dict:
    """Wait for run `run_id`; echo task states and epochs; raise RunFailed if it failed."""
    api = AirflowApi(settings)
    epochs_read = 0
    states: dict[str, str | None] = {}

    def on_change(task: str, state: str | None) -> None:
        states[task] = state
        if state:
            echo(f"  task {task}: {state}")

    def epochs() -> None:
        nonlocal epochs_read
        log = task_log(settings, run_id, "train")
        if states.get("train") == "running" and log.exists():
            found = EPOCH.findall(log.read_text(errors="replace"))
            for line in found[epochs_read:]:
                echo(f"  train {line}")
            epochs_read = len(found)

    run = api.wait_for_run(DAG_ID, run_id, timeout, on_change=on_change, on_poll=epochs)
    if run["state"] != "success":
        failed = [task for task, state in states.items() if state in ("failed", "upstream_failed")]
        logs = settings.airflow_home / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}"
        raise RunFailed(
            f"run {run_id} of {DAG_ID} {run['state']} (tasks failed: "
            f"{', '.join(failed) or 'none'}); task logs: {logs} and the Airflow UI at "
            f"{settings.airflow_url}"
        )
    return run


TASK_START = re.compile(r"\[DAG TEST\] starting task_id=(\w+)")
TASK_STATE = re.compile(r"Task instance state updated .* new_state=(\w+)")


def debug_run(settings: Settings, conf: dict, echo: Callable[[str], None] = print) -> Path:
    """One run of `emotion_ct` in this process's child with `airflow dags test` (no scheduler,
    no executor); returns its log file. Task outcomes and epochs are echoed."""
    services.prepare_airflow(settings)
    log = services.log_file(settings, f"{DAG_ID}-{time.strftime('%Y%m%d-%H%M%S')}")
    command = [str(services.BIN / "airflow"), "dags", "test", DAG_ID, "--conf", json.dumps(conf)]
    task, failed = "?", []
    with log.open("w") as out:
        proc = subprocess.Popen(
            command, env=services.airflow_env(settings), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        for line in proc.stdout:
            out.write(line)
            if match := TASK_START.search(line):
                task = match.group(1)
            elif match := TASK_STATE.search(line):
                failed += [task] if match.group(1) == "failed" else []
                echo(f"  task {task}: {match.group(1)}")
            elif match := EPOCH.search(line):
                echo(f"  train {match.group(1)}")
        code = proc.wait()
    if code != 0 or failed or "DagRun failed" in log.read_text()[-2000:]:
        raise RunFailed(
            f"DAG run {DAG_ID} failed (tasks failed: {', '.join(failed) or 'see log'}); see {log}"
        )
    return log
