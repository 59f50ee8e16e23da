"""
### emotion_ct — one continual-training cycle

Pulls a named data revision from the DVC registry, validates it with Great Expectations (the run
stops on bad data), trains YOLOv8 on it, registers the model in MLflow, evaluates challenger
against champion on the same test split, writes an Evidently drift report, and moves the
`champion` alias only when the gate passed.

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
        from emoflow import steps

        return steps.pull(revision).model_dump(mode="json")

    @task(retries=0)
    def validate(dataset: dict) -> dict:
        from emoflow import steps
        from ml.records import DatasetRef

        return steps.validate(DatasetRef(**dataset)).model_dump(mode="json")

    @task(queue="gpu", pool="gpu")
    def train(dataset: dict, validation: dict, overrides: dict) -> dict:
        from emoflow import steps
        from ml.records import DatasetRef

        return steps.train(DatasetRef(**dataset), overrides).model_dump(mode="json")

    @task
    def register(trained: dict, dataset: dict, overrides: dict) -> dict:
        from emoflow import steps
        from ml.records import DatasetRef, TrainResult

        ref = steps.register(TrainResult(**trained), DatasetRef(**dataset), overrides)
        return ref.model_dump(mode="json")

    @task
    def evaluate(model: dict, trained: dict, dataset: dict, overrides: dict) -> dict:
        from emoflow import steps
        from ml.records import DatasetRef, ModelRef, TrainResult

        gate = steps.evaluate(
            ModelRef(**model), TrainResult(**trained), DatasetRef(**dataset), overrides
        )
        return gate.model_dump(mode="json")

    @task
    def drift(dataset: dict) -> dict:
        from emoflow import steps
        from ml.config import Settings, load_params
        from ml.records import DatasetRef
        from monitoring.drift import check_drift

        settings = Settings()
        return check_drift(
            DatasetRef(**dataset),
            steps.champion_dataset(),
            load_params(settings.params_file).drift,
            settings.reports_dir,
        ).model_dump(mode="json")

    @task
    def promote(model: dict, gate: dict, drift_result: dict) -> dict:
        from emoflow import steps
        from ml.records import GateResult, ModelRef

        return steps.promote(ModelRef(**model), GateResult(**gate)).model_dump(mode="json")

    dataset = pull("{{ params.revision }}")
    trained = train(dataset, validate(dataset), overrides)
    model = register(trained, dataset, overrides)
    gate = evaluate(model, trained, dataset, overrides)
    drifted = drift(dataset)
    gate >> drifted
    promote(model, gate, drifted)


emotion_ct()
