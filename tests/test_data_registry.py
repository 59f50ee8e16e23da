"""The DVC data registry, for real: a git repository, a local DVC remote, pulls by revision."""

import shutil
from pathlib import Path

import pytest
from PIL import Image

from conftest import make_settings
from ml import data_registry
from ml.data_registry import DataRegistryError


def write_batch(root: Path, prefix: str, per_split: int = 3, colour=(90, 120, 150)) -> Path:
    for split in ("train", "valid", "test"):
        for kind in ("images", "labels"):
            (root / split / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_split):
            Image.new("RGB", (96, 96), (colour[0] + i, *colour[1:])).save(
                root / split / "images" / f"{prefix}{i}.png"
            )
            (root / split / "labels" / f"{prefix}{i}.txt").write_text(f"{i % 8} 0.5 0.5 0.8 0.8\n")
    return root


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.suffix != ".cache"}  # fmt: skip


@pytest.fixture
def settings(tmp_path: Path):
    return make_settings(tmp_path / "home")


def test_revisions_are_tagged_digested_and_pulled_byte_for_byte(settings, tmp_path: Path):
    first = data_registry.add_batch(settings, write_batch(tmp_path / "a", "a"), "batch a")
    second = data_registry.add_batch(settings, write_batch(tmp_path / "b", "b"), "batch b")
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
    data_registry.add_batch(settings, write_batch(tmp_path / "a", "a"), "batch a")
    first = data_registry.pull(settings, "r1")
    marker = first.path / "marker"
    marker.write_text("kept")
    assert data_registry.pull(settings, "r1").path == first.path and marker.exists()


def test_unknown_revision_names_the_known_ones(settings, tmp_path: Path):
    data_registry.add_batch(settings, write_batch(tmp_path / "a", "a"), "batch a")
    with pytest.raises(DataRegistryError, match=r"unknown data revision 'r7' \(known: r1\)"):
        data_registry.pull(settings, "r7")


def test_a_batch_that_adds_nothing_or_clashes_is_refused_and_records_no_revision(
    settings, tmp_path: Path
):
    batch = write_batch(tmp_path / "a", "a")
    data_registry.add_batch(settings, batch, "batch a")
    with pytest.raises(DataRegistryError, match="adds no new images"):
        data_registry.add_batch(settings, batch, "again")
    clash = write_batch(tmp_path / "c", "a", colour=(10, 10, 10))
    with pytest.raises(DataRegistryError, match="a different file named a0.png"):
        data_registry.add_batch(settings, clash, "clash")
    assert [r.name for r in data_registry.revisions(settings)] == ["r1"]


def test_no_registry_and_no_split_folders_are_clear_errors(settings, tmp_path: Path):
    with pytest.raises(DataRegistryError, match="run `emoflow data init`"):
        data_registry.pull(settings)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataRegistryError, match="no split folders found"):
        data_registry.add_batch(settings, tmp_path / "empty", "empty")
