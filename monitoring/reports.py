"""The reports index: ``<reports_dir>/index.html``, the page people open.

It lists every report under the folders of `SECTIONS` (``drift/``, written by
`monitoring.drift.check_drift`, and ``live/``, by `monitoring.drift.check_live_drift`), each
folder in its own section, newest first, with its drift share, verdict and a link (what
`prune_reports` keeps: ``drift.keep_reports`` per folder, ``drift.max_report_age_days``). A
report is an ``*.html`` file; the ``*.json`` summary beside it (same stem) gives the figures.
A report whose summary is missing or unreadable is still listed, with its figures unknown.
Links are relative, so the folder can be served by any static server or opened from disk.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ml.files import atomic_write_text

log = logging.getLogger(__name__)

INDEX_NAME = "index.html"
SECTIONS: tuple[tuple[str, str], ...] = (
    ("drift", "Data drift: each new data revision vs the data of the champion"),
    ("live", "Live traffic vs training data: the prediction log vs the champion's data"),
)
"""(folder under reports_dir, heading) of each list on the index page."""


def list_reports(reports_dir: Path, folder: str = "drift") -> list[dict[str, Any]]:
    """Entries of one report folder, newest first: the JSON summary plus ``href`` and ``when``."""
    base = Path(reports_dir) / folder
    if not base.is_dir():
        return []
    entries = []
    for html_path in base.glob("*.html"):
        if html_path.name.startswith("."):
            continue
        summary: dict[str, Any] = {}
        json_path = html_path.with_suffix(".json")
        try:
            loaded = json.loads(json_path.read_text(encoding="utf-8"))
            if isinstance(loaded, dict):
                summary = loaded
        except (OSError, ValueError) as exc:
            log.warning("reports index: %s: summary not readable (%s)", json_path, exc)
        when = _parse_time(summary.get("created"))
        if when is None:
            when = datetime.fromtimestamp(html_path.stat().st_mtime, UTC)
        entries.append(
            {
                **summary,
                "name": html_path.stem,
                "href": f"{folder}/{quote(html_path.name)}",
                "when": when,
            }
        )
    entries.sort(key=lambda e: (e["when"], e["name"]), reverse=True)
    return entries


def prune_reports(
    reports_dir: Path, folder: str, keep: int, max_age_days: float | None = None
) -> list[str]:
    """Delete the reports of one folder beyond the newest `keep`, and those older than
    `max_age_days` (None: no age limit); the newest report always stays. Returns the names of
    the reports deleted (their HTML and JSON summary both go)."""
    entries = list_reports(reports_dir, folder)
    now = datetime.now(UTC)
    gone = []
    for rank, entry in enumerate(entries):
        too_old = max_age_days is not None and (now - entry["when"]).days >= max_age_days
        if rank > 0 and (rank >= keep or too_old):
            base = Path(reports_dir) / folder / entry["name"]
            for suffix in (".html", ".json"):
                base.with_suffix(suffix).unlink(missing_ok=True)
            gone.append(entry["name"])
    if gone:
        log.info("reports: %s: deleted %d old reports (keep %d)", folder, len(gone), keep)
    return gone


def write_index(reports_dir: Path) -> Path:
    """Write ``reports_dir/index.html`` listing every report (newest first); return its path."""
    reports_dir = Path(reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    sections = []
    total = 0
    for folder, heading in SECTIONS:
        entries = list_reports(reports_dir, folder)
        total += len(entries)
        sections.append(_section(heading, entries))
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    page = _PAGE.format(
        style=_STYLE,
        count=total,
        generated=escape(generated),
        sections="\n".join(sections),
    )
    index = reports_dir / INDEX_NAME
    atomic_write_text(index, page)
    return index


def _section(heading: str, entries: list[dict[str, Any]]) -> str:
    if not entries:
        body = '<p class="empty">No reports yet.</p>'
    else:
        rows = "\n".join(_row(e) for e in entries)
        body = (
            "<table>\n<thead><tr><th>When (UTC)</th><th>New data</th><th>Compared with</th>"
            "<th>Drifted columns</th><th>Verdict</th><th>Report</th></tr></thead>\n"
            f"<tbody>\n{rows}\n</tbody>\n</table>"
        )
    return f"<section>\n<h2>{escape(heading)}</h2>\n{body}\n</section>"


def _row(entry: dict[str, Any]) -> str:
    result = entry.get("result") if isinstance(entry.get("result"), dict) else {}
    current = entry.get("current") if isinstance(entry.get("current"), dict) else {}
    share = result.get("share")
    drifted = result.get("drifted")
    threshold = entry.get("share_threshold")
    if isinstance(share, int | float):
        share_text = f"{share:.0%}"
        count, columns = entry.get("drifted_count"), entry.get("columns")
        if isinstance(count, int) and isinstance(columns, list):
            share_text += f" ({count} of {len(columns)})"
    else:
        share_text = "unknown"
    if drifted is True:
        verdict, css = "DRIFTED", "drifted"
    elif drifted is False:
        verdict, css = "no drift", "ok"
    else:
        verdict, css = "unknown", "unknown"
    if isinstance(threshold, int | float):
        verdict += f" (threshold {threshold:.0%})"
    new_data_html = escape(str(current.get("revision") or entry["name"]))
    digest = current.get("digest")
    if digest:
        new_data_html += f" <small>{escape(str(digest)[:12])}</small>"
    reference = result.get("reference", "unknown")
    href = escape(entry["href"], quote=True)
    return (
        f'<tr class="{css}"><td>{escape(entry["when"].strftime("%Y-%m-%d %H:%M:%S"))}</td>'
        f"<td>{new_data_html}</td><td>{escape(str(reference))}</td>"
        f'<td>{escape(share_text)}</td><td class="verdict">{escape(verdict)}</td>'
        f'<td><a href="{href}">{escape(entry["name"])}</a></td></tr>'
    )


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 70rem; color: #222; }
h1 { margin-bottom: 0.2rem; }
p.meta { color: #666; margin-top: 0; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 0.4rem 0.7rem; border-bottom: 1px solid #ddd; }
th { background: #f4f4f4; }
tr.drifted td.verdict { color: #b00020; font-weight: bold; }
tr.ok td.verdict { color: #1b7f3b; }
tr.unknown td.verdict { color: #666; }
small { color: #666; font-family: monospace; }
p.empty { color: #666; }
"""

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>emoflow reports</title>
<style>{style}</style>
</head>
<body>
<h1>emoflow reports</h1>
<p class="meta">{count} report(s), newest first. Page written {generated}.
<a href="history.html">Promotion history</a> (every move of the champion).
<a href="shadow.html">Shadow scoring</a> (the challenger vs the champion on live traffic).</p>
{sections}
</body>
</html>
"""
