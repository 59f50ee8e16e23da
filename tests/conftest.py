"""Shared fixtures: an isolated emoflow home per test session and real servers on loopback."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from emoflow import services
from ml import registry, yolo
from ml.config import EMOTIONS, Settings
from ml.records import TrainResult


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _make_settings(home: Path, **overrides) -> Settings:
    """Settings whose state all lives under `home`, with free ports (never the user's .env)."""
    values = dict(
        home=home,
        mlflow_tracking_uri=f"http://127.0.0.1:{_free_port()}",
        serve_port=_free_port(),
        airflow_port=_free_port(),
    )
    values.update(overrides)
    return Settings(_env_file=None, **values)


@pytest.fixture(scope="session")
def mlflow_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings pointing at a real MLflow server (SQLite backend, local artifacts) over HTTP."""
    settings = _make_settings(tmp_path_factory.mktemp("emoflow-home"))
    services.start(services.mlflow_server(settings), settings, timeout=180)
    yield settings
    services.stop(settings, "mlflow")


def _untrained_weights(images, path: Path, config_dir: Path) -> Path:
    """An untrained YOLOv8n with the eight emotions, built from YAML (nothing downloaded),
    saved as a checkpoint ultralytics loads. `images` is a uint8 array (N, H, W, 3).

    Freshly initialised, its activations all but vanish and every box gets the same class
    scores, which would make any comparison of orderings a coin toss. So its batch-norm
    statistics are taken from `images` and each level's class logits are rescaled to mean 0
    and std 1 on them: scores then spread over (0, 1), vary with the image and the class, and
    the default threshold of 0.25 leaves real boxes.
    """
    yolo.load(config_dir)
    import torch
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=len(EMOTIONS), verbose=False)
    model.names = dict(enumerate(EMOTIONS))
    batch = torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).float() / 255
    class_heads = [branch[-1] for branch in model.model[-1].cv3]  # one Conv2d per level
    logits: list = []
    hooks = [head.register_forward_hook(lambda _m, _i, out: logits.append(out))
             for head in class_heads]  # fmt: skip
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.momentum = 1.0  # running statistics = this batch's
        model.train()(batch)
        logits.clear()
        model.eval()(batch)
        for head, out in zip(class_heads, logits, strict=True):
            head.weight.div_(out.std())
            head.bias.sub_(out.mean()).div_(out.std())
    for hook in hooks:
        hook.remove()
    torch.save({"model": model}, path)
    return path


def _tiny_onnx(path: Path) -> Path:
    """A valid one-node ONNX model: the registry stores files, it does not care what they do."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )  # fmt: skip
    onnx.save(helper.make_model(graph), path)
    return path


def _logged_run(settings: Settings, folder: Path, name: str) -> TrainResult:
    """A finished MLflow run with model files logged (a tiny ONNX model), as training leaves."""
    import mlflow

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)  # the fluent run below logs there
    mlflow.set_experiment("registry-test")
    weights = folder / f"{name}.pt"
    weights.write_bytes(b"weights " + name.encode())
    with mlflow.start_run() as run:
        uri = registry.log_model_files(weights, _tiny_onnx(folder / f"{name}.onnx"))
    return TrainResult(
        run_id=run.info.run_id, model_uri=uri, weights=weights, onnx=folder / f"{name}.onnx",
        metrics={"map50": 0.5}, device="cpu", seconds=1.0, imgsz=64,
    )  # fmt: skip


@pytest.fixture(scope="session")
def logged_run():
    """A function `(settings, folder, name) -> TrainResult`: a run with model files logged."""
    return _logged_run


@pytest.fixture(scope="session")
def free_port():
    """A function that returns a free TCP port on loopback."""
    return _free_port


@pytest.fixture(scope="session")
def make_settings():
    """A function `(home, **overrides) -> Settings` for an isolated emoflow home."""
    return _make_settings


@pytest.fixture(scope="session")
def untrained_weights():
    """A function `(images, path, config_dir) -> Path` (see `_untrained_weights`)."""
    return _untrained_weights


@pytest.fixture(scope="session")
def tiny_onnx():
    """A function `(path) -> Path` writing a valid one-node ONNX model."""
    return _tiny_onnx


class _WritesAMarker:
    """Unpickled, it writes `marker`: what a payload in a model file can do."""

    def __init__(self, marker: Path, how: str) -> None:
        self.marker, self.how = marker, how

    def __reduce__(self):
        if self.how == "exec":
            return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="session")
def code_payload():
    """A function `(marker, how) -> object` whose pickle, once loaded, writes the file `marker`
    through `exec` (how="exec") or `os.system` (how="system")."""
    return _WritesAMarker


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The long modules first (end to end, then those that train for several epochs): the suite
    runs on two processes that each take whole modules in this order (Makefile: test), so the
    long ones start at once instead of queueing behind hundreds of quick tests."""

    def weight(item: pytest.Item) -> int:
        return 0 if item.get_closest_marker("e2e") else 1 if item.get_closest_marker("slow") else 2

    module_weight: dict[Path, int] = {}
    for item in items:
        module_weight[item.path] = min(module_weight.get(item.path, 2), weight(item))
    items.sort(key=lambda item: module_weight[item.path])  # stable: each module keeps its order


def pytest_configure(config: pytest.Config) -> None:
    """Under xdist, each of the suite's processes (and the trainings, Airflow tasks and services
    it starts, which inherit the environment) gets its share of the cores: two trainings that
    each use every core run about 4 times slower than two that share them (ml/yolo.py)."""
    processes = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if processes > 1:
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
