"""Which data revision a run of emotion_ct reads (`emoflow.revisions.run_revision`), against a
real DVC registry: the run's conf, else its triggering asset events, else the newest revision
recorded when the run was created; never "whatever is newest now"."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowSkipException
from PIL import Image

from emoflow.airflow_api import AirflowApi
from emoflow.revisions import announce, run_revision
from ml import data_batches, data_registry
from ml.dataset_format import write_data_yaml


@dataclass
class Event:  # what Airflow hands a task in `triggering_asset_events`: objects with `.extra`
    extra: dict


@dataclass
class DagRun:
    run_after: datetime
    conf: dict = field(default_factory=dict)


def context(run_after: datetime, revision: str = "latest", events: tuple[str, ...] = ()) -> dict:
    return {
        "params": {"revision": revision},
        "triggering_asset_events": {"emoflow-dataset": [Event({"revision": r}) for r in events]},
        "dag_run": DagRun(run_after),
    }


def batch(root: Path, prefix: str) -> Path:
    for split in ("train", "valid", "test"):
        for kind in ("images", "labels"):
            (root / split / kind).mkdir(parents=True)
        Image.new("RGB", (64, 64), (90, 120, 150)).save(root / split / "images" / f"{prefix}.png")
        (root / split / "labels" / f"{prefix}.txt").write_text("4 0.5 0.5 0.8 0.8\n")
    write_data_yaml(root)
    return root


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, make_settings):
    """r1, then r2 a little over a second later (revision dates have whole seconds)."""
    root = tmp_path_factory.mktemp("revisions")
    settings = make_settings(root / "home")
    first = data_batches.add_batch(settings, batch(root / "a", "a"), "a")
    time.sleep(1.2)
    second = data_batches.add_batch(settings, batch(root / "b", "b"), "b")
    return settings, first, second


def test_the_runs_conf_names_the_revision(recorded):
    settings, first, _ = recorded
    now = datetime.now(UTC)
    assert run_revision(context(now, revision="r1", events=("r2",)), settings) == "r1"


def test_the_newest_triggering_event_wins_by_number_not_by_text(recorded):
    settings, first, _ = recorded
    events = ("r9", "r10", "r2")
    assert run_revision(context(datetime.now(UTC), events=events), settings) == "r10"


def test_latest_is_what_was_newest_when_the_run_was_created(recorded):
    settings, first, second = recorded
    between = datetime.fromisoformat(second.date) - timedelta(microseconds=1)
    assert datetime.fromisoformat(first.date) <= between
    assert run_revision(context(between), settings) == "r1"
    # a retry an hour later, after r2 was recorded, reads what its first try read
    assert run_revision(context(between), settings) == "r1"
    assert run_revision(context(datetime.now(UTC)), settings) == "r2"


def test_a_run_created_before_any_revision_is_a_clear_error(recorded):
    settings, first, _ = recorded
    before = datetime.fromisoformat(first.date) - timedelta(seconds=5)
    with pytest.raises(data_registry.DataRegistryError, match="no data revision was recorded by"):
        run_revision(context(before), settings)


def test_a_scheduled_run_with_no_data_yet_is_skipped(tmp_path, make_settings):
    settings = make_settings(tmp_path / "home")
    with pytest.raises(AirflowSkipException, match="no data revision recorded yet"):
        run_revision(context(datetime.now(UTC)), settings)


class SlowHealth(BaseHTTPRequestHandler):
    """An API server busy for `delay` seconds before each answer (Airflow's, parsing DAGs on two
    cores, can be); its health check says healthy, every other route answers 503."""

    delay = 0.0

    def do_GET(self):
        time.sleep(self.delay)
        self.send_response(200 if self.path.startswith("/api/v2/monitor/health") else 503)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    do_POST = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture
def slow_airflow(make_settings, tmp_path):
    def serve(delay: float, **overrides):
        server = ThreadingHTTPServer(
            ("127.0.0.1", 0), type("Slow", (SlowHealth,), {"delay": delay})
        )
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        port = server.server_address[1]
        return make_settings(tmp_path / "home", airflow_port=port, **overrides)

    servers: list[ThreadingHTTPServer] = []
    yield serve
    for server in servers:
        server.shutdown()


def test_a_busy_airflow_is_up_and_a_missing_one_is_not(
    slow_airflow, make_settings, tmp_path, free_port
):
    assert AirflowApi(slow_airflow(delay=4)).is_up()  # longer than a plain health timeout
    assert not AirflowApi(make_settings(tmp_path / "none", airflow_port=free_port())).is_up()


def test_an_announcement_that_fails_says_the_revision_waits_for_the_next_start(
    slow_airflow, tmp_path, recorded
):
    settings = slow_airflow(delay=0, airflow_password="x")  # its token call fails: 503
    message = announce(settings, recorded[1])
    assert message.startswith(f"{recorded[1].name} is recorded but not announced to Airflow")
    assert "answered 503" in message and "`emoflow start airflow` announces it" in message
