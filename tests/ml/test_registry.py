"""The MLflow model registry over HTTP: idempotent registration, promotion, rollback."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from emoflow import services, steps
from ml import registry
from ml.config import PROJECT_ROOT
from ml.records import DatasetRef, EvalResult, GateResult, TrainResult

DATASET = DatasetRef(revision="r1", commit="c" * 40, digest="d" * 32, path=Path("/nowhere"))


@pytest.fixture
def settings(mlflow_settings, request):
    """The shared MLflow server, with a registered model name of this test's own."""
    return mlflow_settings.model_copy(update={"model_name": f"reg-{request.node.name[:40]}"})


def test_registering_a_run_twice_returns_the_same_version_with_lineage_tags(
    settings, tmp_path, logged_run
):
    trained = logged_run(settings, tmp_path, "a")
    lineage = {"git_commit": "abc123", "params_digest": "p1"}
    first = registry.register(trained, DATASET, lineage, settings)
    again = registry.register(trained, DATASET, lineage, settings)
    assert first == again and first.version == 1
    tags = registry.client(settings).get_model_version(settings.model_name, "1").tags
    assert tags["data_revision"] == "r1" and tags["data_digest"] == "d" * 32
    assert tags["git_commit"] == "abc123" and tags["params_digest"] == "p1"
    assert registry.version_by_alias(settings, registry.CHALLENGER).version == 1


def test_promote_then_rollback_restores_the_previous_champion(settings, tmp_path, logged_run):
    lineage = {"git_commit": "abc", "params_digest": "p"}
    v1 = registry.register(logged_run(settings, tmp_path, "a"), DATASET, lineage, settings)
    v2 = registry.register(logged_run(settings, tmp_path, "b"), DATASET, lineage, settings)
    with pytest.raises(LookupError, match="no 'previous' version"):
        registry.rollback(settings)

    assert registry.promote(settings, v1.version, "first").champion == 1
    moved = registry.promote(settings, v2.version, "forced")
    assert (moved.champion, moved.previous) == (2, 1)
    assert not registry.promote(settings, v2.version, "again").promoted

    back = registry.rollback(settings)
    assert (back.champion, back.previous) == (1, 2)
    assert registry.version_by_alias(settings, registry.CHAMPION).version == 1
    onnx_file = registry.download_onnx(settings, v2, tmp_path / "download")
    assert onnx_file.suffix == ".onnx" and onnx_file.stat().st_size > 0
    assert registry.download_weights(settings, v2, tmp_path / "w").read_bytes() == b"weights b"


def test_a_refused_gate_leaves_the_champion_where_it_was(settings, tmp_path, logged_run):
    lineage = {"git_commit": "abc", "params_digest": "p"}
    v1 = registry.register(logged_run(settings, tmp_path, "a"), DATASET, lineage, settings)
    v2 = registry.register(logged_run(settings, tmp_path, "b"), DATASET, lineage, settings)
    registry.promote(settings, v1.version, "first")
    worse = EvalResult(version=2, map50=0.1, map50_95=0.05, per_class_recall={})
    refused = GateResult(passed=False, reasons=["FAIL: mAP50 0.100 >= floor 0.250"],
                         challenger=worse, champion=None, report_path=tmp_path / "r.json")  # fmt: skip
    result = steps.promote(v2, refused, settings=settings)
    assert not result.promoted and result.champion == 1
    assert "FAIL: mAP50" in result.reason
    assert registry.version_by_alias(settings, registry.CHAMPION).version == 1


def test_the_cli_promotes_lists_and_rolls_back(settings, tmp_path, logged_run):
    lineage = {"git_commit": "abc", "params_digest": "p"}
    for name in ("a", "b"):
        registry.register(logged_run(settings, tmp_path, name), DATASET, lineage, settings)
    env = services.settings_env(settings)

    def emoflow(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(services.BIN / "emoflow"), *args], env=env, cwd=PROJECT_ROOT,
                              capture_output=True, text=True, timeout=120)  # fmt: skip

    assert json.loads(emoflow("model", "promote", "1").stdout)["champion"] == 1
    assert json.loads(emoflow("model", "promote", "2").stdout)["previous"] == 1
    listing = emoflow("model", "list").stdout
    assert "champion" in listing.splitlines()[0] or "champion" in listing
    assert json.loads(emoflow("model", "rollback").stdout)["champion"] == 1
    missing = emoflow("model", "promote", "9")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert missing.stderr.startswith("emoflow: error:")


@pytest.mark.faults
def test_promotion_is_compare_and_swap_on_the_champion_the_gate_saw(settings, tmp_path, logged_run):
    """Two runs gate against v1; the first promotes v2; the second's v3 must not replace it."""
    lineage = {"git_commit": "abc", "params_digest": "p"}
    v1, v2, v3 = (registry.register(logged_run(settings, tmp_path, name), DATASET, lineage,
                                    settings) for name in "abc")  # fmt: skip
    registry.promote(settings, v1.version, "first")
    champion = EvalResult(version=1, map50=0.5, map50_95=0.3, per_class_recall={})
    passed = {"passed": True, "reasons": ["PASS: better"], "champion": champion,
              "report_path": tmp_path / "r.json"}  # fmt: skip
    gate_v2 = GateResult(challenger=champion.model_copy(update={"version": 2}), **passed)
    gate_v3 = GateResult(challenger=champion.model_copy(update={"version": 3}), **passed)

    assert steps.promote(v2, gate_v2, settings=settings).champion == 2
    with pytest.raises(registry.PromotionConflict, match="compared it with v1, but .* is v2 now"):
        steps.promote(v3, gate_v3, settings=settings)
    assert registry.version_by_alias(settings, registry.CHAMPION).version == 2
    assert registry.version_by_alias(settings, registry.PREVIOUS).version == 1
    assert v3.version == 3


def test_an_unreachable_mlflow_is_named_not_reported_as_a_missing_version(
    settings, free_port, monkeypatch
):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    nowhere = settings.model_copy(update={"mlflow_tracking_uri": f"http://127.0.0.1:{free_port()}"})
    with pytest.raises(
        registry.RegistryError, match=r"MLflow at http://127\.0\.0\.1:\d+ is unreachable"
    ):
        registry.promote(nowhere, 1, "manual")
    with pytest.raises(LookupError, match="has no version 99"):
        registry.promote(settings, 99, "manual")


def test_a_task_and_a_command_say_mlflow_is_unreachable(settings, free_port, monkeypatch):
    """A stopped MLflow is named in an Airflow task's error (which Airflow then retries) and in
    the command's one line, never a stack trace or "not found"."""
    port = free_port()
    nowhere = settings.model_copy(update={"mlflow_tracking_uri": f"http://127.0.0.1:{port}"})
    env = services.settings_env(nowhere)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    trained = TrainResult(
        run_id="r" * 32, model_uri="models:/m-1", weights=Path("/nowhere/best.pt"),
        onnx=Path("/nowhere/best.onnx"), metrics={}, device="cpu", seconds=1.0, imgsz=64,
    )  # fmt: skip
    said = (
        rf"MLflow at http://127\.0\.0\.1:{port} is unreachable \(\[Errno 111\] Connection refused\)"
    )
    with pytest.raises(registry.MlflowUnreachable, match=said):
        steps.call("register", trained.model_dump(mode="json"), DATASET.model_dump(mode="json"))

    listed = subprocess.run(
        [str(services.BIN / "emoflow"), "model", "list"], env=env, capture_output=True,
        text=True, cwd=PROJECT_ROOT, timeout=120,
    )  # fmt: skip
    assert listed.returncode == 2
    assert re.fullmatch(f"emoflow: error: {said}.*\n", listed.stderr), listed.stderr
