"""
### emotion_ct — one continual-training cycle

Runs when a new data revision is recorded (an event of the asset `emoflow-dataset`) and on the
time fallback of `params.yaml` (`schedule.fallback_cron`). Pulls the run's data revision (its
conf's, else the newest among the events that triggered it, else the newest recorded when the
run was created) from the DVC registry, validates it with Great Expectations (the run
stops on bad data), trains YOLOv8 on it, registers the model in MLflow, gates challenger
against champion on the same test split, writes an Evidently drift report, and moves the
`champion` alias only when the gate passed. Each task runs the step of the same name in
`emoflow/steps.py`.

**Params** (Trigger DAG w/ config): `revision` (a tag such as `r3`, or `latest`), and optional
`epochs` / `imgsz` / `init` / `data` / `balance` (the continual-training knobs of the `train`
section) / `approval` to override `params.yaml` for this run only. With
`gate.approval: human` a passing challenger waits in `approve` (Airflow's required actions)
for a person to approve or reject it.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag, task

from emoflow.approval import approval_task
from emoflow.links import with_links
from emoflow.revisions import dataset_schedule

DEFAULT_ARGS = {"retries": 1, "retry_delay": pendulum.duration(seconds=30)}


@dag(
    dag_id="emotion_ct",
    doc_md=__doc__,
    schedule=dataset_schedule(),  # no start_date: the time fallback waits for its next time
    catchup=False,
    max_active_runs=1,
    tags=["emoflow", "training"],
    default_args=DEFAULT_ARGS,
    render_template_as_native_obj=True,
    params={
        "revision": Param(
            "latest",
            type="string",
            description="Data revision tag; 'latest' = the newest when the run was created.",
        ),  # fmt: skip
        "epochs": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            description="Override epochs (and finetune_epochs).",
        ),
        "imgsz": Param(None, type=["null", "integer"], minimum=32, description="Override imgsz."),
        "approval": Param(
            None,
            type=["null", "string"],
            enum=[None, "auto", "human"],
            description="Override gate.approval: human = a person approves the promotion.",
        ),  # fmt: skip
        "init": Param(
            None,
            type=["null", "string"],
            enum=[None, "scratch", "champion"],
            description="Override train.init: scratch = from the architecture; champion = from "
            "the champion's weights (fine-tuning schedule).",
        ),  # fmt: skip
        "data": Param(
            None,
            type=["null", "string"],
            enum=[None, "cumulative", "replay"],
            description="Override train.data: cumulative = every train image; replay = the new "
            "images plus a class-balanced sample of earlier ones (train.replay_size).",
        ),  # fmt: skip
        "balance": Param(
            None,
            type=["null", "string"],
            enum=[None, "none", "sample"],
            description="Override train.balance: sample = list rare-class images more often.",
        ),  # fmt: skip
    },
)
def emotion_ct():
    overrides = {
        "epochs": "{{ params.epochs }}", "imgsz": "{{ params.imgsz }}",
        "init": "{{ params.init }}", "data": "{{ params.data }}", "balance": "{{ params.balance }}",
    }  # fmt: skip

    @task
    def pull(**context) -> dict:
        from emoflow.revisions import run_revision
        from emoflow.steps import call

        return call("pull", run_revision(context))

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
    def promote(model: dict, verdict: dict, drift_report: dict, approval: dict) -> dict:
        from emoflow.steps import call

        return call("promote", model, verdict, approval)

    # each task but pull links to what it made (emoflow/links.py: the task instance's extra links)
    dataset = pull()
    trained = with_links(train(dataset, with_links(validate(dataset)), overrides))
    model = with_links(register(trained, dataset, overrides))
    verdict = with_links(gate(model, trained, dataset, overrides))
    drift_report = with_links(drift(dataset))
    verdict >> drift_report
    approval = approval_task()  # asks a person only with gate.approval: human (or conf)
    drift_report >> approval
    with_links(promote(model, verdict, drift_report, approval.output))


emotion_ct()
