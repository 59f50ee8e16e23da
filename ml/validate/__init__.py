"""Validate a YOLO-layout dataset with Great Expectations before anything trains on it.

GX has no image expectations, so the dataset is first flattened into five tables: splits,
images, labels (one row per label file), boxes (one row per label line) and classes (the
train split's class mix); their columns are described in :mod:`ml.validate.tables`.

Each rule in :data:`ml.validate.rules.RULES` is one GX expectation on one table; adding a
check is one more entry there. One checkpoint (:mod:`ml.validate.checkpoint`) runs a suite
per table and rebuilds the Data Docs; the failing rows are read back from GX's own results
(``partial_unexpected_index_list``, see RESULT_FORMAT) and turned into lines
``<file>[:<line>]: <rule>: <what was expected and found>``; :func:`report` merges them in
table order and caps them at MAX_LINES.

A GX checkpoint hands the same batch parameters to every validation definition, so the
tables travel as one long frame with a ``table`` column; every expectation carries the row
condition ``table == <its table>``.

Nothing heavy is imported at module import: Pillow, pandas and GX load inside the functions.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from pathlib import Path

from ml.params import ValidateParams
from ml.records import DatasetRef, ValidationResult
from ml.validate.checkpoint import MAX_LINES, Finding, run_checkpoint
from ml.validate.rules import RULES, Rule
from ml.validate.tables import build_tables

__all__ = [
    "MAX_LINES",
    "Finding",
    "InvalidDataError",
    "ensure_valid",
    "error_total",
    "report",
    "validate",
]

log = logging.getLogger(__name__)


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
    ml.validate.tables.decode_images). Bad data does not raise: the result lists it (see
    `ensure_valid`) and the log names every listed line and the Data Docs page. A missing
    dataset folder (or previous dataset folder) raises FileNotFoundError.
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


# --------------------------------------------------------------------------- the readable lines


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
