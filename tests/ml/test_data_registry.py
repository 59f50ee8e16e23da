"""The DVC data registry, for real: a git repository, a local DVC remote, pulls by revision."""

import hashlib
import shutil
from pathlib import Path

import pytest
from PIL import Image

from ml import data_batches, data_registry, data_writes
from ml.data_registry import DataRegistryError
from ml.dataset_format import write_data_yaml


def write_batch(root: Path, prefix: str, per_split: int = 3, colour=(90, 120, 150)) -> Path:
    for split in ("train", "valid", "test"):
        for kind in ("images", "labels"):
            (root / split / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_split):
            Image.new("RGB", (96, 96), (colour[0] + i, *colour[1:])).save(
                root / split / "images" / f"{prefix}{i}.png"
            )
            (root / split / "labels" / f"{prefix}{i}.txt").write_text(f"{i % 8} 0.5 0.5 0.8 0.8\n")
    write_data_yaml(root)
    return root


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.suffix != ".cache"}  # fmt: skip


@pytest.fixture
def settings(tmp_path: Path, make_settings):
    return make_settings(tmp_path / "home")


def test_revisions_are_tagged_digested_and_pulled_byte_for_byte(settings, tmp_path: Path):
    first = data_batches.add_batch(settings, write_batch(tmp_path / "a", "a"), "batch a")
    second = data_batches.add_batch(settings, write_batch(tmp_path / "b", "b"), "batch b")
    assert (first.name, second.name) == ("r1", "r2")
    assert first.digest != second.digest and "batch b" in second.message
    assert [r.name for r in data_registry.revisions(settings)] == ["r1", "r2"]

    # The pull must come from the DVC remote: drop the registry's own cache first.
    shutil.rmtree(Path(settings.registry_repo) / ".dvc" / "cache")
    r1 = data_registry.pull(settings, "r1")
    assert (r1.revision, r1.digest, r1.commit) == ("r1", first.digest, first.commit)
    assert sorted(p.name for p in (r1.path / "train" / "images").iterdir()) == [
        "a0.png", "a1.png", "a2.png",
    ]  # fmt: skip
    latest = data_registry.pull(settings)
    assert latest.revision == "r2" and len(list((latest.path / "test" / "labels").iterdir())) == 6
    batch_a = files(tmp_path / "a")
    pulled = files(r1.path)
    assert all(pulled[name] == content for name, content in batch_a.items())
    assert (r1.path / "data.yaml").is_file()


def test_pulling_twice_reuses_the_workspace(settings, tmp_path: Path):
    data_batches.add_batch(settings, write_batch(tmp_path / "a", "a"), "batch a")
    first = data_registry.pull(settings, "r1")
    marker = first.path / "marker"
    marker.write_text("kept")
    assert data_registry.pull(settings, "r1").path == first.path and marker.exists()


def test_unknown_revision_names_the_known_ones(settings, tmp_path: Path):
    data_batches.add_batch(settings, write_batch(tmp_path / "a", "a"), "batch a")
    with pytest.raises(DataRegistryError, match=r"unknown data revision 'r7' \(known: r1\)"):
        data_registry.pull(settings, "r7")


def test_a_batch_that_adds_nothing_or_clashes_is_refused_and_records_no_revision(
    settings, tmp_path: Path
):
    batch = write_batch(tmp_path / "a", "a")
    data_batches.add_batch(settings, batch, "batch a")
    with pytest.raises(DataRegistryError, match="adds no new images"):
        data_batches.add_batch(settings, batch, "again")
    clash = write_batch(tmp_path / "c", "a", colour=(10, 10, 10))
    with pytest.raises(
        DataRegistryError, match="train/images/a0.png: a different file with this name"
    ):
        data_batches.add_batch(settings, clash, "clash")
    assert [r.name for r in data_registry.revisions(settings)] == ["r1"]


def test_no_registry_and_no_split_folders_are_clear_errors(settings, tmp_path: Path):
    with pytest.raises(DataRegistryError, match="run `emoflow data init`"):
        data_registry.pull(settings)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataRegistryError, match="no known dataset layout"):
        data_batches.add_batch(settings, tmp_path / "empty", "empty")


def test_revisions_record_counts_per_split_and_class_and_their_source(settings, tmp_path: Path):
    data_batches.add_batch(settings, write_batch(tmp_path / "a", "a", per_split=3), "batch a")
    second = data_batches.add_batch(settings, write_batch(tmp_path / "b", "b", per_split=2), "b")
    first = data_registry.revision(settings, "r1")
    assert first.source == "batch a" and first.added_images == 9
    assert first.counts["train"]["images"] == 3 and first.counts["train"]["boxes"] == 3
    assert first.counts["train"]["classes"]["anger"] == 1  # ids 0, 1, 2 -> one each
    assert second.added_images == 6 and second.counts["test"]["images"] == 5
    assert second.counts["test"]["classes"]["anger"] == 2  # a0 and b0


@pytest.fixture
def s3_server(tmp_path: Path, monkeypatch, free_port):
    """A real S3-compatible HTTP server on loopback (moto in server mode), credentials in env."""
    import subprocess

    import boto3

    from emoflow import services

    port = free_port()
    proc = subprocess.Popen(
        [str(services.BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        services.wait_until_ready(f"http://127.0.0.1:{port}/moto-api/", 60, proc)
        for key, value in {"AWS_ACCESS_KEY_ID": "emoflow", "AWS_SECRET_ACCESS_KEY": "secret",
                           "AWS_DEFAULT_REGION": "us-east-1",
                           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}.items():  # fmt: skip
            monkeypatch.setenv(key, value)
        boto3.client("s3").create_bucket(Bucket="emoflow-data")
        yield boto3.client("s3")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_an_s3_remote_pushes_and_pulls_revisions_over_http(
    s3_server, tmp_path: Path, make_settings
):
    settings = make_settings(tmp_path / "home", dvc_remote_url="s3://emoflow-data/dvc")
    r1 = data_batches.add_batch(settings, write_batch(tmp_path / "a", "a"), "batch a")
    stored = s3_server.list_objects_v2(Bucket="emoflow-data", Prefix="dvc/")["KeyCount"]

    shutil.rmtree(Path(settings.registry_repo) / ".dvc" / "cache")
    pulled = data_registry.pull(settings, "r1")
    assert pulled.digest == r1.digest
    assert files(pulled.path).items() >= files(tmp_path / "a").items()
    distinct = {hashlib.md5(content).digest() for content in files(pulled.path).values()}
    assert stored == len(distinct) + 1  # content-addressed files, plus the folder's .dir listing


# ---------------------------------------------------------------- a git remote, a clone per worker


@pytest.fixture
def two_workers(tmp_path: Path, make_settings, monkeypatch):
    """Two workers' settings: each its own home (registry clone, workspaces, DVC cache), the
    same git remote (a bare repository, made by the first `init`) and the same DVC remote."""
    monkeypatch.setattr(data_registry, "FETCH_EVERY_SECONDS", 0.0)  # every read fetches
    shared = {"data_git_remote": str(tmp_path / "registry.git"),
              "dvc_remote_url": str(tmp_path / "dvc-remote")}  # fmt: skip
    return tuple(make_settings(tmp_path / name, **shared) for name in ("cpu", "gpu"))


def remote_tags(settings) -> list[str]:
    return data_writes.git(Path(settings.data_git_remote), "tag", "--list").split()


def test_workers_clone_the_registry_and_read_and_write_only_through_its_remotes(
    two_workers, tmp_path: Path
):
    cpu, gpu = two_workers
    data_registry.init(cpu.model_copy(update={"home": tmp_path / "init"}))  # as airflow-init
    first = data_batches.add_batch(cpu, write_batch(tmp_path / "a", "a"), "batch a")  # a clone
    assert remote_tags(cpu) == ["r1"]
    assert not Path(gpu.registry_repo).exists()  # nothing of the other worker's is read

    seen = data_registry.pull(gpu, "r1")  # the first read clones; the data comes from DVC
    assert (seen.digest, seen.commit) == (first.digest, first.commit)
    assert str(seen.path).startswith(str(gpu.home))
    assert files(seen.path).items() >= files(tmp_path / "a").items()

    second = data_batches.add_batch(gpu, write_batch(tmp_path / "b", "b"), "batch b")
    assert second.name == "r2" and remote_tags(cpu) == ["r1", "r2"]
    assert [r.name for r in data_registry.revisions(cpu)] == ["r1", "r2"]  # fetched
    third = data_batches.add_batch(cpu, write_batch(tmp_path / "c", "c"), "batch c")
    assert third.name == "r3"  # the write started from the remote's main, not its own
    assert data_registry.revision(gpu, "latest").digest == third.digest


def test_a_push_the_remote_refuses_leaves_no_revision_anywhere(two_workers, tmp_path: Path):
    cpu, gpu = two_workers
    data_batches.add_batch(cpu, write_batch(tmp_path / "a", "a"), "batch a")
    repo = Path(cpu.registry_repo)
    head = data_writes.git(repo, "rev-parse", "HEAD")
    hook = Path(cpu.data_git_remote) / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'refused by this test' >&2\nexit 1\n")
    hook.chmod(0o755)
    with pytest.raises(DataRegistryError, match=r"r2: the data registry's git remote .* refused"):
        data_batches.add_batch(cpu, write_batch(tmp_path / "b", "b"), "batch b")
    assert remote_tags(cpu) == ["r1"]
    assert data_writes.git(repo, "tag", "--list").split() == ["r1"]
    assert data_writes.git(repo, "rev-parse", "HEAD") == head
    assert data_writes.git(repo, "status", "--porcelain") == ""

    hook.unlink()
    assert data_batches.add_batch(cpu, write_batch(tmp_path / "b", "b"), "batch b").name == "r2"
    assert [r.name for r in data_registry.revisions(gpu)] == ["r1", "r2"]


def test_an_unreachable_git_remote_is_named(two_workers, tmp_path: Path):
    cpu, gpu = two_workers
    data_batches.add_batch(cpu, write_batch(tmp_path / "a", "a"), "batch a")
    Path(cpu.data_git_remote).rename(tmp_path / "moved.git")
    for reader in (cpu, gpu):  # a fetch, a clone
        with pytest.raises(DataRegistryError, match=r"git remote .*registry\.git"):
            data_registry.revisions(reader)


KILLED_BEFORE_PUSH = r"""
import os, signal, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from ml import data_batches, data_writes
from ml.config import Settings

real_git = data_writes.git
def git(repo, *args):
    if args[0] == "push" and "--atomic" in args:
        os.kill(os.getpid(), signal.SIGKILL)  # tagged here, never pushed
    return real_git(repo, *args)
data_writes.git = git
data_batches.add_batch(Settings(), Path(sys.argv[2]), "killed")
"""


@pytest.mark.faults
def test_a_revision_tagged_but_killed_before_its_push_is_dropped_by_the_next_write(
    two_workers, tmp_path: Path
):
    import os
    import subprocess
    import sys

    from emoflow.services import settings_env
    from ml.config import PROJECT_ROOT

    cpu, _ = two_workers
    data_batches.add_batch(cpu, write_batch(tmp_path / "a", "a"), "batch a")
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_BEFORE_PUSH, str(PROJECT_ROOT),
         str(write_batch(tmp_path / "b", "b"))],
        env={**os.environ, **settings_env(cpu)}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert killed.returncode == -9, killed.stderr[-2000:]
    repo = Path(cpu.registry_repo)
    assert data_writes.git(repo, "tag", "--list").split() == ["r1", "r2"]  # only here
    assert remote_tags(cpu) == ["r1"]

    again = data_batches.add_batch(cpu, write_batch(tmp_path / "c", "c"), "batch c")
    assert again.name == "r2" and "batch c" in again.message
    assert remote_tags(cpu) == ["r1", "r2"]
    assert data_registry.revision(cpu, "r2").digest == again.digest
