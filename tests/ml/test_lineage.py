"""The code identity in lineage: a commit, a digest of a dirty tree's diff, the build's commit
where there is no .git, and never a reuse of an earlier run when the code is unknown."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ml import lineage, train


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip


@pytest.fixture
def code(tmp_path: Path, monkeypatch) -> Path:
    """A project folder with one committed file, standing in for emoflow's checkout."""
    repo = tmp_path / "project"
    repo.mkdir()
    git(repo, "init", "--quiet")
    (repo / "step.py").write_text("epochs = 1\n")
    git(repo, "add", "step.py")
    git(repo, "commit", "--quiet", "-m", "one")
    monkeypatch.setattr(lineage, "PROJECT_ROOT", repo)
    monkeypatch.delenv(lineage.BUILD_COMMIT_VARIABLE, raising=False)
    return repo


def test_a_clean_tree_is_its_commit_and_each_edit_has_its_own_digest(code: Path):
    head = git(code, "rev-parse", "HEAD")
    assert lineage.code_commit() == head
    (code / "step.py").write_text("epochs = 2\n")
    first = lineage.code_commit()
    (code / "step.py").write_text("epochs = 3\n")
    second = lineage.code_commit()
    assert first.startswith(f"{head}-dirty-") and second.startswith(f"{head}-dirty-")
    assert first != second
    (code / "step.py").write_text("epochs = 2\n")
    assert lineage.code_commit() == first  # the same edit, the same identity


def test_without_git_the_build_commit_else_unknown(code: Path, monkeypatch):
    import shutil

    shutil.rmtree(code / ".git")  # as in the Docker image
    assert lineage.code_commit() == lineage.UNKNOWN
    monkeypatch.setenv(lineage.BUILD_COMMIT_VARIABLE, "0123abc")
    assert lineage.code_commit() == "0123abc"


def test_an_earlier_run_is_reused_only_when_the_code_is_known(mlflow_settings):
    import mlflow

    mlflow.set_tracking_uri(mlflow_settings.mlflow_tracking_uri)
    mlflow.set_experiment(train.EXPERIMENT)
    for commit in ("abc123", lineage.UNKNOWN):
        with mlflow.start_run(tags={"data_digest": "d-lineage", "git_commit": commit}):
            pass
    known = {"data_digest": "d-lineage", "git_commit": "abc123"}
    assert train._find_earlier_run(known) is not None
    assert train._find_earlier_run({**known, "git_commit": lineage.UNKNOWN}) is None


def test_the_chain_walks_parents_back_to_a_model_trained_from_scratch(
    mlflow_settings, tmp_path: Path, logged_run
):
    """Three versions, each built on the one before (as warm starts tag their runs)."""
    import mlflow

    from ml import registry
    from ml.records import DatasetRef

    settings = mlflow_settings.model_copy(update={"model_name": "lineage-chain"})
    client = registry.client(settings)
    versions: list[int] = []
    for number, (init, data) in enumerate(
        [("scratch", "cumulative"), ("champion", "cumulative"), ("champion", "replay")], start=1
    ):
        trained = logged_run(settings, tmp_path, f"m{number}")
        run_id = trained.run_id
        client.log_param(run_id, "init_used", init)
        client.log_param(run_id, "data_used", data)
        client.set_tag(run_id, "data_revision", f"r{number}")
        if versions:
            client.set_tag(run_id, "parent_version", str(versions[-1]))  # as training tags it
        dataset = DatasetRef(revision=f"r{number}", commit="c", digest="d", path=tmp_path)
        versions.append(registry.register(trained, dataset, {}, settings).version)
    mlflow.end_run()

    chain = lineage.chain(settings, versions[-1])
    assert [(link.version, link.parent, link.data_revision, link.init, link.data)
            for link in chain] == [
        (versions[2], versions[1], "r3", "champion", "replay"),
        (versions[1], versions[0], "r2", "champion", "cumulative"),
        (versions[0], None, "r1", "scratch", "cumulative"),
    ]  # fmt: skip
    assert [link.version for link in lineage.chain(settings, versions[0])] == [versions[0]]
