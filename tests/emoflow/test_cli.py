"""The emoflow command's errors: one line, exit 2, nothing recorded."""

from __future__ import annotations

import subprocess

import pytest

from emoflow import services
from ml.config import PROJECT_ROOT


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
