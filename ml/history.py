"""The promotion history: every move of the aliases `champion`/`previous`, kept in the registry.

MLflow keeps only where an alias points now, not where it pointed before (mlflow#2169 is
still open). So each move is recorded as one tag of the registered model itself: key
``emoflow.history.<UTC time>.<random>``, value the `AliasMove` as compact JSON. It lives in
MLflow's own database (SQLite locally, Postgres in the distributed mode), survives restarts
and needs no store of its own. The key's time orders the records and its random part keeps two
writers at the same instant apart: nothing is read before a record is written, so concurrent
writers (a DAG's promote and a person's rollback) cannot overwrite each other's record. Order
is by the writers' clocks; machines whose clocks disagree by more than the time between two
moves would list those two the wrong way round.

MLflow 3.17 as read from its code: `MlflowClient.get_registered_model(name).tags` is a dict
of every tag of the registered model (no paging); a registered-model tag key may hold
alphanumerics, ``_ - . / :`` and spaces, up to 250 characters; the client accepts values up to
100,000 characters (`MAX_MODEL_REGISTRY_TAG_VALUE_LENGTH`) but the SQL column
``registered_model_tags.value`` is VARCHAR(5000), which Postgres enforces and SQLite does not.
A record therefore stays within `MAX_VALUE` characters: its reason is cut to fit.

`ml.registry.promote` (and `rollback`, through it) writes the record right after the aliases
move, then `write_page` renders ``<reports_dir>/history.html``, which the service serves as
``/reports/history.html``.
"""

from __future__ import annotations

import getpass
import logging
import secrets
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from ml import registry
from ml.config import Settings
from ml.files import atomic_write_text

log = logging.getLogger(__name__)

PREFIX = "emoflow.history."
"""Key prefix of the registered-model tags that hold the history."""
MAX_VALUE = 5000
"""Longest tag value every MLflow SQL backend stores (Postgres: VARCHAR(5000))."""
PAGE_NAME = "history.html"

Kind = Literal["gate", "manual", "rollback", "approval", "rejection"]
"""What caused an event: the gate step's promotion, `emoflow model promote`, `emoflow model
rollback`; `approval` and `rejection` are for a person's verdict on a version (a rejection
moves no alias: its from and to are both the champion that stays)."""


class AliasMove(BaseModel):
    """One event of the history. `to_version` is the champion after it, `from_version` the one
    before (None: no champion); for an event that moves nothing they are equal."""

    model_config = ConfigDict(frozen=True, extra="ignore")  # newer records may carry more

    time: datetime  # when the aliases had moved, UTC
    actor: str  # the Airflow DAG run id, or "user:<name>" for a person
    kind: Kind
    from_version: int | None
    to_version: int | None
    reason: str
    link: str | None = None  # the gate report, where the caller had one

    @field_validator("time")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("the time of an alias move must be timezone-aware")
        return value.astimezone(UTC)


def user_actor() -> str:
    """The actor of a command a person ran: ``user:<OS user name>``."""
    try:
        return f"user:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name in the environment nor the password database
        return "user:unknown"


def encode(move: AliasMove) -> str:
    """The record as compact JSON of at most `MAX_VALUE` characters (the reason cut to fit)."""
    value = move.model_dump_json()
    if len(value) <= MAX_VALUE:
        return value

    def cut(keep: int) -> str:
        return move.model_copy(update={"reason": move.reason[:keep] + "…"}).model_dump_json()

    low, high = 0, len(move.reason)  # the longest reason that fits (JSON escapes count too)
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if len(cut(middle)) <= MAX_VALUE else (low, middle - 1)
    return cut(low)


def append(settings: Settings, move: AliasMove) -> str:
    """Write `move` as a new tag of the registered model; returns the tag's key."""
    key = f"{PREFIX}{move.time:%Y%m%dT%H%M%S%fZ}.{secrets.token_hex(3)}"
    registry.client(settings).set_registered_model_tag(settings.model_name, key, encode(move))
    return key


def moves(settings: Settings) -> list[AliasMove]:
    """Every recorded event of the model, oldest first ([] when the model does not exist).

    A tag under `PREFIX` that is not a readable record is left out, with a warning."""
    from mlflow.exceptions import MlflowException

    try:
        tags = registry.client(settings).get_registered_model(settings.model_name).tags
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return []
        raise
    found: list[tuple[datetime, str, AliasMove]] = []
    for key, value in tags.items():
        if not key.startswith(PREFIX):
            continue
        try:
            move = AliasMove.model_validate_json(value)
        except ValidationError as exc:
            log.warning("history: tag %s of '%s' is not a record: %s", key, settings.model_name,
                        str(exc).splitlines()[0])  # fmt: skip
            continue
        found.append((move.time, key, move))
    return [move for _, _, move in sorted(found, key=lambda item: item[:2])]


def champion_at(settings: Settings, when: datetime) -> int | None:
    """The version that was champion at `when` (timezone-aware), as the history records it;
    None before the first recorded event (or when the champion then was none)."""
    if when.tzinfo is None:
        raise ValueError(f"champion_at needs a timezone-aware time, got {when.isoformat()}")
    champion = None
    for move in moves(settings):
        if move.time > when:
            break
        champion = move.to_version
    return champion


# ---------------------------------------------------------------------------------- the page


def version_label(version: int | None) -> str:
    """``v3``, or ``none`` for no version."""
    return f"v{version}" if version is not None else "none"


def _link(link: str | None) -> str:
    if not link:
        return ""
    if link.startswith(("http://", "https://", "file://")):
        return f'<a href="{escape(link, quote=True)}">report</a>'
    return escape(link)


def render_page(model_name: str, events: list[AliasMove]) -> str:
    """The history as a plain HTML page: one table, newest first, every value escaped."""
    rows = "\n".join(
        f"<tr><td>{escape(m.time.strftime('%Y-%m-%d %H:%M:%S'))}</td><td>{escape(m.kind)}</td>"
        f"<td>{version_label(m.from_version)} &rarr; {version_label(m.to_version)}</td>"
        f"<td>{escape(m.actor)}</td><td>{escape(m.reason)}</td><td>{_link(m.link)}</td></tr>"
        for m in reversed(events)
    )
    body = (
        "<table>\n<thead><tr><th>When (UTC)</th><th>Kind</th><th>Champion</th><th>Actor</th>"
        f"<th>Reason</th><th>Gate report</th></tr></thead>\n<tbody>\n{rows}\n</tbody>\n</table>"
        if events
        else "<p>No alias moves recorded yet.</p>"
    )
    name = escape(model_name)
    return (
        '<!doctype html>\n<html lang="en">\n<head><meta charset="utf-8">'
        f"<title>Promotion history: {name}</title>\n<style>body{{font-family:sans-serif}}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;"
        "text-align:left;vertical-align:top}</style></head>\n<body>\n"
        f"<h1>Promotion history of <code>{name}</code></h1>\n"
        f"<p>Every move of the aliases champion and previous, newest first "
        f"({len(events)} recorded).</p>\n{body}\n</body>\n</html>\n"
    )


def write_page(reports_dir: Path, model_name: str, events: list[AliasMove]) -> Path:
    """Write ``reports_dir/history.html`` (readers see the old page or the new one); returns
    its path."""
    reports_dir.mkdir(parents=True, exist_ok=True)
    path = reports_dir / PAGE_NAME
    atomic_write_text(path, render_page(model_name, events))
    return path
