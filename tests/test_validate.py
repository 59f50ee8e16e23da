"""ml.validate: tiny YOLO datasets built here with Pillow, checked by a real GX checkpoint."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
from PIL import Image

from ml.config import ValidateParams
from ml.records import DatasetRef, ValidationResult
from ml.validate import (
    MAX_LINES,
    RULES,
    Finding,
    InvalidDataError,
    _cap,
    build_tables,
    ensure_valid,
    error_total,
    report,
    validate,
)

PARAMS = ValidateParams(min_image_size=32, min_images_per_split=2)
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


def run(dataset: Path, tmp_path: Path, params: ValidateParams = PARAMS) -> ValidationResult:
    return validate(ref(dataset), params, tmp_path / "gx")


# --------------------------------------------------------------------------- flattening (no GX)


def test_tables_flatten_images_boxes_and_splits(dataset: Path) -> None:
    (dataset / "train/labels/x_000001.txt").write_text("3 0.5 0.5 0.2 0.2\n\n1 0.1 zz 0.1 0.1\n")
    tables = build_tables(dataset)

    assert len(tables.images) == 6 and tables.images["decodable"].all()
    row = tables.images.set_index("file").loc["train/images/x_000000.png"]
    assert (row["format"], row["width"], row["height"], row["channels"]) == ("PNG", 48, 48, 3)
    assert bool(row["has_label"]) and row["boxes"] == 1

    boxes = tables.boxes[tables.boxes["file"] == "train/labels/x_000001.txt"]
    assert boxes["line"].tolist() == [1, 3]  # blank line 2 skipped, numbering kept
    assert boxes["class_id"].iloc[0] == 3
    assert boxes["n_fields"].iloc[1] == 5 and boxes["cy"].isna().iloc[1]
    assert tables.splits.set_index("split")["images"].to_dict() == {
        "train": 2,
        "valid": 2,
        "test": 2,
    }
    assert tables.counts["boxes"] == 7 and tables.counts["train/boxes"] == 3


def test_truncated_png_and_text_file_are_not_decodable(dataset: Path) -> None:
    truncated_png(dataset / "train/images/x_000000.png")
    (dataset / "valid/images/x_000001.png").write_text("this is not a picture\n")
    with Image.open(dataset / "train/images/x_000000.png") as image:  # header alone is fine
        assert image.size == (64, 64)

    images = build_tables(dataset).images.set_index("file")

    for file in ("train/images/x_000000.png", "valid/images/x_000001.png"):
        assert not images.loc[file, "decodable"], file
        assert images.loc[file, "detail"]
    assert images["decodable"].sum() == 4


def test_parallel_decode_runs_in_other_processes_and_gives_the_same_rows(dataset: Path) -> None:
    truncated_png(dataset / "test/images/x_000000.png")
    serial = build_tables(dataset, workers=1).images
    parallel = build_tables(dataset, workers=2).images
    assert serial.equals(parallel)

    # The pool is only used in a single-threaded process; earlier tests in this process may
    # have left threads running, so check it in a fresh interpreter.
    code = (
        "import os; from ml import validate as v\n"
        "def _decode_chunk(paths): return [(os.getpid(),) for _ in paths]\n"
        "_decode_chunk.__module__ = 'ml.validate'; v._decode_chunk = _decode_chunk\n"
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
    assert docs_index(result).is_file()
    assert docs_index(result) == tmp_path / "gx/gx/uncommitted/data_docs/local_site/index.html"
    assert ensure_valid(result) is result


@pytest.mark.parametrize(
    ("defect", "expected"),
    [
        pytest.param(
            lambda d: (d / "train/labels/x_000001.txt").write_text(
                "1 0.5 0.5 0.5 0.5\n9 0.5 0.5 0.5 0.5\n"
            ),
            "train/labels/x_000001.txt:2: class_id must be in 0..7, found 9",
            id="class-9",
        ),
        pytest.param(
            lambda d: (d / "valid/labels/x_000000.txt").write_text("2 1.3 0.5 0.5 0.5\n"),
            "valid/labels/x_000000.txt:1: cx must be in [0, 1], found 1.3",
            id="box-1.3",
        ),
        pytest.param(
            lambda d: (d / "test/labels/x_000001.txt").write_text("2 0.5 0.5 0.5\n"),
            "test/labels/x_000001.txt:1: label line must have 5 fields (class cx cy w h), "
            "found 4: '2 0.5 0.5 0.5'",
            id="four-numbers",
        ),
        pytest.param(
            lambda d: (d / "train/labels/x_000000.txt").write_text("0 0.5 abc 0.5 0.5\n"),
            "train/labels/x_000000.txt:1: cy must be a number, found '0 0.5 abc 0.5 0.5'",
            id="not-a-number",
        ),
        pytest.param(
            lambda d: Image.new("RGB", (20, 40), "red").save(d / "valid/images/x_000001.png"),
            "valid/images/x_000001.png: width must be at least 32 px, found 20",
            id="too-small",
        ),
        pytest.param(
            lambda d: (d / "test/images/x_000000.png").unlink(),
            "test: split must have at least 2 images, found 1",
            id="split-too-small",
        ),
    ],
)
def test_bad_data_is_an_error_naming_file_rule_and_value(
    dataset: Path, tmp_path: Path, defect, expected: str
) -> None:
    defect(dataset)
    result = run(dataset, tmp_path)

    assert not result.ok
    assert result.errors == [expected]
    assert docs_index(result).is_file()


@pytest.mark.parametrize(
    ("make_bad", "detail"),
    [
        pytest.param(
            lambda p: p.write_text("hello, I am text\n"), "cannot identify", id="text-as-png"
        ),
        pytest.param(truncated_png, "truncated", id="truncated-png"),
    ],
)
def test_undecodable_image_is_an_error(dataset: Path, tmp_path: Path, make_bad, detail) -> None:
    make_bad(dataset / "train/images/x_000001.png")
    result = run(dataset, tmp_path)

    assert not result.ok
    assert len(result.errors) == 1, result.errors
    assert result.errors[0].startswith("train/images/x_000001.png: image cannot be decoded (")
    assert detail in result.errors[0]


def test_image_without_label_is_a_warning_not_an_error(dataset: Path, tmp_path: Path) -> None:
    (dataset / "valid/labels/x_000000.txt").unlink()
    (dataset / "test/labels/x_000000.txt").write_text("")  # empty label file: background too
    result = run(dataset, tmp_path)

    assert result.ok, result.errors
    assert result.warnings == ["valid/images/x_000000.png: no label file (background image)"]
    assert result.counts["valid/background"] == 1 and result.counts["test/background"] == 1
    assert result.counts["background"] == 2 and result.counts["valid/labels"] == 1


def test_ensure_valid_raises_with_docs_url(dataset: Path, tmp_path: Path) -> None:
    (dataset / "train/labels/x_000000.txt").write_text("9 0.5 0.5 0.5 0.5\n")
    result = run(dataset, tmp_path)

    with pytest.raises(InvalidDataError) as caught:
        ensure_valid(result)
    message = str(caught.value)
    first, *rest = message.splitlines()
    assert first == f"r1: 1 data errors (first ones listed), see {result.docs_url}"
    assert rest == ["train/labels/x_000000.txt:1: class_id must be in 0..7, found 9"]
    assert isinstance(caught.value, ValueError) and caught.value.result is result
    again = pickle.loads(pickle.dumps(caught.value))
    assert str(again) == message and again.result == result


def test_validate_twice_in_the_same_gx_dir(dataset: Path, tmp_path: Path) -> None:
    strict = PARAMS.model_copy(update={"min_image_size": 64})
    first = run(dataset, tmp_path)
    # Same folder, stricter params: the stored suite is updated, nothing "already exists".
    second = validate(ref(dataset, "r2"), strict, tmp_path / "gx")
    third = run(dataset, tmp_path)

    assert first.ok and third.ok
    assert not second.ok and second.revision == "r2"
    assert len(second.errors) == 12  # 6 images, width and height each
    assert "train/images/x_000000.png: width must be at least 64 px, found 48" in second.errors
    assert first.docs_url == second.docs_url == third.docs_url
    assert docs_index(third).is_file()
    results = tmp_path / "gx/gx/uncommitted/validations"
    assert len(list(results.rglob("*.json"))) == 9  # three runs of three suites


def test_many_errors_are_listed_in_file_order_and_capped(tmp_path: Path) -> None:
    dataset = make_dataset(tmp_path / "data", per_split=60)
    for label in dataset.glob("*/labels/*.txt"):
        label.write_text("9 0.5 0.5 1.2 0.5\n")  # two errors per file, 180 files
    result = run(dataset, tmp_path)

    assert not result.ok
    assert len(result.errors) == MAX_LINES + 1
    assert result.errors[-1] == f"... and {2 * 180 - MAX_LINES} more"
    assert result.errors[:3] == [
        "train/labels/x_000000.txt:1: class_id must be in 0..7, found 9",
        "train/labels/x_000000.txt:1: w must be in [0, 1], found 1.2",
        "train/labels/x_000001.txt:1: class_id must be in 0..7, found 9",
    ]
    assert error_total(result.errors) == 360
    assert str(InvalidDataError(result)).startswith("r1: 360 data errors")


def test_missing_dataset_folder_is_not_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere: dataset folder of r1 not found"):
        validate(ref(tmp_path / "nowhere"), PARAMS, tmp_path / "gx")
    assert not (tmp_path / "gx").exists()


def test_empty_splits_are_errors(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    result = run(tmp_path / "data", tmp_path)

    assert result.errors == [
        f"{split}: split must have at least 2 images, found 0" for split in SPLITS
    ]
    assert result.counts["images"] == 0 and result.counts["boxes"] == 0


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
