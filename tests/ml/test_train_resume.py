"""A training killed mid-run is resumed from its last checkpoint, in its own MLflow run, by the
next attempt: one finished run, every epoch logged once (real ultralytics, real MLflow)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from emoflow.services import settings_env
from ml import registry, train
from ml.config import PROJECT_ROOT
from ml.params import TrainParams
from ml.records import DatasetRef
from ml.sample_data import generate

PARAMS = TrainParams(epochs=3, imgsz=32, batch=8, workers=0, device="cpu", patience=5)

KILLED_TRAINING = r"""
import json, os, signal, sys, types
sys.path.insert(0, sys.argv[1])
from ml import train, yolo
from ml.config import Settings
from ml.params import TrainParams
from ml.records import DatasetRef

real_load = yolo.load
def load(config_dir):
    ultralytics = real_load(config_dir)
    class KilledInSecondEpoch(ultralytics.YOLO):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback("on_train_epoch_start", lambda trainer: trainer.epoch == 1
                              and os.kill(os.getpid(), signal.SIGKILL))  # as kill -9 would
    return types.SimpleNamespace(YOLO=KilledInSecondEpoch)
yolo.load = load
settings, args = Settings(), json.loads(sys.argv[2])
train.train(TrainParams(**args["params"]), DatasetRef(**args["dataset"]), settings.runs_dir,
            settings, args["lineage"])
"""


@pytest.mark.slow
@pytest.mark.faults
def test_a_training_killed_in_its_second_epoch_resumes_there_in_the_same_run(
    mlflow_settings, tmp_path: Path
):
    import json

    settings = mlflow_settings
    generate(tmp_path / "data", train=24, valid=8, test=8, seed=3)
    dataset = DatasetRef(
        revision="r1", commit="c" * 40, digest=uuid.uuid4().hex, path=tmp_path / "data"
    )
    lineage = {"git_commit": "resume-test", "params_digest": "p"}
    args = {"params": PARAMS.model_dump(), "dataset": dataset.model_dump(mode="json"),
            "lineage": lineage}  # fmt: skip
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_TRAINING, str(PROJECT_ROOT), json.dumps(args)],
        env={**os.environ, **settings_env(settings)}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert killed.returncode == -9, killed.stderr[-3000:]
    client = registry.client(settings)
    experiment = client.get_experiment_by_name(train.EXPERIMENT)
    query = f"tags.data_digest = '{dataset.digest}'"
    (orphan,) = client.search_runs([experiment.experiment_id], query)
    assert orphan.info.status == "RUNNING"  # what a kill leaves

    result = train.train(PARAMS, dataset, settings.runs_dir, settings, lineage)

    (run,) = client.search_runs([experiment.experiment_id], query)
    assert run.info.run_id == orphan.info.run_id == result.run_id
    assert run.info.status == "FINISHED"
    assert run.data.tags[train.RESUMED_TAG] == "2"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "metrics/mAP50B")]
    # epoch 1 from the killed attempt, once; 2 and 3 resumed (then ultralytics' own last call)
    assert steps.count(0) == steps.count(1) == 1 and 2 in steps, steps
    assert result.onnx.is_file() and "map50" in result.metrics
