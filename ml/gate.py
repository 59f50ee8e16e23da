"""The evaluation gate: challenger and champion on the same test split, a pure verdict, a report.

`verdict` is the whole policy and needs no server: absolute floors on mAP50 and mAP50-95, a
paired bootstrap confidence interval of the mAP50 gain over the champion, a bound on each
class's recall regression, and a latency budget of the challenger's ONNX export. The step
`gate` measures both models and the latency (`ml.scoring`), decides with `verdict`, writes the
report (JSON + Markdown) and logs it with the test metrics to the challenger's training run
through an explicit MLflow client (the run itself is not reopened); its reasons also go to the
log (the Airflow task log), and its `summary` becomes the model version's description.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

from ml import registry, scoring
from ml.config import EMOTIONS, Settings
from ml.files import atomic_write_text
from ml.params import GateParams
from ml.records import DatasetRef, EvalResult, GateResult, ModelRef

logger = logging.getLogger(__name__)

Check = GateResult.Check
Bootstrap = GateResult.Bootstrap


# ---------------------------------------------------------------------------------- the policy


def verdict(
    challenger: EvalResult,
    champion: EvalResult | None,
    params: GateParams,
    bootstrap: Bootstrap | None = None,
    latency_ms: float | None = None,
) -> tuple[bool, list[Check]]:
    """The gate's policy: every rule measured against its threshold, and whether all pass.

    Pure (no I/O); `gate` decides with exactly this. Each check's reason says PASS or FAIL.
    """
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
        return all(c.passed for c in checks), checks

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
    return all(c.passed for c in checks), checks


# ---------------------------------------------------------------------------------- the report


def _fmt(value: float | None) -> str:
    return (
        "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"
    )


def _matched(m: EvalResult) -> str:
    return "-" if m.matched_faces is None or m.faces is None else f"{m.matched_faces}/{m.faces}"


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
        "| model | version | test revision | images | mAP50 | mAP50-95 | accuracy | macro-F1 "
        "| faces matched |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *(
            f"| {role} | {m.version} | {m.revision} | {m.images} | {m.map50:.3f} | "
            f"{m.map50_95:.3f} | {_fmt(m.accuracy)} | {_fmt(m.macro_f1)} | "
            f"{_matched(m)} |"
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


def summary(result: GateResult) -> str:
    """The verdict in short Markdown for the version's description in the MLflow registry:
    the verdict, the test split, the champion compared with, and one row per rule."""
    champion = f"champion v{result.champion.version}" if result.champion else "no champion"
    images = f", {result.challenger.images} images" if result.challenger.images else ""
    lines = [
        f"**Gate {'PASSED' if result.passed else 'REFUSED'}**: v{result.challenger.version} "
        f"against {champion}, test split of revision `{result.test_revision}`{images}; "
        f"mAP50 {result.challenger.map50:.3f}, mAP50-95 {result.challenger.map50_95:.3f}, "
        f"emotion accuracy {_fmt(result.challenger.accuracy)}, "
        f"macro-F1 {_fmt(result.challenger.macro_f1)} (matched faces).",
        "",
        "| rule | value | threshold | verdict |",
        "| --- | --- | --- | --- |",
        *(
            f"| {c.rule} | {c.value} | {c.threshold} | {'PASS' if c.passed else 'FAIL'} |"
            for c in result.checks
        ),
    ]
    if result.markdown_path is not None:
        lines += ["", f"Full report: `gate/{result.markdown_path.name}` in the training run."]
    return "\n".join(lines) + "\n"


def write_report(result: GateResult) -> GateResult:
    """Write the JSON (everything) and Markdown reports; return the result naming both."""
    md_path = result.report_path.with_suffix(".md")
    result = result.model_copy(update={"markdown_path": md_path})
    atomic_write_text(result.report_path, result.model_dump_json(indent=2))
    atomic_write_text(md_path, markdown(result))
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
    """Score challenger and champion on `dataset`'s test split and apply `verdict`.

    `dataset` is the test set: the revision named by ``params.test_revision`` when set (the
    caller pulls it), else the new revision. `challenger_onnx` is the export that would be
    served; its latency is measured here.
    """
    if params.test_revision and dataset.revision != params.test_revision:
        raise ValueError(
            f"gate.test_revision is {params.test_revision!r} but the gate was given revision "
            f"{dataset.revision!r}: pull {params.test_revision!r} and pass it as the test set"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    logger.info("gate: scoring v%s on the test split of revision %s",
                challenger.version, dataset.revision)  # fmt: skip
    challenger_eval = scoring.score(
        challenger_weights, dataset, imgsz, challenger.version, settings, stats_dir=out_dir
    )
    champion_ref = registry.version_by_alias(settings, registry.CHAMPION)
    champion_eval = bootstrap = None
    if champion_ref is not None and champion_ref.version != challenger.version:
        weights = registry.download_weights(settings, champion_ref, out_dir / "champion")
        champion_imgsz = registry.trained_imgsz(settings, champion_ref) or imgsz
        champion_eval = scoring.score(
            weights, dataset, champion_imgsz, champion_ref.version, settings, stats_dir=out_dir
        )
        bootstrap = scoring.bootstrap_map50_diff(
            scoring.ImageStats.load(challenger_eval.stats_path),
            scoring.ImageStats.load(champion_eval.stats_path),
            params.bootstrap_samples,
            params.confidence,
            params.bootstrap_seed,
        )
    latency = None
    if params.max_latency_ms is not None:
        latency = scoring.measure_latency(
            challenger_onnx, scoring.split_images(dataset, params.latency_images, "test"),
            imgsz, params.latency_warmup,
        )  # fmt: skip
    passed, checks = verdict(challenger_eval, champion_eval, params, bootstrap, latency)
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
    _log_to_run(settings, challenger.run_id, result)
    registry.set_tag(settings, challenger, "gate", "passed" if passed else "refused")
    registry.set_description(settings, challenger, summary(result))
    return result


def _log_to_run(settings: Settings, run_id: str, result: GateResult) -> None:
    """The reports, the per-image stats and the test metrics, into the challenger's training
    run, through an explicit client: the run's status and end time are left as they are."""
    from mlflow.entities import Metric

    client = registry.client(settings)
    stats = [result.challenger.stats_path]
    if result.champion is not None:
        stats.append(result.champion.stats_path)
    for path in (result.report_path, result.markdown_path, *stats):
        client.log_artifact(run_id, str(path), artifact_path="gate")
    metrics = {"test_map50": result.challenger.map50,
               "test_map50_95": result.challenger.map50_95}  # fmt: skip
    # per-class test recall as metrics, so MLflow's compare view of two runs shows the rule
    metrics |= {f"test_recall_{cls}": r for cls, r in result.challenger.per_class_recall.items()}
    # top-1 emotion accuracy and macro-F1 of the matched faces, as face-expression papers report
    for key in ("accuracy", "macro_f1"):
        if (value := getattr(result.challenger, key)) is not None:
            metrics[f"test_{key}"] = value
        if result.champion is not None and (value := getattr(result.champion, key)) is not None:
            metrics[f"champion_test_{key}"] = value
    if result.latency_ms is not None:
        metrics["gate_latency_ms"] = result.latency_ms
    if (b := result.bootstrap) is not None:
        metrics |= {"gate_map50_gain": b.map50_diff, "gate_map50_gain_ci_low": b.low,
                    "gate_map50_gain_ci_high": b.high}  # fmt: skip
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
