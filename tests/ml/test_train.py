"""Training params that come from the data, base models that are never downloaded, and
continual training: a warm start from the champion with replay (real ultralytics, real MLflow
over HTTP, real DVC)."""

from __future__ import annotations

import logging
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml
from PIL import Image

from emoflow import services
from ml import data_batches, data_registry, lineage, registry, train
from ml.config import PROJECT_ROOT
from ml.params import TrainParams, load_params
from ml.sample_data import generate
from ml.train import TrainingError, base_model, data_imgsz


def images_of(tmp_path: Path, sizes: list[tuple[int, int]]) -> Path:
    folder = tmp_path / "train" / "images"
    folder.mkdir(parents=True)
    for i, size in enumerate(sizes):
        Image.new("RGB", size).save(folder / f"{i}.png")
    return tmp_path


@pytest.mark.parametrize(
    ("sizes", "expected"),
    [
        ([(96, 96)] * 5, 96),  # AffectNet crops: no upscaling to 640
        ([(96, 96), (100, 90), (120, 120)], 128),  # median longer side 100 -> next multiple of 32
        ([(640, 480), (1280, 720), (1920, 1080)], 640),  # camera frames: capped at 640
        ([(20, 20)] * 3, 32),  # tiny images: at least one stride
    ],
)
def test_image_size_comes_from_the_data(tmp_path: Path, sizes, expected: int) -> None:
    assert data_imgsz(images_of(tmp_path, sizes)) == expected


def test_image_size_needs_train_images(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="no images"):
        data_imgsz(images_of(tmp_path, []))


def test_default_params_size_the_input_from_the_data() -> None:
    assert load_params(PROJECT_ROOT / "params.yaml").train.imgsz == "auto"
    assert TrainParams(imgsz=640).imgsz == 640
    for bad in ("large", 16):
        with pytest.raises(ValueError):
            TrainParams(imgsz=bad)


def test_base_model_is_an_architecture_or_weights_on_disk(tmp_path: Path) -> None:
    assert base_model(TrainParams(model="yolov8s.yaml")) == "yolov8s.yaml"
    weights = tmp_path / "mine.pt"
    weights.write_bytes(b"weights")
    assert base_model(TrainParams(model=str(weights))) == str(weights)
    for name in ("yolov8n.pt", str(tmp_path / "missing.pt"), "model.onnx"):
        with pytest.raises(TrainingError, match="never downloads"):
            base_model(TrainParams(model=name))


@pytest.fixture
def settings(mlflow_settings, tmp_path: Path, request):
    """The shared MLflow server; a data registry and a registered model name of this test's own."""
    return mlflow_settings.model_copy(
        update={"home": tmp_path / "home", "model_name": f"train-{request.node.name[:40]}"}
    )


def test_with_no_champion_yet_the_run_trains_from_scratch_and_says_so(settings, caplog):
    caplog.set_level(logging.INFO, logger="emoflow.train")
    assert train.parent_of(TrainParams(init="scratch"), settings) is None
    assert caplog.messages == []  # scratch + cumulative asks for no champion
    assert train.parent_of(TrainParams(init="champion", data="replay"), settings) is None
    assert "has no champion yet, so this run trains from scratch" in caplog.text


@pytest.mark.slow
def test_a_warm_start_builds_on_the_champion_at_its_size_with_replay(settings, tmp_path: Path):
    """r1 trains the champion at imgsz 64; r2 then starts from its weights (asked for 32, it
    keeps the champion's 64) and trains on r2's new images plus 6 replayed earlier ones."""
    for name, seed, size in (("a", 1, 24), ("b", 2, 12)):
        batch = generate(tmp_path / name, train=size, valid=8, test=8, seed=seed, prefix=name)
        data_batches.add_batch(settings, batch.parent, f"batch {name}")
    code = {"git_commit": f"warm-{uuid.uuid4().hex[:8]}", "params_digest": "p"}
    quick = dict(epochs=1, batch=8, workers=0, device="cpu", patience=5)
    r1, r2 = data_registry.pull(settings, "r1"), data_registry.pull(settings, "r2")
    scratch = TrainParams(imgsz=64, finetune_epochs=2, **quick)  # a scratch run: `epochs`
    first = train.train(scratch, r1, settings.runs_dir, settings, code)
    champion = registry.register(first, r1, code, settings)
    registry.promote(settings, champion.version, "the first model")

    warm = TrainParams(imgsz=32, init="champion", data="replay", replay_size=6,
                       finetune_epochs=2, **quick)  # fmt: skip
    second = train.train(warm, r2, settings.runs_dir, settings, code)

    assert second.imgsz == 64
    run = registry.client(settings).get_run(second.run_id)
    assert run.data.tags["parent_version"] == str(champion.version)
    assert run.data.tags["parent_run"] == first.run_id
    params = run.data.params
    assert (params["init_used"], params["data_used"], params["imgsz_used"]) == (
        "champion", "replay", "64",
    )  # fmt: skip
    args = yaml.safe_load((settings.runs_dir / second.run_id / "args.yaml").read_text())
    assert f"parents/v{champion.version}/" in args["model"]  # the champion's weights
    assert (args["optimizer"], args["lr0"], args["warmup_bias_lr"]) == ("AdamW", 0.0002, 0.0)
    assert (args["epochs"], params["epochs_used"]) == (2, "2")  # finetune_epochs, not epochs
    first_args = yaml.safe_load((settings.runs_dir / first.run_id / "args.yaml").read_text())
    assert first_args["epochs"] == 1
    assert args["data"].endswith("train-list/data.yaml")
    listed = registry.client(settings).download_artifacts(second.run_id, "data", str(tmp_path))
    summary = yaml.safe_load(Path(listed, "train_list.json").read_text())
    names = Path(listed, "train_list.txt").read_text().split()
    assert (summary["new"], summary["earlier"], len(names)) == (12, 6, 18)
    assert sum(name.startswith("b") for name in names) == 12  # every new image
    assert sum(summary["classes"].values()) == 18 and params["replay_earlier_images"] == "6"

    child = registry.register(second, r2, code, settings)
    chain = lineage.chain(settings, child.version)
    assert [(link.version, link.parent, link.init, link.data) for link in chain] == [
        (child.version, champion.version, "champion", "replay"),
        (champion.version, None, "scratch", "cumulative"),
    ]
    shown = subprocess.run(
        [str(services.BIN / "emoflow"), "model", "lineage", str(child.version)],
        env=services.settings_env(settings), capture_output=True, text=True, cwd=PROJECT_ROOT,
        timeout=120,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].startswith(f"v{child.version}    r2     from weights of v{champion.version},"
                               f" replay data since v{champion.version}'s revision")  # fmt: skip
    assert lines[1].startswith(f"v{champion.version}    r1     from scratch, cumulative data")
