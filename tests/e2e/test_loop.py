"""One turn of the continual loop, with no command in between but the labelling.

Airflow's scheduler, a real MLflow server and the real Bento service run; r1 is recorded and
its asset event trains the champion. A shifted stream of faces (darker, smaller: the
generator's knobs) goes through the service; `emotion_monitor` (every minute in this test's
params) sees the drift and sends the alarm event; `emotion_labelling` exports the drifted
faces; the test labels them with the generator's ground truth (the test is the labeller, and
says so) and records them with `emoflow data add-batch`; that revision's event runs
`emotion_ct`, whose gate promotes the challenger; the service answers with the new version.
Both cycles run with `train.init: champion` and `train.data: replay`: the first, with no
champion yet, trains from scratch; the second starts from v1's weights and learns from the
labelled faces plus a class-balanced sample of r1's (the lineage and the sample are checked).

The gate is permissive here (no floors, no improvement bound) and the models are tiny (48
images, 3 epochs: they learn next to nothing): this test is about the loop closing, not about
what a turn of it gains; the gate's rules have their own tests. The accuracy on the shifted
stream before and after the turn is printed (run with -s), as a record, not as a claim.
"""

from __future__ import annotations

import csv
import io
import subprocess
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image

from emoflow import runs, services
from emoflow.airflow_api import LIVE_DRIFT_ASSET, AirflowApi
from ml import data_registry, registry
from ml.config import EMOTIONS, PROJECT_ROOT
from ml.replay import image_class
from ml.sample_data import Shift, generate
from monitoring.face_store import SUFFIXES

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

LOOP_PARAMS = {
    "schedule": {"fallback_cron": None, "monitor_cron": "* * * * *"},
    "sample": {"seed": 0, "train": 48, "valid": 16, "test": 16},
    "train": {"epochs": 3, "imgsz": 64, "batch": 16, "workers": 0,
              "init": "champion", "data": "replay", "replay_size": 24},
    "gate": {"min_map50": 0.0, "min_map50_95": 0.0, "min_improvement": -1.0,
             "max_recall_regression": 1.0, "max_latency_ms": None,
             "max_forgetting_map50": 1.0, "max_forgetting_recall": 1.0},
    "drift": {"min_live_rows": 20, "max_rows": 100, "share_threshold": 0.3},
    "labelling": {"max_images": 100, "valid_share": 0.2, "test_share": 0.2},
}  # fmt: skip
SHIFT = Shift(brightness=-0.35, face_scale=0.7)


def emoflow(env: dict, *args: str) -> str:
    result = subprocess.run(
        [str(services.BIN / "emoflow"), *args], env=env, capture_output=True, text=True,
        cwd=PROJECT_ROOT, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout


def pixels(data: bytes) -> np.ndarray:
    """An image's decoded RGB pixels, as float."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float32)


def true_label(stored: bytes, stream: list[tuple[bytes, str]]) -> str:
    """The label of the stream image an exported one was stored from: the nearest in pixels
    (the service stores what it decoded, as JPEG, so not byte for byte)."""
    found = pixels(stored)
    errors = [
        np.abs(pixels(data) - found).mean() if pixels(data).shape == found.shape else np.inf
        for data, _ in stream
    ]
    best = int(np.argmin(errors))
    assert errors[best] < 8, f"no streamed image looks like this one (mean error {errors[best]})"
    return stream[best][1]


def shifted_stream(root: Path) -> list[tuple[bytes, str]]:
    """(PNG bytes, the true label file's text) of 60 darker, smaller drawn faces."""
    generate(root, train=40, valid=10, test=10, seed=11, shift=SHIFT, prefix="x")
    return [
        (image.read_bytes(), (image.parent.parent / "labels" / f"{image.stem}.txt").read_text())
        for image in sorted(root.glob("*/images/*.png"))
    ]


def accuracy(url: str, stream: list[tuple[bytes, str]]) -> tuple[float, set[int]]:
    """Share of the stream whose answered emotion is the true one, and the versions answering."""
    right, versions = 0, set()
    for data, label in stream:
        answer = httpx.post(f"{url}/predict", files={"image": ("x.png", data)}, timeout=30).json()
        right += answer["emotion"] == EMOTIONS[int(label.split()[0])]
        versions.add(answer["model_version"])
    return right / len(stream), versions


def wait_until(what: str, check, timeout: float, poll: float = 3.0):
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s"
        time.sleep(poll)
    return found


def check_replay(settings, tmp_path: Path, new: int) -> None:
    """v2's training list (its MLflow run's data/train_list.txt): every one of the `new` train
    images r2 added, and `replay_size` of r1's, as evenly spread over the emotions as r1 has
    them (a class short of its share gives all it has)."""
    client = registry.client(settings)
    trained = client.get_run(client.get_model_version(settings.model_name, "2").run_id)
    listed = client.download_artifacts(trained.info.run_id, "data/train_list.txt", str(tmp_path))
    names = Path(listed).read_text().split()
    r1 = {path.name: image_class(path)
          for path in (data_registry.pull(settings, "r1").path / "train" / "images").iterdir()}  # fmt: skip
    earlier = Counter(r1[name] for name in names if name in r1)
    size = LOOP_PARAMS["train"]["replay_size"]
    assert sum(earlier.values()) == size == int(trained.data.params["replay_earlier_images"])
    assert len(names) - size == new == int(trained.data.params["replay_new_images"])
    available = Counter(r1.values())
    most = max(earlier.values())
    short = {c: earlier[c] for c in available if earlier[c] < min(available[c], most - 1)}
    assert not short, (earlier, available)


def check_forgetting_table(settings, api: AirflowApi, run_id: str, tmp_path: Path) -> None:
    """r2's gate also scored v1 and v2 on the test images r1 added (forgetting), and wrote the
    revision x class table to the report and to MLflow (gate/forgetting-v2.csv, metrics)."""
    gate = api._request(
        "GET", f"/api/v2/dags/{runs.DAG_ID}/dagRuns/{run_id}/taskInstances/gate/"
        "xcomEntries/return_value",
    )["value"]  # fmt: skip
    (earlier,) = gate["forgetting"]
    r1_test = len(list((data_registry.pull(settings, "r1").path / "test" / "images").iterdir()))
    assert earlier["revision"] == "r1" and earlier["challenger"]["images"] == r1_test
    assert earlier["champion"]["version"] == 1 and earlier["challenger"]["version"] == 2
    client = registry.client(settings)
    run_id_v2 = client.get_model_version(settings.model_name, "2").run_id
    table = client.download_artifacts(run_id_v2, "gate/forgetting-v2.csv", str(tmp_path))
    rows = list(csv.DictReader(Path(table).open()))
    r1_rows = {(row["metric"], row["class"]) for row in rows if row["revision"] == "r1"}
    assert ("map50", "") in r1_rows and {("recall", e) for e in EMOTIONS} & r1_rows
    metrics = client.get_run(run_id_v2).data.metrics
    drop = earlier["champion"]["map50"] - earlier["challenger"]["map50"]
    assert metrics["forgetting/r1/map50_drop"] == pytest.approx(drop, abs=1e-4)


def test_drift_labelling_and_retraining_close_the_loop(tmp_path, make_settings):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(LOOP_PARAMS))
    settings = make_settings(
        tmp_path / "home", params_file=params, serve_poll_seconds=2, serve_workers=1
    )
    env = services.settings_env(settings)
    api = AirflowApi(settings)
    services.start(services.mlflow_server(settings), settings, timeout=180)
    try:
        emoflow(env, "start", "airflow")
        since = datetime.now(UTC)
        recorded = emoflow(env, "data", "init", "--sample")
        assert "announced r1" in recorded, recorded
        runs.follow(settings, runs.wait_for_new_run(settings, since, 120), 900, lambda _: None)
        assert registry.version_by_alias(settings, registry.CHAMPION).version == 1
        services.start(services.bento_service(settings), settings, timeout=300)

        stream = shifted_stream(tmp_path / "shifted")
        before, versions = accuracy(settings.service_url, stream)
        assert versions == {1}

        # emotion_monitor (every minute) sees the drift and sends the alarm: no command
        alarm = wait_until("the live-drift alarm", lambda: api.asset_events(LIVE_DRIFT_ASSET), 300)
        extra = alarm[0]["extra"]
        assert extra["model_version"] == 1 and extra["window"]["rows"] >= 20
        assert extra["share"] >= 0.3 and "/reports/live/" in extra["report"]
        assert httpx.get(extra["report"]).status_code == 200  # the report page, served

        # the alarm's event started emotion_labelling, which exports the drifted faces
        labelling = wait_until("a labelling run", lambda: api.dag_runs("emotion_labelling"), 120)
        run_id = labelling[0]["dag_run_id"]
        assert api.wait_for_run("emotion_labelling", run_id, 300)["state"] == "success"
        xcom = api._request(
            "GET", f"/api/v2/dags/emotion_labelling/dagRuns/{run_id}/taskInstances/export/"
            "xcomEntries/return_value",
        )["value"]  # fmt: skip
        batch = Path(xcom["path"])
        images = sorted(path for path in batch.glob("*/images/*") if path.suffix in SUFFIXES)
        assert xcom["images"] == len(images) > 0 and (batch / "tasks.json").is_file()

        # the labeller: this test, with the generator's ground truth for each exported face
        for image in images:
            label = image.parent.parent / "labels" / f"{image.stem}.txt"
            label.write_text(true_label(image.read_bytes(), stream))
        since = datetime.now(UTC)
        added = emoflow(env, "data", "add-batch", "--from", str(batch), "--note", "labelled")
        assert "r2" in added and "emotion_ct will run" in added

        # r2's event runs emotion_ct; its gate promotes v2; the service follows the alias
        run = runs.follow(settings, runs.wait_for_new_run(settings, since, 120), 900, print)
        assert run["run_type"] == "asset_triggered"
        assert registry.version_by_alias(settings, registry.CHAMPION).version == 2
        ready = lambda: httpx.get(f"{settings.service_url}/ready").json()["version"] == 2  # noqa: E731
        wait_until("the service serving v2", ready, 120, poll=1)
        after, versions = accuracy(settings.service_url, stream)
        assert versions == {2}
        print(f"\nshifted stream accuracy: v1 {before:.3f} -> v2 {after:.3f} "
              f"({len(stream)} faces, {len(images)} labelled)")  # fmt: skip

        # Both cycles ran with `init: champion, data: replay`. The first had no champion, so
        # it trained from scratch on everything; the second started from v1's weights and
        # learnt from the new faces and a class-balanced sample of r1's.
        lineage = emoflow(env, "model", "lineage").splitlines()
        assert [line.split()[:2] for line in lineage] == [["v2", "r2"], ["v1", "r1"]], lineage
        assert "from weights of v1, replay data since v1's revision" in lineage[0]
        assert "from scratch, cumulative data" in lineage[1]
        check_replay(settings, tmp_path, new=len(list((batch / "train" / "images").iterdir())))
        check_forgetting_table(settings, api, run["dag_run_id"], tmp_path)
    finally:
        services.stop(settings, "service")
        services.stop_airflow(settings)
        services.stop(settings, "mlflow")
