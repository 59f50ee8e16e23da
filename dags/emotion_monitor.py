"""
### emotion_monitor — live traffic vs the champion's training data

Every hour, compares the newest predictions of the service's prediction log (image features and
predicted emotion) with the data revision the `champion` model was trained on, and writes an
Evidently report under `<home>/reports/live/`, listed on the reports index page. The task
runs the step `monitor` in `emoflow/steps.py`.

Skips (succeeds with no report) while there is no champion or fewer than
`drift.min_live_rows` predictions (`params.yaml`).
"""

from __future__ import annotations

import pendulum
from airflow.sdk import dag, task

DEFAULT_ARGS = {"retries": 1, "retry_delay": pendulum.duration(seconds=30)}


@dag(
    dag_id="emotion_monitor",
    doc_md=__doc__,
    schedule="@hourly",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["emoflow", "monitoring"],
    default_args=DEFAULT_ARGS,
)
def emotion_monitor():
    @task
    def monitor() -> dict | None:
        from emoflow.steps import call

        return call("monitor")

    monitor()


emotion_monitor()
