"""Scoring one model on one test split: per-image stats, the paired bootstrap, ONNX latency.

The bootstrap runs on synthetic per-image stats; `score` and the latency run on a tiny
untrained YOLOv8n (built from YAML, nothing downloaded) over a few drawn test images at 64 px.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from ml import sample_data, yolo
from ml.config import EMOTIONS
from ml.gate import verdict
from ml.params import GateParams
from ml.records import DatasetRef, EvalResult
from ml.scoring import (
    ImageStats,
    Map50,
    bootstrap_map50_diff,
    emotion_metrics,
    match_faces,
    measure_latency,
    same_images,
    score,
    split_images,
)

IMGSZ = 64
NC = len(EMOTIONS)


def synthetic(skill: float, images: int = 300, seed: int = 0) -> ImageStats:
    """One labelled face per image. With probability `skill` the model's best box is right
    (class and IoU) and confident; else it is wrong. Every image also gets two low-confidence
    false positives, and labels depend only on the image index, as on a real test split."""
    labels = np.random.default_rng(1234).integers(0, NC, images)
    rng = np.random.default_rng(seed)
    per_image = []
    for i, label in enumerate(labels):
        right = rng.random() < skill
        best_cls = label if right else (label + rng.integers(1, NC)) % NC
        tp = np.zeros((3, 10), bool)
        tp[0, : rng.integers(1, 11)] = right  # correct at the first few IoU thresholds
        per_image.append({
            "im_name": f"img_{i:04d}.png",
            "tp": tp,
            "conf": np.array([rng.uniform(0.5, 1.0), *rng.uniform(0.0, 0.6, 2)]),
            "pred_cls": np.array([best_cls, *rng.integers(0, NC, 2)], float),
            "target_cls": np.array([label], float),
            "matched_cls": np.array([best_cls]),
        })  # fmt: skip
    return ImageStats.from_images(per_image)


# ------------------------------------------------------------------------ per-image stats


def test_a_face_takes_the_most_confident_box_on_it_whatever_its_class():
    # faces 0 and 1; boxes: a (conf 0.9, class 4) on face 0, b (0.8, class 2) on face 0 too,
    # c (0.7, class 6) overlapping face 1 at IoU 0.49 only, d (0.3, class 1) on face 1
    iou = np.array([[0.8, 0.95, 0.0, 0.0],
                    [0.1, 0.00, 0.49, 0.6]])  # fmt: skip
    conf = np.array([0.9, 0.8, 0.7, 0.3])
    assert match_faces(iou, conf, np.array([4, 2, 6, 1])).tolist() == [4, 1]
    # b cannot take face 0 a second time, and below the IoU threshold nothing matches
    assert match_faces(iou[:1, :2], conf[:2], np.array([4, 2])).tolist() == [4]
    assert match_faces(iou, conf, np.array([4, 2, 6, 1]), threshold=0.99).tolist() == [-1, -1]
    assert match_faces(np.zeros((2, 0)), np.zeros(0), np.zeros(0)).tolist() == [-1, -1]


def test_accuracy_and_macro_f1_are_sklearns_on_the_matched_faces():
    from sklearn.metrics import accuracy_score, f1_score

    stats = synthetic(0.6, images=200)
    rng = np.random.default_rng(5)
    missed = rng.random(stats.images) < 0.2  # some faces found by no box
    stats = ImageStats(**{**stats.__dict__,
                          "matched_cls": np.where(missed, -1, stats.matched_cls)})  # fmt: skip
    m = emotion_metrics(stats)
    true, pred = stats.target_cls[~missed], stats.matched_cls[~missed]
    assert (m.matched, m.faces) == (int((~missed).sum()), 200)
    assert m.accuracy == pytest.approx(accuracy_score(true, pred))
    assert m.macro_f1 == pytest.approx(f1_score(true, pred, average="macro"))
    assert 0.45 < m.accuracy < 0.75  # about the synthetic model's skill
    perfect = emotion_metrics(ImageStats(**{**stats.__dict__, "matched_cls": stats.target_cls}))
    assert (perfect.accuracy, perfect.macro_f1) == (1.0, 1.0)
    none = emotion_metrics(ImageStats(**{**stats.__dict__,
                                         "matched_cls": np.full(200, -1)}))  # fmt: skip
    assert none.matched == 0 and math.isnan(none.accuracy) and math.isnan(none.macro_f1)


def test_map50_matches_ultralytics_ap_per_class(tmp_path: Path):
    yolo.load(tmp_path)
    from ultralytics.utils.metrics import ap_per_class

    stats = synthetic(0.6)
    ap = ap_per_class(stats.tp, stats.conf, stats.pred_cls, stats.target_cls)[5]
    assert Map50(stats)() == pytest.approx(ap[:, 0].mean(), abs=1e-12)
    assert 0.3 < Map50(stats)() < 0.9


def test_image_stats_round_trip_sorted_by_name(tmp_path: Path):
    stats = synthetic(0.5, images=20)
    shuffled = ImageStats.from_images([
        {"im_name": str(name), "tp": stats.tp[a:b], "conf": stats.conf[a:b],
         "pred_cls": stats.pred_cls[a:b], "target_cls": stats.target_cls[c:d],
         "matched_cls": stats.matched_cls[c:d]}
        for name, a, b, c, d in reversed(list(zip(
            stats.names, stats.pred_start, stats.pred_start[1:], stats.target_start,
            stats.target_start[1:], strict=False)))
    ])  # fmt: skip
    loaded = ImageStats.load(shuffled.save(tmp_path / "s.npz"))
    for key in ImageStats.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(loaded, key), getattr(stats, key))


# ------------------------------------------------------------------------------ bootstrap


def test_identical_models_do_not_promote():
    stats = synthetic(0.6)
    b = bootstrap_map50_diff(stats, stats, samples=200, confidence=0.95, seed=0)
    assert b.low <= 0 <= b.high and b.map50_diff == 0
    params = GateParams(min_improvement=0.01, max_latency_ms=None)
    base = EvalResult(version=1, map50=0.6, map50_95=0.4, per_class_recall={}, revision="r1")
    passed, checks = verdict(base.model_copy(update={"version": 2}), base, params, b)
    assert not passed
    assert any(c.reason.startswith("FAIL: mAP50 gain over champion v1 +0.000") for c in checks)


def test_equally_good_models_have_an_interval_around_zero():
    b = bootstrap_map50_diff(synthetic(0.6, seed=1), synthetic(0.6, seed=2), 200, 0.95, seed=0)
    assert b.low < 0 < b.high
    assert b.low < 0.01  # so min_improvement 0.01 refuses


def test_a_clearly_better_model_has_a_positive_lower_bound():
    better, worse = synthetic(0.85, seed=1), synthetic(0.5, seed=2)
    b = bootstrap_map50_diff(better, worse, samples=200, confidence=0.95, seed=0)
    assert b.map50_diff == pytest.approx(Map50(better)() - Map50(worse)())
    assert 0 < b.low < b.map50_diff < b.high
    again = bootstrap_map50_diff(better, worse, samples=200, confidence=0.95, seed=0)
    assert (again.low, again.high) == (b.low, b.high)  # seeded
    wider = bootstrap_map50_diff(better, worse, samples=200, confidence=0.99, seed=0)
    assert wider.low <= b.low and wider.high >= b.high


def test_bootstrap_needs_the_same_images_in_the_same_order():
    stats = synthetic(0.6, images=50)
    other = synthetic(0.6, images=49)
    with pytest.raises(ValueError, match="same test images in the same order"):
        bootstrap_map50_diff(stats, other, 20, 0.95)
    renamed = ImageStats(**{**stats.__dict__, "names": stats.names[::-1].copy()})
    with pytest.raises(ValueError, match="same order"):
        same_images(stats, renamed)
    relabelled = ImageStats(**{**stats.__dict__, "target_cls": (stats.target_cls + 1) % NC})
    with pytest.raises(ValueError, match="different labels"):
        same_images(stats, relabelled)


# ------------------------------------------------------------------- a real tiny model


@pytest.fixture(scope="module")
def tiny(
    tmp_path_factory: pytest.TempPathFactory, untrained_weights
) -> tuple[Path, Path, DatasetRef]:
    """(weights, onnx, dataset): an untrained YOLOv8n whose class scores spread over (0, 1)
    (as in test_serving) and a drawn dataset with 12 test images."""
    root = tmp_path_factory.mktemp("gate")
    from PIL import Image

    data = root / "data"
    sample_data.generate(data, train=4, valid=4, test=12, seed=3)
    images = [np.asarray(Image.open(p).convert("RGB").resize((IMGSZ, IMGSZ)))
              for p in sorted((data / "test" / "images").iterdir())]  # fmt: skip
    weights = untrained_weights(np.stack(images), root / "tiny.pt", root / "ultralytics")
    onnx = yolo.export_onnx(weights, IMGSZ, root / "ultralytics")
    dataset = DatasetRef(revision="r9", commit="none", digest="none", path=data)
    return weights, onnx, dataset


def test_score_writes_per_image_stats_that_reproduce_its_map(tiny, tmp_path: Path, make_settings):
    weights, _, dataset = tiny
    settings = make_settings(tmp_path / "home")
    result = score(weights, dataset, IMGSZ, 3, settings, stats_dir=tmp_path / "gate")
    assert result.stats_path == tmp_path / "gate" / "eval-v3.npz"
    assert (result.revision, result.images) == ("r9", 12)
    stats = ImageStats.load(result.stats_path)
    names = sorted(p.name for p in (dataset.path / "test" / "images").iterdir())
    assert stats.names.tolist() == names
    labels = [int(line.split()[0]) for name in names
              for line in (dataset.path / "test" / "labels" / name).with_suffix(".txt")
              .read_text().splitlines()]  # fmt: skip
    assert stats.target_cls.tolist() == labels
    assert stats.tp.shape == (len(stats.conf), 10) and len(stats.conf) > 0
    assert Map50(stats)() == pytest.approx(result.map50, abs=1e-9)
    # emotion accuracy of matched faces: from the same stats, one class per labelled face
    assert stats.matched_cls.shape == stats.target_cls.shape
    emotions = emotion_metrics(stats)
    assert (result.matched_faces, result.faces) == (emotions.matched, len(labels))
    # one face per image: a face with a class-correct box at IoU 0.5 is a matched face
    assert int(stats.tp[:, 0].sum()) <= result.matched_faces <= result.faces
    if result.matched_faces:
        assert result.accuracy == pytest.approx(emotions.accuracy)
        assert result.macro_f1 == pytest.approx(emotions.macro_f1)
    else:  # an untrained model may find no face: no accuracy, rather than a made-up 0
        assert result.accuracy is None and result.macro_f1 is None


def test_latency_of_the_onnx_export_is_measured(tiny):
    _, onnx, dataset = tiny
    images = split_images(dataset, 5)
    assert len(images) == 5
    ms = measure_latency(onnx, images, imgsz=IMGSZ, warmup=2)
    assert math.isfinite(ms) and 0 < ms < 1000
    with pytest.raises(ValueError, match="no images"):
        measure_latency(onnx, [], IMGSZ)


def test_split_images_reads_the_split_it_is_given(tmp_path: Path):
    for split, names in (("valid", ["v2.png", "v1.jpg", "notes.txt"]),
                         ("test", ["t1.png", "t3.webp", "t2.png", ".hidden.png"])):  # fmt: skip
        folder = tmp_path / split / "images"
        folder.mkdir(parents=True)
        for name in names:
            (folder / name).write_bytes(b"")
    dataset = DatasetRef(revision="r1", commit="none", digest="none", path=tmp_path)
    assert [p.name for p in split_images(dataset, 5, "valid")] == ["v1.jpg", "v2.png"]
    assert [p.name for p in split_images(dataset, 2)] == ["t1.png", "t2.png"]  # test by default
    assert [p.name for p in split_images(dataset, 9, "test")] == ["t1.png", "t2.png", "t3.webp"]
    assert split_images(dataset, 5, "train") == []  # no images folder
    with pytest.raises(ValueError, match="unknown split 'val'"):
        split_images(dataset, 5, "val")
