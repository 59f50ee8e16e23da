"""
### emotion_labelling — faces of drifted traffic, queued for people to label

Runs on every event of the asset `emoflow-live-drift` (sent by `emotion_monitor` when live
traffic drifts from the champion's training data). `export` writes the drifted window's
answered images as a labelling batch under `<home>/labelling/`: lowest confidence first, at most
`labelling.max_images` (`params.yaml`), the champion's boxes and emotions as pre-annotations,
in YOLO layout and as Label Studio tasks. Once people have labelled it, `emoflow data add-batch
--from <batch folder or Label Studio export.json>` records it as a new revision, which starts
`emotion_ct`. The task runs the step `export` in `emoflow/steps.py`.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Asset, dag, task

from emoflow.airflow_api import LIVE_DRIFT_ASSET

DEFAULT_ARGS = {"retries": 1, "retry_delay": pendulum.duration(seconds=30)}


@dag(
    dag_id="emotion_labelling",
    doc_md=__doc__,
    schedule=[Asset(LIVE_DRIFT_ASSET)],
    catchup=False,
    max_active_runs=1,
    tags=["emoflow", "labelling"],
    default_args=DEFAULT_ARGS,
)
def emotion_labelling():
    @task
    def export(**context) -> dict:
        from emoflow.revisions import triggering_extras
        from emoflow.steps import call

        return call("export", triggering_extras(context)[-1])

    export()


emotion_labelling()
