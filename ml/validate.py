"""Validate a YOLO-layout dataset with Great Expectations before anything trains on it.

GX has no image expectations, so the dataset is first flattened into three tables:

- ``images``: one row per image file (split, file, decodable, format, width, height, channels,
  has_label, boxes, detail = the decode error);
- ``boxes``: one row per non-blank label line (split, file, line, n_fields, class_id, cx, cy,
  w, h, detail = the line's text); numbers that do not parse are NaN, ``n_fields`` is kept;
- ``splits``: one row per split (split, file = the split folder, images).

Each rule in :data:`RULES` is one GX expectation on one table; adding a check (duplicates,
leakage, class balance, box inside image) is one more entry there. One checkpoint runs a
suite per table and rebuilds the Data Docs; the failing rows are read back from GX's own
results (``partial_unexpected_index_list``, see RESULT_FORMAT) and turned into lines that
name the file, the line, the rule and the value found.

A GX checkpoint hands the same batch parameters to every validation definition, so the three
tables travel as one long frame with a ``table`` column; every expectation carries the row
condition ``table == <its table>``.

Nothing heavy is imported at module import: Pillow, pandas and GX load inside the functions.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ml.config import EMOTIONS, ValidateParams
from ml.records import DatasetRef, ValidationResult

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "valid", "test")
IMAGE_SUFFIXES = frozenset({".bmp", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp"})
IMAGE_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")  # JPEG also opens MPO
"""What Pillow may try to decode (the rest is 'not decodable'); see Image.open(formats=...)."""
MAX_LINES = 200
"""At most this many error (and warning) lines; a final '... and N more' tells the rest."""

DATASOURCE = "emoflow"
CHECKPOINT = "emoflow_dataset"
BATCH_DEFINITION = "whole_table"
INDEX_COLUMNS = ["row", "file", "line", "detail"]
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

Table = Literal["splits", "images", "boxes"]
TABLES: tuple[Table, ...] = ("splits", "images", "boxes")  # also the order of reported lines
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

    ``message`` is a ``str.format`` template with ``where`` (file, or file:line for labels),
    ``value`` (the value GX found), ``detail`` (decode error or the label line's text) and
    ``params`` (the ValidateParams).
    """

    name: str
    table: Table
    expectation: str  # class name in great_expectations.expectations
    kwargs: Callable[[ValidateParams], dict[str, Any]]
    message: str
    severity: Severity = "error"
    when: tuple[tuple[str, Any], ...] = ()  # extra (column, value) equalities, ANDed to the table


_NUMBERS = ("class_id", "cx", "cy", "w", "h")

RULES: tuple[Rule, ...] = (
    Rule(
        "image_decodable", "images", "ExpectColumnValuesToBeInSet",
        lambda p: {"column": "decodable", "value_set": [True]},
        "{where}: image cannot be decoded ({detail})",
    ),
    Rule(
        "image_min_width", "images", "ExpectColumnValuesToBeBetween",
        lambda p: {"column": "width", "min_value": p.min_image_size},
        "{where}: width must be at least {params.min_image_size} px, found {value}",
    ),
    Rule(
        "image_min_height", "images", "ExpectColumnValuesToBeBetween",
        lambda p: {"column": "height", "min_value": p.min_image_size},
        "{where}: height must be at least {params.min_image_size} px, found {value}",
    ),
    Rule(
        "image_has_label", "images", "ExpectColumnValuesToBeInSet",
        lambda p: {"column": "has_label", "value_set": [True]},
        "{where}: no label file (background image)",
        severity="warning",
    ),
    Rule(
        "label_fields", "boxes", "ExpectColumnValuesToBeInSet",
        lambda p: {"column": "n_fields", "value_set": [5]},
        "{where}: label line must have 5 fields (class cx cy w h), found {value}: '{detail}'",
    ),
    *(
        Rule(
            f"label_{column}_number", "boxes", "ExpectColumnValuesToNotBeNull",
            lambda p, column=column: {"column": column},
            f"{{where}}: {column} must be a number, found '{{detail}}'",
            when=(("n_fields", 5),),
        )
        for column in _NUMBERS
    ),
    Rule(
        "class_id_range", "boxes", "ExpectColumnValuesToBeInSet",
        lambda p: {"column": "class_id", "value_set": list(range(len(EMOTIONS)))},
        f"{{where}}: class_id must be in 0..{len(EMOTIONS) - 1}, found {{value}}",
    ),
    *(
        Rule(
            f"box_{column}_range", "boxes", "ExpectColumnValuesToBeBetween",
            lambda p, column=column: {"column": column, "min_value": 0, "max_value": 1},
            f"{{where}}: {column} must be in [0, 1], found {{value}}",
        )
        for column in ("cx", "cy", "w", "h")
    ),
    Rule(
        "split_min_images", "splits", "ExpectColumnValuesToBeBetween",
        lambda p: {"column": "images", "min_value": p.min_images_per_split},
        "{where}: split must have at least {params.min_images_per_split} images, found {value}",
    ),
)  # fmt: skip


# --------------------------------------------------------------------------- the step


def validate(
    dataset: DatasetRef,
    params: ValidateParams,
    gx_dir: Path,
    *,
    rules: Sequence[Rule] = RULES,
    workers: int = 1,
) -> ValidationResult:
    """Flatten `dataset` into tables, run the GX checkpoint in `gx_dir`, build Data Docs.

    `gx_dir` is the GX project folder (the context lives in ``gx_dir/gx``; created if
    missing). `workers` > 1 decodes images in that many forked processes (see decode_images).
    Bad data does not raise: the result lists it (see `ensure_valid`). A missing dataset
    folder raises FileNotFoundError.
    """
    started = time.perf_counter()
    root = Path(dataset.path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: dataset folder of {dataset.revision} not found")
    tables = build_tables(root, workers=workers)
    scanned = time.perf_counter()
    findings, docs_url = run_checkpoint(tables, params, Path(gx_dir), dataset, rules)
    checked = time.perf_counter()
    log.info(
        "validated %s: %d images, %d label lines; scan %.2fs, GX %.2fs",
        dataset.revision, len(tables.images), len(tables.boxes),
        scanned - started, checked - scanned,
    )  # fmt: skip
    errors = report([f for f in findings if f.rule.severity == "error"])
    warnings = report([f for f in findings if f.rule.severity == "warning"])
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
    """The first `limit` lines of all findings in table order, then '... and N more'."""
    rows = sorted(row for finding in findings for row in finding.rows)
    return _cap([line for _, line in rows], sum(f.count for f in findings), limit)


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
    images: pd.DataFrame
    boxes: pd.DataFrame
    splits: pd.DataFrame
    counts: dict[str, int] = field(default_factory=dict)

    def long(self) -> pd.DataFrame:
        """The three tables as one frame with a ``table`` column (what the checkpoint gets)."""
        import pandas as pd

        parts = [getattr(self, name).assign(table=name) for name in TABLES]
        frame = pd.concat(parts, ignore_index=True, sort=False)
        frame.insert(0, "row", range(len(frame)))  # reports list failures in this order
        return frame


IMAGE_COLUMNS = ["split", "file", "decodable", "format", "width", "height", "channels",
                 "has_label", "boxes", "detail"]  # fmt: skip
BOX_COLUMNS = ["split", "file", "line", "n_fields", *_NUMBERS, "detail"]
SPLIT_COLUMNS = ["split", "file", "images"]


def build_tables(root: Path, workers: int = 1) -> Tables:
    """Flatten a YOLO-layout folder into the images, boxes and splits tables (and counts)."""
    import pandas as pd

    image_paths: list[tuple[str, Path]] = []  # (split, path)
    label_rows: list[tuple] = []
    labelled: dict[str, set[str]] = {}  # split -> stems that have a label file
    box_count: dict[str, dict[str, int]] = {}  # split -> stem -> label lines
    counts: dict[str, int] = {}
    for split in SPLITS:
        images = _list_files(root / split / "images", IMAGE_SUFFIXES)
        labels = _list_files(root / split / "labels", frozenset({".txt"}))
        image_paths += [(split, p) for p in images]
        labelled[split] = {p.stem for p in labels}
        box_count[split] = {}
        for label in labels:
            rows = _read_label(label, split, label.relative_to(root).as_posix())
            box_count[split][label.stem] = len(rows)
            label_rows += rows
        counts[f"{split}/images"] = len(images)
        counts[f"{split}/labels"] = len(labels)
        counts[f"{split}/boxes"] = sum(box_count[split].values())
        counts[f"{split}/background"] = sum(1 for p in images if not box_count[split].get(p.stem))

    decoded = decode_images([str(p) for _, p in image_paths], workers=workers)
    image_rows = [
        (split, path.relative_to(root).as_posix(), *info, path.stem in labelled[split],
         box_count[split].get(path.stem, 0), error)
        for (split, path), (*info, error) in zip(image_paths, decoded, strict=True)
    ]  # fmt: skip
    for kind in ("images", "labels", "boxes", "background"):
        counts[kind] = sum(counts[f"{split}/{kind}"] for split in SPLITS)

    images = pd.DataFrame(image_rows, columns=IMAGE_COLUMNS)
    boxes = pd.DataFrame(label_rows, columns=BOX_COLUMNS)
    splits = pd.DataFrame(
        [(split, split, counts[f"{split}/images"]) for split in SPLITS], columns=SPLIT_COLUMNS
    )
    return Tables(images=images, boxes=boxes, splits=splits, counts=counts)


def _list_files(folder: Path, suffixes: frozenset[str]) -> list[Path]:
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(
        Path(e.path)
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
    """(decodable, format, width, height, channels, error) per path, in order.

    Every image is fully decoded (``load()``), so a truncated file counts as not decodable.
    About 0.3 ms of CPU per 96x96 PNG. ``workers`` > 1 splits the work over forked
    processes: the same total CPU, so it only pays where cores are idle (on a busy 2-core
    machine 2 workers were no faster than 1, hence the default). The pool is only used while
    this process runs a single thread: forking a threaded process can deadlock, and
    spawn/forkserver children would first re-import the caller's ``__main__``.
    """
    import threading

    if workers <= 1 or len(paths) < 2 or threading.active_count() > 1:
        return _decode_chunk(paths)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    size = max(64, math.ceil(len(paths) / (workers * 8)))
    chunks = [paths[i : i + size] for i in range(0, len(paths), size)]
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        return [row for chunk in pool.map(_decode_chunk, chunks) for row in chunk]


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
                try:
                    with Image.open(path, formats=IMAGE_FORMATS) as image:
                        image.load()
                        rows.append(
                            (True, image.format, image.width, image.height,
                             len(image.getbands()), "")
                        )  # fmt: skip
                except Exception as exc:  # noqa: BLE001 - any failure means "not decodable"
                    message = " ".join(str(exc).replace(path, "<file>").split())
                    rows.append((False, None, None, None, None,
                                 f"{type(exc).__name__}: {message}"[:200]))  # fmt: skip
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

    by_name = {rule.name: rule for rule in rules}
    if len(by_name) != len(rules):
        raise ValueError("validation rules must have unique names")
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
    return findings, _docs_url(context)


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
        line = f"rule {rule.name} could not be checked: {reason or details or 'no details'}"
        return Finding(rule, 1, ((-1, line),))
    column = (outcome.expectation_config.kwargs or {}).get("column")
    lines = []
    for row in rows:
        where = str(row.get("file"))
        if _present(row.get("line")):
            where += f":{int(row['line'])}"
        text = rule.message.format(
            where=where, value=_show(row.get(column)), detail=row.get("detail") or "", params=params
        )
        lines.append((int(row["row"]), text))
    return Finding(rule, max(int(details.get("unexpected_count") or 0), len(lines)), tuple(lines))


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
