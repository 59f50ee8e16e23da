"""The rule catalogue: each rule is one Great Expectations expectation on one table.

The tables and their columns are described in :mod:`ml.validate.tables`; how a rule becomes
an expectation (row condition, severity, ``meta``) is in :mod:`ml.validate.checkpoint`.
Adding a check is one more entry in :data:`RULES`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from ml.config import EMOTIONS
from ml.params import ValidateParams

Table = Literal["splits", "images", "labels", "boxes", "classes"]
TABLES: tuple[Table, ...] = ("splits", "images", "labels", "boxes", "classes")
"""Also the order of the reported lines (and, inside a table, file order)."""
Severity = Literal["error", "warning"]

BOX_NUMBERS = ("class_id", "cx", "cy", "w", "h")
"""The numeric columns of the ``boxes`` table: the five fields of a label line, in order."""


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
        for column in BOX_NUMBERS
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
