"""The shadow report: champion and challenger compared on live traffic (the shadow log).

For each pair of versions compared (newest first), per class the champion answered: how many
images, the share the challenger answered with the same class (agreement), and both models'
mean confidence; then the images dropped because the shadow queue was full. The service serves
it at ``/reports/shadow.html`` (`shadow_report_page`); `shadow_summary` gives the same figures
as data (plain SQL aggregates: no pandas).
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from monitoring.prediction_table import SHADOW_TABLE, engine_for, shadow_predictions

NO_FACE = "(no face)"


def shadow_summary(uri: str) -> list[dict[str, Any]]:
    """Per version pair, newest first: ``champion_version``, ``challenger_version``, ``images``,
    ``agreement`` (share), ``dropped``, ``first``/``last`` (UTC) and ``classes``: per class the
    champion answered, ``images``, ``agreement``, ``champion_confidence``,
    ``challenger_confidence`` (means). Empty when nothing was scored in shadow."""
    table = shadow_predictions.c
    engine = engine_for(uri)
    try:
        missing_file = engine.dialect.name == "sqlite" and not Path(engine.url.database).exists()
        if missing_file or not sa.inspect(engine).has_table(SHADOW_TABLE):
            return []
        agree = sa.func.sum(
            sa.case(
                (table.champion_emotion == table.challenger_emotion, 1),
                (table.champion_emotion.is_(None) & table.challenger_emotion.is_(None), 1),
                else_=0,
            )
        )
        pair = (table.champion_version, table.challenger_version)
        pairs = sa.select(
            *pair, sa.func.count().label("images"), agree.label("agree"),
            sa.func.sum(table.dropped_before).label("dropped"),
            sa.func.min(table.created_at).label("first"),
            sa.func.max(table.created_at).label("last"),
        ).group_by(*pair).order_by(sa.func.max(table.created_at).desc())  # fmt: skip
        classes = sa.select(
            *pair, table.champion_emotion, sa.func.count().label("images"),
            agree.label("agree"),
            sa.func.avg(table.champion_confidence).label("champion_confidence"),
            sa.func.avg(table.challenger_confidence).label("challenger_confidence"),
        ).group_by(*pair, table.champion_emotion)  # fmt: skip
        with engine.connect() as connection:
            pair_rows = list(connection.execute(pairs))
            class_rows = list(connection.execute(classes))
    finally:
        engine.dispose()
    summary = []
    for row in pair_rows:
        per_class = [
            {
                "emotion": c.champion_emotion or NO_FACE,
                "images": c.images,
                "agreement": c.agree / c.images,
                "champion_confidence": c.champion_confidence,
                "challenger_confidence": c.challenger_confidence,
            }
            for c in class_rows
            if (c.champion_version, c.challenger_version)
            == (row.champion_version, row.challenger_version)
        ]
        summary.append(
            {
                "champion_version": row.champion_version,
                "challenger_version": row.challenger_version,
                "images": row.images,
                "agreement": row.agree / row.images,
                "dropped": int(row.dropped or 0),
                "first": row.first,
                "last": row.last,
                "classes": sorted(per_class, key=lambda c: c["emotion"]),
            }
        )
    return summary


def _number(value: float | None, form: str) -> str:
    return "–" if value is None else format(value, form)


def _pair_section(pair: dict[str, Any]) -> str:
    rows = "\n".join(
        f"<tr><td>{escape(c['emotion'])}</td><td>{c['images']}</td>"
        f"<td>{c['agreement']:.0%}</td><td>{_number(c['champion_confidence'], '.3f')}</td>"
        f"<td>{_number(c['challenger_confidence'], '.3f')}</td></tr>"
        for c in pair["classes"]
    )
    when = "%Y-%m-%d %H:%M:%S"
    first, last = pair["first"].strftime(when), pair["last"].strftime(when)
    return (
        f"<section><h2>champion v{pair['champion_version']} vs challenger "
        f"v{pair['challenger_version']}</h2>\n"
        f'<p class="meta">{pair["images"]} images scored in shadow from {first} to {last}; '
        f"the challenger agreed on <b>{pair['agreement']:.0%}</b>; {pair['dropped']} sampled "
        "images dropped (shadow queue full).</p>\n"
        "<table><thead><tr><th>Champion's answer</th><th>Images</th><th>Challenger agrees</th>"
        "<th>Champion's mean confidence</th><th>Challenger's mean confidence</th></tr></thead>"
        f"\n<tbody>\n{rows}\n</tbody></table></section>"
    )


def shadow_report_page(uri: str) -> str:
    """The shadow report as an HTML page (from the shadow log at `uri`)."""
    summary = shadow_summary(uri)
    body = "\n".join(map(_pair_section, summary)) or (
        '<p class="empty">Nothing scored in shadow yet: the service scores the alias '
        "challenger when EMOFLOW_SERVE_SHADOW_SHARE is above 0 and the challenger is not the "
        "champion.</p>"
    )
    return _PAGE.format(body=body)


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>emoflow shadow scoring</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 70rem; color: #222; }}
table {{ border-collapse: collapse; width: 100%; }}
th, td {{ text-align: left; padding: 0.4rem 0.7rem; border-bottom: 1px solid #ddd; }}
th {{ background: #f4f4f4; }}
p.meta, p.empty {{ color: #444; }}
</style>
</head>
<body>
<h1>Shadow scoring: champion vs challenger on live traffic</h1>
<p><a href="index.html">All reports</a>. Per class the champion answered (its best face):
how often the challenger gave the same class, and both models' mean confidence.</p>
{body}
</body>
</html>
"""
