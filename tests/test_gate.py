"""The gate's decision and the promotion decision, without servers."""

from ml.config import GateParams
from ml.evaluate import decide
from ml.records import EvalResult


def result(map50: float, map50_95: float = 0.5, version: int | None = 2) -> EvalResult:
    return EvalResult(version=version, map50=map50, map50_95=map50_95, per_class_recall={})


PARAMS = GateParams(min_map50=0.3, min_map50_95=0.1, min_improvement=0.02)


def test_first_model_passes_on_absolute_rules_only():
    passed, reasons = decide(result(0.31), None, PARAMS)
    assert passed
    assert any("no champion yet" in r for r in reasons)


def test_first_model_below_a_floor_is_refused_and_says_which():
    passed, reasons = decide(result(0.29), None, PARAMS)
    assert not passed
    assert [r for r in reasons if r.startswith("FAIL")] == ["FAIL: mAP50 0.290 >= floor 0.300"]
    passed, reasons = decide(result(0.9, map50_95=0.05), None, PARAMS)
    assert not passed and any(r.startswith("FAIL: mAP50-95") for r in reasons)


def test_challenger_must_beat_the_champion_by_the_minimum_improvement():
    champion = result(0.60, version=1)
    assert decide(result(0.63), champion, PARAMS)[0]
    passed, reasons = decide(result(0.61), champion, PARAMS)
    assert not passed
    assert "FAIL: mAP50 gain over champion v1 +0.010 >= +0.020" in reasons
    assert not decide(result(0.40), champion, PARAMS)[0]
