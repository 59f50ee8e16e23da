"""Settings: infrastructure (where things live and how to reach them); what the model is
lives in `ml.params`.

Settings come from the environment and `.env` with the prefix ``EMOFLOW_``; every field is
listed in `.env.example`. Nothing here touches the disk or the network at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[1]

EMOTIONS: tuple[str, ...] = (
    "anger",
    "contempt",
    "disgust",
    "fear",
    "happy",
    "neutral",
    "sad",
    "surprise",
)
"""The eight AffectNet emotions, in AffectNet's class-id order (0 = anger ... 7 = surprise)."""


class Settings(BaseSettings):
    """Where things live and how to reach them. Both modes read this; only the values differ."""

    model_config = SettingsConfigDict(
        env_prefix="EMOFLOW_", env_file=PROJECT_ROOT / ".env", extra="ignore"
    )

    home: Path = Field(PROJECT_ROOT / ".emoflow", description="All local state lives here.")
    params_file: Path = Field(PROJECT_ROOT / "params.yaml", description="Per-step parameters.")
    mlflow_tracking_uri: str = "http://127.0.0.1:5000"
    mlflow_backend_store_uri: str | None = None
    mlflow_artifacts_destination: str | None = None
    model_name: str = "emotion-detector"
    data_repo: str | None = None
    data_git_remote: str | None = Field(
        None,
        description="Git URL of the data registry's remote (a bare repository every worker "
        "clones, fetches revisions from and pushes new ones to); None = the local registry alone.",
    )
    dvc_remote_url: str | None = None
    serve_host: str = "127.0.0.1"
    serve_port: int = 3000
    serve_workers: int = Field(
        0, ge=0, description="Worker processes of the service; 0 = one per CPU core."
    )
    serve_request_log: bool = Field(
        False,
        description="BentoML's access-log line and trace span for every /predict request; off, "
        "the service answers about 15 % more; the prediction log records every prediction anyway.",
    )
    serve_poll_seconds: float = Field(
        30, ge=0, description="How often the service checks the alias champion (0 = never)."
    )
    serve_reload_token: str = Field(
        "", description="Bearer token of the service's POST /reload; empty = /reload disabled."
    )
    serve_faces: Literal["detector", "model", "auto"] = Field(
        "auto",
        description="Who finds the faces of an image: `detector` (a face detector, then the "
        "emotion model on each face), `model` (the emotion model reads the image itself, a large "
        "one in windows), `auto` (the model for crop-sized images, the detector for larger ones).",
    )
    serve_max_request_pixels: int = Field(
        50_000_000, ge=1,
        description="Most decoded pixels (width x height, all images together) of one request.",
    )  # fmt: skip
    serve_shadow_share: float = Field(
        0.0, ge=0, le=1,
        description="Share of requests the alias challenger also answers in shadow (logged "
        "beside the champion's answer, never returned); 0 = no shadow scoring.",
    )  # fmt: skip
    serve_shadow_queue: int = Field(
        64, ge=1, description="Images waiting for shadow scoring, at most; more are dropped."
    )
    max_upload_bytes: int = Field(
        10 * 1024 * 1024, ge=1, description="Largest request body the service reads (bytes)."
    )
    max_pixels: int = Field(
        25_000_000, ge=1, description="Largest image (width x height) the service decodes."
    )
    public_mlflow_url: str | None = Field(
        None, description="The MLflow UI as a browser reaches it (links from Airflow's tasks "
        "and menu); None = mlflow_tracking_uri.",
    )  # fmt: skip
    public_service_url: str | None = Field(
        None, description="The service as a browser reaches it (report and status links); "
        "None = http://serve_host:serve_port.",
    )  # fmt: skip
    airflow_port: int = Field(8080, description="Port of the embedded Airflow API server (UI).")
    airflow_preload: bool = Field(
        True, description="The scheduler imports the steps' libraries once, before it forks a "
        "process per task (emoflow/airflow_preload.py); false: each task imports them.",
    )  # fmt: skip
    airflow_api_url: str | None = Field(
        None, description="Airflow's API server as emoflow calls it; None = the embedded one."
    )
    airflow_user: str = Field("admin", description="Airflow user emoflow calls the API as.")
    airflow_password: str = Field(
        "", description="Its password; empty = the one the embedded Airflow generated."
    )
    airflow_token: str = Field("", description="An Airflow API token to use instead of a login.")
    prediction_log_uri: str | None = None
    prediction_images: bool = Field(
        True,
        description="Keep each answered image (for the labelling batches drift starts); these "
        "are people's faces: false keeps none.",
    )
    energy_price_per_kwh: float = Field(
        0.30, ge=0, description="Electricity price per kWh; training logs energy x price as cost."
    )

    @field_validator("home", "params_file")
    @classmethod
    def _relative_to_project(cls, path: Path) -> Path:
        """A relative path (as in .env.example) means relative to the project, not the cwd."""
        return path if path.is_absolute() else PROJECT_ROOT / path

    # Derived defaults: everything under `home` unless set explicitly.
    @property
    def mlflow_port(self) -> int:
        """Port of the embedded MLflow server: the one the tracking URI names."""
        return urlparse(self.mlflow_tracking_uri).port or 5000

    @property
    def mlflow_dir(self) -> Path:
        return self.home / "mlflow"

    @property
    def backend_store_uri(self) -> str:
        return self.mlflow_backend_store_uri or f"sqlite:///{self.mlflow_dir / 'mlflow.db'}"

    @property
    def artifacts_destination(self) -> str:
        return self.mlflow_artifacts_destination or str(self.mlflow_dir / "artifacts")

    @property
    def registry_repo(self) -> str:
        """Git+DVC repository whose commits are the data revisions."""
        return self.data_repo or str(self.home / "data-registry")

    @property
    def remote_url(self) -> str:
        return self.dvc_remote_url or str(self.home / "dvc-remote")

    @property
    def prediction_log(self) -> str:
        return self.prediction_log_uri or f"sqlite:///{self.home / 'predictions.db'}"

    @property
    def images_dir(self) -> Path:
        """The answered images the prediction log keeps (monitoring.face_store)."""
        return self.home / "prediction-images"

    @property
    def face_detector_dir(self) -> Path:
        """The face detector's ONNX files, converted from the installed model (serving/faces.py)."""
        return self.home / "face-detector"

    @property
    def labelling_dir(self) -> Path:
        return self.home / "labelling"

    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"

    @property
    def airflow_url(self) -> str:
        return (self.airflow_api_url or f"http://127.0.0.1:{self.airflow_port}").rstrip("/")

    @property
    def airflow_passwords_file(self) -> Path:
        """Where the embedded Airflow's simple auth manager keeps its generated passwords."""
        return self.airflow_home / "simple_auth_manager_passwords.json.generated"

    @property
    def workspaces_dir(self) -> Path:
        return self.home / "workspaces"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    @property
    def service_url(self) -> str:
        return f"http://{self.serve_host}:{self.serve_port}"

    @property
    def mlflow_ui_url(self) -> str:
        """The MLflow UI for people's browsers (in the compose setup not the container name)."""
        return (self.public_mlflow_url or self.mlflow_tracking_uri).rstrip("/")

    @property
    def service_ui_url(self) -> str:
        """The service for people's browsers (in the compose setup not 0.0.0.0)."""
        return (self.public_service_url or self.service_url).rstrip("/")

    @property
    def gx_dir(self) -> Path:
        """Great Expectations' project folder (GX keeps its context in gx_dir/gx/)."""
        return self.home / "gx"

    @property
    def data_docs_dir(self) -> Path:
        """The Data Docs site the validate step builds; the service serves it at /data-docs/."""
        return self.gx_dir / "gx" / "uncommitted" / "data_docs" / "local_site"


class ConfigError(ValueError):
    """A settings or params file is wrong; the message names the file and the field."""


def resolve_device(device: str) -> str:
    """'auto' becomes '0' (first CUDA GPU) when torch sees one, else 'cpu'."""
    if device != "auto":
        return device
    import torch

    return "0" if torch.cuda.is_available() else "cpu"
