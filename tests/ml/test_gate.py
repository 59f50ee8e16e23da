"""The gate's verdict, rule by rule, and its report, without servers or models; then the step
itself, on a tiny untrained model against the real MLflow server."""

from pathlib import Path

import numpy as np
import pytest

from ml import registry, sample_data
from ml.dataset_format import list_images
from ml.gate import gate, markdown, verdict, write_report
from ml.params import GateParams
from ml.records import DatasetRef, EvalResult, GateResult, ModelRef

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


def reasons(checks: list[GateResult.Check]) -> list[str]:
    return [c.reason for c in checks]


def fails(checks: list[GateResult.Check]) -> list[str]:
    failed = [c.reason for c in checks if not c.passed]
    assert all(r.startswith("FAIL: ") for r in failed)
    return failed


# ------------------------------------------------------------------------- first model


def test_first_model_passes_on_absolute_rules_and_latency_only():
    passed, checks = verdict(result(0.31), None, PARAMS, latency_ms=FAST)
    assert passed, reasons(checks)
    assert any("no champion yet" in r for r in reasons(checks))
    assert not any("champion v" in r or "recall" in r for r in reasons(checks))


def test_first_model_below_a_floor_is_refused_and_says_which():
    passed, checks = verdict(result(0.29), None, PARAMS, latency_ms=FAST)
    assert not passed
    assert fails(checks) == ["FAIL: mAP50 0.290 >= floor 0.300 (test split of r1)"]
    passed, checks = verdict(result(0.9, map50_95=0.05), None, PARAMS, latency_ms=FAST)
    assert not passed
    assert fails(checks) == ["FAIL: mAP50-95 0.050 >= floor 0.100"]


def test_reasons_name_the_test_revision():
    _, checks = verdict(result(0.9, revision="r7"), None, PARAMS, latency_ms=FAST)
    assert "test split of r7" in checks[0].reason


# ------------------------------------------------------------------------------ latency


def test_latency_over_budget_refuses_even_the_first_model():
    passed, checks = verdict(result(0.9), None, PARAMS, latency_ms=25.0)
    assert not passed
    assert fails(checks) == ["FAIL: median ONNX Runtime CPU latency 25.00 ms <= budget 20.0 ms"]
    assert verdict(result(0.9), None, PARAMS, latency_ms=19.99)[0]


def test_unmeasured_latency_refuses_unless_the_rule_is_off():
    passed, checks = verdict(result(0.9), None, PARAMS)
    assert not passed and "not measured" in fails(checks)[0]
    no_budget = PARAMS.model_copy(update={"max_latency_ms": None})
    assert verdict(result(0.9), None, no_budget)[0]


# -------------------------------------------------------------- improvement over champion


def test_challenger_must_beat_the_champion_beyond_noise():
    champion = result(0.60, version=1)
    assert verdict(result(0.66), champion, PARAMS, ci(0.03, 0.09), FAST)[0]
    # a point gain of +0.06 whose interval reaches below the minimum does not promote
    passed, checks = verdict(result(0.66), champion, PARAMS, ci(0.01, 0.11, diff=0.06), FAST)
    assert not passed
    assert fails(checks) == [
        "FAIL: mAP50 gain over champion v1 +0.060, 95% CI [+0.010, +0.110] "
        "(200 resamples of 400 images): lower bound +0.010 >= +0.020"
    ]
    assert not verdict(result(0.40), champion, PARAMS, ci(-0.25, -0.15), FAST)[0]


def test_a_champion_without_bootstrap_evidence_refuses():
    passed, checks = verdict(result(0.9), result(0.6, version=1), PARAMS, None, FAST)
    assert not passed
    assert "no bootstrap confidence interval" in fails(checks)[0]


def test_models_scored_on_different_test_splits_refuse():
    champion = result(0.6, version=1, revision="r2")
    passed, checks = verdict(result(0.9), champion, PARAMS, ci(0.2, 0.3), FAST)
    assert not passed
    assert fails(checks)[0].startswith("FAIL: challenger and champion v1 scored on the same")
    assert "revision r1" in fails(checks)[0] and "revision r2" in fails(checks)[0]


# ------------------------------------------------------------------- per-class recall


def test_recall_regression_within_bound_passes():
    challenger = result(0.7, recall={"happy": 0.86, "sad": 0.95, "fear": 0.70})  # happy -0.04
    passed, checks = verdict(challenger, result(0.6, version=1), PARAMS, ci(0.05, 0.15), FAST)
    assert passed, reasons(checks)
    assert "PASS: per-class recall drop vs champion v1 +0.040 (largest) <= 0.050" in reasons(checks)


def test_recall_regression_names_the_classes_that_regressed():
    challenger = result(0.7, recall={"happy": 0.80, "sad": 0.80, "fear": 0.60})
    passed, checks = verdict(challenger, result(0.6, version=1), PARAMS, ci(0.05, 0.15), FAST)
    assert not passed
    assert fails(checks) == [
        "FAIL: per-class recall drop vs champion v1 <= 0.050; regressed: "
        "fear 0.700 -> 0.600 (-0.100), happy 0.900 -> 0.800 (-0.100)"
    ]


def test_a_class_the_challenger_lost_counts_as_zero_recall():
    challenger = result(0.7, recall={"happy": 0.9, "sad": 0.8})
    passed, checks = verdict(challenger, result(0.6, version=1), PARAMS, ci(0.05, 0.15), FAST)
    assert not passed and "fear 0.700 -> 0.000" in fails(checks)[0]


# ---------------------------------------------------------------------------- the report


def test_report_has_a_row_per_rule_and_the_json_has_everything(tmp_path: Path):
    challenger = result(0.7, recall={"happy": 0.80, "sad": 0.85, "fear": 0.70}).model_copy(
        update={"accuracy": 0.625, "macro_f1": 0.5, "matched_faces": 390, "faces": 400}
    )
    champion = result(0.6, version=1)
    passed, checks = verdict(challenger, champion, PARAMS, ci(0.05, 0.15), FAST)
    report = write_report(
        GateResult(
            passed=passed, reasons=reasons(checks),
            challenger=challenger, champion=champion, report_path=tmp_path / "gate-v2.json",
            test_revision="r1", checks=checks, bootstrap=ci(0.05, 0.15), latency_ms=FAST,
        )
    )  # fmt: skip
    text = report.markdown_path.read_text()
    assert text == markdown(report) and text.startswith("# Gate: REFUSED")
    for rule in ("min_map50", "min_map50_95", "max_latency_ms", "min_improvement",
                 "max_recall_regression", "same_test_set"):  # fmt: skip
        assert f"| {rule} |" in text
    assert "| max_recall_regression | +0.100 | <= 0.050 | FAIL |" in text
    assert "| max_latency_ms | 5.00 ms | <= 20.0 ms | PASS |" in text
    assert "| happy | 0.900 | 0.800 | -0.100 |" in text
    assert "data revision `r1`" in text
    assert "| challenger | 2 | r1 | 400 | 0.700 | 0.500 | 0.625 | 0.500 | 390/400 |" in text
    assert "| champion | 1 | r1 | 400 | 0.600 | 0.500 | - | - | - |" in text
    back = GateResult.model_validate_json(report.report_path.read_text())
    assert back == report and back.bootstrap.low == pytest.approx(0.05)
    assert not list(tmp_path.glob(".*tmp"))  # nothing half-written left behind


# ------------------------------------------------------------------------------ the step


def test_gate_refuses_a_test_set_other_than_the_frozen_revision(tmp_path: Path, make_settings):
    dataset = DatasetRef(revision="r9", commit="none", digest="none", path=tmp_path / "data")
    ref = ModelRef(name="m", version=2, run_id="none")
    params = GateParams(test_revision="r1")
    with pytest.raises(ValueError, match="gate.test_revision is 'r1'.*revision 'r9'"):
        gate(ref, tmp_path / "w.pt", dataset, 64, params, make_settings(tmp_path), tmp_path,
             tmp_path / "m.onnx")  # fmt: skip


def test_the_step_logs_to_the_training_run_without_reopening_it(
    mlflow_settings, untrained_weights, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A first model (no champion) on a tiny untrained YOLOv8n: the report, the per-image
    stats and the test metrics land in its training run through the client; the run stays
    FINISHED with its end time, and MLflow's fluent API is not used."""
    import mlflow
    from PIL import Image

    settings = mlflow_settings.model_copy(
        update={"model_name": "gate-step", "home": tmp_path / "home"}
    )
    data = tmp_path / "data"
    sample_data.generate(data, train=2, valid=2, test=6, seed=3)
    images = [np.asarray(Image.open(p).convert("RGB").resize((64, 64)))
              for p in list_images(data / "test" / "images")]  # fmt: skip
    weights = untrained_weights(np.stack(images), tmp_path / "tiny.pt", tmp_path / "ultralytics")
    dataset = DatasetRef(revision="r4", commit="none", digest="none", path=data)

    client = registry.client(settings)
    run = client.create_run(client.create_experiment(f"gate-step-{tmp_path.name}"))
    run_id = run.info.run_id
    client.set_terminated(run_id)
    finished = client.get_run(run_id).info
    client.create_registered_model(settings.model_name)
    version = client.create_model_version(
        settings.model_name, source=f"{run.info.artifact_uri}/model", run_id=run_id
    ).version
    ref = ModelRef(name=settings.model_name, version=int(version), run_id=run_id)

    def fluent(*_args, **_kwargs):
        raise AssertionError("the gate must not use MLflow's fluent API")

    for name in ("start_run", "log_artifact", "log_metric", "log_metrics"):
        monkeypatch.setattr(mlflow, name, fluent)
    params = GateParams(min_map50=0.0, min_map50_95=0.0, max_latency_ms=None)
    result = gate(ref, weights, dataset, 64, params, settings, tmp_path / "out",
                  tmp_path / "unused.onnx")  # fmt: skip

    assert result.passed and result.champion is None and result.test_revision == "r4"
    assert result.challenger.images == 6 and result.report_path.is_file()
    after = client.get_run(run_id)
    assert (after.info.status, after.info.end_time) == ("FINISHED", finished.end_time)
    recall = result.challenger.per_class_recall
    assert recall and after.data.metrics == pytest.approx(
        {"test_map50": result.challenger.map50, "test_map50_95": result.challenger.map50_95}
        | {f"test_recall_{cls}": value for cls, value in recall.items()}
        | {
            f"test_{key}": value
            for key in ("accuracy", "macro_f1")
            if (value := getattr(result.challenger, key)) is not None
        }  # fmt: skip
    )
    assert result.challenger.faces == 6 and result.challenger.matched_faces is not None
    logged = sorted(a.path for a in client.list_artifacts(run_id, "gate"))
    assert logged == [f"gate/eval-v{version}.npz", f"gate/gate-v{version}.json",
                      f"gate/gate-v{version}.md"]  # fmt: skip
    assert client.get_model_version(settings.model_name, version).tags["gate"] == "passed"


# --------------------------------------------------------------------------- forgetting


def earlier(revision: str, champion_map50: float, challenger_map50: float,
            challenger_recall: dict[str, float] | None = None) -> GateResult.Forgetting:  # fmt: skip
    """Both models on the test images `revision` added (60 of them); the champion's recall is
    RECALL, the challenger's `challenger_recall` (default: the same)."""
    return GateResult.Forgetting(
        revision=revision, seconds=0.5,
        champion=result(champion_map50, version=1, revision=revision, images=60),
        challenger=result(challenger_map50, recall=challenger_recall, revision=revision,
                          images=60),
    )  # fmt: skip


CHAMPION = result(0.6, version=1)
BETTER = result(0.7)  # passes every other rule against CHAMPION with ci(0.05, 0.15)


def test_a_challenger_that_forgets_an_earlier_revision_is_refused_naming_it():
    forgetting = [earlier("r2", 0.80, 0.795), earlier("r1", 0.80, 0.78)]  # r1: -0.02
    passed, checks = verdict(BETTER, CHAMPION, PARAMS, ci(0.05, 0.15), FAST, forgetting)
    assert not passed
    assert fails(checks) == [
        "FAIL: mAP50 drop vs champion v1 on each earlier revision's own test images "
        "(r2: 60, r1: 60) <= 0.010; forgotten: r1 0.800 -> 0.780 (-0.020)"
    ]
    check = next(c for c in checks if c.rule == "max_forgetting_map50")
    assert (check.value, check.threshold) == ("+0.020 (r1)", "<= 0.010")


def test_a_class_forgotten_on_an_earlier_revision_is_refused_naming_class_and_revision():
    forgetting = [earlier("r2", 0.8, 0.8), earlier("r1", 0.8, 0.8, {**RECALL, "sad": 0.74})]
    passed, checks = verdict(BETTER, CHAMPION, PARAMS, ci(0.05, 0.15), FAST, forgetting)
    assert not passed
    assert fails(checks) == [
        "FAIL: per-class recall drop vs champion v1 on each earlier revision's own test images "
        "(r2: 60, r1: 60) <= 0.050; forgotten: r1 sad 0.800 -> 0.740 (-0.060)"
    ]
    # a class the challenger no longer finds at all counts as recall 0
    lost = [earlier("r1", 0.8, 0.8, {"happy": 0.9, "sad": 0.8})]
    assert "r1 fear 0.700 -> 0.000" in fails(verdict(BETTER, CHAMPION, PARAMS, ci(0.05, 0.15),
                                                     FAST, lost)[1])[0]  # fmt: skip


def test_a_class_with_too_few_faces_on_an_earlier_revision_is_shown_not_ruled():
    """fear has 4 faces on r1 (one face is 0.25 of its recall): its drop is named as not
    ruled; sad, with 30 faces, is still refused for the same drop."""
    faces = {"happy": 30, "sad": 30, "fear": 4}
    (r1,) = [earlier("r1", 0.8, 0.8, {**RECALL, "fear": 0.45})]
    counted = r1.model_copy(update={"champion": r1.champion.model_copy(
        update={"per_class_faces": faces})})  # fmt: skip
    passed, checks = verdict(BETTER, CHAMPION, PARAMS, ci(0.05, 0.15), FAST, [counted])
    assert passed, reasons(checks)
    (rule,) = (c for c in checks if c.rule == "max_forgetting_recall")
    assert rule.value == "+0.000 (r1 happy)"
    assert rule.reason.endswith("; not ruled, under 10 faces: r1 fear (4)")
    both = counted.model_copy(update={"challenger": counted.challenger.model_copy(
        update={"per_class_recall": {**RECALL, "fear": 0.45, "sad": 0.5}})})  # fmt: skip
    passed, checks = verdict(BETTER, CHAMPION, PARAMS, ci(0.05, 0.15), FAST, [both])
    assert not passed
    assert (
        "forgotten: r1 sad 0.800 -> 0.500 (-0.300); not ruled, under 10 faces: r1 fear (4)"
        in fails(checks)[0]
    )


def test_forgetting_within_the_bounds_passes_and_says_the_largest_drop():
    recall = {"happy": 0.86, "sad": 0.80, "fear": 0.75}  # happy -0.04, fear gains
    forgetting = [earlier("r2", 0.80, 0.791, recall), earlier("r1", 0.70, 0.75)]
    passed, checks = verdict(BETTER, CHAMPION, PARAMS, ci(0.05, 0.15), FAST, forgetting)
    assert passed, reasons(checks)
    by_rule = {c.rule: c for c in checks}
    assert by_rule["max_forgetting_map50"].value == "+0.009 (r2)"
    assert by_rule["max_forgetting_recall"].value == "+0.040 (r2 happy)"
    assert by_rule["max_forgetting_recall"].reason.endswith("largest +0.040 (r2 happy) <= 0.050")


def test_forgetting_rules_need_a_champion_and_can_be_turned_off():
    forgetting = [earlier("r1", 0.8, 0.5)]
    off = PARAMS.model_copy(update={"forgetting_revisions": 0})
    _, checks = verdict(BETTER, CHAMPION, off, ci(0.05, 0.15), FAST, forgetting)
    assert not any("forgetting" in c.rule for c in checks)
    _, checks = verdict(result(0.7), None, PARAMS, latency_ms=FAST)
    assert not any("forgetting" in c.rule for c in checks)
    # a champion but no earlier revision with test images of its own: said, not refused
    passed, checks = verdict(BETTER, CHAMPION, PARAMS, ci(0.05, 0.15), FAST, [])
    assert passed and "PASS: forgetting not measured" in " ".join(reasons(checks))


def test_the_report_has_the_revision_by_class_table_and_the_csv(tmp_path: Path):
    forgetting = [earlier("r1", 0.80, 0.78, {**RECALL, "sad": 0.74})]
    challenger, champion = (m.model_copy(update={"revision": "r2"}) for m in (BETTER, CHAMPION))
    passed, checks = verdict(challenger, champion, PARAMS, ci(0.05, 0.15), FAST, forgetting)
    report = write_report(
        GateResult(
            passed=passed, reasons=reasons(checks), challenger=challenger, champion=champion,
            report_path=tmp_path / "gate-v2.json", test_revision="r2", checks=checks,
            bootstrap=ci(0.05, 0.15), latency_ms=FAST, forgetting=forgetting,
        )
    )  # fmt: skip
    text = report.markdown_path.read_text()
    assert "## Forgetting: each earlier revision's own test images" in text
    assert "| revision | test images | images | mAP50 | fear | happy | sad |" in text
    assert ("| r1 | test images it added | 60 | 0.800 → 0.780 (-0.020) | 0.700 → 0.700 (+0.000) "
            "| 0.900 → 0.900 (+0.000) | 0.800 → 0.740 (-0.060) |") in text  # fmt: skip
    assert "| r2 | gated test split | 400 | 0.600 → 0.700 (+0.100) |" in text
    assert "Scored both models on 60 test images of 1 earlier revision in 0.5 s." in text
    assert "| max_forgetting_map50 | +0.020 (r1) | <= 0.010 | FAIL |" in text
    assert report.forgetting_table_path == tmp_path / "forgetting-v2.csv"
    rows = report.forgetting_table_path.read_text().splitlines()
    assert rows[0] == "revision,test_images,images,metric,class,champion,challenger,drop"
    assert "r1,test images it added,60,map50,,0.8000,0.7800,0.0200" in rows
    assert "r1,test images it added,60,recall,sad,0.8000,0.7400,0.0600" in rows
    assert len(rows) == 1 + 2 * (1 + len(RECALL))  # two revision rows, mAP50 + each class
    assert GateResult.model_validate_json(report.report_path.read_text()) == report


def test_the_report_shows_shadow_scoring_as_information_only(tmp_path: Path):
    from datetime import UTC, datetime

    _, checks = verdict(BETTER, CHAMPION, PARAMS, ci(0.05, 0.15), FAST, [])
    base = GateResult(
        passed=True, reasons=reasons(checks), challenger=BETTER, champion=CHAMPION,
        report_path=tmp_path / "gate-v2.json", test_revision="r1", checks=checks,
    )  # fmt: skip
    assert "Shadow scoring on live traffic: nothing logged for champion v1 and challenger v2." in (
        markdown(base)
    )
    assert base.forgetting_table_path is None and "## Forgetting" not in markdown(base)
    summary = {  # as monitoring.shadow_report.shadow_summary gives one version pair
        "champion_version": 1, "challenger_version": 2, "images": 4, "agreement": 0.75,
        "dropped": 3, "first": datetime(2026, 12, 3, 8, 0, tzinfo=UTC),
        "last": datetime(2026, 12, 3, 9, 30, tzinfo=UTC),
        "classes": [{"emotion": "(no face)", "images": 1, "agreement": 1.0,
                     "champion_confidence": None, "challenger_confidence": None},
                    {"emotion": "happy", "images": 3, "agreement": 2 / 3,
                     "champion_confidence": 0.8, "challenger_confidence": 0.7}],
    }  # fmt: skip
    shown = markdown(base.model_copy(update={"shadow": GateResult.Shadow.model_validate(summary)}))
    assert "## Shadow scoring on live traffic (information, not a rule)" in shown
    assert ("4 live images answered by champion v1 and challenger v2 in shadow, from "
            "2026-12-03 08:00:00 to 2026-12-03 09:30:00 UTC: the challenger gave the champion's "
            "class on 75% of them; 3 sampled images dropped") in shown  # fmt: skip
    assert (
        "| happy | 3 | 67% | 0.800 | 0.700 |" in shown
        and "| (no face) | 1 | 100% | - | - |" in shown
    )
    assert not any("shadow" in c.rule for c in checks)
    # no champion: no comparison to show, and no line about it
    first = base.model_copy(update={"champion": None})
    assert "Shadow" not in markdown(first)


def test_earlier_revisions_give_the_test_images_they_added_as_the_new_one_holds_them(
    tmp_path: Path, make_settings
):
    """r1, r2 and r3 each add a batch; r4 takes r1's out again. From r4, r3 and r2 give their
    own test images (linked, labels too), r1 none any more; `limit` keeps the newest."""
    from ml import data_batches, data_registry
    from ml.gate import earlier_test_splits

    settings = make_settings(tmp_path / "home")
    for number, test in ((1, 3), (2, 2), (3, 4)):
        sample_data.generate(tmp_path / f"b{number}" / "YOLO_format", train=2, valid=1,
                             test=test, seed=number, prefix=f"b{number}x")  # fmt: skip
        data_batches.add_batch(settings, tmp_path / f"b{number}", f"batch {number}")
    data_batches.remove(settings, "bad labels", batch="r1")
    r4 = data_registry.pull(settings, "r4")

    splits = earlier_test_splits(settings, r4, r4, None, tmp_path / "out")
    assert [s.revision for s in splits] == ["r3", "r2"]
    r3, r2 = (sorted(p.name for p in list_images(s.path / "test" / "images")) for s in splits)
    assert r3 == [f"b3x3_test_{i:06d}.png" for i in range(4)]
    assert r2 == [f"b2x2_test_{i:06d}.png" for i in range(2)]
    label = splits[0].path / "test" / "labels" / "b3x3_test_000000.txt"
    assert label.read_text() == (r4.path / "test" / "labels" / label.name).read_text()
    assert splits[0].digest == data_registry.revision(settings, "r3").digest
    newest = earlier_test_splits(settings, r4, r4, 1, tmp_path / "out")
    assert [s.revision for s in newest] == ["r3"]
    # the frozen test set r1 is r1's own batch: not scored twice
    r2_ref = data_registry.pull(settings, "r2")
    r1_ref = data_registry.pull(settings, "r1")
    assert earlier_test_splits(settings, r2_ref, r1_ref, None, tmp_path / "out2") == []
