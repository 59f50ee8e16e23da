"""The model registry as the service reads it: MLflow's REST API over plain HTTP.

The service needs four things of the registry: which version an alias names, a version's run,
its ONNX file and (on a GPU) its PyTorch weights. MLflow's Python client would bring pandas,
pyarrow and scipy into every worker process (about 150 MB each), so the service asks the
tracking server itself, with httpx:

- ``GET /api/2.0/mlflow/registered-models/alias`` and ``/model-versions/get``: a version;
- ``GET /model-versions/get-artifact``: a file of the version's model (its ``MLmodel``, which
  names the ONNX file, then that file), read by the server from wherever it keeps artifacts
  (a local folder, S3);
- ``GET /api/2.0/mlflow/artifacts/list`` and ``/get-artifact``: the run's ``weights/*.pt``.

What the training side writes (`ml.registry`) is unchanged; its errors are reused here.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import yaml

from ml.config import Settings
from ml.records import ModelRef
from ml.registry import MlflowUnreachable, RegistryError

TIMEOUT = httpx.Timeout(30.0, connect=10.0)
CHUNK = 1 << 20
NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")
"""MLflow's error codes for an alias, or a model, that is not there."""


class NotFound(RegistryError):
    """The registry has no such model, version, alias or file."""


def _server(settings: Settings) -> str:
    return settings.mlflow_tracking_uri.rstrip("/")


def _unreachable(settings: Settings, exc: httpx.TransportError) -> MlflowUnreachable:
    return MlflowUnreachable(
        f"MLflow at {_server(settings)} is unreachable ({type(exc).__name__}: {exc}); is its "
        "server running (`emoflow start mlflow`, or EMOFLOW_MLFLOW_TRACKING_URI)?"
    )


def _raise_for(settings: Settings, path: str, params: dict, response: httpx.Response) -> None:
    """A failed answer's error body (JSON ``error_code``, ``message``) as `NotFound` or
    `RegistryError`."""
    if response.is_success:
        return
    try:
        body = response.json()
        code, message = body.get("error_code", ""), body.get("message", "")
    except ValueError:
        code, message = "", response.text[:300]
    error = NotFound if code in NOT_FOUND or response.status_code == 404 else RegistryError
    raise error(
        f"MLflow at {_server(settings)} answered {response.status_code} to GET {path} "
        f"{params}: {code or 'error'}: {message[:300]}"
    )


def _get(settings: Settings, path: str, params: dict[str, str]) -> httpx.Response:
    """A GET of the tracking server; an unreachable server is `MlflowUnreachable`."""
    try:
        response = httpx.get(f"{_server(settings)}{path}", params=params, timeout=TIMEOUT)
    except httpx.TransportError as exc:
        raise _unreachable(settings, exc) from None
    _raise_for(settings, path, params, response)
    return response


def _ref(settings: Settings, body: dict) -> ModelRef:
    version = body["model_version"]
    return ModelRef(
        name=settings.model_name, version=int(version["version"]), run_id=version["run_id"]
    )


def version_by_alias(settings: Settings, alias: str) -> ModelRef | None:
    """The version `alias` names, or None when the model or the alias does not exist."""
    params = {"name": settings.model_name, "alias": alias}
    try:
        response = _get(settings, "/api/2.0/mlflow/registered-models/alias", params)
    except NotFound:
        return None
    return _ref(settings, response.json())


def version_ref(settings: Settings, version: int) -> ModelRef:
    """The registered version `version` of the model."""
    params = {"name": settings.model_name, "version": str(version)}
    return _ref(settings, _get(settings, "/api/2.0/mlflow/model-versions/get", params).json())


def _download(settings: Settings, path: str, params: dict[str, str], dst: Path) -> Path:
    """The file the server sends at `path`, written to `dst` as it arrives."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    url = f"{_server(settings)}{path}"
    try:
        with httpx.stream("GET", url, params=params, timeout=TIMEOUT) as response:
            if not response.is_success:
                response.read()
                _raise_for(settings, path, params, response)
            with dst.open("wb") as out:
                for chunk in response.iter_bytes(CHUNK):
                    out.write(chunk)
    except httpx.TransportError as exc:
        raise _unreachable(settings, exc) from None
    return dst


def download_onnx(settings: Settings, ref: ModelRef, dst: Path) -> Path:
    """The ONNX file of version `ref` (the one its MLflow model's ``MLmodel`` names), in `dst`."""
    params = {"name": ref.name, "version": str(ref.version)}
    route = "/model-versions/get-artifact"
    mlmodel = yaml.safe_load(_get(settings, route, {**params, "path": "MLmodel"}).text)
    try:
        name = mlmodel["flavors"]["onnx"]["data"]
    except (TypeError, KeyError):
        raise RegistryError(
            f"{ref.name} version {ref.version}: its MLmodel has no flavors.onnx.data (the ONNX "
            "file); expected a model logged with mlflow.onnx.log_model"
        ) from None
    return _download(settings, route, {**params, "path": name}, dst / Path(name).name)


def download_weights(settings: Settings, ref: ModelRef, dst: Path) -> Path:
    """The PyTorch weights (``weights/*.pt``) logged with version `ref`'s run, in `dst`."""
    listing = _get(
        settings, "/api/2.0/mlflow/artifacts/list", {"run_id": ref.run_id, "path": "weights"}
    ).json()
    found = sorted(f["path"] for f in listing.get("files", []) if f["path"].endswith(".pt"))
    if not found:
        raise NotFound(f"run {ref.run_id} of {ref.name} version {ref.version} has no weights/*.pt")
    path = found[0]
    return _download(
        settings, "/get-artifact", {"run_id": ref.run_id, "path": path}, dst / Path(path).name
    )
