"""The evaluation gate: challenger and champion on the same test split, a pure decision, a report.

`decide` is the whole policy and needs no server; `gate` measures both models and writes the
report (JSON + Markdown) that is logged to the challenger's MLflow run.
"""

from __future__ import annotations

import json
from pathlib import Path

from ml import registry, yolo
from ml.config import EMOTIONS, GateParams, Settings, resolve_device
from ml.records import DatasetRef, EvalResult, GateResult, ModelRef


def evaluate(
    weights: Path, dataset: DatasetRef, imgsz: int, version: int | None, settings: Settings
) -> EvalResult:
    """mAP and per-class recall of `weights` on the dataset's test split."""
    ultralytics = yolo.load(settings.home / "ultralytics")
    metrics = ultralytics.YOLO(str(weights)).val(
        data=str(dataset.path / "data.yaml"),
        split="test",
        imgsz=imgsz,
        batch=32,
        device=resolve_device("auto"),
        plots=False,
        verbose=False,
        project=str(settings.runs_dir / "eval"),
        name=f"v{version}" if version else "candidate",
        exist_ok=True,
    )
    box = metrics.box
    recall = {EMOTIONS[int(c)]: float(box.r[i]) for i, c in enumerate(box.ap_class_index)}
    return EvalResult(
        version=version,
        map50=float(box.map50),
        map50_95=float(box.map),
        per_class_recall=recall,
    )


def decide(
    challenger: EvalResult, champion: EvalResult | None, params: GateParams
) -> tuple[bool, list[str]]:
    """The gate's rules. Returns (passed, one reason per rule, each saying pass or fail)."""
    checks = [
        (challenger.map50 >= params.min_map50,
         f"mAP50 {challenger.map50:.3f} >= floor {params.min_map50:.3f}"),
        (challenger.map50_95 >= params.min_map50_95,
         f"mAP50-95 {challenger.map50_95:.3f} >= floor {params.min_map50_95:.3f}"),
    ]  # fmt: skip
    if champion is None:
        checks.append((True, "no champion yet: absolute rules only"))
    else:
        gain = challenger.map50 - champion.map50
        checks.append(
            (gain >= params.min_improvement,
             f"mAP50 gain over champion v{champion.version} {gain:+.3f} "
             f">= {params.min_improvement:+.3f}")
        )  # fmt: skip
    reasons = [f"{'PASS' if ok else 'FAIL'}: {text}" for ok, text in checks]
    return all(ok for ok, _ in checks), reasons


def _markdown(result: GateResult) -> str:
    rows = [("challenger", result.challenger)]
    if result.champion is not None:
        rows.append(("champion", result.champion))
    lines = [
        f"# Gate: {'PASSED' if result.passed else 'REFUSED'}",
        "",
        "| model | version | mAP50 | mAP50-95 |",
        "| --- | --- | --- | --- |",
        *(f"| {role} | {m.version} | {m.map50:.3f} | {m.map50_95:.3f} |" for role, m in rows),
        "",
        *(f"- {reason}" for reason in result.reasons),
    ]
    return "\n".join(lines) + "\n"


def gate(
    challenger: ModelRef,
    challenger_weights: Path,
    dataset: DatasetRef,
    imgsz: int,
    params: GateParams,
    settings: Settings,
    out_dir: Path,
) -> GateResult:
    """Evaluate challenger and champion on `dataset`'s test split and apply `decide`."""
    import mlflow

    out_dir.mkdir(parents=True, exist_ok=True)
    challenger_eval = evaluate(challenger_weights, dataset, imgsz, challenger.version, settings)
    champion_ref = registry.version_by_alias(settings, registry.CHAMPION)
    champion_eval = None
    if champion_ref is not None and champion_ref.version != challenger.version:
        weights = registry.download_weights(settings, champion_ref, out_dir / "champion")
        champion_eval = evaluate(weights, dataset, imgsz, champion_ref.version, settings)
    passed, reasons = decide(challenger_eval, champion_eval, params)
    report = out_dir / f"gate-v{challenger.version}.json"
    result = GateResult(
        passed=passed, reasons=reasons, challenger=challenger_eval, champion=champion_eval,
        report_path=report,
    )  # fmt: skip
    report.write_text(json.dumps(result.model_dump(mode="json"), indent=2))
    markdown = report.with_suffix(".md")
    markdown.write_text(_markdown(result))
    with mlflow.start_run(run_id=challenger.run_id):
        mlflow.log_artifact(str(report), artifact_path="gate")
        mlflow.log_artifact(str(markdown), artifact_path="gate")
        mlflow.log_metrics({"test_map50": challenger_eval.map50,
                            "test_map50_95": challenger_eval.map50_95})  # fmt: skip
    registry.set_tag(settings, challenger, "gate", "passed" if passed else "refused")
    return result
