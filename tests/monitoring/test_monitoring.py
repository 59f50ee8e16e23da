"""monitoring/: image features, the Evidently drift step and the reports index.

The datasets are built here, in tmp folders, with Pillow and numpy (YOLO layout), so that these
tests depend on nothing but `monitoring` and `ml.config` / `ml.records`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from ml.config import EMOTIONS
from ml.params import DriftParams
from ml.records import DatasetRef, DriftResult
from monitoring.features import COLUMNS, FEATURES, dataset_features, image_features

SIZE = 48


# ---------------------------------------------------------------- tiny YOLO-layout datasets


def face_image(
    rng: np.random.Generator,
    *,
    brightness: float = 0.45,
    scale: float = 1.0,
    offset: float = 0.0,
    blur: float = 0.0,
) -> tuple[Image.Image, tuple[float, float, float, float]]:
    """A noisy grey background with a brighter 'face' ellipse; returns it and its YOLO box."""
    bg = np.clip(rng.normal(brightness, 0.05), 0.05, 0.95)
    pixels = np.clip(rng.normal(bg, 0.08, (SIZE, SIZE)), 0, 1)
    image = Image.fromarray((pixels * 255).astype(np.uint8), "L")
    w = float(np.clip(rng.normal(0.45 * scale, 0.05), 0.1, 0.98))
    h = float(np.clip(rng.normal(0.55 * scale, 0.05), 0.1, 0.98))
    cx = float(np.clip(rng.normal(0.5 + offset, 0.04), w / 2, 1 - w / 2))
    cy = float(np.clip(rng.normal(0.5 + offset, 0.04), h / 2, 1 - h / 2))
    x0, y0 = (cx - w / 2) * SIZE, (cy - h / 2) * SIZE
    x1, y1 = (cx + w / 2) * SIZE, (cy + h / 2) * SIZE
    ImageDraw.Draw(image).ellipse((x0, y0, x1, y1), fill=int(min(bg + 0.2, 1.0) * 255))
    if blur:
        image = image.filter(ImageFilter.GaussianBlur(blur))
    return image.convert("RGB"), (cx, cy, w, h)


def make_dataset(
    root: Path,
    *,
    seed: int,
    counts: dict[str, int] | None = None,
    labelled: bool = True,
    **shift,
) -> Path:
    """``root/{split}/{images,labels}``: PNG faces and ``class cx cy w h`` label lines."""
    rng = np.random.default_rng(seed)
    for split, n in (counts or {"train": 120, "valid": 50, "test": 50}).items():
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "labels").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image, (cx, cy, w, h) = face_image(rng, **shift)
            image.save(root / split / "images" / f"{split}_{i:04d}.png")
            if labelled:
                label = f"{i % len(EMOTIONS)} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n"
                (root / split / "labels" / f"{split}_{i:04d}.txt").write_text(label)
    return root


def ref(revision: str, path: Path) -> DatasetRef:
    return DatasetRef(revision=revision, commit="c0ffee" * 6, digest=f"md5-{revision}", path=path)


def leftovers(folder: Path) -> list[Path]:
    """Temporary files a crashed or careless write would leave."""
    return [p for p in folder.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, DatasetRef]:
    base = tmp_path_factory.mktemp("monitoring-data")
    return {
        "r1": ref("r1", make_dataset(base / "r1", seed=1)),
        "same": ref("r2", make_dataset(base / "r2", seed=2)),
        "shifted": ref(
            "r3", make_dataset(base / "r3", seed=3, brightness=0.8, scale=1.6, offset=0.1, blur=1.5)
        ),
    }


# ---------------------------------------------------------------------------- image_features


def test_bright_image_has_higher_brightness_than_dark():
    bright = image_features(Image.new("RGB", (96, 96), (230, 230, 230)), None)
    dark = image_features(Image.new("RGB", (96, 96), (20, 20, 20)), None)
    assert set(bright) == set(FEATURES)
    assert bright["brightness"] == pytest.approx(230 / 255, abs=1e-3)
    assert dark["brightness"] == pytest.approx(20 / 255, abs=1e-3)
    assert bright["contrast"] == pytest.approx(0.0, abs=1e-6)  # a flat image has no contrast
    assert bright["sharpness"] == pytest.approx(0.0, abs=1e-9)


def test_contrast_of_half_black_half_white_image():
    pixels = np.zeros((96, 96), np.uint8)
    pixels[:, 48:] = 255
    feats = image_features(Image.fromarray(pixels, "L"), None)
    assert feats["brightness"] == pytest.approx(0.5, abs=1e-3)
    assert feats["contrast"] == pytest.approx(0.5, abs=1e-3)


def test_blurred_image_has_lower_sharpness():
    rng = np.random.default_rng(0)
    image, box = face_image(rng)
    sharp = image_features(image, box)
    blurred = image_features(image.filter(ImageFilter.GaussianBlur(2)), box)
    assert blurred["sharpness"] < sharp["sharpness"] / 4
    assert blurred["brightness"] == pytest.approx(sharp["brightness"], abs=0.02)


def test_box_gives_face_features_and_none_gives_nan():
    image = Image.new("L", (96, 96), 128)
    feats = image_features(image, (0.4, 0.6, 0.3, 0.5))
    assert (feats["face_cx"], feats["face_cy"], feats["face_width"], feats["face_height"]) == (
        pytest.approx(0.4),
        pytest.approx(0.6),
        pytest.approx(0.3),
        pytest.approx(0.5),
    )
    no_box = image_features(image, None)
    assert all(math.isnan(no_box[k]) for k in ("face_width", "face_height", "face_cx", "face_cy"))
    assert all(isinstance(v, float) for v in no_box.values())


def test_bad_box_is_a_clear_error():
    with pytest.raises(ValueError, match="four numbers"):
        image_features(Image.new("L", (8, 8)), (0.5, 0.5, 0.2))  # type: ignore[arg-type]


# -------------------------------------------------------------------------- dataset_features


def test_dataset_features_rows_columns_and_missing_labels(tmp_path: Path):
    root = make_dataset(tmp_path / "ds", seed=0, counts={"train": 9, "valid": 3})
    (root / "train" / "labels" / "train_0002.txt").unlink()  # an image without a label
    (root / "train" / "images" / "broken.png").write_bytes(b"not a png")  # skipped
    (root / "train" / "images" / "notes.txt").write_text("not an image")  # ignored

    table = dataset_features(root, splits=("train", "valid", "test"))  # no test folder: no rows

    assert list(table.columns) == list(COLUMNS)
    assert len(table) == 12
    assert table["split"].value_counts().to_dict() == {"train": 9, "valid": 3}
    assert str(table["class_id"].dtype) == "int64"
    assert all(str(table[f].dtype) == "float64" for f in FEATURES)
    unlabelled = table[table["file"] == "train/images/train_0002.png"].iloc[0]
    assert unlabelled["class_id"] == -1
    assert unlabelled["emotion"] == "none"
    box_columns = ("face_width", "face_height", "face_cx", "face_cy")
    assert all(math.isnan(unlabelled[f]) for f in box_columns)
    labelled = table[table["file"] == "train/images/train_0003.png"].iloc[0]
    assert labelled["class_id"] == 3 and labelled["emotion"] == EMOTIONS[3]
    assert 0 < labelled["face_width"] < 1
    assert table.drop(index=unlabelled.name)[list(FEATURES)].notna().all().all()


def test_bmp_and_webp_images_are_described_like_png(tmp_path: Path):
    """Every format validation and training accept is in the drift tables (BMP and WEBP were
    silently left out while training used them)."""
    root = make_dataset(tmp_path / "ds", seed=0, counts={"train": 3})
    images = root / "train" / "images"
    brightness = {}
    for name, fmt in (("train_0001", "BMP"), ("train_0002", "WEBP")):
        with Image.open(images / f"{name}.png") as image:
            brightness[fmt] = image_features(image, None)["brightness"]
            image.save(images / f"{name}.{fmt.lower()}", format=fmt, lossless=True)
        (images / f"{name}.png").unlink()

    table = dataset_features(root, splits=("train",))

    assert sorted(table["file"]) == [
        "train/images/train_0000.png", "train/images/train_0001.bmp",
        "train/images/train_0002.webp",
    ]  # fmt: skip
    bmp, webp = table.iloc[1], table.iloc[2]
    assert (bmp["class_id"], webp["class_id"]) == (1, 2) and bmp["face_width"] > 0
    assert bmp["brightness"] == pytest.approx(brightness["BMP"], abs=1e-9)
    assert webp["brightness"] == pytest.approx(brightness["WEBP"], abs=1e-9)


def test_dataset_features_of_empty_folder_has_the_columns(tmp_path: Path):
    table = dataset_features(tmp_path)
    assert table.empty and list(table.columns) == list(COLUMNS)


# ------------------------------------------------------------------------------- check_drift


def test_same_distribution_is_not_drifted(datasets, tmp_path: Path):
    result = check(datasets["same"], datasets["r1"], tmp_path)
    assert isinstance(result, DriftResult)
    assert not result.drifted
    assert result.share < 0.5
    assert result.reference == "r1"
    assert result.html_path == (tmp_path / "drift" / "r2-vs-r1.html").resolve()


def test_brightness_and_scale_shift_is_drifted_and_reported(datasets, tmp_path: Path):
    result = check(datasets["shifted"], datasets["r1"], tmp_path)
    assert result.drifted
    assert result.share >= 0.75

    html = result.html_path.read_text(encoding="utf-8")
    assert result.html_path.stat().st_size > 100_000
    assert "drawDashboard" in html  # Evidently's page template
    assert "Share of Drifted Columns" in html and "brightness" in html and "emotion" in html
    assert "emoflow data drift: r3" in html

    summary = json.loads(result.html_path.with_suffix(".json").read_text())
    assert summary["result"]["share"] == result.share
    assert summary["current"]["revision"] == "r3" and summary["reference"]["revision"] == "r1"
    by_column = {c["column"]: c for c in summary["columns"]}
    assert set(by_column) == {*FEATURES, "emotion"}
    assert by_column["brightness"]["drifted"] is True
    assert by_column["emotion"]["drifted"] is False  # same class mix on both sides

    index = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert 'href="drift/r3-vs-r1.html"' in index
    assert "DRIFTED" in index and f"{result.share:.0%}" in index
    assert leftovers(tmp_path) == []


def test_first_cycle_compares_train_with_valid_and_test(datasets, tmp_path: Path):
    result = check(datasets["r1"], None, tmp_path)
    assert "no champion yet" in result.reference and "r1 train" in result.reference
    assert result.html_path.name == "r1-vs-r1-train.html" and result.html_path.exists()
    assert not result.drifted
    summary = json.loads(result.html_path.with_suffix(".json").read_text())
    assert summary["current"]["rows"] == 100  # valid 50 + test 50
    assert summary["reference"]["rows"] == 120  # train
    assert "no champion yet" in (tmp_path / "index.html").read_text()
    assert leftovers(tmp_path) == []


def test_rows_are_sampled_to_max_rows_with_a_fixed_seed(datasets, tmp_path: Path):
    params = DriftParams(max_rows=40)
    first = check(datasets["same"], datasets["r1"], tmp_path / "a", params)
    second = check(datasets["same"], datasets["r1"], tmp_path / "b", params)
    summary = json.loads(first.html_path.with_suffix(".json").read_text())
    assert summary["current"]["sampled"] == 40 and summary["current"]["rows"] == 220
    assert summary["reference"]["sampled"] == 40
    assert first.share == second.share


def test_unlabelled_data_drops_the_box_columns(tmp_path: Path):
    current = ref("u1", make_dataset(tmp_path / "u1", seed=5, labelled=False))
    result = check(current, None, tmp_path / "reports")
    summary = json.loads(result.html_path.with_suffix(".json").read_text())
    assert summary["dropped_columns"] == ["face_width", "face_height", "face_cx", "face_cy"]
    assert {c["column"] for c in summary["columns"]} == {
        "brightness",
        "contrast",
        "sharpness",
        "emotion",
    }


def test_no_images_is_a_clear_error_and_writes_nothing(tmp_path: Path):
    from monitoring.drift import DriftError

    empty = ref("r9", tmp_path / "empty")
    with pytest.raises(DriftError, match="no decodable images"):
        check(empty, None, tmp_path / "reports")
    assert not (tmp_path / "reports").exists()


def check(current, reference, reports_dir: Path, params: DriftParams | None = None):
    from monitoring.drift import check_drift

    return check_drift(current, reference, params or DriftParams(), reports_dir)


# ------------------------------------------------------------------------------ write_index


def test_index_lists_every_report_newest_first(tmp_path: Path):
    from monitoring.reports import write_index

    drift = tmp_path / "drift"
    drift.mkdir()
    for name, created, drifted, share in (
        ("r2-vs-r1", "2026-01-01T10:00:00+00:00", False, 0.125),
        ("r3-vs-r2", "2026-02-01T10:00:00+00:00", True, 0.875),
    ):
        (drift / f"{name}.html").write_text("<html></html>")
        (drift / f"{name}.json").write_text(
            json.dumps(
                {
                    "created": created,
                    "share_threshold": 0.5,
                    "current": {"revision": name[:2], "digest": "abc"},
                    "result": {
                        "drifted": drifted,
                        "share": share,
                        "reference": name[-2:],
                        "html_path": str(drift / f"{name}.html"),
                    },
                }
            )
        )
    (drift / "orphan.html").write_text("<html></html>")  # no summary: still listed
    (drift / "broken.html").write_text("<html></html>")
    (drift / "broken.json").write_text("{not json")

    index = write_index(tmp_path)

    assert index == tmp_path / "index.html"
    page = index.read_text()
    assert page.index("drift/r3-vs-r2.html") < page.index("drift/r2-vs-r1.html")
    assert "88%" in page and "12%" in page
    assert "DRIFTED" in page and "no drift" in page
    assert 'href="drift/orphan.html"' in page and 'href="drift/broken.html"' in page
    assert page.count("unknown") >= 2
    assert leftovers(tmp_path) == []


def test_reports_are_kept_by_count_and_age_and_the_index_lists_what_is_kept(
    datasets, tmp_path: Path
):
    import os

    reports = tmp_path / "reports"
    params = DriftParams(keep_reports=2, max_report_age_days=30)
    names = [f"r{n}" for n in range(2, 6)]
    for name in names:  # r2..r5 each against r1: four reports, the oldest written first
        check(ref(name, datasets["same"].path), datasets["r1"], reports, params)
    kept = sorted(p.stem for p in (reports / "drift").glob("*.html"))
    assert kept == ["r4-vs-r1", "r5-vs-r1"]
    assert sorted(p.stem for p in (reports / "drift").glob("*.json")) == kept
    page = (reports / "index.html").read_text()
    assert "drift/r5-vs-r1.html" in page and "drift/r4-vs-r1.html" in page
    assert "r3-vs-r1" not in page and "r2-vs-r1" not in page

    # a report older than max_report_age_days goes even within the count (not the newest one)
    old = reports / "drift" / "r4-vs-r1.json"
    summary = json.loads(old.read_text())
    summary["created"] = "2020-01-01T00:00:00+00:00"
    old.write_text(json.dumps(summary))
    os.utime(old.with_suffix(".html"), (0, 0))
    wider = DriftParams(keep_reports=3, max_report_age_days=30)  # the count alone keeps r4
    check(ref("r6", datasets["same"].path), datasets["r1"], reports, wider)
    assert sorted(p.stem for p in (reports / "drift").glob("*.html")) == ["r5-vs-r1", "r6-vs-r1"]


def test_index_of_no_reports_says_so(tmp_path: Path):
    from monitoring.reports import write_index

    page = write_index(tmp_path / "reports").read_text()
    assert "No reports yet" in page
