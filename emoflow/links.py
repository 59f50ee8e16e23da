"""Links from each `emotion_ct` task instance to what it made: Airflow operator extra links.

Each link is built from what its task returned (its XCom `return_value`, the step's record as
JSON) when the task finishes: Airflow's task runner calls `get_link` in the worker and keeps the
address in the XCom `_link_<class name>`, which the API server and the UI read back (a task that
failed returned nothing, and has no link). Addresses are the browser-reachable ones of settings
(`Settings.mlflow_ui_url`, `Settings.service_ui_url`), so they hold in the compose setup too.

    validate  -> Data Docs           the service's /data-docs/ (the validate step's GX site)
    train     -> MLflow run          the training run in the MLflow UI
    register  -> MLflow model version
    gate      -> Gate report         the gate's Markdown report, an artifact of the training run
    drift     -> Drift report        the Evidently page under the service's /reports/
    promote   -> Service /ready      which version the service answers with

`with_links` attaches them to the tasks in the DAG file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperatorLink

from ml.config import Settings


def data_docs_url(value: dict, settings: Settings) -> str:
    return f"{settings.service_ui_url}/data-docs/index.html"


def train_run_url(value: dict, settings: Settings) -> str:
    from ml import registry

    return registry.run_page(settings, value["run_id"])


def model_version_url(value: dict, settings: Settings) -> str:
    return f"{settings.mlflow_ui_url}/#/models/{value['name']}/versions/{value['version']}"


def gate_report_url(value: dict, settings: Settings) -> str:
    """The Markdown report, as the gate logged it into the challenger's training run."""
    from ml import registry

    ref = registry.version_ref(settings, value["challenger"]["version"])
    return registry.run_page(settings, ref.run_id, f"gate/{Path(value['markdown_path']).name}")


def drift_report_url(value: dict, settings: Settings) -> str:
    page = Path(value["html_path"]).resolve().relative_to(settings.reports_dir.resolve())
    return f"{settings.service_ui_url}/reports/{page.as_posix()}"


def service_ready_url(value: dict, settings: Settings) -> str:
    return f"{settings.service_ui_url}/ready"


class StepLink(BaseOperatorLink):
    """A link made from the task's return value by `address` (value, settings) -> URL."""

    @staticmethod
    def address(value: dict, settings: Settings) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        value = XCom.get_value(ti_key=ti_key, key="return_value")
        return self.address(value, Settings()) if value else ""


def _link(link_name: str, make) -> type[StepLink]:
    """A `StepLink` class named after its link (the XCom key is `_link_<class name>`)."""
    class_name = "".join(part.capitalize() for part in link_name.replace("/", " ").split())
    return type(
        f"{class_name}Link", (StepLink,), {"name": link_name, "address": staticmethod(make)}
    )


LINKS: dict[str, type[StepLink]] = {
    "validate": _link("Data Docs", data_docs_url),
    "train": _link("MLflow run", train_run_url),
    "register": _link("MLflow model version", model_version_url),
    "gate": _link("Gate report", gate_report_url),
    "drift": _link("Drift report", drift_report_url),
    "promote": _link("Service ready", service_ready_url),
}
"""Task id -> the link class of its task instances."""


def with_links(output: Any) -> Any:
    """Give the task that produced `output` (the XComArg a TaskFlow call returns) its link."""
    operator = output.operator
    operator.operator_extra_links = (LINKS[operator.task_id](),)
    return output
