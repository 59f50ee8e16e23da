"""The steps as Airflow tasks call them: `call` turns XCom dicts into the records a step's
signature names (also `Record | None`) and its record back into JSON; `alarm` decides whether
live drift sends an event."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowSkipException

from emoflow import steps
from ml.records import DriftResult

LIVE = DriftResult(
    drifted=True, share=0.75, reference="r1 (training data of model v3)",
    html_path=Path("/home/x/reports/live/live-20261201T100000Z-vs-r1.html"),
    window_first=datetime(2026, 12, 1, 9, tzinfo=UTC),
    window_last=datetime(2026, 12, 1, 10, tzinfo=UTC), window_rows=400, model_version=3,
)  # fmt: skip


def test_call_turns_xcom_dicts_into_records_and_back(make_settings, tmp_path, monkeypatch):
    """What Airflow hands `alarm` is JSON; `alarm` is typed `DriftResult | None`. (The step is
    wrapped only to give it this test's settings instead of the environment's.)"""
    settings = make_settings(tmp_path)
    seen = {}

    def alarm(live: DriftResult | None) -> dict:
        seen["live"] = live
        return steps.alarm(live, settings=settings)

    monkeypatch.setitem(steps.STEPS, "alarm", alarm)
    extra = steps.call("alarm", LIVE.model_dump(mode="json"))
    assert seen["live"] == LIVE
    assert extra == {
        "report": f"{settings.service_url}/reports/live/{LIVE.html_path.name}",
        "share": 0.75,
        "model_version": 3,
        "window": {"first": "2026-12-01T09:00:00+00:00", "last": "2026-12-01T10:00:00+00:00",
                   "rows": 400},
    }  # fmt: skip


def test_no_drift_or_no_report_sends_no_alarm(make_settings, tmp_path):
    settings = make_settings(tmp_path)
    calm = LIVE.model_copy(update={"drifted": False, "share": 0.1})
    for live in (None, calm):
        with pytest.raises(AirflowSkipException, match="did not drift"):
            steps.alarm(live, settings=settings)


def test_every_task_of_the_dags_has_its_step():
    assert set(steps.STEPS) == {
        "pull", "validate", "train", "register", "gate", "drift", "promote", "monitor", "alarm",
        "export",
    }  # fmt: skip
