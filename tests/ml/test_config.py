from pathlib import Path

import pytest

from ml.config import PROJECT_ROOT, ConfigError, Settings
from ml.params import Params, load_params


def test_project_params_file_loads_and_has_a_stable_digest():
    params = load_params(PROJECT_ROOT / "params.yaml")
    assert params.train.model == "yolov8n.yaml"
    assert params.train.imgsz == "auto"
    assert params.digest == load_params(PROJECT_ROOT / "params.yaml").digest


def test_overrides_change_the_digest_and_none_keeps_the_file_value(tmp_path: Path):
    base = load_params(PROJECT_ROOT / "params.yaml")
    changed = load_params(PROJECT_ROOT / "params.yaml", overrides={"train": {"epochs": 1}})
    kept = load_params(PROJECT_ROOT / "params.yaml", overrides={"train": {"epochs": None}})
    assert changed.train.epochs == 1 and changed.digest != base.digest
    assert kept.train.epochs == base.train.epochs and kept.digest == base.digest


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("train:\n  epochs: 0\n", "train.epochs"),
        ("train:\n  epoch: 3\n", "train.epoch"),
        ("gate: [1, 2]\n", "gate"),
        ("train: {epochs: 3\n", "not valid YAML"),
        ("- a\n- b\n", "expected a mapping"),
    ],
)
def test_bad_params_name_the_file_and_the_field(tmp_path: Path, text: str, expected: str):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert str(path) in str(err.value) and expected in str(err.value)


def test_missing_params_file_is_a_clear_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")


def test_settings_read_the_environment_and_derive_paths_from_home(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("EMOFLOW_HOME", str(tmp_path))
    monkeypatch.setenv("EMOFLOW_MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    settings = Settings(_env_file=None)
    assert settings.mlflow_port == 5999
    assert settings.backend_store_uri == f"sqlite:///{tmp_path}/mlflow/mlflow.db"
    assert settings.registry_repo == str(tmp_path / "data-registry")
    assert settings.remote_url == str(tmp_path / "dvc-remote")
    monkeypatch.setenv("EMOFLOW_DVC_REMOTE_URL", "s3://bucket/emoflow")
    assert Settings(_env_file=None).remote_url == "s3://bucket/emoflow"


def test_env_example_lists_every_setting():
    text = (PROJECT_ROOT / ".env.example").read_text()
    for field in Settings.model_fields:
        assert f"EMOFLOW_{field.upper()}=" in text, field


def test_params_sections_are_all_in_the_project_file():
    import yaml

    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    assert set(raw) == {f.alias or name for name, f in Params.model_fields.items()}
