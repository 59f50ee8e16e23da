"""Run the rules as one Great Expectations checkpoint and read the failing rows back.

A GX checkpoint hands the same batch parameters to every validation definition, so the
tables travel as one long frame with a ``table`` column (:meth:`Tables.long`); every
expectation carries the row condition ``table == <its table>`` (and the rule's ``when``).
One suite per table, one validation definition per suite, one checkpoint that also
rebuilds the Data Docs. The failing rows come from GX's own results
(``partial_unexpected_index_list``, see RESULT_FORMAT) and become :class:`Finding` lines
``<file>[:<line>]: <rule>: <what was expected and found>``.

GX loads inside the functions, with its usage statistics off.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ml.params import ValidateParams
from ml.records import DatasetRef
from ml.validate.rules import RULES, TABLES, Rule

if TYPE_CHECKING:
    from ml.validate.tables import Tables

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


@dataclass(frozen=True)
class Finding:
    """What GX reported for one failed rule: how many rows failed, and the first ones."""

    rule: Rule
    count: int
    rows: tuple[tuple[int, str], ...]  # (row in the checkpoint's frame, readable line)


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
            actions=[],  # Data Docs are built once below, not once per table
            result_format=RESULT_FORMAT,
        )
    )
    run_id = RunIdentifier(run_name=f"{dataset.revision}-{dataset.digest[:12]}")
    result = checkpoint.run(batch_parameters={"dataframe": tables.long()}, run_id=run_id)
    context.build_data_docs(resource_identifiers=list(result.run_results))

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
