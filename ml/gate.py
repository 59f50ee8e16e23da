"""The evaluation gate: challenger and champion on the same test split, a pure verdict, a report.

`verdict` is the whole policy and needs no server: absolute floors on mAP50 and mAP50-95, a
paired bootstrap confidence interval of the mAP50 gain over the champion, a bound on each
class's recall regression, a latency budget of the challenger's ONNX export, and bounds on
forgetting: the mAP50 and per-class recall drop on the test images each earlier revision added
(`earlier_test_splits`). The step `gate` measures both models and the latency (`ml.scoring`),
decides with `verdict`, writes the report (JSON + Markdown, with the revision x class table
and, as information only, the shadow log's comparison on live traffic; the table also as CSV)
and logs it with the test metrics to the challenger's training run through an explicit MLflow
client (the run itself is not reopened); its reasons also go to the log (the Airflow task
log), and its `summary` becomes the model version's description.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from ml import data_registry, registry, scoring
from ml.config import EMOTIONS, Settings
from ml.dataset_format import label_path, list_images, write_data_yaml
from ml.files import atomic_write_text
from ml.params import GateParams
from ml.records import DatasetRef, EvalResult, GateResult, ModelRef

logger = logging.getLogger(__name__)

Check = GateResult.Check
Bootstrap = GateResult.Bootstrap
Forgetting = GateResult.Forgetting
Shadow = GateResult.Shadow


# ---------------------------------------------------------------------------------- the policy


def verdict(
    challenger: EvalResult,
    champion: EvalResult | None,
    params: GateParams,
    bootstrap: Bootstrap | None = None,
    latency_ms: float | None = None,
    forgetting: Sequence[Forgetting] = (),
) -> tuple[bool, list[Check]]:
    """The gate's policy: every rule measured against its threshold, and whether all pass.

    Pure (no I/O); `gate` decides with exactly this. Each check's reason says PASS or FAIL.
    `forgetting` holds both models on each earlier revision's own test images; with a champion
    and ``params.forgetting_revisions`` not 0, no revision may lose more mAP50, nor any of its
    classes more recall, than the params allow.
    """
    checks: list[Check] = []

    def add(rule: str, ok: bool, value: str, threshold: str, text: str) -> None:
        checks.append(_check(rule, ok, value, threshold, text))

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
    if params.forgetting_revisions != 0:
        checks += _forgetting_checks(champion.version, forgetting, params)
    return all(c.passed for c in checks), checks


def _check(rule: str, ok: bool, value: str, threshold: str, text: str) -> Check:
    reason = f"{'PASS' if ok else 'FAIL'}: {text}"
    return Check(rule=rule, value=value, threshold=threshold, passed=ok, reason=reason)


def _forgetting_checks(
    champion_version: int | None, forgetting: Sequence[Forgetting], params: GateParams
) -> list[Check]:
    """The two forgetting rules over every earlier revision scored: its mAP50 drop, and each of
    its classes' recall drop (a class the challenger no longer finds counts as recall 0) where
    the revision holds at least ``params.forgetting_min_faces`` faces of it (or the count is not
    known); the classes left out are named in the reason."""
    if not forgetting:
        text = ("forgetting not measured: no earlier revision has test images of its own "
                "besides the gated test split")  # fmt: skip
        bound = f"<= {params.max_forgetting_map50:.3f}"
        return [_check("max_forgetting_map50", True, "none scored", bound, text)]
    map50 = {f.revision: (f.champion.map50, f.challenger.map50) for f in forgetting}
    recall, too_few = {}, []
    for f in forgetting:
        for cls, old in f.champion.per_class_recall.items():
            faces = f.champion.per_class_faces.get(cls)
            if faces is not None and faces < params.forgetting_min_faces:
                too_few.append(f"{f.revision} {cls} ({faces})")
            else:
                recall[f"{f.revision} {cls}"] = (old, f.challenger.per_class_recall.get(cls, 0.0))
    counts = ", ".join(f"{f.revision}: {f.challenger.images}" for f in forgetting)
    where = f"vs champion v{champion_version} on each earlier revision's own test images ({counts})"
    left_out = (f"; not ruled, under {params.forgetting_min_faces} faces: {', '.join(too_few)}"
                if too_few else "")  # fmt: skip
    return [
        _drop_check("max_forgetting_map50", "mAP50", map50, params.max_forgetting_map50, where),
        _drop_check("max_forgetting_recall", "per-class recall", recall,
                    params.max_forgetting_recall, where, left_out),
    ]  # fmt: skip


def _drop_check(
    rule: str,
    what: str,
    scores: dict[str, tuple[float, float]],
    bound: float,
    where: str,
    aside: str = "",
) -> Check:
    """Refuses when any (champion, challenger) pair of `scores` drops more than `bound`; the
    reason names each one that did, else the largest drop, then `aside`."""
    drop = {key: old - new for key, (old, new) in scores.items()}
    worst = max(drop, key=drop.__getitem__, default=None)
    largest = f"{drop[worst]:+.3f} ({worst})" if worst is not None else "none"
    over = sorted(key for key, d in drop.items() if d > bound + 1e-12)
    if over:
        named = ", ".join(f"{key} {scores[key][0]:.3f} -> {scores[key][1]:.3f} "
                          f"({-drop[key]:+.3f})" for key in over)  # fmt: skip
        text = f"{what} drop {where} <= {bound:.3f}; forgotten: {named}"
    else:
        text = f"{what} drop {where}: largest {largest} <= {bound:.3f}"
    return _check(rule, not over, largest, f"<= {bound:.3f}", text + aside)


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
    lines += _forgetting_markdown(result) + _shadow_markdown(result)
    lines += ["", *(f"- {reason}" for reason in result.reasons)]
    return "\n".join(lines) + "\n"


def _ordered(classes: set[str]) -> list[str]:
    return sorted(classes, key=lambda c: (EMOTIONS.index(c) if c in EMOTIONS else len(EMOTIONS), c))


def _compared(result: GateResult) -> list[tuple[str, str, EvalResult, EvalResult]]:
    """The rows of the revision x class table: (revision, which test images, champion,
    challenger), first the gated test split, then each earlier revision's own test images."""
    if result.champion is None:
        return []
    gated = (result.test_revision or "-", "gated test split", result.champion, result.challenger)
    return [gated, *((f.revision, "test images it added", f.champion, f.challenger)
                     for f in result.forgetting)]  # fmt: skip


def _forgetting_markdown(result: GateResult) -> list[str]:
    """Revision x class: mAP50 and each class's recall, champion -> challenger (change)."""
    if not result.forgetting:
        return []
    rows = _compared(result)
    classes = _ordered({c for _, _, champ, chal in rows
                        for c in (*champ.per_class_recall, *chal.per_class_recall)})  # fmt: skip

    def cell(old: float | None, new: float | None) -> str:
        if old is None and new is None:
            return "-"
        old, new = old or 0.0, new or 0.0
        return f"{old:.3f} → {new:.3f} ({new - old:+.3f})"

    images = sum(f.challenger.images or 0 for f in result.forgetting)
    seconds = sum(f.seconds for f in result.forgetting)
    return [
        "", "## Forgetting: each earlier revision's own test images", "",
        "Revisions are cumulative, so each one's test split holds every earlier one's; what "
        "tells a revision apart is the test images it added (its batch). Each cell: champion "
        "→ challenger (change); the rules `max_forgetting_map50` and `max_forgetting_recall` "
        "above bound the drops on the earlier revisions (the first row is the gated split, "
        "ruled by `min_improvement` and `max_recall_regression`).", "",
        "| revision | test images | images | mAP50 | " + " | ".join(classes) + " |",
        "| --- | --- | --- | --- | " + " | ".join("---" for _ in classes) + " |",
        *(f"| {rev} | {which} | {chal.images} | {cell(champ.map50, chal.map50)} | "
          + " | ".join(cell(champ.per_class_recall.get(c), chal.per_class_recall.get(c))
                       for c in classes) + " |"
          for rev, which, champ, chal in rows),
        "", f"Scored both models on {images} test images of {len(result.forgetting)} earlier "
        f"revision{'s' if len(result.forgetting) != 1 else ''} in {seconds:.1f} s.",
    ]  # fmt: skip


def _shadow_markdown(result: GateResult) -> list[str]:
    """Both models on live traffic, when the shadow log has this pair: information only."""
    if result.champion is None:
        return []
    title = "Shadow scoring on live traffic"
    pair = f"champion v{result.champion.version} and challenger v{result.challenger.version}"
    if (shadow := result.shadow) is None:
        return ["", f"{title}: nothing logged for {pair}."]
    when = "%Y-%m-%d %H:%M:%S"
    return [
        "", f"## {title} (information, not a rule)", "",
        f"{shadow.images} live images answered by {pair} in shadow, from "
        f"{shadow.first.strftime(when)} to {shadow.last.strftime(when)} UTC: the challenger "
        f"gave the champion's class on {shadow.agreement:.0%} of them; {shadow.dropped} "
        "sampled images dropped (shadow queue full).", "",
        "| champion's answer | images | challenger agrees | champion's mean confidence "
        "| challenger's mean confidence |",
        "| --- | --- | --- | --- | --- |",
        *(f"| {c.emotion} | {c.images} | {c.agreement:.0%} | {_fmt(c.champion_confidence)} | "
          f"{_fmt(c.challenger_confidence)} |" for c in shadow.classes),
    ]  # fmt: skip


FORGETTING_COLUMNS = ("revision", "test_images", "images", "metric", "class", "champion",
                      "challenger", "drop")  # fmt: skip


def forgetting_csv(result: GateResult) -> str:
    """The revision x class table as CSV, one row per revision and metric (mAP50, then each
    class's recall); ``drop`` is champion - challenger, what the forgetting rules bound."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(FORGETTING_COLUMNS)
    for rev, which, champ, chal in _compared(result):
        writer.writerow([rev, which, chal.images, "map50", "", f"{champ.map50:.4f}",
                         f"{chal.map50:.4f}", f"{champ.map50 - chal.map50:.4f}"])  # fmt: skip
        for cls in _ordered(set(champ.per_class_recall) | set(chal.per_class_recall)):
            old, new = champ.per_class_recall.get(cls, 0.0), chal.per_class_recall.get(cls, 0.0)
            writer.writerow([rev, which, chal.images, "recall", cls, f"{old:.4f}", f"{new:.4f}",
                             f"{old - new:.4f}"])  # fmt: skip
    return out.getvalue()


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
    """Write the JSON (everything) and Markdown reports, and the forgetting table as CSV when
    earlier revisions were scored; return the result naming them."""
    md_path = result.report_path.with_suffix(".md")
    table = (result.report_path.with_name(f"forgetting-v{result.challenger.version}.csv")
             if result.forgetting else None)  # fmt: skip
    result = result.model_copy(update={"markdown_path": md_path, "forgetting_table_path": table})
    if table is not None:
        atomic_write_text(table, forgetting_csv(result))
    atomic_write_text(result.report_path, result.model_dump_json(indent=2))
    atomic_write_text(md_path, markdown(result))
    return result


# ------------------------------------------------------------------------------------ the step


def earlier_test_splits(
    settings: Settings, trained_on: DatasetRef, gated: DatasetRef, limit: int | None,
    out_dir: Path,
) -> list[DatasetRef]:  # fmt: skip
    """The test images each revision before `trained_on` added, newest first (at most `limit`;
    None: all), each as a small dataset under ``out_dir/<revision>`` whose test split links to
    the files of `trained_on`.

    Revisions are cumulative: the test split of rK holds every earlier revision's, so scoring
    it whole would mostly score the new split again. What tells rK apart is its own batch: the
    test images in rK and not in r(K-1) (read from the registry's manifests, no data pulled),
    as `trained_on` still holds them (a later removal leaves them out). A revision with none
    (a removal, a batch without test images), or with exactly the gated split's images, adds
    nothing and is skipped (logged).
    """
    number = data_registry.revision_number(trained_on.revision)
    held = {image.name: image for image in list_images(trained_on.path / "test" / "images")}
    gated_names = {image.name for image in list_images(gated.path / "test" / "images")}
    names: dict[str, set[str]] = {}

    def test_names(name: str) -> set[str]:
        if name not in names:
            names[name] = data_registry.split_image_names(settings, name, "test")
        return names[name]

    splits = []
    for k in range(number - 1, 0, -1)[:limit]:
        name = f"r{k}"
        before = test_names(f"r{k - 1}") if k > 1 else set()
        added = sorted(n for n in test_names(name) - before if n in held)
        if not added or set(added) == gated_names:
            logger.info("gate: forgetting: %s skipped (%s)", name,
                        "the gated split's images" if added else
                        f"no test images of its own that {trained_on.revision} holds")  # fmt: skip
            continue
        folder = out_dir / name
        shutil.rmtree(folder, ignore_errors=True)  # a retry starts from a clean folder
        for kind in ("images", "labels"):
            (folder / "test" / kind).mkdir(parents=True)
        for image_name in added:
            image = held[image_name]
            (folder / "test" / "images" / image_name).symlink_to(image.resolve())
            if (label := label_path(image)).is_file():
                (folder / "test" / "labels" / label.name).symlink_to(label.resolve())
        write_data_yaml(folder)
        rev = data_registry.revision(settings, name)
        splits.append(DatasetRef(revision=name, commit=rev.commit, digest=rev.digest, path=folder))
    return splits


def _score_forgetting(
    splits: list[DatasetRef], weights: tuple[Path, Path], imgsz: tuple[int, int],
    versions: tuple[int, int], settings: Settings,
) -> list[Forgetting]:  # fmt: skip
    """Both models (challenger, champion) on each split; the cost goes to the log."""
    scored = []
    for split in splits:
        start = time.perf_counter()
        challenger, champion = (
            scoring.score(w, split, size, version, settings, stats_dir=split.path)
            for w, size, version in zip(weights, imgsz, versions, strict=True)
        )
        seconds = time.perf_counter() - start
        logger.info("gate: forgetting: both models on the %d test images %s added: %.1f s",
                    challenger.images, split.revision, seconds)  # fmt: skip
        scored.append(Forgetting(revision=split.revision, challenger=challenger,
                                 champion=champion, seconds=seconds))  # fmt: skip
    if scored:
        logger.info("gate: forgetting: %d test images of %d earlier revisions in %.1f s",
                    sum(f.challenger.images or 0 for f in scored), len(scored),
                    sum(f.seconds for f in scored))  # fmt: skip
    return scored


def gate(
    challenger: ModelRef,
    challenger_weights: Path,
    dataset: DatasetRef,
    imgsz: int,
    params: GateParams,
    settings: Settings,
    out_dir: Path,
    challenger_onnx: Path,
    trained_on: DatasetRef | None = None,
    shadow: Sequence[Shadow] = (),
) -> GateResult:
    """Score challenger and champion on `dataset`'s test split and apply `verdict`.

    `dataset` is the test set: the revision named by ``params.test_revision`` when set (the
    caller pulls it), else the new revision. `challenger_onnx` is the export that would be
    served; its latency is measured here. With a champion, both are also scored on the test
    images each earlier revision added (`earlier_test_splits` of `trained_on`, the revision the
    challenger was trained on, pulled; None: `dataset`), for the forgetting rules. `shadow`:
    the shadow log's comparisons of this challenger (`monitoring.shadow_report.shadow_summary`,
    read by the caller); the one with this champion goes into the report as information.
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
    forgetting: list[Forgetting] = []
    if champion_eval is not None and params.forgetting_revisions != 0:
        splits = earlier_test_splits(settings, trained_on or dataset, dataset,
                                     params.forgetting_revisions, out_dir / "forgetting")  # fmt: skip
        forgetting = _score_forgetting(splits, (challenger_weights, weights),
                                       (imgsz, champion_imgsz),
                                       (challenger.version, champion_ref.version), settings)  # fmt: skip
    live = None
    if champion_eval is not None:
        pair = (champion_ref.version, challenger.version)
        live = next((s for s in shadow if (s.champion_version, s.challenger_version) == pair),
                    None)  # fmt: skip
    latency = None
    if params.max_latency_ms is not None:
        latency = scoring.measure_latency(
            challenger_onnx, scoring.split_images(dataset, params.latency_images, "test"),
            imgsz, params.latency_warmup,
        )  # fmt: skip
    passed, checks = verdict(challenger_eval, champion_eval, params, bootstrap, latency,
                             forgetting)  # fmt: skip
    result = write_report(
        GateResult(
            passed=passed, reasons=[c.reason for c in checks], challenger=challenger_eval,
            champion=champion_eval, report_path=out_dir / f"gate-v{challenger.version}.json",
            test_revision=dataset.revision, checks=checks, bootstrap=bootstrap,
            latency_ms=latency, forgetting=forgetting, shadow=live,
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
    tables = [result.forgetting_table_path] if result.forgetting_table_path else []
    for path in (result.report_path, result.markdown_path, *tables, *stats):
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
    # forgetting: per earlier revision, mAP50 and each class's recall drop (champion - challenger)
    for f in result.forgetting:
        metrics[f"forgetting/{f.revision}/map50_drop"] = f.champion.map50 - f.challenger.map50
        metrics |= {f"forgetting/{f.revision}/recall_drop/{cls}":
                    old - f.challenger.per_class_recall.get(cls, 0.0)
                    for cls, old in f.champion.per_class_recall.items()}  # fmt: skip
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
