"""The evaluation gate: challenger and champion on the same test split, a pure decision, a report.

`decide` is the whole policy and needs no server: absolute floors on mAP50 and mAP50-95, a
paired bootstrap confidence interval of the mAP50 gain over the champion, a bound on each
class's recall regression, and a latency budget of the challenger's ONNX export. `gate`
measures both models (and the latency) and writes the report (JSON + Markdown) that is logged
to the challenger's MLflow run; its reasons also go to the log (the Airflow task log).

Per-image evidence: `evaluate` records, for every test image, what ultralytics' validator feeds
`ap_per_class` (the tp matrix at 10 IoU thresholds, conf, predicted and true classes) and
writes it to an .npz (`ImageStats`), so the bootstrap can resample images and recompute mAP50.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ml import registry, yolo
from ml.config import EMOTIONS, GateParams, Settings, resolve_device
from ml.layouts import IMAGE_SUFFIXES
from ml.records import DatasetRef, EvalResult, GateResult, ModelRef

logger = logging.getLogger(__name__)

Check = GateResult.Check
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
    pred_start: np.ndarray  # (n_images + 1,) int
    target_start: np.ndarray  # (n_images + 1,) int

    @property
    def images(self) -> int:
        return len(self.names)

    @classmethod
    def from_images(cls, per_image: list[dict]) -> ImageStats:
        """From ultralytics' per-image stat dicts (keys tp, conf, pred_cls, target_cls, im_name)."""
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


class _Map50:
    """mAP50 of an `ImageStats` on any resample of its images, as ultralytics computes it.

    Predictions are sorted by confidence once; a resample (how many times each image is drawn)
    repeats each prediction and each label of an image that many times, which keeps the order,
    and then computes per-class AP at IoU 0.5 exactly as `ap_per_class` / `compute_ap` do. The
    mean is over the classes that have labels in the resample (as ultralytics does).
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


def _ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """ultralytics' compute_ap: precision envelope, 101-point interpolation."""
    mrec = np.concatenate(([0.0], recall, [recall[-1]], [1.0]))
    mpre = np.concatenate(([1.0], precision, [0.0], [0.0]))
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
    return float(_TRAPZ(np.interp(_AP_X, mrec, mpre), _AP_X))


def map50(stats: ImageStats) -> float:
    """mAP50 of the per-image stats over all images (equals ultralytics' `box.map50`)."""
    return _Map50(stats)()


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
    ch, cp = _Map50(challenger), _Map50(champion)
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


def evaluate(
    weights: Path,
    dataset: DatasetRef,
    imgsz: int,
    version: int | None,
    settings: Settings,
    stats_dir: Path | None = None,
) -> EvalResult:
    """mAP and per-class recall of `weights` on the dataset's test split.

    The per-image stats behind them are written to ``<stats_dir>/eval-<name>.npz`` (default:
    the ultralytics val folder) and named by the result's `stats_path`.
    """
    ultralytics = yolo.load(settings.home / "ultralytics")
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

        def keep(stat: dict) -> None:
            per_image.append({k: np.array(stat[k], copy=True) if k != "im_name" else stat[k]
                              for k in ("tp", "conf", "pred_cls", "target_cls", "im_name")})  # fmt: skip
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
    return EvalResult(
        version=version,
        map50=float(box.map50),
        map50_95=float(box.map),
        per_class_recall=recall,
        revision=dataset.revision,
        images=stats.images,
        stats_path=stats_path,
    )


def _letterbox(path: Path, size: tuple[int, int]) -> np.ndarray:
    """(1, 3, h, w) float32 input as the service makes it: RGB, aspect kept, grey padding."""
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
        gain = min(size[0] / img.height, size[1] / img.width)
        w, h = max(1, round(img.width * gain)), max(1, round(img.height * gain))
        canvas = Image.new("RGB", (size[1], size[0]), (114, 114, 114))
        canvas.paste(img.resize((w, h), Image.BILINEAR),
                     ((size[1] - w) // 2, (size[0] - h) // 2))  # fmt: skip
    return (np.asarray(canvas, np.float32).transpose(2, 0, 1)[None] / 255.0).copy()


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
    inputs = [_letterbox(p, size) for p in images]
    for i in range(warmup):
        session.run(None, {name: inputs[i % len(inputs)]})
    times = []
    for x in inputs:
        start = time.perf_counter()
        session.run(None, {name: x})
        times.append((time.perf_counter() - start) * 1e3)
    return float(statistics.median(times))


def split_images(dataset: DatasetRef, limit: int, split: str = "test") -> list[Path]:
    """The first `limit` images of one split of the dataset, by name."""
    folder = dataset.path / "test" / "images"
    found = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return found[:limit]


# ---------------------------------------------------------------------------------- the policy


def rules(
    challenger: EvalResult,
    champion: EvalResult | None,
    params: GateParams,
    bootstrap: Bootstrap | None = None,
    latency_ms: float | None = None,
) -> list[Check]:
    """Every rule of the gate, measured against its threshold. Pure: no I/O."""
    checks: list[Check] = []

    def add(rule: str, ok: bool, value: str, threshold: str, text: str) -> None:
        reason = f"{'PASS' if ok else 'FAIL'}: {text}"
        checks.append(Check(rule=rule, value=value, threshold=threshold, passed=ok, reason=reason))

    where = f" (test split of {challenger.revision})" if challenger.revision else ""
    add(
        "min_map50",
        challenger.map50 >= params.min_map50,
        f"{challenger.map50:.3f}",
        f">= {params.min_map50:.3f}",
        f"mAP50 {challenger.map50:.3f} >= floor {params.min_map50:.3f}{where}",
    )
    add("min_map50_95", challenger.map50_95 >= params.min_map50_95,
        f"{challenger.map50_95:.3f}", f">= {params.min_map50_95:.3f}",
        f"mAP50-95 {challenger.map50_95:.3f} >= floor {params.min_map50_95:.3f}")  # fmt: skip

    if params.max_latency_ms is not None:
        budget = f"<= {params.max_latency_ms:.1f} ms"
        if latency_ms is None:
            add("max_latency_ms", False, "not measured", budget,
                "ONNX Runtime CPU latency not measured (no ONNX export given to the gate)")  # fmt: skip
        else:
            add("max_latency_ms", latency_ms <= params.max_latency_ms,
                f"{latency_ms:.2f} ms", budget,
                f"median ONNX Runtime CPU latency {latency_ms:.2f} ms "
                f"<= budget {params.max_latency_ms:.1f} ms")  # fmt: skip

    if champion is None:
        add("champion", True, "none", "-", "no champion yet: absolute rules and latency only")
        return checks

    same = (challenger.revision, challenger.images) == (champion.revision, champion.images)
    add("same_test_set", same,
        f"{challenger.revision}/{challenger.images} vs {champion.revision}/{champion.images}",
        "equal", f"challenger and champion v{champion.version} scored on the same test split "
        f"(revision {challenger.revision}, {challenger.images} images vs revision "
        f"{champion.revision}, {champion.images} images)")  # fmt: skip

    floor = f"CI low >= {params.min_improvement:+.3f}"
    if bootstrap is None:
        gain = challenger.map50 - champion.map50
        add("min_improvement", False, f"{gain:+.3f} (no CI)", floor,
            f"mAP50 gain over champion v{champion.version} {gain:+.3f} has no bootstrap "
            "confidence interval (per-image stats missing)")  # fmt: skip
    else:
        b = bootstrap
        ci = f"[{b.low:+.3f}, {b.high:+.3f}]"
        add("min_improvement", b.low >= params.min_improvement,
            f"{b.map50_diff:+.3f} {ci}", floor,
            f"mAP50 gain over champion v{champion.version} {b.map50_diff:+.3f}, "
            f"{b.confidence:.0%} CI {ci} ({b.samples} resamples of {b.images} images): "
            f"lower bound {b.low:+.3f} >= {params.min_improvement:+.3f}")  # fmt: skip

    drops = {
        cls: (recall, challenger.per_class_recall.get(cls, 0.0))
        for cls, recall in champion.per_class_recall.items()
    }
    worse = {cls: (old, new) for cls, (old, new) in drops.items()
             if old - new > params.max_recall_regression + 1e-12}  # fmt: skip
    largest = max((old - new for old, new in drops.values()), default=0.0)
    bound = f"<= {params.max_recall_regression:.3f}"
    if worse:
        named = ", ".join(f"{cls} {old:.3f} -> {new:.3f} ({new - old:+.3f})"
                          for cls, (old, new) in sorted(worse.items()))  # fmt: skip
        text = (f"per-class recall drop vs champion v{champion.version} "
                f"<= {params.max_recall_regression:.3f}; regressed: {named}")  # fmt: skip
    else:
        text = (f"per-class recall drop vs champion v{champion.version} {largest:+.3f} "
                f"(largest) <= {params.max_recall_regression:.3f}")  # fmt: skip
    add("max_recall_regression", not worse, f"{largest:+.3f}", bound, text)
    return checks


def decide(
    challenger: EvalResult,
    champion: EvalResult | None,
    params: GateParams,
    bootstrap: Bootstrap | None = None,
    latency_ms: float | None = None,
) -> tuple[bool, list[str]]:
    """The gate's rules. Returns (passed, one reason per rule, each saying pass or fail)."""
    checks = rules(challenger, champion, params, bootstrap, latency_ms)
    return all(c.passed for c in checks), [c.reason for c in checks]


# ---------------------------------------------------------------------------------- the report


def _fmt(value: float | None) -> str:
    return (
        "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"
    )


def markdown(result: GateResult) -> str:
    """The report as Markdown: the rules table (value, threshold, verdict) and the evidence."""
    rows = [("challenger", result.challenger)]
    if result.champion is not None:
        rows.append(("champion", result.champion))
    lines = [
        f"# Gate: {'PASSED' if result.passed else 'REFUSED'}",
        "",
        f"Test split: data revision `{result.test_revision}`.",
        "",
        "| rule | value | threshold | verdict |",
        "| --- | --- | --- | --- |",
        *(
            f"| {c.rule} | {c.value} | {c.threshold} | {'PASS' if c.passed else 'FAIL'} |"
            for c in result.checks
        ),  # fmt: skip
        "",
        "| model | version | test revision | images | mAP50 | mAP50-95 |",
        "| --- | --- | --- | --- | --- | --- |",
        *(
            f"| {role} | {m.version} | {m.revision} | {m.images} | {m.map50:.3f} | "
            f"{m.map50_95:.3f} |"
            for role, m in rows
        ),  # fmt: skip
    ]
    champ = result.champion
    classes = sorted(set(result.challenger.per_class_recall) | set(champ.per_class_recall if champ else {}),
                     key=lambda c: EMOTIONS.index(c) if c in EMOTIONS else len(EMOTIONS))  # fmt: skip
    if classes:
        lines += ["", "| class | champion recall | challenger recall | change |",
                  "| --- | --- | --- | --- |"]  # fmt: skip
        for cls in classes:
            new = result.challenger.per_class_recall.get(cls)
            old = champ.per_class_recall.get(cls) if champ else None
            change = f"{(new or 0.0) - old:+.3f}" if old is not None else "-"
            lines.append(f"| {cls} | {_fmt(old)} | {_fmt(new)} | {change} |")
    if result.bootstrap is not None:
        b = result.bootstrap
        lines += ["", f"Bootstrap: {b.samples} paired resamples of {b.images} test images "
                  f"(seed {b.seed}, {b.seconds:.2f} s): mAP50 gain {b.map50_diff:+.3f}, "
                  f"{b.confidence:.0%} CI [{b.low:+.3f}, {b.high:+.3f}]."]  # fmt: skip
    if result.latency_ms is not None:
        lines += ["", f"Latency: median {result.latency_ms:.2f} ms (ONNX Runtime, CPU, batch 1)."]
    lines += ["", *(f"- {reason}" for reason in result.reasons)]
    return "\n".join(lines) + "\n"


def write_report(result: GateResult) -> GateResult:
    """Write the JSON (everything) and Markdown reports; return the result naming both."""
    md_path = result.report_path.with_suffix(".md")
    result = result.model_copy(update={"markdown_path": md_path})
    for path, text in ((result.report_path, result.model_dump_json(indent=2)),
                       (md_path, markdown(result))):  # fmt: skip
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return result


# ------------------------------------------------------------------------------------ the step


def gate(
    challenger: ModelRef,
    challenger_weights: Path,
    dataset: DatasetRef,
    imgsz: int,
    params: GateParams,
    settings: Settings,
    out_dir: Path,
    challenger_onnx: Path,
) -> GateResult:
    """Evaluate challenger and champion on `dataset`'s test split and apply `decide`.

    `dataset` is the test set: the revision named by ``params.test_revision`` when set (the
    caller pulls it), else the new revision. `challenger_onnx` is the export that would be
    served; its latency is measured here.
    """
    import mlflow

    if params.test_revision and dataset.revision != params.test_revision:
        raise ValueError(
            f"gate.test_revision is {params.test_revision!r} but the gate was given revision "
            f"{dataset.revision!r}: pull {params.test_revision!r} and pass it as the test set"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    logger.info("gate: scoring v%s on the test split of revision %s",
                challenger.version, dataset.revision)  # fmt: skip
    challenger_eval = evaluate(
        challenger_weights, dataset, imgsz, challenger.version, settings, stats_dir=out_dir
    )
    champion_ref = registry.version_by_alias(settings, registry.CHAMPION)
    champion_eval = bootstrap = None
    if champion_ref is not None and champion_ref.version != challenger.version:
        weights = registry.download_weights(settings, champion_ref, out_dir / "champion")
        champion_imgsz = registry.trained_imgsz(settings, champion_ref) or imgsz
        champion_eval = evaluate(
            weights, dataset, champion_imgsz, champion_ref.version, settings, stats_dir=out_dir
        )
        bootstrap = bootstrap_map50_diff(
            ImageStats.load(challenger_eval.stats_path),
            ImageStats.load(champion_eval.stats_path),
            params.bootstrap_samples,
            params.confidence,
            params.bootstrap_seed,
        )
    latency = None
    if params.max_latency_ms is not None:
        latency = measure_latency(
            challenger_onnx, split_images(dataset, params.latency_images), imgsz,
            params.latency_warmup,
        )  # fmt: skip
    checks = rules(challenger_eval, champion_eval, params, bootstrap, latency)
    passed = all(c.passed for c in checks)
    result = write_report(
        GateResult(
            passed=passed, reasons=[c.reason for c in checks], challenger=challenger_eval,
            champion=champion_eval, report_path=out_dir / f"gate-v{challenger.version}.json",
            test_revision=dataset.revision, checks=checks, bootstrap=bootstrap,
            latency_ms=latency,
        )
    )  # fmt: skip
    for check in checks:
        logger.log(logging.INFO if check.passed else logging.WARNING, "gate: %s", check.reason)
    logger.info("gate: v%s %s", challenger.version, "PASSED" if passed else "REFUSED")
    with mlflow.start_run(run_id=challenger.run_id):
        for path in (result.report_path, result.markdown_path, challenger_eval.stats_path):
            mlflow.log_artifact(str(path), artifact_path="gate")
        if champion_eval is not None:
            mlflow.log_artifact(str(champion_eval.stats_path), artifact_path="gate")
        metrics = {"test_map50": challenger_eval.map50, "test_map50_95": challenger_eval.map50_95}
        if latency is not None:
            metrics["gate_latency_ms"] = latency
        if bootstrap is not None:
            metrics |= {"gate_map50_gain": bootstrap.map50_diff,
                        "gate_map50_gain_ci_low": bootstrap.low,
                        "gate_map50_gain_ci_high": bootstrap.high}  # fmt: skip
        mlflow.log_metrics(metrics)
    registry.set_tag(settings, challenger, "gate", "passed" if passed else "refused")
    return result
