"""The steps as Airflow tasks call them: `call` turns XCom dicts into the records a step's
signature names (also `Record | None`) and its record back into JSON; a step reads the data a
record names from its own workspace; `alarm` decides whether live drift sends an event."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from emoflow import steps
from ml import data_batches, data_registry, registry
from ml.records import DatasetRef, DriftResult
from ml.safe_weights import UnsafeWeights
from ml.sample_data import generate

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


def test_a_step_pulls_the_revision_a_record_names_into_its_own_workspace(make_settings, tmp_path):
    """The pull ran on one worker; validate runs on another, with its own home: it reads the
    revision by name from the registry's remotes, never the path in the record, and refuses
    a record whose digest is not the revision's."""
    shared = {"data_git_remote": str(tmp_path / "registry.git"),
              "dvc_remote_url": str(tmp_path / "dvc-remote")}  # fmt: skip
    first, other = (make_settings(tmp_path / name, **shared) for name in ("first", "other"))
    generate(tmp_path / "batch" / "YOLO_format", train=32, valid=8, test=8, seed=1)
    data_batches.add_batch(first, tmp_path / "batch", "sample")
    pulled = steps.pull("r1", settings=first).model_dump(mode="json")  # as XCom carries it
    shutil.rmtree(first.home)  # the first worker's files are out of reach

    result = steps.validate(DatasetRef.model_validate(pulled), settings=other)
    assert result.ok and result.revision == "r1" and result.counts["train/images"] == 32
    (workspace,) = other.workspaces_dir.iterdir()
    assert workspace.name.startswith("r1-")

    moved = DatasetRef.model_validate({**pulled, "digest": "0" * 32})
    with pytest.raises(data_registry.DataRegistryError, match=r"r1: .*the tag was moved"):
        steps.validate(moved, settings=other)


@pytest.mark.parametrize(
    "error",
    [registry.PromotionConflict("champion moved"), UnsafeWeights("best.pt: calls os.system")],
    ids=["promotion-conflict", "unsafe-weights"],
)
def test_a_fault_a_retry_would_meet_again_fails_the_task_without_retry(error):
    def failing_step(live: DriftResult | None) -> dict:
        raise error

    with pytest.raises(AirflowFailException, match=str(error)):
        steps.run_with_xcom(failing_step, None)


def test_other_errors_reach_airflow_as_they_are_so_it_retries():
    def failing_step() -> dict:
        raise OSError("disk hiccup")

    with pytest.raises(OSError, match="disk hiccup"):
        steps.run_with_xcom(failing_step)
