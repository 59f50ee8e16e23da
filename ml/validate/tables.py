"""Flatten a YOLO-layout dataset (see :mod:`ml.dataset_format`) into the five tables GX checks.

GX has no image expectations, so the dataset becomes:

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

Pillow, pandas and numpy load inside the functions.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, get_args

from ml.config import EMOTIONS
from ml.params import ImageFormat
from ml.records import DatasetRef
from ml.validate.rules import BOX_NUMBERS, TABLES

if TYPE_CHECKING:
    import pandas as pd

DECODE_FORMATS: tuple[str, ...] = (
    *(name for name in get_args(ImageFormat) if name != "MPO"),  # JPEG's opener opens MPO
    "GIF",
)
"""What Pillow may try to decode (the rest is 'not decodable'); see Image.open(formats=...).

GIF is decoded only to name it: ultralytics cannot train on it, so the format rule refuses
it (ValidateParams.image_formats cannot list it: the field's type leaves it out)."""


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
BOX_COLUMNS = ["split", "file", "line", "n_fields", *BOX_NUMBERS, "detail"]
CLASS_COLUMNS = ["split", "file", "class_id", "detail", "boxes", "images", "share",
                 "share_change", "note"]  # fmt: skip


def build_tables(root: Path, workers: int = 1, previous: DatasetRef | None = None) -> Tables:
    """Flatten a YOLO-layout folder into the five tables (and counts); see the module doc."""
    import pandas as pd

    # ml.dataset_format imports numpy at module level: imported here, not at the top, so
    # that `import ml.validate` stays light.
    from ml.dataset_format import IMAGE_SUFFIXES, LABEL_SUFFIX, SPLITS

    root = Path(root)
    image_files: list[tuple[str, str, str]] = []  # (split, rel path, stem)
    label_rows: list[tuple] = []
    label_stems: list[tuple[str, str]] = []  # (split, stem) of each label row
    label_files: list[tuple] = []
    split_rows: list[tuple] = []
    counts: dict[str, int] = {}
    for split in SPLITS:
        images = _list_files(root / split / "images", IMAGE_SUFFIXES)
        labels = _list_files(root / split / "labels", frozenset({LABEL_SUFFIX}))
        exists = (root / split / "images").is_dir()
        image_stems = {_stem(name) for name in images}
        box_count: dict[str, int] = {}
        for name in labels:
            stem = _stem(name)
            rel = f"{split}/labels/{name}"
            rows = _label_rows(root / split / "labels" / name, split, rel)
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
    from ml.dataset_format import LABEL_SUFFIX  # not at the top: see build_tables

    counts = [0] * len(EMOTIONS)
    folder = root / "train" / "labels"
    for name in _list_files(folder, frozenset({LABEL_SUFFIX})):
        for row in _label_rows(folder / name, "train", name):
            class_id = row[4]
            if row[3] == 5 and class_id in range(len(EMOTIONS)):
                counts[int(class_id)] += 1
    total = sum(counts)
    return [round(c / total, 4) if total else math.nan for c in counts]


def _list_files(folder: Path, suffixes: frozenset[str]) -> list[str]:
    """Sorted names of the files in `folder` with one of `suffixes` (none if it is missing).

    Unlike ml.dataset_format.list_images, hidden files are listed too: validation looks at
    everything that is there."""
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(
        e.name
        for e in entries
        if os.path.splitext(e.name)[1].lower() in suffixes and not e.is_dir()
    )


def _label_rows(path: Path, split: str, rel: str) -> list[tuple]:
    """One row per non-blank line (ml.dataset_format.read_label): (split, file, line, n_fields,
    class_id, cx, cy, w, h, text cut to 120 characters); one "cannot read" row on OSError."""
    from ml.dataset_format import read_label  # not at the top: see build_tables

    try:
        lines = read_label(path)
    except OSError as exc:
        nan = math.nan
        return [(split, rel, 0, 0, nan, nan, nan, nan, nan, f"cannot read: {exc}")]
    return [
        (split, rel, line.number, len(line.fields), *line.values, line.text[:120]) for line in lines
    ]


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
