"""
### emotion_monitor — live traffic vs the champion's training data

On `schedule.monitor_cron` (`params.yaml`, hourly by default), `monitor` compares the newest predictions of the service's prediction log (image
features and predicted emotion) with the data revision the `champion` model was trained on,
and writes an Evidently report under `<home>/reports/live/`, listed on the reports index page.
When the share of drifted columns reaches `drift.share_threshold` (`params.yaml`), `alarm`
sends an event of the asset `emoflow-live-drift` (the report, the window of predictions, the
model version), which starts `emotion_labelling`; otherwise `alarm` is skipped. Each task
runs the step of the same name in `emoflow/steps.py`.

`monitor` skips (succeeds with no report) while there is no champion or fewer than
`drift.min_live_rows` predictions.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Asset, dag, task

from emoflow.airflow_api import LIVE_DRIFT_ASSET
from emoflow.revisions import monitor_schedule

DEFAULT_ARGS = {"retries": 1, "retry_delay": pendulum.duration(seconds=30)}
LIVE_DRIFT = Asset(LIVE_DRIFT_ASSET)


@dag(
    dag_id="emotion_monitor",
    doc_md=__doc__,
    schedule=monitor_schedule(),
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

    @task(outlets=[LIVE_DRIFT])
    def alarm(live: dict | None, *, outlet_events=None) -> dict:
        from emoflow.steps import call

        extra = call("alarm", live)
        outlet_events[LIVE_DRIFT].extra = extra
        return extra

    alarm(monitor())


emotion_monitor()
