"""Airflow's `[core] hostname_callable` for the Celery integration test: two workers on one
machine, each named by its `EMOFLOW_TEST_WORKER` (in compose every container has its own host
name), so the task instances' `hostname` says which worker ran them."""

import os


def hostname() -> str:
    return os.environ["EMOFLOW_TEST_WORKER"]
