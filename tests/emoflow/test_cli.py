"""The emoflow command's errors: one line, exit 2, nothing recorded."""

from __future__ import annotations

import subprocess

import pytest

from emoflow import services
from ml import data_registry
from ml.config import PROJECT_ROOT
from ml.sample_data import generate


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "add-batch needs --from DIR (a batch to record) or --sample"),
        (("--from", ""), "--from needs a folder (or a Label Studio export .json)"),
        (("--from", "/nowhere/batch"), "/nowhere/batch: batch folder not found"),
    ],
)
def test_add_batch_without_a_batch_is_one_line_and_records_nothing(
    args, message, tmp_path, make_settings
):
    settings = make_settings(tmp_path / "home")
    result = subprocess.run(
        [str(services.BIN / "emoflow"), "data", "add-batch", *args],
        env=services.settings_env(settings), capture_output=True, text=True, cwd=PROJECT_ROOT,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip() == f"emoflow: error: {message}"
    assert not (settings.home / "batches").exists()
    assert not (settings.home / "data-registry").exists()
    assert "Traceback" not in result.stderr


def emoflow(settings, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(services.BIN / "emoflow"), *args], env=services.settings_env(settings),
        capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=300,
    )  # fmt: skip


@pytest.mark.faults
def test_a_batch_with_errors_is_refused_in_one_message_forced_and_taken_out(
    tmp_path, make_settings
):
    """The commands a person types when a labelled batch comes back broken."""
    settings = make_settings(tmp_path / "home")
    sizes = ("--train", "32", "--valid", "8", "--test", "8")
    assert emoflow(settings, "data", "init", "--sample", *sizes, "--no-trigger").returncode == 0
    bad = tmp_path / "bad"
    generate(bad / "YOLO_format", train=16, valid=8, test=8, seed=9, prefix="x")
    label = sorted((bad / "YOLO_format" / "valid" / "labels").iterdir())[2]
    label.write_text("3 0.5 0.5 1.4 0.6\n")

    for command in ("validate", "add-batch"):
        refused = emoflow(settings, "data", command, "--from", str(bad), "--no-trigger")
        assert refused.returncode == 2, refused.stdout + refused.stderr
        lines = refused.stderr.strip().splitlines()
        assert lines[0].startswith(f"emoflow: error: batch {bad}: refused"), lines
        assert (
            lines[1] == f"valid/labels/{label.name}:1: box_w_range: w must be in [0, 1], found 1.4"
        )
        assert lines[2].startswith("Data Docs: file://") and len(lines) == 3
    assert [r.name for r in data_registry.revisions(settings)] == ["r1"]

    forced = emoflow(settings, "data", "add-batch", "--from", str(bad), "--force", "--no-trigger")
    assert forced.returncode == 0, forced.stderr
    assert "r2" in forced.stdout and "recorded with --force despite 1 data errors" in forced.stdout
    removed = emoflow(settings, "data", "remove", "--batch", "r2", "--reason", "box too wide",
                      "--no-trigger")  # fmt: skip
    assert removed.returncode == 0, removed.stderr
    r3 = data_registry.revision(settings, "r3")
    assert r3.digest == data_registry.revision(settings, "r1").digest
    assert "removed batch r2: box too wide" in emoflow(settings, "data", "log").stdout


def test_running_an_unknown_revision_fails_before_airflow_starts(tmp_path, make_settings):
    settings = make_settings(tmp_path / "home")
    assert emoflow(settings, "data", "init").returncode == 0
    result = emoflow(settings, "run", "--revision", "r99")
    assert result.returncode == 2
    assert result.stderr.strip() == ("emoflow: error: unknown data revision 'r99' (known: none)"), (
        result.stderr
    )
    assert not (settings.home / "airflow").exists()


def test_a_sample_batch_with_another_mix_or_shift_is_drawn_anew_not_reused(tmp_path, make_settings):
    """Same seed, other class mix or shift: new images; the very same arguments: the same
    folder again (nothing drawn twice)."""
    from emoflow.cli import _sample_batch, build_parser

    settings = make_settings(tmp_path / "home")
    sizes = ["--seed", "3", "--train", "6", "--valid", "2", "--test", "2"]
    only_happy = "anger=0,contempt=0,disgust=0,fear=0,neutral=0,sad=0,surprise=0"

    def batch(*options: str):
        args = build_parser().parse_args(["data", "add-batch", "--sample", *sizes, *options])
        return _sample_batch(settings, args)

    def classes(folder) -> set[str]:
        labels = (folder / "train" / "labels").iterdir()
        return {label.read_text().split()[0] for label in labels}

    uniform = batch("--class-mix", "uniform")
    happy = batch("--class-mix", only_happy)
    brighter = batch("--class-mix", only_happy, "--brightness", "0.3")
    assert len({uniform, happy, brighter}) == 3
    assert len(classes(uniform)) > 1 and classes(happy) == classes(brighter) == {"4"}
    image = "train/images/s3_train_000000.png"
    assert (happy / image).read_bytes() != (brighter / image).read_bytes()
    assert batch("--class-mix", only_happy) == happy
    assert sorted(p.name for p in (settings.home / "batches").iterdir()) == sorted(
        p.name for p in (uniform, happy, brighter)
    )
