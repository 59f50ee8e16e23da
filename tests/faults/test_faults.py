"""Fault injection: each case runs the real servers (MLflow over HTTP, a real DVC remote, real
SQLite files on a real full disk), injects the fault, reruns the step as Airflow's retry would,
and checks that the champion, the model versions and the data are exactly what they should be.

Kills are real SIGKILLs of a child process at a chosen call (as `kill -9` or the OOM killer
would); a full disk is a small tmpfs (mounting one needs root, as on the project's machines).
Run alone with `pytest -m faults`; the other fault cases live beside the code they test and
carry the same mark: tests/ml/test_data_writes.py (a registry write killed, a failed push, two
writers), tests/ml/test_train_resume.py (a training killed mid-epoch), tests/e2e (a corrupt
batch, through the DAG).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from emoflow import services, steps
from emoflow.services import settings_env
from ml import data_batches, data_registry, history, registry
from ml.config import PROJECT_ROOT
from ml.records import DatasetRef
from ml.sample_data import generate

pytestmark = pytest.mark.faults

DATASET = DatasetRef(revision="r1", commit="c" * 40, digest="d" * 32, path=Path("/nowhere"))
LINEAGE = {"git_commit": "fault-test", "params_digest": "p"}

KILLED_CALL = r"""
import json, os, signal, sys
sys.path.insert(0, sys.argv[1])
import mlflow
from ml import history, registry
from ml.config import Settings
from ml.records import DatasetRef, TrainResult

where, args = sys.argv[2], json.loads(sys.argv[3])
def killing(function):
    def call(*a, **k):
        if where != "set_alias" or a[2] == args["alias"]:
            os.kill(os.getpid(), signal.SIGKILL)  # as kill -9 or the OOM killer would
        return function(*a, **k)
    return call
if where == "set_alias":
    mlflow.MlflowClient.set_registered_model_alias = killing(
        mlflow.MlflowClient.set_registered_model_alias)
else:
    history.append = killing(history.append)
settings = Settings()
if args["step"] == "register":
    registry.register(TrainResult(**args["trained"]), DatasetRef(**args["dataset"]),
                      args["lineage"], settings)
else:
    registry.promote(settings, args["version"], "gate passed", if_champion=args["champion"],
                     kind="gate", actor="run-1")
"""


def killed_in(settings, where: str, **args) -> None:
    import json

    result = subprocess.run(
        [sys.executable, "-c", KILLED_CALL, str(PROJECT_ROOT), where, json.dumps(args)],
        env={**os.environ, **settings_env(settings)}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]


@pytest.fixture
def settings(mlflow_settings, request):
    """The shared MLflow server, with a registered model of this test's own."""
    name = f"fault-{uuid.uuid5(uuid.NAMESPACE_URL, request.node.nodeid).hex[:16]}"
    return mlflow_settings.model_copy(update={"model_name": name})


def versions(settings) -> list[int]:
    found = registry.client(settings).search_model_versions(f"name='{settings.model_name}'")
    return sorted(int(v.version) for v in found)


def test_register_killed_before_the_challenger_alias_leaves_one_version(
    settings, tmp_path, logged_run
):
    trained = logged_run(settings, tmp_path, "a")
    killed_in(
        settings, "set_alias", step="register", alias=registry.CHALLENGER,
        trained=trained.model_dump(mode="json"), dataset=DATASET.model_dump(mode="json"),
        lineage=LINEAGE,
    )  # fmt: skip
    assert versions(settings) == [1] and registry.version_by_alias(settings, "challenger") is None

    again = registry.register(trained, DATASET, LINEAGE, settings)  # Airflow's retry

    assert again.version == 1 and versions(settings) == [1]
    assert registry.version_by_alias(settings, registry.CHALLENGER).version == 1


@pytest.mark.parametrize("where", ["set_alias", "history"])
def test_promote_killed_part_way_is_finished_by_the_rerun(settings, tmp_path, logged_run, where):
    """Killed between the `previous` and `champion` alias moves, or after both and before the
    history record: the rerun ends with v2 champion, v1 previous and one record of the move."""
    for name in ("a", "b"):
        registry.register(logged_run(settings, tmp_path, name), DATASET, LINEAGE, settings)
    registry.promote(settings, 1, "first", if_champion=None)
    killed_in(settings, where, step="promote", alias=registry.CHAMPION, version=2, champion=1)

    result = registry.promote(settings, 2, "gate passed", if_champion=1, kind="gate")

    assert registry.version_by_alias(settings, registry.CHAMPION).version == 2
    assert registry.version_by_alias(settings, registry.PREVIOUS).version == 1
    assert result.champion == 2 and versions(settings) == [1, 2]
    moves = [(m.from_version, m.to_version) for m in history.moves(settings)]
    assert moves == [(None, 1), (1, 2)]


def test_mlflow_stopped_during_register_and_promote_then_started_again(
    settings, tmp_path, logged_run, monkeypatch
):
    """The shared MLflow server, stopped under the steps: each fails as "unreachable" (Airflow
    retries it), and the retries after the restart finish with exactly the versions and the
    one promotion expected. The server is running again when the test ends, whatever happens."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)  # the steps read the environment, as in a task
    first = steps.call("register", logged_run(settings, tmp_path, "a").model_dump(mode="json"),
                       DATASET.model_dump(mode="json"))  # fmt: skip
    second = (logged_run(settings, tmp_path, "b").model_dump(mode="json"),
              DATASET.model_dump(mode="json"))  # fmt: skip
    services.stop(settings, "mlflow")
    try:
        with pytest.raises(registry.MlflowUnreachable, match="is unreachable"):
            steps.call("register", *second)
        with pytest.raises(registry.MlflowUnreachable, match="is unreachable"):
            registry.promote(settings, first["version"], "gate passed", if_champion=None)
    finally:
        services.start(services.mlflow_server(settings), settings, timeout=180)
    assert steps.call("register", *second)["version"] == 2
    registry.promote(settings, first["version"], "gate passed", if_champion=None)
    assert registry.version_by_alias(settings, registry.CHAMPION).version == 1
    assert versions(settings) == [1, 2] and len(history.moves(settings)) == 1


def test_an_unreachable_dvc_remote_fails_the_pull_clearly_and_the_retry_pulls(
    make_settings, tmp_path
):
    settings = make_settings(tmp_path / "home")
    generate(tmp_path / "batch" / "YOLO_format", train=8, valid=4, test=4, seed=1)
    data_batches.add_batch(settings, tmp_path / "batch", "a")
    shutil.rmtree(Path(settings.registry_repo) / ".dvc" / "cache")  # the pull must use the remote
    remote = Path(settings.remote_url)
    remote.rename(remote.with_name("moved-away"))

    with pytest.raises(data_registry.DataRegistryError, match="r1: could not be fetched from"):
        steps.pull("r1", settings=settings)
    assert not any(settings.workspaces_dir.iterdir())  # no half-pulled workspace

    remote.with_name("moved-away").rename(remote)
    assert (steps.pull("r1", settings=settings).path / "data.yaml").is_file()


@contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` at `path`: a real disk that fills up."""
    path.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert mounted.returncode == 0, f"this case needs root to mount a tmpfs: {mounted.stderr}"
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def registry_state(repo: Path) -> dict[str, object]:
    """HEAD, tags, `git status` and every dataset file with its bytes."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True
        ).stdout

    dataset = repo / data_registry.DATASET
    return {
        "head": git("rev-parse", "HEAD"), "tags": git("tag"),
        "status": git("status", "--porcelain", "--untracked-files=all"),
        "dataset": {str(p.relative_to(dataset)): p.read_bytes() for p in dataset.rglob("*")
                    if p.is_file()},
    }  # fmt: skip


def test_a_full_disk_during_add_batch_records_nothing_and_the_batch_goes_in_later(
    make_settings, tmp_path
):
    with small_disk(tmp_path / "disk", "4m") as disk:
        settings = make_settings(tmp_path / "home", data_repo=str(disk / "registry"))
        generate(tmp_path / "a" / "YOLO_format", train=16, valid=4, test=4, seed=1)
        data_batches.add_batch(settings, tmp_path / "a", "a")
        big = tmp_path / "b"
        generate(big / "YOLO_format", train=50, valid=5, test=5, seed=2)
        before = registry_state(disk / "registry")

        with pytest.raises(data_registry.DataRegistryError, match="nothing was recorded"):
            data_batches.add_batch(settings, big, "b")

        assert registry_state(disk / "registry") == before
        assert [r.name for r in data_registry.revisions(settings)] == ["r1"]
        small = tmp_path / "c"
        generate(small / "YOLO_format", train=8, valid=2, test=2, seed=3)
        assert data_batches.add_batch(settings, small, "c").name == "r2"  # space left for it


def test_a_full_disk_under_the_prediction_log_loses_no_answer(tmp_path):
    from monitoring.prediction_log import PredictionLog
    from monitoring.prediction_table import read_predictions

    with small_disk(tmp_path / "disk", "1m") as disk:
        uri = f"sqlite:///{disk / 'predictions.db'}"
        log = PredictionLog(uri)
        log.start()
        filler = disk / "filler"
        with open(filler, "wb") as out:  # the rest of the disk
            try:
                while True:
                    out.write(b"\0" * 65536)
                    out.flush()
            except OSError:
                pass
        scores = {"happy": 0.9, "sad": 0.1}
        face = {"box": [8.0, 8.0, 80.0, 80.0], "emotion": "happy", "confidence": 0.9,
                "scores": scores}  # fmt: skip
        answer = {"emotion": "happy", "confidence": 0.9, "faces": [face], "model_version": 1,
                  "width": 96, "height": 96}  # fmt: skip
        for _ in range(20):
            log.record(np.zeros((96, 96, 3), np.uint8), answer, "/predict")
        time.sleep(2)  # the writer tries (and fails) meanwhile
        assert log.pending == 20  # nothing written on the full disk, and recording never waited
        filler.unlink()
        assert log.close(timeout=60) == 0
        assert len(read_predictions(uri)) == 20
