"""ml.validate: tiny YOLO datasets built here with Pillow, checked by a real GX checkpoint.

The corrupted-batch suite (one defect per case, each an error line naming the file and the
rule) is `test_bad_data_is_an_error_naming_file_rule_and_value`; warnings that let the run go
on (background, duplicate inside a split, class balance, class-mix change) follow it.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
from PIL import Image

from ml.config import PROJECT_ROOT
from ml.params import ValidateParams, load_params
from ml.records import DatasetRef, ValidationResult
from ml.sample_data import generate
from ml.validate import (
    MAX_LINES,
    Finding,
    InvalidDataError,
    _cap,
    ensure_valid,
    error_total,
    report,
    validate,
)
from ml.validate.rules import RULES, TABLES
from ml.validate.tables import build_tables

# Two images per split cannot hold eight balanced classes: the balance rules are off here and
# tested on their own below.
PARAMS = ValidateParams(
    min_image_size=32, min_images_per_split=2, min_class_share=0.0, max_class_share=1.0
)
SPLITS = ("train", "valid", "test")


def make_dataset(root: Path, per_split: int = 2, size: int = 48) -> Path:
    """A clean YOLO-layout set: `per_split` solid-colour PNGs per split, one valid box each."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "data.yaml").write_text("path: .\ntrain: train/images\nval: valid/images\n"
                                    "test: test/images\nnc: 8\n")  # fmt: skip
    for s, split in enumerate(SPLITS):
        (root / split / "images").mkdir(parents=True)
        (root / split / "labels").mkdir(parents=True)
        for i in range(per_split):
            stem = f"x_{i:06d}"
            Image.new("RGB", (size, size), (40 * s, 30 * i % 256, 90)).save(
                root / split / "images" / f"{stem}.png"
            )
            (root / split / "labels" / f"{stem}.txt").write_text(f"{i % 8} 0.5 0.5 0.6 0.7\n")
    return root


def ref(path: Path, revision: str = "r1") -> DatasetRef:
    return DatasetRef(revision=revision, commit="0" * 40, digest="ab" * 16, path=path)


def docs_index(result: ValidationResult) -> Path:
    assert result.docs_url.startswith("file://")
    return Path(urlparse(result.docs_url).path)


def truncated_png(path: Path) -> None:
    """A real PNG cut short inside its pixel data: the header still opens, decoding fails."""
    noise = Image.effect_noise((64, 64), 80).convert("RGB")
    noise.save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "data")


def run(
    dataset: Path,
    tmp_path: Path,
    params: ValidateParams = PARAMS,
    previous: DatasetRef | None = None,
) -> ValidationResult:
    return validate(ref(dataset), params, tmp_path / "gx", previous)


def add_image(
    dataset: Path,
    split: str,
    stem: str,
    label: str | None = "0 0.5 0.5 0.6 0.7\n",
    image: Path | None = None,
    suffix: str = ".png",
) -> Path:
    """One more image (a copy of `image`, or a new one) and its label (None: no label file)."""
    path = dataset / split / "images" / f"{stem}{suffix}"
    if image is not None:
        shutil.copyfile(image, path)
    else:  # a colour of its own: no accidental duplicates
        red, green = hashlib.sha1(f"{split}/{stem}".encode()).digest()[:2]
        Image.new("RGB", (48, 48), (red, green, 7)).save(path)
    if label is not None:
        (dataset / split / "labels" / f"{stem}.txt").write_text(label)
    return path


# --------------------------------------------------------------------------- flattening (no GX)


def test_tables_flatten_images_boxes_and_splits(dataset: Path) -> None:
    (dataset / "train/labels/x_000001.txt").write_text("3 0.5 0.5 0.2 0.2\n\n1 0.1 zz 0.1 0.1\n")
    tables = build_tables(dataset)

    assert len(tables.images) == 6 and tables.images["decodable"].all()
    row = tables.images.set_index("file").loc["train/images/x_000000.png"]
    assert (row["format"], row["mode"], row["width"], row["height"], row["channels"]) == (
        "PNG", "RGB", 48, 48, 3,
    )  # fmt: skip
    assert bool(row["has_label"]) and row["boxes"] == 1
    assert (
        row["sha1"]
        == hashlib.sha1((dataset / "train/images/x_000000.png").read_bytes()).hexdigest()
    )
    assert row["duplicate_of"] is None and row["leaked_from"] is None

    boxes = tables.boxes[tables.boxes["file"] == "train/labels/x_000001.txt"]
    assert boxes["line"].tolist() == [1, 3]  # blank line 2 skipped, numbering kept
    assert boxes["class_id"].iloc[0] == 3
    assert boxes["n_fields"].iloc[1] == 5 and boxes["cy"].isna().iloc[1]
    assert boxes["w_px"].iloc[0] == pytest.approx(9.6) and boxes["overhang"].iloc[0] == 0
    assert boxes["w_px"].isna().iloc[1] and boxes["overhang"].isna().iloc[1]  # cy is missing
    assert tables.splits.set_index("split")["images"].to_dict() == {
        "train": 2,
        "valid": 2,
        "test": 2,
    }
    assert tables.labels["has_image"].all() and len(tables.labels) == 6
    assert tables.counts["boxes"] == 7 and tables.counts["train/boxes"] == 3
    classes = tables.classes.set_index("detail")
    assert classes.loc["anger", "share"] == 0.3333  # class ids 0, 3, 1 (rounded to 4 places)
    assert classes.loc["fear", "boxes"] == 1 and classes.loc["happy", "share"] == 0
    assert classes["share_change"].isna().all()  # no previous revision


def test_truncated_png_and_text_file_are_not_decodable(dataset: Path) -> None:
    truncated_png(dataset / "train/images/x_000000.png")
    (dataset / "valid/images/x_000001.png").write_text("this is not a picture\n")
    with Image.open(dataset / "train/images/x_000000.png") as image:  # header alone is fine
        assert image.size == (64, 64)

    images = build_tables(dataset).images.set_index("file")

    for file in ("train/images/x_000000.png", "valid/images/x_000001.png"):
        assert not images.loc[file, "decodable"], file
        assert images.loc[file, "detail"]
        assert "0x" not in images.loc[file, "detail"]  # no object address from BytesIO
    assert images["decodable"].sum() == 4


def test_parallel_decode_runs_in_other_processes_and_gives_the_same_rows(dataset: Path) -> None:
    truncated_png(dataset / "test/images/x_000000.png")
    serial = build_tables(dataset, workers=1).images
    parallel = build_tables(dataset, workers=2).images
    assert serial.equals(parallel)

    # The pool is only used in a single-threaded process; earlier tests in this process may
    # have left threads running, so check it in a fresh interpreter.
    code = (
        "import os; from ml.validate import tables as v\n"
        "def _decode_chunk(paths): return [(os.getpid(),) for _ in paths]\n"
        "_decode_chunk.__module__ = 'ml.validate.tables'; v._decode_chunk = _decode_chunk\n"
        "pids = {pid for (pid,) in v.decode_images(['x'] * 300, workers=2)}\n"
        "print(len(pids), os.getpid() in pids)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    count, parent_decoded = out.stdout.split()
    assert int(count) >= 1 and parent_decoded == "False"


# --------------------------------------------------------------------------- the GX checkpoint


def test_clean_set_passes_and_builds_data_docs(dataset: Path, tmp_path: Path) -> None:
    result = run(dataset, tmp_path)

    assert result.ok, result.errors
    assert result.errors == [] and result.warnings == []
    assert result.revision == "r1"
    assert result.counts["images"] == 6 and result.counts["boxes"] == 6
    assert result.counts["train/labels"] == 2 and result.counts["background"] == 0
    assert result.counts["duplicates"] == result.counts["leaked"] == 0
    assert docs_index(result).is_file()
    assert docs_index(result) == tmp_path / "gx/gx/uncommitted/data_docs/local_site/index.html"
    assert ensure_valid(result) is result


def test_sample_data_passes_with_the_default_params(tmp_path: Path) -> None:
    generate(tmp_path / "sample", train=40, valid=8, test=8, seed=0)
    result = validate(ref(tmp_path / "sample"), ValidateParams(), tmp_path / "gx")
    assert result.ok and result.errors == []
    # 40 boxes over 8 classes may leave one class under 2 %: a warning, never an error.
    assert all(": class_min_share: " in line for line in result.warnings), result.warnings


def _cmyk_jpeg(d: Path) -> None:
    (d / "valid/images/x_000001.png").unlink()
    Image.new("CMYK", (48, 48), (0, 50, 100, 0)).save(d / "valid/images/x_000001.jpg")


def _leak_test_into_train(d: Path) -> None:
    add_image(d, "train", "x_000009", image=d / "test/images/x_000000.png")


# One defect each, and the error lines it must give (in report order; each a prefix of its line).
CORRUPTED = [
    pytest.param(
        lambda d: (d / "train/labels/x_000001.txt").write_text(
            "1 0.5 0.5 0.5 0.5\n9 0.5 0.5 0.5 0.5\n"
        ),
        ["train/labels/x_000001.txt:2: class_id_range: class_id must be in 0..7, found 9"],
        id="wrong-class-id",
    ),
    pytest.param(
        lambda d: (d / "valid/labels/x_000000.txt").write_text("2 1.3 0.5 0.5 0.5\n"),
        ["valid/labels/x_000000.txt:1: box_cx_range: cx must be in [0, 1], found 1.3"],
        id="box-out-of-range",
    ),
    pytest.param(
        lambda d: (d / "valid/labels/x_000000.txt").write_text("2 0.9 0.5 0.4 0.4\n"),
        ["valid/labels/x_000000.txt:1: box_inside_image: box passes the image border by 0.1 "
         "(cx +- w/2 and cy +- h/2 must lie in [0, 1], tolerance 0.001): '2 0.9 0.5 0.4 0.4'"],
        id="box-outside-image",
    ),
    pytest.param(
        lambda d: (d / "test/labels/x_000000.txt").write_text("2 0.5 0.5 0.1 0.5\n"),
        ["test/labels/x_000000.txt:1: box_min_width: box width must be at least 8 px, "
         "found 4.8 px (image 48x48)"],
        id="box-too-small",
    ),
    pytest.param(
        lambda d: truncated_png(d / "train/images/x_000001.png"),
        ["train/images/x_000001.png: image_decodable: image cannot be decoded (OSError: "
         "image file is truncated"],  # then how many bytes were left: varies
        id="truncated-image",
    ),
    pytest.param(
        lambda d: add_image(d, "train", "x_000002", suffix=".jpg", image=None).write_text(
            "a text file, not a JPEG\n"
        ),
        ["train/images/x_000002.jpg: image_decodable: image cannot be decoded "
         "(UnidentifiedImageError: cannot identify image file <file>)"],
        id="text-named-jpg",
    ),
    pytest.param(
        lambda d: (d / "test/labels/x_000001.txt").write_text("2 0.5 0.5 0.5\n"),
        ["test/labels/x_000001.txt:1: label_fields: label line must have 5 fields "
         "(class cx cy w h), found 4: '2 0.5 0.5 0.5'"],
        id="four-numbers",
    ),
    pytest.param(
        lambda d: (d / "train/labels/x_000000.txt").write_text("0 0.5 abc 0.5 0.5\n"),
        ["train/labels/x_000000.txt:1: label_cy_number: cy must be a number, "
         "found '0 0.5 abc 0.5 0.5'"],
        id="not-a-number",
    ),
    pytest.param(
        _leak_test_into_train,
        ["test/images/x_000000.png: image_leakage: same bytes as train/images/x_000009.png: "
         "the image is in two splits (train and test)"],
        id="test-image-in-train",
    ),
    pytest.param(
        lambda d: (d / "train/labels/x_000005.txt").write_text("1 0.5 0.5 0.5 0.5\n"),
        ["train/labels/x_000005.txt: label_has_image: label file without an image "
         "(orphan label: no x_000005.* in train/images)"],
        id="orphan-label",
    ),
    pytest.param(
        lambda d: Image.new("RGB", (20, 40), "red").save(d / "valid/images/x_000001.png"),
        ["valid/images/x_000001.png: image_min_width: width must be at least 32 px, found 20"],
        id="too-small",
    ),
    pytest.param(
        lambda d: Image.new("P", (48, 48)).save(d / "train/images/x_000000.png", format="GIF"),
        ["train/images/x_000000.png: image_format: format must be one of "
         "BMP, JPEG, MPO, PNG, TIFF, WEBP, found GIF"],
        id="gif-named-png",
    ),
    pytest.param(
        _cmyk_jpeg,
        ["valid/images/x_000001.jpg: image_channels: colour mode must be one of "
         "L, P, RGB, RGBA, found CMYK"],
        id="cmyk-jpeg",
    ),
    pytest.param(
        lambda d: (d / "test/images/x_000000.png").unlink(),
        ["test: split_min_images: split must have at least 2 images, found 1",
         "test/labels/x_000000.txt: label_has_image: label file without an image "
         "(orphan label: no x_000000.* in test/images)"],
        id="split-too-small",
    ),
    pytest.param(
        lambda d: [p.unlink() for p in (d / "valid").glob("*/*")],
        ["valid: split_min_images: split must have at least 2 images, found 0"],
        id="empty-split",
    ),
    pytest.param(
        lambda d: shutil.rmtree(d / "test"),
        ["test: split_exists: split folder missing: expected test/images and test/labels"],
        id="missing-split",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("defect", "expected"), CORRUPTED)
def test_bad_data_is_an_error_naming_file_rule_and_value(
    dataset: Path, tmp_path: Path, defect, expected: list[str]
) -> None:
    defect(dataset)
    result = run(dataset, tmp_path)

    assert not result.ok
    assert len(result.errors) == len(expected), result.errors
    for line, start in zip(result.errors, expected, strict=True):
        assert line.startswith(start)
    assert docs_index(result).is_file()
    with pytest.raises(InvalidDataError, match=re.escape(result.docs_url)):
        ensure_valid(result)


def test_undecodable_detail_names_the_cause(dataset: Path, tmp_path: Path) -> None:
    (dataset / "train/images/x_000001.png").write_text("hello, I am text\n")
    truncated_png(dataset / "valid/images/x_000000.png")
    result = run(dataset, tmp_path)

    assert [line.split(" (")[0] for line in result.errors] == [
        "train/images/x_000001.png: image_decodable: image cannot be decoded",
        "valid/images/x_000000.png: image_decodable: image cannot be decoded",
    ]
    assert "cannot identify" in result.errors[0] and "truncated" in result.errors[1]


def test_image_without_label_is_a_warning_not_an_error(dataset: Path, tmp_path: Path) -> None:
    (dataset / "valid/labels/x_000000.txt").unlink()
    (dataset / "test/labels/x_000000.txt").write_text("")  # empty label file: background too
    result = run(dataset, tmp_path)

    assert result.ok, result.errors
    assert result.warnings == [
        "valid/images/x_000000.png: image_has_label: no label file (background image)"
    ]
    assert result.counts["valid/background"] == 1 and result.counts["test/background"] == 1
    assert result.counts["background"] == 2 and result.counts["valid/labels"] == 1


def test_duplicate_inside_a_split_is_a_warning_naming_both_files(
    dataset: Path, tmp_path: Path
) -> None:
    add_image(dataset, "valid", "x_000007", image=dataset / "valid/images/x_000001.png")
    result = run(dataset, tmp_path)

    assert result.ok, result.errors
    assert result.warnings == [
        "valid/images/x_000007.png: image_duplicate: same bytes as valid/images/x_000001.png "
        "(exact duplicate inside the split)"
    ]
    assert result.counts["duplicates"] == 1 and result.counts["leaked"] == 0


def test_image_in_all_three_splits_is_reported_against_the_first(
    dataset: Path, tmp_path: Path
) -> None:
    first = dataset / "train/images/x_000000.png"
    add_image(dataset, "valid", "x_000005", image=first)
    add_image(dataset, "test", "x_000005", image=first)
    result = run(dataset, tmp_path)

    assert result.errors == [
        f"{split}/images/x_000005.png: image_leakage: same bytes as train/images/x_000000.png: "
        f"the image is in two splits (train and {split})"
        for split in ("valid", "test")
    ]
    assert result.counts["leaked"] == 2


def test_class_balance_is_a_warning_and_missing_class_an_error_only_on_request(
    dataset: Path, tmp_path: Path
) -> None:
    balance = PARAMS.model_copy(update={"min_class_share": 0.1, "max_class_share": 0.4})
    add_image(dataset, "train", "x_000002", label="1 0.5 0.5 0.6 0.7\n")  # anger 1, contempt 2
    result = run(dataset, tmp_path, balance)

    assert result.ok, result.errors
    assert result.warnings[:2] == [
        "train: class_max_share: class contempt has 66.7% of the train boxes, above "
        "max_class_share 40.0%",
        "train: class_min_share: class disgust has 0.0% of the train boxes, below "
        "min_class_share 10.0%",
    ]
    assert len(result.warnings) == 7  # contempt too many; disgust .. surprise too few

    strict = balance.model_copy(update={"require_all_classes": True})
    result = run(dataset, tmp_path, strict)
    assert not result.ok
    assert result.errors == [
        f"train: class_present: class {name} has no image in train (require_all_classes is on)"
        for name in ("disgust", "fear", "happy", "neutral", "sad", "surprise")
    ]


def test_class_mix_change_against_the_previous_revision_is_a_warning(tmp_path: Path) -> None:
    previous = make_dataset(tmp_path / "r1")
    current = make_dataset(tmp_path / "r2")
    for i in range(4):  # r2's train: anger 1, contempt 5 (r1: 1 and 1)
        add_image(current, "train", f"y_{i:06d}", label="1 0.5 0.5 0.6 0.7\n")
    params = PARAMS.model_copy(update={"max_class_mix_change": 0.2})

    result = run(current, tmp_path, params, previous=ref(previous, "r1"))
    assert result.ok, result.errors
    assert result.warnings == [
        "train: class_mix_change: class anger: 16.7% of the train boxes, 50.0% in r1 "
        "(-33.3 points), a change of more than max_class_mix_change 0.2",
        "train: class_mix_change: class contempt: 83.3% of the train boxes, 50.0% in r1 "
        "(+33.3 points), a change of more than max_class_mix_change 0.2",
    ]
    assert run(current, tmp_path, params).warnings == []  # no previous revision: no check
    loose = params.model_copy(update={"max_class_mix_change": 0.4})
    assert run(current, tmp_path, loose, previous=ref(previous, "r1")).warnings == []
    with pytest.raises(FileNotFoundError, match="previous dataset folder of r0 not found"):
        run(current, tmp_path, params, previous=ref(tmp_path / "gone", "r0"))


def test_ensure_valid_raises_with_docs_url(dataset: Path, tmp_path: Path) -> None:
    (dataset / "train/labels/x_000000.txt").write_text("9 0.5 0.5 0.5 0.5\n")
    result = run(dataset, tmp_path)

    with pytest.raises(InvalidDataError) as caught:
        ensure_valid(result)
    message = str(caught.value)
    first, *rest = message.splitlines()
    assert first == f"r1: 1 data errors (first ones listed), see {result.docs_url}"
    assert rest == [
        "train/labels/x_000000.txt:1: class_id_range: class_id must be in 0..7, found 9"
    ]
    assert isinstance(caught.value, ValueError) and caught.value.result is result
    again = pickle.loads(pickle.dumps(caught.value))
    assert str(again) == message and again.result == result


def test_result_and_log_name_the_files_and_the_data_docs(
    dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (dataset / "train/labels/x_000000.txt").write_text("9 0.5 0.5 0.5 0.5\n")
    (dataset / "valid/labels/x_000000.txt").unlink()
    with caplog.at_level(logging.INFO, logger="ml.validate"):
        result = run(dataset, tmp_path)

    text = caplog.text
    assert result.docs_url in text and "1 errors, 1 warnings" in text
    assert "r1: train/labels/x_000000.txt:1: class_id_range:" in text
    assert "r1: valid/images/x_000000.png: image_has_label:" in text


def test_validate_twice_in_the_same_gx_dir(dataset: Path, tmp_path: Path) -> None:
    strict = PARAMS.model_copy(update={"min_image_size": 64})
    first = run(dataset, tmp_path)
    # Same folder, stricter params: the stored suite is updated, nothing "already exists".
    second = validate(ref(dataset, "r2"), strict, tmp_path / "gx")
    third = run(dataset, tmp_path)

    assert first.ok and third.ok
    assert not second.ok and second.revision == "r2"
    assert len(second.errors) == 12  # 6 images, width and height each
    assert (
        "train/images/x_000000.png: image_min_width: width must be at least 64 px, found 48"
        in second.errors
    )
    assert first.docs_url == second.docs_url == third.docs_url
    assert docs_index(third).is_file()
    results = tmp_path / "gx/gx/uncommitted/validations"
    assert len(list(results.rglob("*.json"))) == 3 * len(TABLES)  # three runs, a suite per table


def test_many_errors_are_listed_in_file_order_and_capped(tmp_path: Path) -> None:
    dataset = make_dataset(tmp_path / "data", per_split=60)
    for label in dataset.glob("*/labels/*.txt"):
        label.write_text("9 0.5 0.5 1.2 0.5\n")  # two errors per file, 180 files
    result = run(dataset, tmp_path)

    assert not result.ok
    assert len(result.errors) == MAX_LINES + 1
    assert result.errors[-1] == f"... and {2 * 180 - MAX_LINES} more"
    assert result.errors[:3] == [
        "train/labels/x_000000.txt:1: class_id_range: class_id must be in 0..7, found 9",
        "train/labels/x_000000.txt:1: box_w_range: w must be in [0, 1], found 1.2",
        "train/labels/x_000001.txt:1: class_id_range: class_id must be in 0..7, found 9",
    ]
    assert error_total(result.errors) == 360
    assert str(InvalidDataError(result)).startswith("r1: 360 data errors")


def test_missing_dataset_folder_is_not_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere: dataset folder of r1 not found"):
        validate(ref(tmp_path / "nowhere"), PARAMS, tmp_path / "gx")
    assert not (tmp_path / "gx").exists()


def test_empty_dataset_folder_names_every_missing_split(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    result = run(tmp_path / "data", tmp_path)

    assert result.errors == [
        f"{split}: split_exists: split folder missing: expected {split}/images and {split}/labels"
        for split in SPLITS
    ]
    assert result.counts["images"] == 0 and result.counts["boxes"] == 0


def test_params_file_section_matches_the_fields() -> None:
    params = load_params(PROJECT_ROOT / "params.yaml").validate_
    assert params.min_box_px > 0 and params.min_class_share <= params.max_class_share
    with pytest.raises(ValueError, match="must be at least min_class_share"):
        ValidateParams(min_class_share=0.3, max_class_share=0.2)


# --------------------------------------------------------------------------- messages


def test_report_merges_rules_in_table_order() -> None:
    rule_a, rule_b = RULES[0], RULES[1]
    findings = [
        Finding(rule_a, count=5, rows=((1, "a1"), (4, "a4"))),
        Finding(rule_b, count=2, rows=((2, "b2"), (3, "b3"))),
    ]
    assert report(findings, limit=10) == ["a1", "b2", "b3", "a4", "... and 3 more"]
    assert report(findings, limit=3) == ["a1", "b2", "b3", "... and 4 more"]
    assert report([]) == []


def test_error_lines_are_capped_with_a_count() -> None:
    lines = [f"f{i}.txt:1: class_id must be in 0..7, found 9" for i in range(MAX_LINES + 50)]
    capped = _cap(lines)
    assert len(capped) == MAX_LINES + 1 and capped[-1] == "... and 50 more"
    assert capped[:MAX_LINES] == lines[:MAX_LINES]
    assert error_total(capped) == MAX_LINES + 50 and error_total(lines[:3]) == 3
    assert _cap(lines[:MAX_LINES]) == lines[:MAX_LINES]


def test_ensure_valid_message_counts_all_errors() -> None:
    errors = _cap([f"train/images/{i}.png: image cannot be decoded (x)" for i in range(230)])
    result = ValidationResult(
        ok=False, revision="r7", errors=errors, warnings=[], counts={}, docs_url="file:///d/i.html"
    )
    with pytest.raises(InvalidDataError, match=r"^r7: 230 data errors .* see file:///d/i.html\n"):
        ensure_valid(result)


def test_import_is_light() -> None:
    import subprocess
    import sys

    code = (
        "import sys, ml.validate; "
        "print(sorted(m for m in ('great_expectations', 'pandas', 'PIL') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_package_keeps_the_names_its_callers_use() -> None:
    from ml import validate as validation  # as emoflow/steps.py imports it

    assert validation.validate is validate and validation.ensure_valid is ensure_valid
    assert validation.InvalidDataError is InvalidDataError
    assert issubclass(InvalidDataError, ValueError)
