"""
### emotion_ct — one continual-training cycle

Pulls a named data revision from the DVC registry, validates it with Great Expectations (the run
stops on bad data), trains YOLOv8 on it, registers the model in MLflow, gates challenger
against champion on the same test split, writes an Evidently drift report, and moves the
`champion` alias only when the gate passed. Each task runs the step of the same name in
`emoflow/steps.py`.

**Params** (Trigger DAG w/ config): `revision` (a tag such as `r3`, or `latest`), and optional
`epochs` / `imgsz` to override `params.yaml` for this run only.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag, task

DEFAULT_ARGS = {"retries": 1, "retry_delay": pendulum.duration(seconds=30)}


@dag(
    dag_id="emotion_ct",
    doc_md=__doc__,
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["emoflow", "training"],
    default_args=DEFAULT_ARGS,
    render_template_as_native_obj=True,
    params={
        "revision": Param("latest", type="string", description="Data revision tag or 'latest'."),
        "epochs": Param(None, type=["null", "integer"], minimum=1, description="Override epochs."),
        "imgsz": Param(None, type=["null", "integer"], minimum=32, description="Override imgsz."),
    },
)
def emotion_ct():
    overrides = {"epochs": "{{ params.epochs }}", "imgsz": "{{ params.imgsz }}"}

    @task
    def pull(revision: str) -> dict:
        from emoflow.steps import call

        return call("pull", revision)

    @task(retries=0)
    def validate(dataset: dict) -> dict:
        from emoflow.steps import call

        return call("validate", dataset)

    @task(queue="gpu", pool="gpu")
    def train(dataset: dict, validation: dict, overrides: dict) -> dict:
        from emoflow.steps import call

        return call("train", dataset, overrides)

    @task
    def register(trained: dict, dataset: dict, overrides: dict) -> dict:
        from emoflow.steps import call

        return call("register", trained, dataset, overrides)

    @task
    def gate(model: dict, trained: dict, dataset: dict, overrides: dict) -> dict:
        from emoflow.steps import call

        return call("gate", model, trained, dataset, overrides)

    @task
    def drift(dataset: dict) -> dict:
        from emoflow.steps import call

        return call("drift", dataset)

    @task
    def promote(model: dict, verdict: dict, drift_report: dict) -> dict:
        from emoflow.steps import call

        return call("promote", model, verdict)

    dataset = pull("{{ params.revision }}")
    trained = train(dataset, validate(dataset), overrides)
    model = register(trained, dataset, overrides)
    verdict = gate(model, trained, dataset, overrides)
    drift_report = drift(dataset)
    verdict >> drift_report
    promote(model, verdict, drift_report)


emotion_ct()
