"""Validate a YOLO-layout dataset with Great Expectations before anything trains on it.

GX has no image expectations, so the dataset is first flattened into five tables:

- ``splits``: one row per split (split, file = the split name, exists, images);
- ``images``: one row per image file (split, file, decodable, format, mode, width, height,
  channels, has_label, boxes, sha1 of the file's bytes, duplicate_of = an earlier file of the
  same split with the same bytes, leaked_from = a file of an earlier split with the same bytes,
  detail = the decode error, note = the two splits of a leak);
- ``labels``: one row per label file (split, file, has_image, lines);
- ``boxes``: one row per non-blank label line (split, file, line, n_fields, class_id, cx, cy,
  w, h, overhang = how far the box passes the image border, w_px/h_px = box size in pixels of
  its image, detail = the line's text); numbers that do not parse are NaN, ``n_fields`` is
  kept; derived columns are NaN where their inputs are invalid (other rules report those);
- ``classes``: one row per emotion for the train split (file = "train", class_id, detail = the
  emotion, boxes, images, share of the train boxes, share_change against the previous
  revision, note = both shares in words).

Each rule in :data:`RULES` is one GX expectation on one table; adding a check is one more
entry there. One checkpoint runs a suite per table and rebuilds the Data Docs; the failing
rows are read back from GX's own results (``partial_unexpected_index_list``, see
RESULT_FORMAT) and turned into lines ``<file>[:<line>]: <rule>: <what was expected and found>``.

A GX checkpoint hands the same batch parameters to every validation definition, so the
tables travel as one long frame with a ``table`` column; every expectation carries the row
condition ``table == <its table>``.

Nothing heavy is imported at module import: Pillow, pandas and GX load inside the functions.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from ml.config import EMOTIONS, ImageFormat, ValidateParams
from ml.records import DatasetRef, ValidationResult

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "valid", "test")
IMAGE_SUFFIXES = frozenset({".bmp", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp"})
DECODE_FORMATS: tuple[str, ...] = (
    *(name for name in get_args(ImageFormat) if name != "MPO"),  # JPEG's opener opens MPO
    "GIF",
)
"""What Pillow may try to decode (the rest is 'not decodable'); see Image.open(formats=...).

GIF is decoded only to name it: ultralytics cannot train on it, so the format rule refuses
it (ValidateParams.image_formats cannot list it: the field's type leaves it out)."""
MAX_LINES = 200
"""At most this many error (and warning) lines; a final '... and N more' tells the rest."""

DATASOURCE = "emoflow"
CHECKPOINT = "emoflow_dataset"
BATCH_DEFINITION = "whole_table"
INDEX_COLUMNS = ["row", "file", "line", "detail", "note"]
RESULT_FORMAT: dict[str, Any] = {
    # SUMMARY, not COMPLETE: GX still finds every failing row and counts them, but keeps only
    # the first `partial_unexpected_count` in the stored result (``partial_unexpected_index_list``).
    # That is all a capped report can show; COMPLETE stored every row (1.1 MB per 3,000 bad
    # labels per run) and cost ~50% more time. Each rule's first MAX_LINES rows are enough to
    # list the first MAX_LINES failing rows of all rules together, in table order.
    "result_format": "SUMMARY",
    "unexpected_index_column_names": INDEX_COLUMNS,
    "partial_unexpected_count": MAX_LINES,
    "return_unexpected_index_query": False,  # a pandas query string that lists every index
}

Table = Literal["splits", "images", "labels", "boxes", "classes"]
TABLES: tuple[Table, ...] = ("splits", "images", "labels", "boxes", "classes")
"""Also the order of the reported lines (and, inside a table, file order)."""
Severity = Literal["error", "warning"]


class InvalidDataError(ValueError):
    """The dataset failed validation; the message lists the first errors and the Data Docs URL."""

    def __init__(self, result: ValidationResult):
        self.result = result
        head = (
            f"{result.revision}: {error_total(result.errors)} data errors "
            f"(first ones listed), see {result.docs_url}"
        )
        super().__init__("\n".join([head, *result.errors]))

    def __reduce__(self):  # picklable (Airflow may carry the exception across processes)
        return (type(self), (self.result,))


@dataclass(frozen=True)
class Rule:
    """One check: a GX expectation on one table, and how to word a failing row.

    ``message`` is a ``str.format`` template (or a function of the ValidateParams that returns
    one) with ``value`` (the value GX found, as text), ``raw`` (the same value, unformatted:
    ``{raw:.1%}``), ``detail`` and ``note`` (the row's text columns) and ``params``. The
    reported line is ``<file>[:<line>]: <name>: <message>``. ``enabled`` says whether the
    rule runs at all under the given params (default: always).
    """

    name: str
    table: Table
    expectation: str  # class name in great_expectations.expectations
    kwargs: Callable[[ValidateParams], dict[str, Any]]
    message: str | Callable[[ValidateParams], str]
    severity: Severity = "error"
    when: tuple[tuple[str, Any], ...] = ()  # extra (column, value) equalities, ANDed to the table
    enabled: Callable[[ValidateParams], bool] | None = None

    def template(self, params: ValidateParams) -> str:
        return self.message(params) if callable(self.message) else self.message


_NUMBERS = ("class_id", "cx", "cy", "w", "h")

RULES: tuple[Rule, ...] = (
    # ------------------------------------------------------------------ splits
    Rule(
        "split_exists", "splits", "ExpectColumnValuesToBeInSet",
        lambda p: {"column": "exists", "value_set": [True]},
        "split folder missing: expected {where}/images and {where}/labels",
    ),
    Rule(
        "split_min_images", "splits", "ExpectColumnValuesToBeBetween",
        lambda p: {"column": "images", "min_value": p.min_images_per_split},
        "split must have at least {params.min_images_per_split} images, found {value}",
    ),
    # ------------------------------------------------------------------ images
    Rule(
        "image_decodable", "images", "ExpectColumnValuesToBeInSet",
        lambda p: {"column": "decodable", "value_set": [True]},
        "image cannot be decoded ({detail})",
    ),
    Rule(
        "image_format", "images", "ExpectColumnValuesToBeInSet",
        lambda p: {"column": "format", "value_set": list(p.image_formats)},
        lambda p: f"format must be one of {', '.join(p.image_formats)}, found {{value}}",
    ),
    Rule(
        "image_channels", "images", "ExpectColumnValuesToBeInSet",
        lambda p: {"column": "mode", "value_set": list(p.image_modes)},
        lambda p: f"colour mode must be one of {', '.join(p.image_modes)}, found {{value}}",
    ),
    Rule(
        "image_min_width", "images", "ExpectColumnValuesToBeBetween",
        lambda p: {"column": "width", "min_value": p.min_image_size},
        "width must be at least {params.min_image_size} px, found {value}",
    ),
    Rule(
        "image_min_height", "images", "ExpectColumnValuesToBeBetween",
        lambda p: {"column": "height", "min_value": p.min_image_size},
        "height must be at least {params.min_image_size} px, found {value}",
    ),
    Rule(
        "image_has_label", "images", "ExpectColumnValuesToBeInSet",
        lambda p: {"column": "has_label", "value_set": [True]},
        "no label file (background image)",
        severity="warning",
    ),
    Rule(
        "image_duplicate", "images", "ExpectColumnValuesToBeNull",
        lambda p: {"column": "duplicate_of"},
        "same bytes as {value} (exact duplicate inside the split)",
        severity="warning",
    ),
    Rule(
        "image_leakage", "images", "ExpectColumnValuesToBeNull",
        lambda p: {"column": "leaked_from"},
        "same bytes as {value}: the image is in two splits ({note})",
    ),
    # ------------------------------------------------------------------ label files
    Rule(
        "label_has_image", "labels", "ExpectColumnValuesToBeInSet",
        lambda p: {"column": "has_image", "value_set": [True]},
        "label file without an image (orphan label: no {note}.* in {detail})",
    ),
    # ------------------------------------------------------------------ label lines (boxes)
    Rule(
        "label_fields", "boxes", "ExpectColumnValuesToBeInSet",
        lambda p: {"column": "n_fields", "value_set": [5]},
        "label line must have 5 fields (class cx cy w h), found {value}: '{detail}'",
    ),
    *(
        Rule(
            f"label_{column}_number", "boxes", "ExpectColumnValuesToNotBeNull",
            lambda p, column=column: {"column": column},
            f"{column} must be a number, found '{{detail}}'",
            when=(("n_fields", 5),),
        )
        for column in _NUMBERS
    ),
    Rule(
        "class_id_range", "boxes", "ExpectColumnValuesToBeInSet",
        lambda p: {"column": "class_id", "value_set": list(range(len(EMOTIONS)))},
        f"class_id must be in 0..{len(EMOTIONS) - 1}, found {{value}}",
    ),
    *(
        Rule(
            f"box_{column}_range", "boxes", "ExpectColumnValuesToBeBetween",
            lambda p, column=column: {"column": column, "min_value": 0, "max_value": 1},
            f"{column} must be in [0, 1], found {{value}}",
        )
        for column in ("cx", "cy", "w", "h")
    ),
    Rule(
        "box_inside_image", "boxes", "ExpectColumnValuesToBeBetween",
        lambda p: {"column": "overhang", "max_value": p.box_tolerance},
        "box passes the image border by {value} (cx +- w/2 and cy +- h/2 must lie in [0, 1], "
        "tolerance {params.box_tolerance:g}): '{detail}'",
    ),
    Rule(
        "box_min_width", "boxes", "ExpectColumnValuesToBeBetween",
        lambda p: {"column": "w_px", "min_value": p.min_box_px},
        "box width must be at least {params.min_box_px:g} px, found {value} px ({note})",
    ),
    Rule(
        "box_min_height", "boxes", "ExpectColumnValuesToBeBetween",
        lambda p: {"column": "h_px", "min_value": p.min_box_px},
        "box height must be at least {params.min_box_px:g} px, found {value} px ({note})",
    ),
    # ------------------------------------------------------------------ classes (train split)
    Rule(
        "class_present", "classes", "ExpectColumnValuesToBeBetween",
        lambda p: {"column": "images", "min_value": 1},
        "class {detail} has no image in train (require_all_classes is on)",
        enabled=lambda p: p.require_all_classes,
    ),
    Rule(
        "class_min_share", "classes", "ExpectColumnValuesToBeBetween",
        lambda p: {"column": "share", "min_value": p.min_class_share},
        "class {detail} has {raw:.1%} of the train boxes, below min_class_share "
        "{params.min_class_share:.1%}",
        severity="warning",
    ),
    Rule(
        "class_max_share", "classes", "ExpectColumnValuesToBeBetween",
        lambda p: {"column": "share", "max_value": p.max_class_share},
        "class {detail} has {raw:.1%} of the train boxes, above max_class_share "
        "{params.max_class_share:.1%}",
        severity="warning",
    ),
    Rule(
        "class_mix_change", "classes", "ExpectColumnValuesToBeBetween",
        lambda p: {"column": "share_change", "min_value": -p.max_class_mix_change,
                   "max_value": p.max_class_mix_change},
        "class {detail}: {note}, a change of more than max_class_mix_change "
        "{params.max_class_mix_change:g}",
        severity="warning",
    ),
)  # fmt: skip


# --------------------------------------------------------------------------- the step


def validate(
    dataset: DatasetRef,
    params: ValidateParams,
    gx_dir: Path,
    previous: DatasetRef | None = None,
    *,
    rules: Sequence[Rule] = RULES,
    workers: int | None = None,
) -> ValidationResult:
    """Flatten `dataset` into tables, run the GX checkpoint in `gx_dir`, build Data Docs.

    `gx_dir` is the GX project folder (the context lives in ``gx_dir/gx``; created if
    missing). `previous` is the revision this one follows: its train labels give the class
    mix that `class_mix_change` compares with (only its label files are read). `workers`
    (default ``params.workers``) > 1 decodes images in that many forked processes (see
    decode_images). Bad data does not raise: the result lists it (see `ensure_valid`) and the
    log names every listed line and the Data Docs page. A missing dataset folder (or previous
    dataset folder) raises FileNotFoundError.
    """
    started = time.perf_counter()
    root = Path(dataset.path)
    for ref, what in ((dataset, "dataset"), (previous, "previous dataset")):
        if ref is not None and not Path(ref.path).is_dir():
            raise FileNotFoundError(f"{ref.path}: {what} folder of {ref.revision} not found")
    tables = build_tables(
        root, workers=params.workers if workers is None else workers, previous=previous
    )
    scanned = time.perf_counter()
    findings, docs_url = run_checkpoint(tables, params, Path(gx_dir), dataset, rules)
    checked = time.perf_counter()
    errors = report([f for f in findings if f.rule.severity == "error"])
    warnings = report([f for f in findings if f.rule.severity == "warning"])
    log.info(
        "validated %s: %d images, %d label lines; %d errors, %d warnings; "
        "scan %.2fs, GX %.2fs; Data Docs: %s",
        dataset.revision, len(tables.images), len(tables.boxes), error_total(errors),
        error_total(warnings), scanned - started, checked - scanned, docs_url,
    )  # fmt: skip
    for line in errors:
        log.error("%s: %s", dataset.revision, line)
    for line in warnings:
        log.warning("%s: %s", dataset.revision, line)
    return ValidationResult(
        ok=not errors,
        revision=dataset.revision,
        errors=errors,
        warnings=warnings,
        counts=tables.counts,
        docs_url=docs_url,
    )


def ensure_valid(result: ValidationResult) -> ValidationResult:
    """Return `result` if it is ok, else raise InvalidDataError (errors + Data Docs URL)."""
    if not result.ok:
        raise InvalidDataError(result)
    return result


@dataclass(frozen=True)
class Finding:
    """What GX reported for one failed rule: how many rows failed, and the first ones."""

    rule: Rule
    count: int
    rows: tuple[tuple[int, str], ...]  # (row in the checkpoint's frame, readable line)


def report(findings: Sequence[Finding], limit: int = MAX_LINES) -> list[str]:
    """The first `limit` lines of all findings in table order, then '... and N more'.

    Lines of the same row (one label line failing two rules) keep the findings' order.
    """
    rows = sorted((row, rank, line) for rank, f in enumerate(findings) for row, line in f.rows)
    return _cap([line for *_, line in rows], sum(f.count for f in findings), limit)


def _cap(lines: list[str], total: int | None = None, limit: int = MAX_LINES) -> list[str]:
    """At most `limit` lines, then '... and N more' if `total` (default: all lines) is larger."""
    shown = lines[:limit]
    rest = (len(lines) if total is None else max(total, len(lines))) - len(shown)
    return [*shown, f"... and {rest} more"] if rest > 0 else shown


def error_total(lines: list[str]) -> int:
    """How many lines there were before `_cap` cut them (it ends with '... and N more')."""
    tail = re.fullmatch(r"\.\.\. and (\d+) more", lines[-1]) if lines else None
    return len(lines) - 1 + int(tail.group(1)) if tail else len(lines)


# --------------------------------------------------------------------------- flattening


@dataclass
class Tables:
    splits: pd.DataFrame
    images: pd.DataFrame
    labels: pd.DataFrame
    boxes: pd.DataFrame
    classes: pd.DataFrame
    counts: dict[str, int] = field(default_factory=dict)

    def long(self) -> pd.DataFrame:
        """The tables as one frame with a ``table`` column (what the checkpoint gets)."""
        import pandas as pd

        parts = [getattr(self, name).assign(table=name) for name in TABLES]
        columns = list(dict.fromkeys(column for part in parts for column in part.columns))
        filled = [part for part in parts if len(part)] or parts[:1]  # empty ones: no dtype votes
        frame = pd.concat(filled, ignore_index=True, sort=False).reindex(columns=columns)
        frame.insert(0, "row", range(len(frame)))  # reports list failures in this order
        return frame


SPLIT_COLUMNS = ["split", "file", "exists", "images"]
IMAGE_COLUMNS = ["split", "file", "decodable", "format", "mode", "width", "height", "channels",
                 "has_label", "boxes", "sha1", "duplicate_of", "leaked_from", "detail", "note"]  # fmt: skip
LABEL_COLUMNS = ["split", "file", "has_image", "lines", "detail", "note"]
BOX_COLUMNS = ["split", "file", "line", "n_fields", *_NUMBERS, "detail"]
CLASS_COLUMNS = ["split", "file", "class_id", "detail", "boxes", "images", "share",
                 "share_change", "note"]  # fmt: skip


def build_tables(root: Path, workers: int = 1, previous: DatasetRef | None = None) -> Tables:
    """Flatten a YOLO-layout folder into the five tables (and counts); see the module doc."""
    import pandas as pd

    root = Path(root)
    image_files: list[tuple[str, str, str]] = []  # (split, rel path, stem)
    label_rows: list[tuple] = []
    label_stems: list[tuple[str, str]] = []  # (split, stem) of each label row
    label_files: list[tuple] = []
    split_rows: list[tuple] = []
    counts: dict[str, int] = {}
    for split in SPLITS:
        images = _list_files(root / split / "images", IMAGE_SUFFIXES)
        labels = _list_files(root / split / "labels", frozenset({".txt"}))
        exists = (root / split / "images").is_dir()
        image_stems = {_stem(name) for name in images}
        box_count: dict[str, int] = {}
        for name in labels:
            stem = _stem(name)
            rel = f"{split}/labels/{name}"
            rows = _read_label(root / split / "labels" / name, split, rel)
            box_count[stem] = len(rows)
            label_rows += rows
            label_stems += [(split, stem)] * len(rows)
            label_files.append(
                (split, rel, stem in image_stems, len(rows), f"{split}/images", stem)
            )
        image_files += [(split, f"{split}/images/{n}", _stem(n)) for n in images]
        split_rows.append((split, split, exists, len(images) if exists else math.nan))
        counts[f"{split}/images"] = len(images)
        counts[f"{split}/labels"] = len(labels)
        counts[f"{split}/boxes"] = sum(box_count.values())
        counts[f"{split}/background"] = sum(1 for n in images if not box_count.get(_stem(n)))
        counts[f"{split}/orphan_labels"] = sum(1 for n in labels if _stem(n) not in image_stems)

    decoded = decode_images([str(root / rel) for _, rel, _ in image_files], workers=workers)
    lines_per_label = {(split, stem): lines for split, _, _, lines, _, stem in label_files}
    image_rows = []
    sizes: dict[tuple[str, str], tuple[int, int]] = {}
    first_in_split: dict[tuple[str, str], str] = {}
    first_anywhere: dict[str, tuple[str, str]] = {}
    for (split, rel, stem), (ok, fmt, mode, width, height, channels, sha1, error) in zip(
        image_files, decoded, strict=True
    ):
        duplicate_of = leaked_from = note = None
        if ok:
            sizes.setdefault((split, stem), (width, height))
            first = first_in_split.setdefault((split, sha1), rel)
            duplicate_of = first if first != rel else None
            first_split, first_rel = first_anywhere.setdefault(sha1, (split, rel))
            if first_split != split:
                leaked_from, note = first_rel, f"{first_split} and {split}"
        image_rows.append(
            (split, rel, ok, fmt, mode, width, height, channels,
             (split, stem) in lines_per_label, lines_per_label.get((split, stem), 0), sha1,
             duplicate_of, leaked_from, error, note)
        )  # fmt: skip
    counts["duplicates"] = sum(1 for row in image_rows if row[11] is not None)
    counts["leaked"] = sum(1 for row in image_rows if row[12] is not None)
    for kind in ("images", "labels", "boxes", "background", "orphan_labels"):
        counts[kind] = sum(counts[f"{split}/{kind}"] for split in SPLITS)

    boxes = _with_box_geometry(pd.DataFrame(label_rows, columns=BOX_COLUMNS), label_stems, sizes)
    classes = _class_table(boxes, previous)
    return Tables(
        splits=pd.DataFrame(split_rows, columns=SPLIT_COLUMNS),
        images=pd.DataFrame(image_rows, columns=IMAGE_COLUMNS),
        labels=pd.DataFrame(label_files, columns=LABEL_COLUMNS),
        boxes=boxes,
        classes=classes,
        counts=counts,
    )


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def _with_box_geometry(
    boxes: pd.DataFrame, stems: list[tuple[str, str]], sizes: dict[tuple[str, str], tuple]
) -> pd.DataFrame:
    """Add overhang (how far the box passes the border) and the box size in image pixels.

    Both are NaN where a coordinate is missing or outside [0, 1] (the range rules report
    those), and the pixel sizes also where the label's image is missing or not decodable.
    """
    import numpy as np

    cx, cy, w, h = (boxes[c].to_numpy(dtype=float) for c in ("cx", "cy", "w", "h"))
    with np.errstate(invalid="ignore"):
        in_range = np.all([(v >= 0) & (v <= 1) for v in (cx, cy, w, h)], axis=0)
        passes = np.max([np.zeros_like(cx), w / 2 - cx, cx + w / 2 - 1,
                         h / 2 - cy, cy + h / 2 - 1], axis=0)  # fmt: skip
    overhang = np.where(in_range, np.round(passes, 6), np.nan)
    size = np.array([sizes.get(key, (np.nan, np.nan)) for key in stems], dtype=float)
    size = size.reshape(len(stems), 2)
    width, height = size[:, 0], size[:, 1]
    notes = [
        None if math.isnan(x) else f"image {int(x)}x{int(y)}"
        for x, y in zip(width, height, strict=True)
    ]
    return boxes.assign(
        overhang=overhang,
        w_px=np.where(in_range, np.round(w * width, 1), np.nan),
        h_px=np.where(in_range, np.round(h * height, 1), np.nan),
        note=notes,
    )


def _class_table(boxes: pd.DataFrame, previous: DatasetRef | None) -> pd.DataFrame:
    """Per emotion: boxes, images and share of the train boxes, and the change in share."""
    import pandas as pd

    train = boxes[(boxes["split"] == "train") & (boxes["n_fields"] == 5)]
    train = train[train["class_id"].isin(range(len(EMOTIONS)))]
    per_class = train["class_id"].astype(int).value_counts().to_dict()
    images = train.groupby(train["class_id"].astype(int))["file"].nunique().to_dict()
    total = len(train)
    before = _class_shares(Path(previous.path)) if previous is not None else None
    rows = []
    for class_id, emotion in enumerate(EMOTIONS):
        share = round(per_class.get(class_id, 0) / total, 4) if total else math.nan
        change, note = math.nan, None
        if before is not None and total and not math.isnan(before[class_id]):
            change = round(share - before[class_id], 4)
            note = (
                f"{share:.1%} of the train boxes, {before[class_id]:.1%} in {previous.revision} "
                f"({change * 100:+.1f} points)"
            )
        rows.append(
            ("train", "train", class_id, emotion, per_class.get(class_id, 0),
             images.get(class_id, 0) if total else math.nan, share, change, note)
        )  # fmt: skip
    return pd.DataFrame(rows, columns=CLASS_COLUMNS)


def _class_shares(root: Path) -> list[float]:
    """Share of each class among the well-formed train boxes of a dataset (NaN: no boxes)."""
    counts = [0] * len(EMOTIONS)
    folder = root / "train" / "labels"
    for name in _list_files(folder, frozenset({".txt"})):
        for row in _read_label(folder / name, "train", name):
            class_id = row[4]
            if row[3] == 5 and class_id in range(len(EMOTIONS)):
                counts[int(class_id)] += 1
    total = sum(counts)
    return [round(c / total, 4) if total else math.nan for c in counts]


def _list_files(folder: Path, suffixes: frozenset[str]) -> list[str]:
    """Sorted names of the files in `folder` with one of `suffixes` (none if it is missing)."""
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(
        e.name
        for e in entries
        if os.path.splitext(e.name)[1].lower() in suffixes and not e.is_dir()
    )


def _read_label(path: Path, split: str, rel: str) -> list[tuple]:
    """One row per non-blank line: (split, file, line, n_fields, class_id, cx, cy, w, h, text)."""
    nan = math.nan
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return [(split, rel, 0, 0, nan, nan, nan, nan, nan, f"cannot read: {exc}")]
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        values = [nan] * 5
        if len(fields) == 5:
            for i, item in enumerate(fields):
                try:
                    values[i] = float(item)  # "nan" stays NaN (not a number), "inf" is out of range
                except ValueError:
                    pass
        rows.append((split, rel, number, len(fields), *values, line.strip()[:120]))
    return rows


def decode_images(paths: list[str], workers: int = 1) -> list[tuple]:
    """(decodable, format, mode, width, height, channels, sha1, error) per path, in order.

    Each file is read once: the SHA-1 of its bytes (for duplicates and leakage) and the
    decode both work on that one read. Every image is fully decoded (``load()``), so a
    truncated file counts as not decodable. About 0.3 ms of CPU per 96x96 PNG. ``workers``
    > 1 splits the work over forked processes: the same total CPU, so it only pays where
    cores are idle (bench/validate_speed.py: the same CPU seconds with 1 or 2 workers). The
    pool is only used while this process runs a single thread and is not a daemonic process
    (those may not have children): forking a threaded process can deadlock, and
    spawn/forkserver children would first re-import the caller's ``__main__``.
    """
    import multiprocessing
    import threading

    if (
        workers <= 1
        or len(paths) < 2
        or threading.active_count() > 1
        or multiprocessing.current_process().daemon
    ):
        return _decode_chunk(paths)
    from concurrent.futures import ProcessPoolExecutor

    size = max(64, math.ceil(len(paths) / (workers * 8)))
    chunks = [paths[i : i + size] for i in range(0, len(paths), size)]
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        return [row for chunk in pool.map(_decode_chunk, chunks) for row in chunk]


_BYTES_IO = re.compile(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>")


def _decode_chunk(paths: Iterable[str]) -> list[tuple]:
    import warnings

    from PIL import Image, ImageFile

    rows: list[tuple] = []
    load_truncated = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file must fail, whoever set this
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            for path in paths:
                sha1 = None
                try:
                    with open(path, "rb") as handle:
                        data = handle.read()
                    sha1 = hashlib.sha1(data, usedforsecurity=False).hexdigest()
                    with Image.open(io.BytesIO(data), formats=DECODE_FORMATS) as image:
                        image.load()
                        rows.append(
                            (True, image.format, image.mode, image.width, image.height,
                             len(image.getbands()), sha1, "")
                        )  # fmt: skip
                except Exception as exc:  # noqa: BLE001 - any failure means "not decodable"
                    message = _BYTES_IO.sub("<file>", str(exc).replace(path, "<file>"))
                    rows.append((False, None, None, None, None, None, sha1,
                                 f"{type(exc).__name__}: {' '.join(message.split())}"[:200]))  # fmt: skip
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = load_truncated
    return rows


# --------------------------------------------------------------------------- Great Expectations


def _gx():
    """Import GX with its usage statistics off (they must be off before the first import)."""
    os.environ["GX_ANALYTICS_ENABLED"] = "false"
    import great_expectations as gx

    return gx


def run_checkpoint(
    tables: Tables,
    params: ValidateParams,
    gx_dir: Path,
    dataset: DatasetRef,
    rules: Sequence[Rule] = RULES,
) -> tuple[list[Finding], str]:
    """Run the GX checkpoint over `tables`; return the failed rules and the Data Docs URL."""
    gx_dir.mkdir(parents=True, exist_ok=True)
    with _locked(gx_dir / ".emoflow-validate.lock"):
        return _run_checkpoint(tables, params, gx_dir, dataset, rules)


@contextlib.contextmanager
def _locked(path: Path):
    """One validation at a time per GX folder: its stores are plain files rewritten each run."""
    import fcntl

    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run_checkpoint(
    tables: Tables,
    params: ValidateParams,
    gx_dir: Path,
    dataset: DatasetRef,
    rules: Sequence[Rule],
) -> tuple[list[Finding], str]:
    gx = _gx()
    from great_expectations.checkpoint import UpdateDataDocsAction
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="file", project_root_dir=gx_dir)
    context.variables.progress_bars = ProgressBarsConfig(globally=False)  # this run only

    try:
        datasource = context.data_sources.get(DATASOURCE)
    except KeyError:
        datasource = context.data_sources.add_pandas(DATASOURCE)

    if len({rule.name for rule in rules}) != len(rules):
        raise ValueError("validation rules must have unique names")
    rules = [rule for rule in rules if rule.enabled is None or rule.enabled(params)]
    by_name = {rule.name: rule for rule in rules}
    definitions = []
    for table in TABLES:
        table_rules = [rule for rule in rules if rule.table == table]
        if not table_rules:
            continue
        try:
            asset = datasource.get_asset(table)
        except LookupError:
            asset = datasource.add_dataframe_asset(name=table)
        try:
            batch_definition = asset.get_batch_definition(BATCH_DEFINITION)
        except KeyError:
            batch_definition = asset.add_batch_definition_whole_dataframe(BATCH_DEFINITION)
        suite = context.suites.add_or_update(
            gx.ExpectationSuite(
                name=f"emoflow_{table}",
                expectations=[_expectation(rule, params) for rule in table_rules],
            )
        )
        definitions.append(
            context.validation_definitions.add_or_update(
                gx.ValidationDefinition(name=f"emoflow_{table}", data=batch_definition, suite=suite)
            )
        )
    checkpoint = context.checkpoints.add_or_update(
        gx.Checkpoint(
            name=CHECKPOINT,
            validation_definitions=definitions,
            actions=[UpdateDataDocsAction(name="update_data_docs")],
            result_format=RESULT_FORMAT,
        )
    )
    run_id = RunIdentifier(run_name=f"{dataset.revision}-{dataset.digest[:12]}")
    result = checkpoint.run(batch_parameters={"dataframe": tables.long()}, run_id=run_id)

    findings: list[Finding] = []
    for suite_result in result.run_results.values():
        for outcome in suite_result.results:
            if outcome.success:
                continue
            rule = by_name.get((outcome.expectation_config.meta or {}).get("rule", ""))
            if rule is None:  # cannot happen: the suites are rewritten from `rules` each run
                continue
            findings.append(_finding(rule, outcome, params))
    order = {rule.name: rank for rank, rule in enumerate(rules)}
    return sorted(findings, key=lambda f: order[f.rule.name]), _docs_url(context)


def _expectation(rule: Rule, params: ValidateParams):
    import great_expectations.expectations as gxe
    from great_expectations.expectations.row_conditions import Column

    condition = Column("table") == rule.table
    for column, value in rule.when:
        condition = condition & (Column(column) == value)
    kind = getattr(gxe, rule.expectation)
    return kind(
        **rule.kwargs(params),
        row_condition=condition,
        severity=rule.severity if rule.severity == "warning" else "critical",
        meta={"rule": rule.name},
    )


def _finding(rule: Rule, outcome, params: ValidateParams) -> Finding:
    """Readable lines for the rows GX reported as unexpected (its own index list)."""
    details = outcome.result or {}
    rows = details.get("unexpected_index_list") or details.get("partial_unexpected_index_list")
    if not rows:  # the expectation itself failed to run (exception_info), or gave no rows
        info = outcome.exception_info or {}
        reason = info.get("exception_message") if isinstance(info, dict) else None
        line = f"{rule.name}: rule could not be checked: {reason or details or 'no details'}"
        return Finding(rule, 1, ((-1, line),))
    column = (outcome.expectation_config.kwargs or {}).get("column")
    template = rule.template(params)
    lines = []
    for row in rows:
        where = str(row.get("file"))
        if _present(row.get("line")):
            where += f":{int(row['line'])}"
        raw = row.get(column)
        text = template.format(
            where=where, value=_show(raw), raw=raw, detail=_text(row.get("detail")),
            note=_text(row.get("note")), params=params,
        )  # fmt: skip
        lines.append((int(row["row"]), f"{where}: {rule.name}: {text}"))
    return Finding(rule, max(int(details.get("unexpected_count") or 0), len(lines)), tuple(lines))


def _text(value: Any) -> str:
    return str(value) if _present(value) else ""


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _show(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _docs_url(context) -> str:
    for site in context.get_docs_sites_urls(only_if_exists=False):
        url = site.get("site_url")
        if url:
            return url
    index = Path(context.root_directory) / "uncommitted" / "data_docs" / "local_site" / "index.html"
    return index.resolve().as_uri()
