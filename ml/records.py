"""The small typed records that travel between steps (and through Airflow XCom as JSON)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetRef(Record):
    """A pulled data revision: a YOLO-layout folder with `data.yaml`, named by revision and digest."""

    revision: str  # registry tag, e.g. "r3"
    commit: str  # git commit of the registry that holds this revision
    digest: str  # DVC content digest of the dataset folder
    path: Path  # workspace folder that holds data.yaml and {train,valid,test}/{images,labels}


class ValidationResult(Record):
    ok: bool
    revision: str
    errors: list[str]  # "file: rule: what was found", at most a few hundred
    warnings: list[str]
    counts: dict[str, int]  # images / labels / boxes per split
    docs_url: str  # file:// URL of the Great Expectations Data Docs page for this run


class TrainResult(Record):
    run_id: str
    model_uri: str  # the logged ONNX model in MLflow (models:/m-...), what gets registered
    weights: Path  # best.pt
    onnx: Path  # best.onnx, what the service runs
    metrics: dict[str, float]  # final validation metrics (map50, map50_95, precision, recall)
    device: str
    seconds: float
    imgsz: int  # the image size trained at and exported for serving


class ModelRef(Record):
    name: str
    version: int
    run_id: str


class EvalResult(Record):
    """Metrics of one model on the test split of one dataset."""

    version: int | None  # registry version, None for an unregistered file
    map50: float
    map50_95: float
    per_class_recall: dict[str, float]
    per_class_faces: dict[str, int] = {}  # labelled faces of each class; {}: not counted
    revision: str | None = None  # data revision whose test split was used
    images: int | None = None  # test images evaluated
    stats_path: Path | None = None  # .npz of per-image stats (tp, conf, classes): bootstrap input
    # emotion of the faces found: each labelled face matched (IoU >= 0.5, any class) to one
    # prediction, highest confidence first; top-1 accuracy and macro-F1 over the matched faces
    accuracy: float | None = None
    macro_f1: float | None = None
    matched_faces: int | None = None  # labelled faces that a prediction matched
    faces: int | None = None  # labelled faces in the test split


class GateResult(Record):
    class Check(Record):
        """One rule of the gate: what was measured, against what, and the verdict."""

        rule: str  # e.g. "min_map50"
        value: str  # measured, formatted
        threshold: str  # the rule's bound, formatted
        passed: bool
        reason: str  # "PASS: ..." / "FAIL: ..."

    class Bootstrap(Record):
        """Paired bootstrap of (challenger - champion) mAP50 over the test images."""

        map50_diff: float  # on the full test split
        low: float  # confidence interval of the difference
        high: float
        confidence: float
        samples: int
        images: int
        seed: int
        seconds: float

    class Forgetting(Record):
        """Both models on the test images one earlier revision added (its own batch, as the
        gated revision still holds them): what the challenger kept of what came before."""

        revision: str  # the earlier revision, e.g. "r2"
        challenger: EvalResult
        champion: EvalResult
        seconds: float  # scoring both models on these images

    class ShadowClass(Record):
        """One class the champion answered on live traffic, scored in shadow by both models."""

        emotion: str  # the champion's answer (its best face), or "(no face)"
        images: int
        agreement: float  # share of those images the challenger answered with the same class
        champion_confidence: float | None  # mean
        challenger_confidence: float | None

    class Shadow(Record):
        """Champion and challenger on live traffic (the shadow log, `shadow_summary`): shown
        in the report as information, never a rule."""

        champion_version: int
        challenger_version: int
        images: int
        agreement: float
        dropped: int  # images sampled for shadow scoring but dropped (queue full)
        first: datetime
        last: datetime
        classes: list[GateResult.ShadowClass]

    passed: bool
    reasons: list[str]
    challenger: EvalResult
    champion: EvalResult | None
    report_path: Path
    test_revision: str | None = None  # data revision whose test split both models were scored on
    checks: list[GateResult.Check] = []
    bootstrap: GateResult.Bootstrap | None = None  # None without a champion
    latency_ms: float | None = None  # median ONNX Runtime CPU latency of the challenger
    markdown_path: Path | None = None
    # earlier revisions' own test images, newest first; empty without a champion or when off
    forgetting: list[GateResult.Forgetting] = []
    forgetting_table_path: Path | None = None  # the same as CSV, one row per revision x class
    shadow: GateResult.Shadow | None = None  # this champion/challenger pair on live traffic


GateResult.model_rebuild()


class DriftResult(Record):
    drifted: bool
    share: float  # share of features whose distribution drifted
    reference: str  # what the new data was compared with (revision and split)
    html_path: Path
    # live traffic only: the prediction-log window compared, and the model that answered it
    window_first: datetime | None = None
    window_last: datetime | None = None
    window_rows: int | None = None
    model_version: int | None = None
    embedding_score: float | None = None  # ROC AUC telling the face embeddings apart


class PromoteResult(Record):
    promoted: bool
    champion: int | None  # version that holds the champion alias after the step
    previous: int | None
    reason: str


class ReproduceResult(Record):
    """A registered version retrained from its recorded revision, params and seed."""

    version: int
    run_id: str  # the version's training run
    reproduced_run_id: str  # the new run
    data_revision: str
    recorded_commit: str  # code that trained the version
    commit: str  # code that reproduced it
    recorded: dict[str, float]  # final validation metrics of the version's run
    reproduced: dict[str, float]
    difference: dict[str, float]  # reproduced - recorded


class LabellingBatch(Record):
    """Faces of a drifted window of live traffic, ready for people to label: a YOLO-layout
    folder whose labels are the champion's answers, and the same as Label Studio tasks."""

    path: Path  # the batch folder: data.yaml, {train,valid,test}/{images,labels}
    tasks_path: Path  # Label Studio tasks (tasks.json) with the answers as pre-annotations
    images: int
    splits: dict[str, int]  # images per split
    model_version: int | None  # the model whose answers are the pre-annotations
    window_first: datetime | None
    window_last: datetime | None
