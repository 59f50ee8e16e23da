"""The promotion history over a real MLflow server: records, `champion_at`, the CLI, the page."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from emoflow import cli, services, steps
from ml import gate, history, registry
from ml.config import PROJECT_ROOT
from ml.records import EvalResult, GateResult, ModelRef

RUN_ID = "manual__2026-12-01T10:00:00+00:00"


@pytest.fixture
def settings(mlflow_settings, tmp_path, request):
    """The shared MLflow server, a registered model name of this test's own and a home folder
    (so a reports folder) of its own."""
    return mlflow_settings.model_copy(
        update={"model_name": f"hist-{request.node.name[:40]}", "home": tmp_path / "home"}
    )


def _versions(settings, count: int) -> list[ModelRef]:
    """`count` registered versions of the model (one run; the registry needs no files here)."""
    client = registry.client(settings)
    run = client.create_run(client.create_experiment(f"history-{settings.model_name}"))
    client.create_registered_model(settings.model_name)
    return [
        ModelRef(
            name=settings.model_name,
            version=int(
                client.create_model_version(
                    settings.model_name,
                    source=f"{run.info.artifact_uri}/model",
                    run_id=run.info.run_id,
                ).version
            ),  # fmt: skip
            run_id=run.info.run_id,
        )
        for _ in range(count)
    ]


def _passed_gate(version: int, champion: int | None, tmp_path: Path) -> GateResult:
    scores = EvalResult(version=version, map50=0.6, map50_95=0.4, per_class_recall={})
    return GateResult(
        passed=True, reasons=["PASS: mAP50 0.600 >= floor 0.250"], challenger=scores,
        champion=scores.model_copy(update={"version": champion}) if champion else None,
        report_path=tmp_path / f"gate-v{version}.json",
        markdown_path=tmp_path / f"gate-v{version}.md", test_revision="r1",
    )  # fmt: skip


def _three_moves(settings, tmp_path, monkeypatch) -> list[datetime]:
    """A gate promotion of v1 (in an Airflow task), a manual promotion of v2, a rollback to v1;
    returns the times before the first move and after each."""
    v1, v2 = _versions(settings, 2)
    times = [datetime.now(UTC)]
    monkeypatch.setenv("AIRFLOW_CTX_DAG_RUN_ID", RUN_ID)
    assert steps.promote(v1, _passed_gate(1, None, tmp_path), settings=settings).promoted
    monkeypatch.delenv("AIRFLOW_CTX_DAG_RUN_ID")
    times.append(datetime.now(UTC))
    registry.promote(settings, v2.version, "better on <faces> & more", actor="user:alice")
    times.append(datetime.now(UTC))
    registry.rollback(settings, actor="user:bob", reason="v2 answers wrongly")
    times.append(datetime.now(UTC))
    return times


def _cli(settings, monkeypatch, *args: str) -> None:
    """`emoflow ARGS` in this process, with `settings` as its environment."""
    for key, value in services.settings_env(settings).items():
        if key.startswith("EMOFLOW_"):
            monkeypatch.setenv(key, value)
    cli.main(list(args))


def test_promote_a_second_promote_and_a_rollback_are_recorded(settings, tmp_path, monkeypatch):
    _three_moves(settings, tmp_path, monkeypatch)
    moves = history.moves(settings)

    assert [(m.kind, m.from_version, m.to_version) for m in moves] == [
        ("gate", None, 1), ("manual", 1, 2), ("rollback", 2, 1),
    ]  # fmt: skip
    assert [m.actor for m in moves] == [RUN_ID, "user:alice", "user:bob"]
    assert moves[0].reason == "PASS: mAP50 0.600 >= floor 0.250"
    assert moves[2].reason == "rollback to version 1: v2 answers wrongly"
    run = registry.client(settings).get_run(registry.version_ref(settings, 1).run_id).info
    assert moves[0].link == (f"{settings.mlflow_ui_url}/#/experiments/{run.experiment_id}/runs/"
                             f"{run.run_id}/artifactPath/gate/gate-v1.md")  # fmt: skip
    assert moves[1].link is None
    assert all(m.time.tzinfo == UTC for m in moves) and moves == sorted(moves, key=lambda m: m.time)
    tags = registry.client(settings).get_registered_model(settings.model_name).tags
    records = {k: json.loads(v) for k, v in tags.items() if k.startswith("emoflow.history.")}
    assert len(records) == 3 and {r["kind"] for r in records.values()} == {"gate", "manual",
                                                                           "rollback"}  # fmt: skip

    assert not registry.promote(settings, 1, "again", actor="user:carol").promoted
    assert len(history.moves(settings)) == 3  # nothing moved: nothing recorded


def test_champion_at_follows_the_moves(settings, tmp_path, monkeypatch):
    before, after_first, after_second, after_rollback = _three_moves(
        settings, tmp_path, monkeypatch
    )
    moves = history.moves(settings)

    assert history.champion_at(settings, before) is None
    assert history.champion_at(settings, after_first) == 1
    assert history.champion_at(settings, after_second) == 2
    assert history.champion_at(settings, after_rollback) == 1
    assert history.champion_at(settings, moves[1].time) == 2  # the instant of the move
    assert history.champion_at(settings, moves[1].time - timedelta(microseconds=1)) == 1
    plus_two = after_second.astimezone(timezone(timedelta(hours=2)))
    assert history.champion_at(settings, plus_two) == 2  # another timezone, the same instant
    with pytest.raises(ValueError, match="timezone-aware"):
        history.champion_at(settings, after_second.replace(tzinfo=None))


def test_an_unknown_model_has_no_history(settings):
    assert history.moves(settings) == []
    assert history.champion_at(settings, datetime.now(UTC)) is None


def test_the_cli_prints_the_history_and_who_served_when(settings, tmp_path, monkeypatch, capsys):
    before, after_first, after_second, after_rollback = _three_moves(
        settings, tmp_path, monkeypatch
    )
    capsys.readouterr()

    _cli(settings, monkeypatch, "model", "history")
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert "gate" in lines[0] and "none -> v1" in lines[0] and RUN_ID in lines[0]
    assert lines[0].endswith("/artifactPath/gate/gate-v1.md") and "PASS: mAP50" in lines[0]
    assert "manual" in lines[1] and "v1 -> v2" in lines[1] and "user:alice" in lines[1]
    assert "rollback" in lines[2] and "v2 -> v1" in lines[2] and "user:bob" in lines[2]
    assert lines[2].startswith(f"{history.moves(settings)[2].time:%Y-%m-%dT%H:%M:%SZ}  rollback")

    def serving_at(when: str) -> str:
        _cli(settings, monkeypatch, "model", "serving-at", when)
        return capsys.readouterr().out.strip()

    assert serving_at(before.isoformat()).endswith(
        f"no version of '{settings.model_name}' was champion"
    )
    assert f"v1 of '{settings.model_name}' was champion" in serving_at(after_first.isoformat())
    naive = after_second.replace(tzinfo=None).isoformat()  # no timezone: UTC
    assert " v2 of " in serving_at(naive)
    zulu = after_rollback.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert " v1 of " in serving_at(zulu)
    plus_two = after_second.astimezone(timezone(timedelta(hours=2))).isoformat()
    assert serving_at(plus_two).startswith(f"{after_second:%Y-%m-%dT%H:%M:%SZ}: v2 ")


def test_the_cli_manual_moves_are_recorded_as_this_user(settings, monkeypatch, capsys):
    _versions(settings, 2)
    _cli(settings, monkeypatch, "model", "promote", "1")
    _cli(settings, monkeypatch, "model", "promote", "2", "--reason", "v2 is newer")
    _cli(settings, monkeypatch, "model", "rollback")
    capsys.readouterr()
    moves = history.moves(settings)
    assert [(m.kind, m.from_version, m.to_version) for m in moves] == [
        ("manual", None, 1), ("manual", 1, 2), ("rollback", 2, 1),
    ]  # fmt: skip
    assert {m.actor for m in moves} == {history.user_actor()}
    assert history.user_actor().startswith("user:") and len(history.user_actor()) > 5
    assert [m.reason for m in moves] == ["manual promotion", "v2 is newer",
                                         "rollback to version 1"]  # fmt: skip


@pytest.mark.parametrize("when", ["yesterday", "2026-13-01T00:00:00", "12/01/2026"])
def test_a_bad_time_is_one_line_and_exit_code_2(settings, when):
    out = subprocess.run(
        [str(services.BIN / "emoflow"), "model", "serving-at", when],
        env=services.settings_env(settings), cwd=PROJECT_ROOT, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert out.stdout == "" and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [
        f"emoflow: error: not an ISO 8601 time: {when!r} (for example 2026-12-01T14:30:00Z, "
        "2026-12-01T15:30+01:00 or 2026-12-01; without a timezone it means UTC)"
    ]


def test_the_history_page_lists_the_moves_newest_first_escaped(settings, tmp_path, monkeypatch):
    page = settings.reports_dir / "history.html"
    _three_moves(settings, tmp_path, monkeypatch)
    html = page.read_text()

    rows = html.split("<tr>")[2:]  # [0]: before the table, [1]: the header
    assert len(rows) == 3
    assert "<td>rollback</td>" in rows[0] and "v2 &rarr; v1" in rows[0] and "user:bob" in rows[0]
    assert "<td>manual</td>" in rows[1] and "v1 &rarr; v2" in rows[1]
    assert "<td>gate</td>" in rows[2] and "none &rarr; v1" in rows[2] and RUN_ID in rows[2]
    assert "better on &lt;faces&gt; &amp; more" in rows[1] and "<faces>" not in html
    assert '<a href="http://' in rows[2] and '/artifactPath/gate/gate-v1.md">report</a>' in rows[2]
    assert [p.name for p in settings.reports_dir.iterdir()] == ["history.html"]  # no temp files


def test_a_move_whose_record_was_lost_is_recorded_when_it_is_retried(
    settings, tmp_path, monkeypatch
):
    """The gate step moved the aliases to v2 and died before the record; its Airflow retry
    (the same gate, compared with v1) records the move instead of a conflict."""
    _versions(settings, 2)
    registry.promote(settings, 1, "first", actor="user:alice")
    client = registry.client(settings)
    client.set_registered_model_alias(settings.model_name, registry.PREVIOUS, "1")
    client.set_registered_model_alias(settings.model_name, registry.CHAMPION, "2")
    assert history.champion_at(settings, datetime.now(UTC)) == 1  # the history lacks the move

    monkeypatch.setenv("AIRFLOW_CTX_DAG_RUN_ID", RUN_ID)
    v2 = registry.version_ref(settings, 2)
    result = steps.promote(v2, _passed_gate(2, 1, tmp_path), settings=settings)
    assert not result.promoted and result.champion == 2 and result.previous == 1
    late = history.moves(settings)[-1]
    assert (late.kind, late.from_version, late.to_version, late.actor) == ("gate", 1, 2, RUN_ID)
    assert "recorded late" in late.reason
    assert history.champion_at(settings, datetime.now(UTC)) == 2

    steps.promote(v2, _passed_gate(2, 1, tmp_path), settings=settings)  # once more: no record
    assert len(history.moves(settings)) == 2


def test_a_long_reason_is_cut_to_what_every_backend_stores(settings):
    _versions(settings, 1)
    reason = 'FAIL: "quoted" ' * 1000  # 15,000 characters, more once JSON-escaped
    registry.promote(settings, 1, reason, actor="user:alice")
    (move,) = history.moves(settings)
    stored = registry.client(settings).get_registered_model(settings.model_name).tags
    assert all(len(v) <= history.MAX_VALUE for k, v in stored.items() if k.startswith("emoflow."))
    assert move.reason.endswith("…") and reason.startswith(move.reason[:-1])
    assert len(move.reason) > 4000  # cut to fit, not more


def test_the_gate_summary_becomes_the_version_description(settings, tmp_path):
    (ref,) = _versions(settings, 1)
    result = _passed_gate(1, None, tmp_path).model_copy(
        update={
            "checks": [
                GateResult.Check(
                    rule="min_map50",
                    value="0.600",
                    threshold=">= 0.250",
                    passed=True,
                    reason="PASS: ...",
                )
            ]
        }  # fmt: skip
    )
    text = gate.summary(result)
    registry.set_description(settings, ref, text)

    description = registry.client(settings).get_model_version(ref.name, "1").description
    assert description == text
    assert description.startswith("**Gate PASSED**: v1 against no champion, test split of ")
    assert "| min_map50 | 0.600 | >= 0.250 | PASS |" in description
    assert "`gate/gate-v1.md`" in description
    registry.set_description(settings, ref, "x" * 6000)
    cut = registry.client(settings).get_model_version(ref.name, "1").description
    assert len(cut) == registry.DESCRIPTION_MAX and cut.endswith("…")
