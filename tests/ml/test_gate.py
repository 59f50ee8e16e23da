"""The gate's decision, rule by rule, and its report, without servers or models."""

from pathlib import Path

import pytest

from ml.config import GateParams
from ml.evaluate import decide, markdown, rules, write_report
from ml.records import EvalResult, GateResult

RECALL = {"happy": 0.90, "sad": 0.80, "fear": 0.70}


def result(
    map50: float,
    map50_95: float = 0.5,
    version: int | None = 2,
    recall: dict[str, float] | None = None,
    revision: str | None = "r1",
    images: int = 400,
) -> EvalResult:
    return EvalResult(
        version=version, map50=map50, map50_95=map50_95,
        per_class_recall=RECALL if recall is None else recall, revision=revision, images=images,
    )  # fmt: skip


def ci(low: float, high: float, diff: float | None = None) -> GateResult.Bootstrap:
    return GateResult.Bootstrap(
        map50_diff=(low + high) / 2 if diff is None else diff, low=low, high=high,
        confidence=0.95, samples=200, images=400, seed=0, seconds=0.1,
    )  # fmt: skip


PARAMS = GateParams(
    min_map50=0.3, min_map50_95=0.1, min_improvement=0.02, max_recall_regression=0.05,
    max_latency_ms=20.0,
)  # fmt: skip
FAST = 5.0  # ms, within PARAMS' budget


def fails(reasons: list[str]) -> list[str]:
    return [r for r in reasons if r.startswith("FAIL")]


# ------------------------------------------------------------------------- first model


def test_first_model_passes_on_absolute_rules_and_latency_only():
    passed, reasons = decide(result(0.31), None, PARAMS, latency_ms=FAST)
    assert passed, reasons
    assert any("no champion yet" in r for r in reasons)
    assert not any("champion v" in r or "recall" in r for r in reasons)


def test_first_model_below_a_floor_is_refused_and_says_which():
    passed, reasons = decide(result(0.29), None, PARAMS, latency_ms=FAST)
    assert not passed
    assert fails(reasons) == ["FAIL: mAP50 0.290 >= floor 0.300 (test split of r1)"]
    passed, reasons = decide(result(0.9, map50_95=0.05), None, PARAMS, latency_ms=FAST)
    assert not passed
    assert fails(reasons) == ["FAIL: mAP50-95 0.050 >= floor 0.100"]


def test_reasons_name_the_test_revision():
    _, reasons = decide(result(0.9, revision="r7"), None, PARAMS, latency_ms=FAST)
    assert "test split of r7" in reasons[0]


# ------------------------------------------------------------------------------ latency


def test_latency_over_budget_refuses_even_the_first_model():
    passed, reasons = decide(result(0.9), None, PARAMS, latency_ms=25.0)
    assert not passed
    assert fails(reasons) == ["FAIL: median ONNX Runtime CPU latency 25.00 ms <= budget 20.0 ms"]
    assert decide(result(0.9), None, PARAMS, latency_ms=19.99)[0]


def test_unmeasured_latency_refuses_unless_the_rule_is_off():
    passed, reasons = decide(result(0.9), None, PARAMS)
    assert not passed and "not measured" in fails(reasons)[0]
    no_budget = PARAMS.model_copy(update={"max_latency_ms": None})
    assert decide(result(0.9), None, no_budget)[0]


# -------------------------------------------------------------- improvement over champion


def test_challenger_must_beat_the_champion_beyond_noise():
    champion = result(0.60, version=1)
    assert decide(result(0.66), champion, PARAMS, ci(0.03, 0.09), FAST)[0]
    # a point gain of +0.06 whose interval reaches below the minimum does not promote
    passed, reasons = decide(result(0.66), champion, PARAMS, ci(0.01, 0.11, diff=0.06), FAST)
    assert not passed
    assert fails(reasons) == [
        "FAIL: mAP50 gain over champion v1 +0.060, 95% CI [+0.010, +0.110] "
        "(200 resamples of 400 images): lower bound +0.010 >= +0.020"
    ]
    assert not decide(result(0.40), champion, PARAMS, ci(-0.25, -0.15), FAST)[0]


def test_a_champion_without_bootstrap_evidence_refuses():
    passed, reasons = decide(result(0.9), result(0.6, version=1), PARAMS, None, FAST)
    assert not passed
    assert "no bootstrap confidence interval" in fails(reasons)[0]


def test_models_scored_on_different_test_splits_refuse():
    champion = result(0.6, version=1, revision="r2")
    passed, reasons = decide(result(0.9), champion, PARAMS, ci(0.2, 0.3), FAST)
    assert not passed
    assert fails(reasons)[0].startswith("FAIL: challenger and champion v1 scored on the same")
    assert "revision r1" in fails(reasons)[0] and "revision r2" in fails(reasons)[0]


# ------------------------------------------------------------------- per-class recall


def test_recall_regression_within_bound_passes():
    challenger = result(0.7, recall={"happy": 0.86, "sad": 0.95, "fear": 0.70})  # happy -0.04
    passed, reasons = decide(challenger, result(0.6, version=1), PARAMS, ci(0.05, 0.15), FAST)
    assert passed, reasons
    assert "PASS: per-class recall drop vs champion v1 +0.040 (largest) <= 0.050" in reasons


def test_recall_regression_names_the_classes_that_regressed():
    challenger = result(0.7, recall={"happy": 0.80, "sad": 0.80, "fear": 0.60})
    passed, reasons = decide(challenger, result(0.6, version=1), PARAMS, ci(0.05, 0.15), FAST)
    assert not passed
    assert fails(reasons) == [
        "FAIL: per-class recall drop vs champion v1 <= 0.050; regressed: "
        "fear 0.700 -> 0.600 (-0.100), happy 0.900 -> 0.800 (-0.100)"
    ]


def test_a_class_the_challenger_lost_counts_as_zero_recall():
    challenger = result(0.7, recall={"happy": 0.9, "sad": 0.8})
    passed, reasons = decide(challenger, result(0.6, version=1), PARAMS, ci(0.05, 0.15), FAST)
    assert not passed and "fear 0.700 -> 0.000" in fails(reasons)[0]


# ---------------------------------------------------------------------------- the report


def test_report_has_a_row_per_rule_and_the_json_has_everything(tmp_path: Path):
    challenger = result(0.7, recall={"happy": 0.80, "sad": 0.85, "fear": 0.70})
    champion = result(0.6, version=1)
    checks = rules(challenger, champion, PARAMS, ci(0.05, 0.15), FAST)
    gate = write_report(
        GateResult(
            passed=all(c.passed for c in checks), reasons=[c.reason for c in checks],
            challenger=challenger, champion=champion, report_path=tmp_path / "gate-v2.json",
            test_revision="r1", checks=checks, bootstrap=ci(0.05, 0.15), latency_ms=FAST,
        )
    )  # fmt: skip
    text = gate.markdown_path.read_text()
    assert text == markdown(gate) and text.startswith("# Gate: REFUSED")
    for rule in ("min_map50", "min_map50_95", "max_latency_ms", "min_improvement",
                 "max_recall_regression", "same_test_set"):  # fmt: skip
        assert f"| {rule} |" in text
    assert "| max_recall_regression | +0.100 | <= 0.050 | FAIL |" in text
    assert "| max_latency_ms | 5.00 ms | <= 20.0 ms | PASS |" in text
    assert "| happy | 0.900 | 0.800 | -0.100 |" in text
    assert "data revision `r1`" in text
    back = GateResult.model_validate_json(gate.report_path.read_text())
    assert back == gate and back.bootstrap.low == pytest.approx(0.05)
    assert not list(tmp_path.glob(".*tmp"))  # nothing half-written left behind
