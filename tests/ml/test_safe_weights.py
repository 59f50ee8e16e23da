"""Registry `.pt` files are untrusted: the gate refuses one whose pickle would run code, before
ultralytics loads it, and a checkpoint that real training wrote passes (real ultralytics)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ml import gate, sample_data, yolo
from ml.params import GateParams
from ml.records import DatasetRef, ModelRef
from ml.safe_weights import UnsafeWeights, load_checkpoint

IMGSZ = 32


class BuildsAModelThatEvals:
    """Unpickled, it calls DetectionModel (a class of the model's own layers) on a config whose
    `activation` the constructor `eval`s: a payload that names nothing but layer classes."""

    def __init__(self, marker: Path) -> None:
        from ultralytics.nn.tasks import DetectionModel

        self.cfg = dict(DetectionModel("yolov8n.yaml", nc=2, verbose=False).yaml)
        self.cfg["activation"] = f"__import__('os').system('touch {marker}') or torch.nn.SiLU()"

    def __reduce__(self):
        from ultralytics.nn.tasks import DetectionModel

        return DetectionModel, (self.cfg,)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DatasetRef, Path]:
    """(best.pt, dataset, ultralytics config dir): one epoch of real ultralytics training on a
    few drawn faces at 32 px, the file training leaves for the registry."""
    root = tmp_path_factory.mktemp("safe-weights")
    sample_data.generate(root / "data", train=16, valid=8, test=4, seed=3)
    ultralytics = yolo.load(root / "ultralytics")
    model = ultralytics.YOLO("yolov8n.yaml")
    model.train(data=str(root / "data" / "data.yaml"), imgsz=IMGSZ, epochs=1, batch=8,
                workers=0, device="cpu", amp=False, plots=False, project=str(root / "runs"),
                name="one-epoch", verbose=False)  # fmt: skip
    dataset = DatasetRef(revision="r1", commit="none", digest="none", path=root / "data")
    return Path(model.trainer.best), dataset, root / "ultralytics"


def _gate(weights: Path, dataset: DatasetRef, tmp_path: Path, make_settings, monkeypatch) -> None:
    """The gate step on `weights` as the challenger. MLflow is reached only after it scores: no
    server answers there, and without retries a gate that went on fails at once."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    gate.gate(ModelRef(name="emotion-detector", version=7, run_id="r"), weights, dataset, IMGSZ,
              GateParams(), make_settings(tmp_path / "home"), tmp_path / "gate",
              tmp_path / "unused.onnx")  # fmt: skip


def test_a_checkpoint_real_training_wrote_passes(trained) -> None:
    best, _, _ = trained
    checkpoint = load_checkpoint(best)
    assert type(checkpoint["model"]).__name__ == "DetectionModel"
    assert checkpoint["train_args"]["epochs"] == 1  # the plain data beside the layers


@pytest.mark.parametrize(("how", "named"), [("exec", "builtins.exec"), ("system", "system")])
def test_a_registry_file_with_a_code_payload_fails_the_gate_and_runs_nothing(
    trained, tmp_path: Path, make_settings, monkeypatch, code_payload, how: str, named: str
) -> None:
    import torch

    best, dataset, config_dir = trained
    marker = tmp_path / "ran"
    evil = tmp_path / "champion.pt"
    real = torch.load(best, map_location="cpu", weights_only=False)  # training's own file
    torch.save({**real, "docs": code_payload(marker, how)}, evil)  # a real model beside it

    with pytest.raises(UnsafeWeights, match=f"refused to load {evil}: it names .*{named}"):
        _gate(evil, dataset, tmp_path, make_settings, monkeypatch)
    assert not marker.exists()
    assert not (tmp_path / "gate").exists() or not any((tmp_path / "gate").iterdir())

    yolo.load(config_dir).YOLO(str(evil))  # what the gate used to do
    assert marker.exists(), "the payload did not run when loaded the old way: the test is void"


def test_a_file_that_calls_a_layer_class_is_refused_and_runs_nothing(
    trained, tmp_path: Path, make_settings, monkeypatch
) -> None:
    import torch
    from torch.serialization import get_unsafe_globals_in_checkpoint, safe_globals

    best, dataset, _ = trained
    marker = tmp_path / "ran"
    evil = tmp_path / "champion.pt"
    real = torch.load(best, map_location="cpu", weights_only=False)
    torch.save({**real, "docs": BuildsAModelThatEvals(marker)}, evil)

    with pytest.raises(UnsafeWeights, match=r"calls ultralytics\.nn\.tasks\.DetectionModel\("):
        _gate(evil, dataset, tmp_path, make_settings, monkeypatch)
    with pytest.raises(UnsafeWeights, match="calls"):
        load_checkpoint(evil)
    assert not marker.exists()

    # allowing the layer classes it names is not enough: torch's weights-only loader calls them
    layers = [type(m) for m in real["model"].modules()]
    assert {f"{c.__module__}.{c.__qualname__}" for c in layers} >= set(
        get_unsafe_globals_in_checkpoint(evil)
    )
    with safe_globals(layers):
        torch.load(evil, map_location="cpu", weights_only=True)
    assert marker.exists(), "the payload did not run when loaded the old way: the test is void"


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path: Path) -> None:
    import torch

    listed = tmp_path / "list.pt"
    torch.save([1, 2, 3], listed)
    with pytest.raises(UnsafeWeights, match="not an ultralytics checkpoint"):
        load_checkpoint(listed)
    text = tmp_path / "text.pt"
    text.write_text("weights")
    with pytest.raises(UnsafeWeights, match=f"refused to load {text}: not a torch.save checkpoint"):
        load_checkpoint(text)
