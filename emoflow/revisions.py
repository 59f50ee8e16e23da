"""Data revisions and Airflow: each recorded revision becomes an event of the dataset asset,
and each run of `emotion_ct` reads the revision fixed when the run was created.

- `announce` sends the event right after `data add-batch` (or `data init`) records a revision,
  when Airflow is up; when it is not, `announce_unannounced` sends it when emoflow next starts
  Airflow. The event's `extra` is {revision, digest, source}.
- `run_revision` is what the `pull` task reads: the run's conf (`revision`, unless "latest"),
  else the newest revision among the events that triggered the run, else the newest revision
  recorded by the time the run was created (a scheduled or a plain manual run). All three are
  fixed when the run is created, so a retried task reads what its first try read. A scheduled
  run before any revision is recorded is skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from emoflow.airflow_api import DATASET_ASSET, AirflowApi, AirflowApiError
from ml import data_registry
from ml.config import Settings
from ml.data_registry import Revision
from ml.params import load_params

log = logging.getLogger("emoflow.revisions")


def dataset_schedule(settings: Settings | None = None):
    """`emotion_ct`'s schedule: the dataset asset, or the time fallback of params.yaml
    (`schedule.fallback_cron`), whichever comes first. Read when the DAG file is parsed."""
    from airflow.sdk import Asset, AssetOrTimeSchedule, CronTriggerTimetable

    cron = load_params((settings or Settings()).params_file).schedule.fallback_cron
    dataset = Asset(DATASET_ASSET)
    if cron is None:
        return dataset
    return AssetOrTimeSchedule(timetable=CronTriggerTimetable(cron, timezone="UTC"), assets=dataset)


def monitor_schedule(settings: Settings | None = None):
    """`emotion_monitor`'s schedule: `schedule.monitor_cron` of params.yaml (UTC)."""
    from airflow.sdk import CronTriggerTimetable

    cron = load_params((settings or Settings()).params_file).schedule.monitor_cron
    return CronTriggerTimetable(cron, timezone="UTC")


def event_extra(revision: Revision) -> dict[str, str]:
    return {"revision": revision.name, "digest": revision.digest, "source": revision.source}


def announce(settings: Settings, revision: Revision) -> str:
    """Send the asset event for `revision` if Airflow is up; say what happened."""
    api = AirflowApi(settings)
    try:
        if not api.is_up():
            return (
                f"Airflow is not running at {settings.airflow_url}: {revision.name} starts "
                "emotion_ct when emoflow next starts Airflow"
            )
        api.emit_asset_event(DATASET_ASSET, event_extra(revision))
    except AirflowApiError as exc:
        return (
            f"{revision.name} is recorded but not announced to Airflow ({exc}): "
            "`emoflow start airflow` announces it"
        )
    return f"announced {revision.name} to Airflow (asset {DATASET_ASSET}): emotion_ct will run"


def announced(api: AirflowApi) -> set[str]:
    """Revisions the dataset asset has had events for."""
    return {event["extra"].get("revision") for event in api.asset_events(DATASET_ASSET)}


def announce_unannounced(settings: Settings) -> Revision | None:
    """After Airflow starts: the newest revision, if it was recorded while Airflow was down
    (older unannounced ones are part of it: revisions are cumulative)."""
    recorded = data_registry.revisions(settings)
    if not recorded:
        return None
    api = AirflowApi(settings)
    newest = recorded[-1]
    if newest.name in announced(api):
        return None
    api.emit_asset_event(DATASET_ASSET, event_extra(newest))
    return newest


def triggering_extras(context: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The `extra` of every asset event that triggered the running DAG run, oldest first."""
    return [
        dict(event.extra or {})
        for events in (context.get("triggering_asset_events") or {}).values()
        for event in events
    ]


def run_revision(context: Mapping[str, Any], settings: Settings | None = None) -> str:
    """The revision of the running `emotion_ct` run, from its Airflow task context."""
    chosen = (context.get("params") or {}).get("revision") or "latest"
    if chosen != "latest":
        return chosen
    triggered = [extra["revision"] for extra in triggering_extras(context) if "revision" in extra]
    if triggered:
        return max(triggered, key=data_registry.revision_number)
    created: datetime = context["dag_run"].run_after
    settings = settings or Settings()
    if not data_registry.revisions(settings):
        from airflow.sdk.exceptions import AirflowSkipException

        raise AirflowSkipException(f"no data revision recorded yet in {settings.registry_repo}")
    return data_registry.revision_at(settings, created).name
