"""Params: what the model is and how the loop behaves, one section per step, read from the
versioned ``params.yaml`` (as DVC projects keep theirs). Its digest tags every model version;
manual Airflow runs override `train` values through DAG Params, never by editing the file.
Infrastructure (where things live) is `ml.config.Settings`.
"""

from __future__ import annotations

import hashlib
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ml.config import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


AFFECTNET_COUNTS = {
    "anger": 24882, "contempt": 3750, "disgust": 3803, "fear": 6378,
    "happy": 134415, "neutral": 74874, "sad": 25459, "surprise": 14090,
}  # fmt: skip
"""Images per emotion in AffectNet's manually annotated training set (Mollahosseini et al.,
2017): the `affectnet` class mix of the sample generator."""


def class_weights(mix: str) -> list[float] | None:
    """Relative weights per emotion (EMOTIONS order) of a class mix: 'uniform' (None),
    'affectnet', or 'name=weight,...' with unnamed emotions at 1. ValueError says what is wrong."""
    from ml.config import EMOTIONS

    if mix == "uniform":
        return None
    if mix == "affectnet":
        return [float(AFFECTNET_COUNTS[name]) for name in EMOTIONS]
    weights = dict.fromkeys(EMOTIONS, 1.0)
    for part in filter(None, (p.strip() for p in mix.split(","))):
        name, _, value = part.partition("=")
        if name.strip() not in weights:
            raise ValueError(
                f"class mix {mix!r}: {name.strip()!r} is not an emotion ({', '.join(EMOTIONS)})"
            )
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"class mix {mix!r}: {part!r} needs a number, as in happy=5") from None
        if not 0 <= weights[name.strip()] < float("inf"):
            raise ValueError(f"class mix {mix!r}: {part!r}: a weight is a finite number >= 0")
    if not any(weights.values()):
        raise ValueError(f"class mix {mix!r}: at least one emotion needs a weight above 0")
    return list(weights.values())


class SampleParams(_Section):
    """Size and class mix of the bundled sample dataset (images per split)."""

    seed: int = 0
    train: int = Field(2400, ge=1)
    valid: int = Field(400, ge=1)
    test: int = Field(400, ge=1)
    class_mix: str = Field(
        "uniform",
        description="How often each emotion is drawn: 'uniform', 'affectnet' (AffectNet's "
        "skew: happy and neutral dominate, contempt and disgust are rare), or relative weights "
        "'happy=5,neutral=3,contempt=0.2' (emotions not named weigh 1).",
    )

    @field_validator("class_mix")
    @classmethod
    def _known_mix(cls, value: str) -> str:
        class_weights(value)
        return value


ImageFormat = Literal["BMP", "JPEG", "MPO", "PNG", "TIFF", "WEBP"]
"""Image file formats (Pillow's names) that both Pillow and ultralytics read."""
ImageMode = Literal["1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "I;16", "I", "F"]
"""Pillow colour modes an image may decode to (channels: 1, L, P, I;16, I, F = 1; LA, PA = 2;
RGB, YCbCr = 3; RGBA, CMYK = 4)."""


class ValidateParams(_Section):
    """Thresholds of the data checks in ml/validate/rules.py (errors stop the run, warnings do not)."""

    min_image_size: int = Field(
        32, ge=1, description="Smallest accepted image width and height (px); smaller: error."
    )
    image_formats: list[ImageFormat] = Field(
        ["BMP", "JPEG", "MPO", "PNG", "TIFF", "WEBP"],
        min_length=1,
        description="Accepted file formats, by content (not by suffix); others (GIF): error.",
    )
    image_modes: list[ImageMode] = Field(
        ["L", "P", "RGB", "RGBA"],
        min_length=1,
        description="Accepted colour modes: L = grey (1 channel), P = palette (1 channel holding "
        "colours), RGB (3), RGBA (4). Others (LA, CMYK, YCbCr, 16-bit, 1-bit): error.",
    )
    min_box_px: float = Field(
        8, ge=0, description="Smallest box width and height, in pixels of its image: error."
    )
    box_tolerance: float = Field(
        1e-3,
        ge=0,
        le=0.1,
        description="How far a box edge (cx +- w/2, cy +- h/2, normalised) may pass the image "
        "border before the box counts as outside the image (error).",
    )
    min_images_per_split: int = Field(
        8, ge=1, description="Images each of train, valid and test needs; fewer, or a missing "
        "split folder: error.",
    )  # fmt: skip
    min_class_share: float = Field(
        0.02, ge=0, le=1, description="Smallest share of train boxes per class: warning."
    )
    max_class_share: float = Field(
        0.5, ge=0, le=1, description="Largest share of train boxes per class: warning."
    )
    require_all_classes: bool = Field(
        False, description="A class with no train image is an error (else only the share warning)."
    )
    max_class_mix_change: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Largest change of a class's share of train boxes against the previous "
        "revision, in absolute share (0.05 = 5 points): warning.",
    )
    workers: int = Field(
        2, ge=1, le=64, description="Processes that decode images (1 = in the calling process)."
    )

    @field_validator("max_class_share")
    @classmethod
    def _share_bounds(cls, value: float, info) -> float:  # info: pydantic ValidationInfo
        low = info.data.get("min_class_share")
        if low is not None and low > value:
            raise ValueError(f"must be at least min_class_share ({low}), got {value}")
        return value


ARCHITECTURES = tuple(
    f"{family}{scale}.yaml" for family in ("yolov8", "yolo26") for scale in "nsmlx"
)
"""The YAML architectures `train.model` may name: ultralytics' YOLOv8 and YOLO26 detection
models at each scale (n, s, m, l, x), which emoflow trains, exports, gates and serves the same
way (docs/architectures.md). The other YAMLs ultralytics ships are other tasks (-seg, -pose,
-cls, -obb) or variants (p2, p6, ghost) that emoflow has not tried."""


class TrainParams(_Section):
    model: str = Field(
        "yolov8n.yaml",
        description="A YAML architecture ultralytics ships (yolov8n.yaml, yolo26n.yaml; the "
        "scales n, s, m, l, x of each) or a path to weights (.pt) you provide; nothing is ever "
        "downloaded.",
    )
    imgsz: Annotated[int, Field(ge=32)] | Literal["auto"] = Field(
        "auto",
        description="Training and serving image size (px); 'auto' = from the data: the median "
        "longer side of the train images, rounded up to a multiple of 32 (96 for AffectNet "
        "crops), at most 640.",
    )
    epochs: int = Field(30, ge=1)
    batch: int = Field(32, ge=1)
    patience: int = Field(10, ge=1)
    seed: int = 0
    device: str = Field("auto", description="'auto' = CUDA when present, else 'cpu'.")
    workers: int = Field(2, ge=0)
    init: Literal["scratch", "champion"] = Field(
        "scratch",
        description="scratch: start from `model`; champion: from the current champion's weights "
        "(its architecture and image size, `model` and `imgsz` unused) with the finetune_* "
        "schedule. No champion yet: scratch.",
    )
    data: Literal["cumulative", "replay"] = Field(
        "cumulative",
        description="cumulative: every train image of the revision; replay: the images added "
        "since the champion's revision plus a class-balanced sample of the earlier ones "
        "(`replay_size`). Validation and the gate use the full splits either way. No champion "
        "yet: cumulative.",
    )
    replay_size: Annotated[int, Field(ge=0)] | Annotated[float, Field(gt=0, lt=1)] = Field(
        1000,
        description="Earlier train images replayed: a count (1000), or a share of them (0.25).",
    )
    balance: Literal["none", "sample"] = Field(
        "none",
        description="sample: list each rare-class train image more often, up to as often as "
        "the largest class's images (at most `balance_max_repeat` times); none: each once.",
    )
    balance_max_repeat: float = Field(
        4.0, ge=1, description="Most times one image is listed when balancing."
    )
    finetune_epochs: int | None = Field(
        None,
        ge=1,
        description="Epochs of a warm start (it starts from the champion's weights, so fewer "
        "than from scratch may do); None = `epochs`.",
    )
    finetune_optimizer: Literal["SGD", "Adam", "AdamW", "NAdam", "RAdam", "RMSProp"] = Field(
        "AdamW", description="Optimizer of a warm start (scratch runs use ultralytics' auto)."
    )
    finetune_lr0: float = Field(
        0.0002,
        gt=0,
        le=1,
        description="Initial learning rate of a warm start (a quarter of what ultralytics' auto "
        "picks for 8 classes from scratch, 0.00083).",
    )
    finetune_lrf: float = Field(
        0.1, gt=0, le=1, description="Final learning rate of a warm start, as a share of lr0."
    )
    finetune_warmup_epochs: float = Field(
        1.0, ge=0, description="Warm-up epochs of a warm start (learning rate ramps from 0)."
    )

    @field_validator("model")
    @classmethod
    def _known_architecture(cls, value: str) -> str:
        if value.endswith((".yaml", ".yml")) and value not in ARCHITECTURES:
            raise ValueError(
                f"{value!r} is not an architecture emoflow trains; one of "
                f"{', '.join(ARCHITECTURES)}, or a path to .pt weights"
            )
        return value


class GateParams(_Section):
    """Rules of the evaluation gate (ml/gate.py). A model is promoted only if all pass."""

    test_revision: str | None = Field(
        None,
        description="Data revision whose test split both models are evaluated on (a frozen test "
        "set, independent of new training batches); None = the new revision's test split.",
    )
    min_map50: float = Field(0.25, ge=0, le=1, description="Absolute floor on test mAP50.")
    min_map50_95: float = Field(0.1, ge=0, le=1, description="Absolute floor on test mAP50-95.")
    min_improvement: float = Field(
        0.0,
        ge=-1,
        le=1,
        description="Lower bound of the bootstrap confidence interval of (challenger mAP50 - "
        "champion mAP50) must be at least this; 0 = the challenger must be better beyond noise.",
    )
    bootstrap_samples: int = Field(
        200, ge=10, le=100_000, description="Resamples (with replacement) of the test images."
    )
    confidence: float = Field(
        0.95, gt=0, lt=1, description="Two-sided confidence level of the bootstrap interval."
    )
    bootstrap_seed: int = Field(0, ge=0, description="Seed of the resampling (same seed, same CI).")
    max_recall_regression: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Largest allowed drop of any class's test recall (champion - challenger).",
    )
    forgetting_revisions: int | None = Field(
        None,
        ge=0,
        description="Earlier revisions (newest first) whose own test images both models are "
        "also scored on: the test images each one added, as the new revision still holds them "
        "(revisions are cumulative, so each earlier test split is inside the new one and only "
        "its batch tells that revision apart); None = every earlier one, 0 = no forgetting "
        "rules. Needs a champion.",
    )
    max_forgetting_map50: float = Field(
        0.01,
        ge=0,
        le=1,
        description="Largest allowed drop of mAP50 (champion - challenger) on any earlier "
        "revision's own test images.",
    )
    max_forgetting_recall: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Largest allowed drop of any class's recall (champion - challenger) on any "
        "earlier revision's own test images.",
    )
    forgetting_min_faces: int = Field(
        10,
        ge=1,
        description="A class's recall on an earlier revision's own test images is ruled by "
        "max_forgetting_recall only where that revision holds at least this many labelled faces "
        "of it: with 5 faces one face is 0.2 of recall. Classes below it are still shown.",
    )
    max_latency_ms: float | None = Field(
        50.0,
        gt=0,
        description="Budget for the median latency (ms) of the challenger's ONNX export on ONNX "
        "Runtime, CPU, batch 1, serving image size; None = no latency rule.",
    )
    latency_images: int = Field(
        20, ge=1, le=1000, description="Test images timed (one run each) for the median."
    )
    latency_warmup: int = Field(5, ge=0, le=100, description="Untimed runs before timing.")
    approval: Literal["auto", "human"] = Field(
        "auto",
        description="auto: a passing challenger is promoted; human: a person approves it first "
        "in Airflow (its approval task, or `emoflow model approve|reject`).",
    )
    approval_timeout_hours: float = Field(
        72, gt=0, description="With human approval: hours without an answer count as a rejection."
    )


class DriftParams(_Section):
    share_threshold: float = Field(
        0.5, ge=0, le=1, description="Share of drifted features that marks the data as drifted."
    )
    max_rows: int = Field(
        5000,
        ge=10,
        description="Rows sampled per side into the report; the live check reads the newest "
        "this many predictions.",
    )
    min_live_rows: int = Field(
        50,
        ge=1,
        description="Predictions the live-traffic check needs; fewer: no report (not enough "
        "traffic yet).",
    )
    embedding_components: int = Field(
        10, ge=1, le=256,
        description="PCA components of the face embeddings the live check compares.",
    )  # fmt: skip
    embedding_threshold: float = Field(
        0.6,
        gt=0.5,
        lt=1,
        description="Live traffic has drifted when a classifier tells its face embeddings from "
        "the training data's with at least this ROC AUC (0.5: indistinguishable).",
    )
    keep_reports: int = Field(
        50, ge=1, description="Reports kept per folder (dataset drift, live drift), newest first."
    )
    max_report_age_days: float | None = Field(
        30, gt=0, description="Reports older than this are deleted (the newest always stays)."
    )


class ScheduleParams(_Section):
    """When the DAGs run by themselves: `emotion_ct` on every newly recorded data revision and
    also on a cron schedule (UTC), so a model is retrained even while no batch arrives;
    `emotion_monitor` on its own cron schedule."""

    fallback_cron: str | None = Field(
        "0 4 * * 1",
        description="Cron expression of the time-based fallback (UTC); None = only new data.",
    )
    monitor_cron: str = Field(
        "@hourly", description="When `emotion_monitor` compares live traffic (cron, UTC)."
    )


class LabellingParams(_Section):
    """What drift sends to labelling (the `emotion_labelling` DAG) and how long answered images
    are kept for it."""

    max_images: int = Field(
        200, ge=1, description="Images per labelling batch, lowest confidence first."
    )
    valid_share: float = Field(
        0.15, ge=0, lt=1, description="Share of a batch's images put in its valid split."
    )
    test_share: float = Field(
        0.15, ge=0, lt=1, description="Share put in its test split (the rest is train)."
    )
    keep_images: int = Field(
        10_000, ge=1, description="Answered images kept for labelling, newest first."
    )
    image_retention_days: float | None = Field(
        14, gt=0, description="Answered images older than this are deleted."
    )


class Params(_Section):
    schedule: ScheduleParams = ScheduleParams()
    sample: SampleParams = SampleParams()
    validate_: ValidateParams = Field(ValidateParams(), alias="validate")
    train: TrainParams = TrainParams()
    gate: GateParams = GateParams()
    drift: DriftParams = DriftParams()
    labelling: LabellingParams = LabellingParams()

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @cached_property
    def digest(self) -> str:
        """Content digest of the params: a lineage tag on every model version. When the DAG
        runs (`schedule`) and what goes to labelling (`labelling`) do not change what the model
        is, so they are left out."""
        text = self.model_dump_json(by_alias=True, exclude={"schedule", "labelling"})
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_params(path: Path, overrides: dict | None = None) -> Params:
    """Read params.yaml; ``overrides`` is ``{"train": {"epochs": 1}, ...}`` from DAG Params."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: params file not found") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    for section, values in (overrides or {}).items():
        raw.setdefault(section, {}).update({k: v for k, v in values.items() if v is not None})
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from exc
