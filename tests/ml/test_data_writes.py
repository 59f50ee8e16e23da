"""Registry writes are validated, all or nothing, locked and undoable, on a real DVC registry:
a batch with errors is refused (or recorded with --force and then taken out), a failed push or
a process killed part-way leaves the registry exactly as it was, two writers take turns."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from emoflow.services import settings_env
from ml import data_batches, data_registry
from ml import validate as validation
from ml.config import PROJECT_ROOT
from ml.data_batches import BatchRefused
from ml.data_registry import DataRegistryError
from ml.params import load_params
from ml.sample_data import generate

SIZES = {"train": 32, "valid": 8, "test": 8}


@pytest.fixture
def settings(tmp_path: Path, make_settings):
    return make_settings(tmp_path / "home")


@pytest.fixture
def check(settings):
    """The validate step's own rules and Data Docs, as `emoflow data add-batch` runs them."""
    params = load_params(settings.params_file)
    return lambda staged, latest: validation.validate(
        staged, params.validate_, settings.gx_dir, latest
    )


def batch(root: Path, prefix: str, seed: int) -> Path:
    generate(root / "YOLO_format", **SIZES, seed=seed, prefix=prefix)
    return root


def broken(root: Path, prefix: str, seed: int) -> Path:
    """A clean batch with one unknown class id and one box wider than the image."""
    batch(root, prefix, seed)
    labels = sorted((root / "YOLO_format" / "train" / "labels").iterdir())
    labels[0].write_text("9 0.5 0.5 0.6 0.6\n")
    labels[1].write_text("3 0.5 0.5 1.4 0.6\n")
    return root


def state(settings) -> dict[str, object]:
    """Everything a write may change: tags, HEAD, tracked and untracked files, the dataset.
    DVC's own cache and temp files are left out: its cache is content-addressed, so an object
    a failed write left there changes no revision."""
    repo = Path(settings.registry_repo)

    def git(*args: str) -> str:
        run = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
        return run.stdout

    dataset = repo / data_registry.DATASET
    return {
        "tags": git("tag", "--list"),
        "head": git("rev-parse", "HEAD"),
        "commits": int(git("rev-list", "--count", "HEAD")),
        "status": [
            line
            for line in git(
                "status", "--porcelain", "--ignored", "--untracked-files=all"
            ).splitlines()
            if not line.startswith("!! .dvc/")
        ],
        "dataset": {
            str(p.relative_to(dataset)): p.read_bytes() for p in dataset.rglob("*") if p.is_file()
        },  # fmt: skip
    }


@pytest.mark.faults
def test_a_batch_with_errors_is_refused_forced_then_taken_out_and_a_clean_one_follows(
    settings, check, tmp_path: Path
):
    data_batches.add_batch(settings, batch(tmp_path / "a", "a", 1), "a", check=check)
    data_batches.add_batch(settings, batch(tmp_path / "b", "b", 2), "b", check=check)
    before = state(settings)

    bad = broken(tmp_path / "bad", "x", 3)
    with pytest.raises(BatchRefused) as refused:
        data_batches.add_batch(settings, bad, "broken", check=check)
    message = str(refused.value)
    assert "would record as r3 has data errors (nothing recorded; --force" in message
    assert "train/labels/x3_train_000000.txt:1: class_id_range:" in message, message
    assert "train/labels/x3_train_000001.txt:1: box_w_range:" in message, message
    assert "Data Docs: file://" in message
    assert state(settings) == before

    forced = data_batches.add_batch(settings, bad, "broken", check=check, force=True)
    assert forced.name == "r3" and forced.forced_errors == 2
    assert "recorded with --force despite 2 data errors" in forced.message

    removed = data_batches.remove(settings, "broken labels", batch="r3", check=check)
    assert removed.name == "r4" and removed.removed_images == forced.added_images
    assert removed.source == "removed batch r3: broken labels"
    r2, r4 = data_registry.pull(settings, "r2"), data_registry.pull(settings, "r4")
    assert removed.digest == data_registry.revision(settings, "r2").digest  # r2's files exactly
    assert sorted(p.name for p in r4.path.rglob("*.png")) == sorted(
        p.name for p in r2.path.rglob("*.png")
    )
    assert data_registry.pull(settings, "r3").digest == forced.digest  # r3 stays reproducible

    clean = data_batches.add_batch(settings, batch(tmp_path / "c", "c", 4), "c", check=check)
    assert clean.name == "r5" and clean.forced_errors == 0


def test_validating_a_batch_records_nothing(settings, check, tmp_path: Path):
    data_batches.add_batch(settings, batch(tmp_path / "a", "a", 1), "a", check=check)
    before = state(settings)
    ok = data_batches.check_batch(settings, batch(tmp_path / "b", "b", 2), check)
    bad = data_batches.check_batch(settings, broken(tmp_path / "x", "x", 3), check)
    assert ok.ok and ok.revision == "r2"
    assert not bad.ok and any("class_id_range" in line for line in bad.errors)
    assert state(settings) == before


def test_files_without_their_partner_are_warnings_in_the_revision(settings, tmp_path: Path):
    source = batch(tmp_path / "a", "a", 1) / "YOLO_format"
    (source / "train" / "labels" / "a1_train_000000.txt").unlink()
    (source / "valid" / "images" / "a1_valid_000001.png").unlink()
    revision = data_batches.add_batch(settings, source.parent, "a")
    assert revision.warnings == [
        "YOLO_format/train/images/a1_train_000000.png: no label file; recorded as a background image (no face)",
        "YOLO_format/valid/labels/a1_valid_000001.txt: no image with this name; left out",
    ]
    assert data_registry.revision(settings, "r1").warnings == revision.warnings


def test_removing_named_files_takes_their_partners_and_keeps_the_reason(settings, tmp_path):
    data_batches.add_batch(settings, batch(tmp_path / "a", "a", 1), "a")
    removed = data_batches.remove(
        settings,
        "blurred",
        files=["train/images/a1_train_000003.png", "test/labels/a1_test_000002.txt"],
    )
    assert removed.removed_images == 2 and "blurred" in removed.source
    pulled = data_registry.pull(settings, removed.name).path
    for gone in ("train/images/a1_train_000003.png", "train/labels/a1_train_000003.txt",
                 "test/labels/a1_test_000002.txt", "test/images/a1_test_000002.png"):  # fmt: skip
        assert not (pulled / gone).exists(), gone
    assert removed.counts["train"]["images"] == SIZES["train"] - 1
    with pytest.raises(DataRegistryError, match="train/images/nope.png: not in the latest"):
        data_batches.remove(settings, "typo", files=["train/images/nope.png"])
    with pytest.raises(DataRegistryError, match="say why the data goes"):
        data_batches.remove(settings, " ", batch="r1")


@pytest.mark.faults
def test_a_push_that_fails_leaves_the_registry_as_it_was(settings, tmp_path: Path):
    """The DVC remote made unreachable (its URL a plain file) while r2 is being recorded."""
    data_batches.add_batch(settings, batch(tmp_path / "a", "a", 1), "a")
    before = state(settings)
    config = Path(settings.registry_repo) / ".dvc" / "config"
    good = config.read_text()
    unreachable = tmp_path / "not-a-folder"
    unreachable.write_text("")
    config.write_text(good.replace(str(settings.remote_url), str(unreachable)))
    second = batch(tmp_path / "b", "b", 2)

    with pytest.raises(
        DataRegistryError,
        match="DVC remote .*not-a-folder is unreachable or refused the push.*nothing was recorded",
    ):
        data_batches.add_batch(settings, second, "b")
    config.write_text(good)
    assert state(settings) == before

    assert data_batches.add_batch(settings, second, "b").name == "r2"  # the same batch again


KILLED_WRITE = r"""
import os, signal, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from ml import data_batches, data_registry, data_writes
from ml.config import Settings

point = sys.argv[3]
def kill():
    os.kill(os.getpid(), signal.SIGKILL)  # as a kill -9 or an OOM kill would, right here
real_git, real_replace = data_writes.git, os.replace
def git(repo, *args):
    if " ".join(args).startswith(point):
        kill()
    return real_git(repo, *args)
def replace(src, dst):
    if point == "swap" and str(dst).endswith(data_registry.DATASET):
        kill()
    return real_replace(src, dst)
data_writes.git, os.replace = git, replace
data_batches.add_batch(Settings(), Path(sys.argv[2]), "killed")
"""


@pytest.mark.faults
@pytest.mark.parametrize("point", ["swap", "add data/emotions.dvc", "commit", "tag r2"])
def test_a_write_killed_part_way_is_undone_by_the_next_one(settings, tmp_path: Path, point):
    """Killed between the two renames of the swap, after the DVC push (at `git add`), before
    the commit, and after the commit but before the tag."""
    first = batch(tmp_path / "a", "a", 1)
    data_batches.add_batch(settings, first, "a")
    before = state(settings)
    second = batch(tmp_path / "b", "b", 2)
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_WRITE, str(PROJECT_ROOT), str(second), point],
        env={**os.environ, **settings_env(settings)}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert state(settings) != before  # the kill left a half-done write behind

    with pytest.raises(DataRegistryError, match="adds no new images"):
        data_batches.add_batch(settings, first, "a again")  # any write repairs first
    assert state(settings) == before
    revision = data_batches.add_batch(settings, second, "b")
    assert revision.name == "r2" and revision.added_images == sum(SIZES.values())


CONCURRENT_WRITE = r"""
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from ml import data_batches
from ml.config import Settings
print(data_batches.add_batch(Settings(), Path(sys.argv[2]), sys.argv[2]).name)
"""


@pytest.mark.faults
def test_two_writers_at_once_take_turns(settings, tmp_path: Path):
    data_batches.add_batch(settings, batch(tmp_path / "a", "a", 1), "a")
    env = {**os.environ, **settings_env(settings)}
    writers = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                CONCURRENT_WRITE,
                str(PROJECT_ROOT),
                str(batch(tmp_path / name, name, seed)),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for name, seed in (("b", 2), ("c", 3))
    ]
    names = sorted(w.communicate(timeout=300)[0].strip() for w in writers)
    assert names == ["r2", "r3"], [w.stderr for w in writers]
    latest = data_registry.revision(settings, "r3")
    assert latest.counts["train"]["images"] == 3 * SIZES["train"]
