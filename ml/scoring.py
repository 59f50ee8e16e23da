"""Scoring one model on one test split: mAP, per-class recall, per-image evidence, latency.

`score` runs ultralytics' validator on a dataset's test split and records, for every test
image, what the validator feeds `ap_per_class` (the tp matrix at 10 IoU thresholds, conf,
predicted and true classes); it writes them to an .npz (`ImageStats`), so that
`bootstrap_map50_diff` can resample images and recompute mAP50 (`Map50`) for two models scored
on the same images. `measure_latency` times an ONNX export on ONNX Runtime, CPU, batch 1, on
inputs made as the service makes them (`ml.dataset_format.letterbox`). The gate's policy that
uses these measurements is in `ml.gate`.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ml import yolo
from ml.config import EMOTIONS, Settings, resolve_device
from ml.dataset_format import SPLITS, letterbox, list_images, to_tensor
from ml.records import DatasetRef, EvalResult, GateResult
from ml.safe_weights import load_checkpoint

Bootstrap = GateResult.Bootstrap

_AP_X = np.linspace(0, 1, 101)  # COCO 101-point interpolation, as ultralytics' compute_ap
_TRAPZ = getattr(np, "trapezoid", None) or np.trapz  # numpy 2 renamed trapz


# ------------------------------------------------------------------------------ per-image stats


@dataclass(frozen=True)
class ImageStats:
    """Per-image detection stats of one model on one test split, images sorted by name.

    Predictions of image i are rows ``pred_start[i]:pred_start[i + 1]`` of ``tp``, ``conf`` and
    ``pred_cls``; its labels are ``target_start[i]:target_start[i + 1]`` of ``target_cls``.
    """

    names: np.ndarray  # (n_images,) str
    tp: np.ndarray  # (n_pred, 10) bool: correct at IoU 0.50, 0.55, ..., 0.95
    conf: np.ndarray  # (n_pred,) float
    pred_cls: np.ndarray  # (n_pred,) int
    target_cls: np.ndarray  # (n_target,) int
    matched_cls: np.ndarray  # (n_target,) int: class of the prediction matched to it, -1: none
    pred_start: np.ndarray  # (n_images + 1,) int
    target_start: np.ndarray  # (n_images + 1,) int

    @property
    def images(self) -> int:
        return len(self.names)

    @classmethod
    def from_images(cls, per_image: list[dict]) -> ImageStats:
        """From ultralytics' per-image stat dicts (keys tp, conf, pred_cls, target_cls, im_name)
        plus ``matched_cls`` (see `match_faces`)."""
        per_image = sorted(per_image, key=lambda s: s["im_name"])
        names = [s["im_name"] for s in per_image]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})[:5]
            raise ValueError(f"test split has several images named {dup}: names must be unique")

        def cat(key: str, shape: tuple[int, ...], dtype) -> np.ndarray:
            parts = [np.asarray(s[key], dtype=dtype).reshape(-1, *shape) for s in per_image]
            return np.concatenate(parts) if parts else np.zeros((0, *shape), dtype)

        n_pred = [len(np.asarray(s["conf"]).reshape(-1)) for s in per_image]
        n_target = [len(np.asarray(s["target_cls"]).reshape(-1)) for s in per_image]
        return cls(
            names=np.asarray(names, dtype=str),
            tp=cat("tp", (10,), bool),
            conf=cat("conf", (), np.float64),
            pred_cls=cat("pred_cls", (), np.int64),
            target_cls=cat("target_cls", (), np.int64),
            matched_cls=cat("matched_cls", (), np.int64),
            pred_start=np.concatenate([[0], np.cumsum(n_pred, dtype=np.int64)]),
            target_start=np.concatenate([[0], np.cumsum(n_target, dtype=np.int64)]),
        )

    def save(self, path: Path) -> Path:
        """Write to `path` (.npz) through a temporary name, so no half-written file is left."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.tmp.npz")
        np.savez_compressed(tmp, **{k: getattr(self, k) for k in self.__dataclass_fields__})
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: Path) -> ImageStats:
        with np.load(path, allow_pickle=False) as data:
            missing = set(cls.__dataclass_fields__) - set(data.files)
            if missing:
                raise ValueError(f"{path}: not a gate stats file (missing {sorted(missing)})")
            return cls(**{k: data[k] for k in cls.__dataclass_fields__})


class Map50:
    """mAP50 of an `ImageStats` on any resample of its images, as ultralytics computes it.

    Predictions are sorted by confidence once; a resample (how many times each image is drawn)
    repeats each prediction and each label of an image that many times, which keeps the order,
    and then computes per-class AP at IoU 0.5 exactly as `ap_per_class` / `compute_ap` do. The
    mean is over the classes that have labels in the resample (as ultralytics does).
    ``Map50(stats)()`` (every image once) equals ultralytics' ``box.map50``.
    """

    def __init__(self, stats: ImageStats, nc: int = len(EMOTIONS)) -> None:
        order = np.argsort(-stats.conf, kind="stable")
        pred_img = np.repeat(np.arange(stats.images), np.diff(stats.pred_start))[order]
        target_img = np.repeat(np.arange(stats.images), np.diff(stats.target_start))
        self.nc = max(nc, int(stats.target_cls.max(initial=-1)) + 1,
                      int(stats.pred_cls.max(initial=-1)) + 1)  # fmt: skip
        self.images = stats.images
        # per class: the image of each prediction (in conf order) and whether it is a TP@0.5
        self.pred_img = [pred_img[stats.pred_cls[order] == c] for c in range(self.nc)]
        self.tp50 = [stats.tp[order, 0][stats.pred_cls[order] == c] for c in range(self.nc)]
        self.target_img = target_img
        self.target_cls = stats.target_cls

    def __call__(self, counts: np.ndarray | None = None) -> float:
        """mAP50 where image i is drawn counts[i] times (None: every image once)."""
        if counts is None:
            counts = np.ones(self.images, np.int64)
        n_labels = np.bincount(self.target_cls, weights=counts[self.target_img], minlength=self.nc)
        aps = []
        for c in np.flatnonzero(n_labels > 0):
            reps = counts[self.pred_img[c]]
            tp = np.repeat(self.tp50[c], reps)
            if tp.size == 0:
                aps.append(0.0)
                continue
            tpc = np.cumsum(tp)
            fpc = np.cumsum(~tp)
            recall = tpc / (n_labels[c] + 1e-16)
            precision = tpc / (tpc + fpc)
            aps.append(_ap(recall, precision))
        return float(np.mean(aps)) if aps else 0.0


def match_faces(
    iou: np.ndarray, conf: np.ndarray, pred_cls: np.ndarray, threshold: float = 0.5
) -> np.ndarray:
    """The predicted class of each labelled face, -1 where no prediction matches it.

    `iou` is (n_target, n_pred). Predictions are taken highest confidence first, whatever their
    class; each one takes the still unmatched face it overlaps most, if that IoU is at least
    `threshold`. So a face's emotion is that of the most confident box on it: the top-1 answer
    a face-expression classifier would give for that face.
    """
    iou = np.asarray(iou, dtype=np.float64)
    if iou.ndim != 2 or iou.shape[1] != len(conf):
        raise ValueError(f"iou must be (faces, predictions) with {len(conf)} predictions, "
                         f"got shape {iou.shape}")  # fmt: skip
    matched = np.full(iou.shape[0], -1, np.int64)
    free = np.ones(iou.shape[0], bool)
    for j in np.argsort(-np.asarray(conf), kind="stable"):
        if not free.any():
            break
        overlap = np.where(free, iou[:, j], -1.0)
        t = int(np.argmax(overlap))
        if overlap[t] >= threshold:
            matched[t] = int(pred_cls[j])
            free[t] = False
    return matched


@dataclass(frozen=True)
class EmotionMetrics:
    """Top-1 emotion accuracy and macro-F1 over the labelled faces that a prediction matched."""

    accuracy: float  # NaN when no face was matched
    macro_f1: float  # mean F1 over the classes that are true or predicted among matched faces
    per_class_f1: dict[str, float]
    matched: int
    faces: int


def emotion_metrics(stats: ImageStats, nc: int = len(EMOTIONS)) -> EmotionMetrics:
    """Accuracy and macro-F1 of the matched faces' predicted emotions (as sklearn's
    ``accuracy_score`` and ``f1_score(average="macro")`` compute them on those faces)."""
    hit = stats.matched_cls >= 0
    true, pred = stats.target_cls[hit], stats.matched_cls[hit]
    n = max(nc, int(true.max(initial=-1)) + 1, int(pred.max(initial=-1)) + 1)
    confusion = np.zeros((n, n), np.int64)
    np.add.at(confusion, (true, pred), 1)
    tp = np.diag(confusion).astype(np.float64)
    support, predicted = confusion.sum(1), confusion.sum(0)
    per_class = {}
    for c in np.flatnonzero((support + predicted) > 0):
        per_class[EMOTIONS[c] if c < len(EMOTIONS) else str(c)] = float(
            2 * tp[c] / (support[c] + predicted[c])
        )
    return EmotionMetrics(
        accuracy=float(tp.sum() / hit.sum()) if hit.any() else math.nan,
        macro_f1=float(np.mean(list(per_class.values()))) if per_class else math.nan,
        per_class_f1=per_class, matched=int(hit.sum()), faces=int(len(stats.target_cls)),
    )  # fmt: skip


def _ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """ultralytics' compute_ap: precision envelope, 101-point interpolation."""
    mrec = np.concatenate(([0.0], recall, [recall[-1]], [1.0]))
    mpre = np.concatenate(([1.0], precision, [0.0], [0.0]))
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
    return float(_TRAPZ(np.interp(_AP_X, mrec, mpre), _AP_X))


def same_images(challenger: ImageStats, champion: ImageStats) -> None:
    """Both models must have been scored on the same images in the same order, else raise."""
    if challenger.images != champion.images or not np.array_equal(challenger.names, champion.names):
        only = sorted(set(challenger.names.tolist()) ^ set(champion.names.tolist()))[:5]
        raise ValueError(
            f"challenger ({challenger.images} images) and champion ({champion.images} images) "
            f"were not evaluated on the same test images in the same order (e.g. {only}): "
            "the paired bootstrap needs one test split for both"
        )
    if not np.array_equal(challenger.target_cls, champion.target_cls) or not np.array_equal(
        challenger.target_start, champion.target_start
    ):
        raise ValueError("challenger and champion saw different labels for the same test images")


def bootstrap_map50_diff(
    challenger: ImageStats, champion: ImageStats, samples: int, confidence: float, seed: int = 0
) -> Bootstrap:
    """Paired percentile bootstrap of challenger mAP50 - champion mAP50 over test images.

    Each resample draws the test images with replacement (seeded); both models are scored on
    that same resample, so the interval reflects only the difference between the models.
    """
    same_images(challenger, champion)
    start = time.perf_counter()
    ch, cp = Map50(challenger), Map50(champion)
    rng = np.random.default_rng(seed)
    n = challenger.images
    diffs = np.empty(samples)
    for b in range(samples):
        counts = np.bincount(rng.integers(0, n, n), minlength=n)
        diffs[b] = ch(counts) - cp(counts)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(diffs, [alpha, 1 - alpha])
    return Bootstrap(
        map50_diff=ch() - cp(), low=float(low), high=float(high), confidence=confidence,
        samples=samples, images=n, seed=seed, seconds=time.perf_counter() - start,
    )  # fmt: skip


# --------------------------------------------------------------------------------- measuring


def score(
    weights: Path,
    dataset: DatasetRef,
    imgsz: int,
    version: int | None,
    settings: Settings,
    stats_dir: Path | None = None,
) -> EvalResult:
    """mAP and per-class recall of `weights` on the dataset's test split.

    The per-image stats behind them are written to ``<stats_dir>/eval-<name>.npz`` (default:
    the ultralytics val folder) and named by the result's `stats_path`. `weights` is checked
    first (`ml.safe_weights`): a file whose pickle would run code raises `UnsafeWeights`.
    """
    ultralytics = yolo.load(settings.home / "ultralytics")
    load_checkpoint(weights)  # a registry file: refused (UnsafeWeights) before ultralytics runs it
    model = ultralytics.YOLO(str(weights))
    per_image: list[dict] = []
    seen: dict = {}

    def record_per_image(validator) -> None:
        # DetectionValidator.update_metrics hands each image's stats (tp at 10 IoUs, conf,
        # pred_cls, target_cls, im_name) to metrics.update_stats, and get_stats clears the
        # accumulated lists after computing mAP; so keep a copy as they arrive.
        seen["validator"] = validator
        metrics = validator.metrics
        update_stats = metrics.update_stats
        process_batch = validator._process_batch

        def with_matches(preds: dict, batch: dict) -> dict:
            # update_metrics spreads this dict into the stat it hands update_stats; add the
            # class-agnostic face matches (update_stats keeps only the keys it knows)
            out = process_batch(preds, batch)
            n_t, n_p = batch["cls"].shape[0], preds["cls"].shape[0]
            if n_t and n_p:
                from ultralytics.utils.metrics import box_iou

                iou = box_iou(batch["bboxes"], preds["bboxes"]).cpu().numpy()
                conf, cls = preds["conf"].cpu().numpy(), preds["cls"].cpu().numpy()
                matched = match_faces(iou, conf, cls)
            else:
                matched = np.full(n_t, -1, np.int64)
            return {**out, "matched_cls": matched}

        validator._process_batch = with_matches

        def keep(stat: dict) -> None:
            keys = ("tp", "conf", "pred_cls", "target_cls", "matched_cls", "im_name")
            per_image.append({k: np.array(stat[k], copy=True) if k != "im_name" else stat[k]
                              for k in keys})  # fmt: skip
            update_stats(stat)

        metrics.update_stats = keep

    model.add_callback("on_val_start", record_per_image)
    name = f"v{version}" if version else "candidate"
    metrics = model.val(
        data=str(dataset.path / "data.yaml"),
        split="test",
        imgsz=imgsz,
        batch=32,
        device=resolve_device("auto"),
        plots=False,
        verbose=False,
        project=str(settings.runs_dir / "eval"),
        name=name,
        exist_ok=True,
    )
    expected = len(seen["validator"].dataloader.dataset) if "validator" in seen else -1
    if len(per_image) != expected:
        raise RuntimeError(
            f"recorded stats of {len(per_image)} images but the test split has {expected}: "
            "ultralytics' validator no longer reports per-image stats as expected"
        )
    stats = ImageStats.from_images(per_image)
    stats_path = stats.save(Path(stats_dir or metrics.save_dir) / f"eval-{name}.npz")
    box = metrics.box
    recall = {EMOTIONS[int(c)]: float(box.r[i]) for i, c in enumerate(box.ap_class_index)}
    emotions = emotion_metrics(stats)
    return EvalResult(
        version=version,
        map50=float(box.map50),
        map50_95=float(box.map),
        per_class_recall=recall,
        per_class_faces={
            EMOTIONS[int(c)]: int(n)
            for c, n in zip(*np.unique(stats.target_cls, return_counts=True), strict=True)
        },
        revision=dataset.revision,
        images=stats.images,
        stats_path=stats_path,
        accuracy=None if math.isnan(emotions.accuracy) else emotions.accuracy,
        macro_f1=None if math.isnan(emotions.macro_f1) else emotions.macro_f1,
        matched_faces=emotions.matched,
        faces=emotions.faces,
    )


def _model_input(path: Path, size: tuple[int, int]) -> np.ndarray:
    """(1, 3, h, w) float32 input as the service makes it: RGB uint8, letterboxed, /255."""
    from PIL import Image

    with Image.open(path) as img:
        rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return to_tensor(letterbox(rgb, size)[0])


def measure_latency(onnx_path: Path, images: list[Path], imgsz: int, warmup: int = 5) -> float:
    """Median milliseconds of one ONNX Runtime CPU run (batch 1) per image, after warm-up.

    The input size is the export's own (ultralytics writes it into the metadata; the service
    uses it), else `imgsz`. Only the session run is timed, not decoding the image.
    """
    import ast

    import onnxruntime as ort

    if not images:
        raise ValueError("no images to time the ONNX model on")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    size = ast.literal_eval(meta["imgsz"]) if "imgsz" in meta else imgsz
    size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    name = session.get_inputs()[0].name
    inputs = [_model_input(p, size) for p in images]
    for i in range(warmup):
        session.run(None, {name: inputs[i % len(inputs)]})
    times = []
    for x in inputs:
        start = time.perf_counter()
        session.run(None, {name: x})
        times.append((time.perf_counter() - start) * 1e3)
    return float(statistics.median(times))


def split_images(dataset: DatasetRef, limit: int, split: str = "test") -> list[Path]:
    """The first `limit` images of the split `split` (train, valid or test) of the dataset, by
    name; none if the split has no images folder."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: one of {', '.join(SPLITS)}")
    return list_images(dataset.path / split / "images")[:limit]
