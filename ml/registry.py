"""The MLflow model registry: register, look up and move the aliases of `emotion-detector`.

What is served is the version the alias `champion` points at. Promotion moves `champion` to
the challenger and `previous` to the old champion, so a rollback is one alias move. Every
move is recorded in the promotion history (`ml.history`, tags of the registered model).
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from ml.config import Settings
from ml.records import DatasetRef, ModelRef, PromoteResult, TrainResult

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from ml.history import Kind

log = logging.getLogger(__name__)

CHAMPION, PREVIOUS, CHALLENGER = "champion", "previous", "challenger"
ANY = "any"
"""`promote(..., if_champion=ANY)`: move the alias whichever version holds it now."""
ARCHITECTURE_TAG = "architecture"
"""Run param and version tag: the architecture trained (`ml.yolo.architecture`: yolov8n, ...)."""


class RegistryError(RuntimeError):
    """The registry could not do what was asked; the message says why (and which server)."""


class PromotionConflict(RegistryError):
    """The champion changed between the gate's comparison and the promotion."""


class MlflowUnreachable(RegistryError):
    """MLflow's server did not answer (stopped, restarting, a wrong address): worth a retry,
    unlike a refusal."""


_FAILED_REQUEST = re.compile(
    r"API request to (?P<url>\S+?) failed with (?:timeout )?exception (?P<cause>.*)", re.S
)


def unreachable(exc: BaseException) -> MlflowUnreachable | None:
    """`exc` as an `MlflowUnreachable` naming the server and the cause, when it is MLflow's
    client failing to reach its server (after its own retries); else None."""
    if not type(exc).__module__.startswith("mlflow"):
        return None
    match = _FAILED_REQUEST.match(getattr(exc, "message", str(exc)))
    if match is None:
        return None
    server = match["url"].split("/api/", 1)[0]
    errno = re.search(r"\[Errno -?\d+\] [^'\")\]]+", match["cause"])
    cause = errno.group(0) if errno else match["cause"].strip()[:160]
    return MlflowUnreachable(
        f"MLflow at {server} is unreachable ({cause}); is its server running "
        "(`emoflow start mlflow`, or EMOFLOW_MLFLOW_TRACKING_URI)?"
    )


MODEL_ARTIFACT = "model"  # name of the logged ONNX model inside each training run


def client(settings: Settings) -> MlflowClient:
    """A client of the tracking server and registry `settings` name; it changes no
    process-wide MLflow state (the fluent API's tracking URI stays whatever it was)."""
    import mlflow

    return mlflow.MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_tracking_uri)


def log_model_files(weights: Path, onnx_path: Path) -> str:
    """Inside an active run: both files as run artifacts, the ONNX export as an MLflow model.

    Returns the logged model's URI (``models:/m-...``), which is what gets registered.
    """
    import mlflow
    import onnx

    mlflow.log_artifact(str(weights), artifact_path="weights")
    mlflow.log_artifact(str(onnx_path), artifact_path="weights")
    info = mlflow.onnx.log_model(
        onnx.load(str(onnx_path)), name=MODEL_ARTIFACT, save_as_external_data=False
    )
    return info.model_uri


def register(
    train: TrainResult, dataset: DatasetRef, lineage: dict[str, str], settings: Settings
) -> ModelRef:
    """Register the run's model; registering the same run again returns the same version."""
    mlflow_client = client(settings)
    name = settings.model_name
    existing = mlflow_client.search_model_versions(f"name='{name}' and run_id='{train.run_id}'")
    if existing:  # a rerun; the alias again too, in case the first attempt died before it
        ref = ModelRef(
            name=name, version=min(int(v.version) for v in existing), run_id=train.run_id
        )
        mlflow_client.set_registered_model_alias(name, CHALLENGER, str(ref.version))
        return ref
    from mlflow.exceptions import MlflowException

    tags = {
        "data_revision": dataset.revision,
        "data_digest": dataset.digest,
        "data_commit": dataset.commit,
        **lineage,
        **{f"val_{k}": f"{v:.4f}" for k, v in train.metrics.items()},
    }
    trained = mlflow_client.get_run(train.run_id).data.params.get(ARCHITECTURE_TAG)
    if trained is not None:  # runs from before emoflow logged it have none
        tags[ARCHITECTURE_TAG] = trained
    try:
        mlflow_client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    model_id = train.model_uri.removeprefix("models:/")  # a logged model: models:/m-<id>
    version = mlflow_client.create_model_version(
        name, source=train.model_uri, run_id=train.run_id, tags=tags,
        model_id=model_id if model_id.startswith("m-") else None,
    ).version  # fmt: skip
    ref = ModelRef(name=name, version=int(version), run_id=train.run_id)
    mlflow_client.set_registered_model_alias(name, CHALLENGER, str(ref.version))
    return ref


def version_by_alias(settings: Settings, alias: str) -> ModelRef | None:
    from mlflow.exceptions import MlflowException

    mlflow_client = client(settings)
    try:
        mv = mlflow_client.get_model_version_by_alias(settings.model_name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise
    return ModelRef(name=settings.model_name, version=int(mv.version), run_id=mv.run_id)


def version_ref(settings: Settings, version: int) -> ModelRef:
    """The registered version `version` of the model."""
    mv = client(settings).get_model_version(settings.model_name, str(version))
    return ModelRef(name=settings.model_name, version=int(mv.version), run_id=mv.run_id)


def download_onnx(settings: Settings, ref: ModelRef, dst: Path) -> Path:
    """Download the ONNX file of a model version into `dst`; returns the .onnx path."""
    import mlflow

    uri = settings.mlflow_tracking_uri
    local = Path(
        mlflow.artifacts.download_artifacts(
            f"models:/{ref.name}/{ref.version}", dst_path=str(dst), tracking_uri=uri,
            registry_uri=uri,
        )
    )  # fmt: skip
    return next(local.glob("*.onnx"))


def download_weights(settings: Settings, ref: ModelRef, dst: Path) -> Path:
    """Download the torch weights logged with a model version's run; returns the .pt path."""
    import mlflow

    local = Path(
        mlflow.artifacts.download_artifacts(
            run_id=ref.run_id, artifact_path="weights", dst_path=str(dst),
            tracking_uri=settings.mlflow_tracking_uri,
        )
    )  # fmt: skip
    return next(local.glob("*.pt"))


def trained_imgsz(settings: Settings, ref: ModelRef) -> int | None:
    """The image size a version was trained at (its run's params), None if not recorded."""
    params = client(settings).get_run(ref.run_id).data.params
    value = params.get("imgsz_used", params.get("imgsz"))
    return int(value) if value and value.isdigit() else None


def set_tag(settings: Settings, ref: ModelRef, key: str, value: str) -> None:
    client(settings).set_model_version_tag(ref.name, str(ref.version), key, value)


def run_page(settings: Settings, run_id: str, artifact: str | None = None) -> str:
    """The MLflow UI page of run `run_id` (or of one of its artifacts), at the address people's
    browsers reach (`Settings.mlflow_ui_url`)."""
    experiment = client(settings).get_run(run_id).info.experiment_id
    url = f"{settings.mlflow_ui_url}/#/experiments/{experiment}/runs/{run_id}"
    return f"{url}/artifactPath/{artifact}" if artifact else url


DESCRIPTION_MAX = 5000
"""Longest model-version description every MLflow SQL backend stores (VARCHAR(5000))."""


def set_description(settings: Settings, ref: ModelRef, text: str) -> None:
    """Set the version's description (Markdown, shown on its MLflow page), cut to fit."""
    if len(text) > DESCRIPTION_MAX:
        text = text[: DESCRIPTION_MAX - 1] + "…"
    client(settings).update_model_version(ref.name, str(ref.version), description=text)


def promote(
    settings: Settings,
    version: int,
    reason: str,
    *,
    if_champion: int | None | str = ANY,
    kind: Kind = "manual",
    actor: str | None = None,
    link: str | None = None,
) -> PromoteResult:
    """Point `champion` at `version` and `previous` at the old champion, and record the move.

    Compare-and-swap: with `if_champion` (the version the gate compared against, None for no
    champion) the aliases move only if `champion` still names it; else `PromotionConflict`,
    and the newer champion stays. A `version` that is champion already moves nothing.

    The move is recorded in the promotion history (`ml.history`: `kind` gate, manual or
    rollback; `actor` the DAG run id or ``user:<name>``, default this OS user; `link` the gate
    report) right after the aliases moved, and ``<reports_dir>/history.html`` is rewritten
    (a page that cannot be written is logged, not raised: the record is what counts). If the
    process dies, or MLflow fails, between the alias move and the record, the move is
    unrecorded and the call raises (`RegistryError`) where it can; calling it again for the
    same version (an Airflow retry, the same command once more) finds `version` champion
    already and writes the missing record then, with that call's time, its `previous` alias
    as from-version and "recorded late" in the reason."""
    from mlflow.exceptions import MlflowException

    mlflow_client = client(settings)
    name = settings.model_name
    try:
        mlflow_client.get_model_version(name, str(version))
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise LookupError(f"model '{name}' has no version {version}") from None
        raise unreachable(exc) or RegistryError(
            f"MLflow at {settings.mlflow_tracking_uri} could not be asked for version {version} "
            f"of '{name}' ({exc.error_code}): {str(exc)[:300]}"
        ) from None
    old = version_by_alias(settings, CHAMPION)
    now = old.version if old else None
    if now == version:
        previous = _alias_version(settings, PREVIOUS)
        _record_late(settings, version, previous, kind, actor, reason, link)
        return PromoteResult(
            promoted=False, champion=version, previous=previous,
            reason=f"version {version} is already the champion",
        )  # fmt: skip
    if if_champion != ANY and now != if_champion:
        raise PromotionConflict(
            f"not promoting v{version}: the gate compared it with "
            f"{f'v{if_champion}' if if_champion else 'no champion'}, but '{name}' champion is "
            f"{f'v{now}' if now else 'none'} now (another run or a person moved it); the "
            "champion stays"
        )
    if old is not None:
        mlflow_client.set_registered_model_alias(name, PREVIOUS, str(old.version))
    mlflow_client.set_registered_model_alias(name, CHAMPION, str(version))
    record_event(settings, kind, now, version, reason, actor, link)
    return PromoteResult(promoted=True, champion=version, previous=now, reason=reason)


def rollback(settings: Settings, *, actor: str | None = None, reason: str = "") -> PromoteResult:
    """Swap `champion` and `previous`: the model served before the last promotion comes back
    (recorded in the history as a move of kind rollback)."""
    previous = version_by_alias(settings, PREVIOUS)
    if previous is None:
        raise LookupError(
            f"model '{settings.model_name}' has no 'previous' version to roll back to"
        )
    why = f"rollback to version {previous.version}" + (f": {reason}" if reason else "")
    return promote(settings, previous.version, reason=why, kind="rollback", actor=actor)


def record_event(
    settings: Settings, kind: Kind, old: int | None, new: int, reason: str, actor: str | None,
    link: str | None,
) -> None:  # fmt: skip
    """The history record of an event (an alias move that just happened, or a rejection that
    moved nothing: `old` == `new`), then the history page."""
    from mlflow.exceptions import MlflowException

    from ml import history

    move = history.AliasMove(
        time=datetime.now(UTC), actor=actor or history.user_actor(), kind=kind,
        from_version=old, to_version=new, reason=reason, link=link,
    )  # fmt: skip
    try:
        history.append(settings, move)
    except MlflowException as exc:
        raise RegistryError(
            f"'{settings.model_name}' champion moved to v{new}, but MLflow at "
            f"{settings.mlflow_tracking_uri} did not take its history record "
            f"({exc.error_code}: {str(exc)[:200]}); promote v{new} again to record it"
        ) from None
    try:
        history.write_page(settings.reports_dir, settings.model_name, history.moves(settings))
    except (OSError, MlflowException) as exc:
        log.warning("history page %s not written: %s", settings.reports_dir, exc)


def _record_late(
    settings: Settings, version: int, previous: int | None, kind: Kind, actor: str | None,
    reason: str, link: str | None,
) -> None:  # fmt: skip
    """Record a move to `version` that the history lacks (its writer died after the alias
    move); nothing when the newest record already names `version` champion."""
    from ml import history

    events = history.moves(settings)
    if events and events[-1].to_version == version:
        return
    note = f"{reason} (recorded late: v{version} was champion already)"
    record_event(settings, kind, previous, version, note, actor, link)


def _alias_version(settings: Settings, alias: str) -> int | None:
    ref = version_by_alias(settings, alias)
    return ref.version if ref else None
