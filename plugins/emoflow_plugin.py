"""Airflow plugin: the emoflow UIs one click away from Airflow's navigation bar.

Links point at the MLflow UI, the Bento service's API docs and the drift report pages (served
by the Bento service under /reports/). Addresses are the browser-reachable ones of emoflow's
settings (`public_mlflow_url`, `public_service_url`), read when Airflow loads the plugin
(`on_load`), not when the file is imported. The links of each task instance to what it made
are in emoflow/links.py.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from ml.config import Settings


def nav_links(settings: Settings) -> list[dict]:
    return [
        {"name": "MLflow: models and runs", "href": settings.mlflow_ui_url,
         "category": "emoflow", "destination": "nav"},
        {"name": "Drift reports", "href": f"{settings.service_ui_url}/reports/index.html",
         "category": "emoflow", "destination": "nav"},
        {"name": "Emotion service API", "href": f"{settings.service_ui_url}/docs",
         "category": "emoflow", "destination": "nav"},
    ]  # fmt: skip


class EmoflowPlugin(AirflowPlugin):
    name = "emoflow"
    external_views: list[dict] = []

    def on_load(self, *args, **kwargs) -> None:
        self.external_views = nav_links(Settings())
