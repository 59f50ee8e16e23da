"""The scheduler starts through emoflow.airflow_preload: Airflow's own CLI, the steps'
libraries already imported in the process its executor forks task processes from. That the
DAG runs through it end to end is the e2e tests' part; what it saves, bench/pipeline_time.py."""

from __future__ import annotations

import subprocess

from emoflow import services

SNIPPET = """
import os, sys
from emoflow import airflow_preload
airflow_preload.preload()
pid = os.fork()
if pid == 0:  # a task process, as the LocalExecutor forks it: every library works in it
    missing = [m for m in airflow_preload.PRELOADED + ("ultralytics",) if m not in sys.modules]
    if missing:
        os._exit(3)
    import numpy, onnxruntime, pandas, polars, torch
    from mlflow import MlflowClient
    assert float(torch.ones(64, 64).matmul(torch.ones(64, 64)).sum()) == 64.0 ** 3
    assert int(polars.DataFrame({"a": list(range(100))})["a"].sum()) == 4950
    assert int(pandas.DataFrame({"a": numpy.arange(100)}).a.sum()) == 4950
    assert "CPUExecutionProvider" in onnxruntime.get_available_providers()
    MlflowClient(tracking_uri=f"sqlite:///{sys.argv[1]}").search_experiments()
    os._exit(0)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_the_scheduler_starts_preloaded_unless_the_setting_is_off(tmp_path, make_settings):
    def command(settings) -> list[str]:
        (scheduler,) = [s for s in services.airflow_servers(settings) if s.name.endswith("duler")]
        return scheduler.command

    on = make_settings(tmp_path / "on")
    assert command(on)[1:] == ["-m", "emoflow.airflow_preload", "scheduler"]
    off = make_settings(tmp_path / "off", airflow_preload=False)
    assert command(off) == [str(services.BIN / "airflow"), "scheduler"]
    for server in services.airflow_servers(on):  # only the scheduler forks task processes
        if not server.name.endswith("scheduler"):
            assert server.command[0] == str(services.BIN / "airflow")


def test_a_forked_task_process_finds_every_library_imported_and_working(tmp_path, make_settings):
    """Some libraries start idle native threads at import (allocator, cleaner); a fork copies
    only the forking thread. A deadlock here would hang the child: the timeout fails it."""
    env = services.settings_env(make_settings(tmp_path / "home"))
    done = subprocess.run(
        [str(services.BIN / "python"), "-c", SNIPPET, str(tmp_path / "mlflow.db")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, (done.returncode, done.stderr[-3000:])


def test_the_preloaded_command_is_airflow_itself(tmp_path, make_settings):
    env = services.airflow_env(make_settings(tmp_path / "home"))
    plain = subprocess.run([str(services.BIN / "airflow"), "version"], env=env,
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    preloaded = subprocess.run(
        [str(services.BIN / "python"), "-m", "emoflow.airflow_preload", "version"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert preloaded.returncode == 0, preloaded.stderr[-2000:]
    # ultralytics may announce its new settings file first; Airflow's answer is the last line
    assert preloaded.stdout.splitlines()[-1] == plain.stdout.strip() != ""
