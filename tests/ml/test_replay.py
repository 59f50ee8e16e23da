"""The training list of replay and balancing (ml/replay.py), on drawn data with AffectNet's
class skew: the sample is reproducible, of the size asked, class-balanced, keeps every new
image, and balancing lists rare classes more often. No training here (see test_train.py)."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest
import yaml

from ml import replay
from ml.params import TrainParams, class_weights
from ml.sample_data import Shift, generate

SKEW = Shift(class_weights=class_weights("affectnet"))


@pytest.fixture(scope="module")
def revisions(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An earlier revision (160 skewed train images) and the next one: it plus a batch of 20."""
    root = tmp_path_factory.mktemp("replay")
    earlier = generate(root / "r1", train=160, valid=4, test=4, seed=1, shift=SKEW).parent
    batch = generate(root / "batch", train=20, valid=2, test=2, seed=2, prefix="b").parent
    current = root / "r2"
    shutil.copytree(earlier, current)
    for split in ("train", "valid", "test"):
        for kind in ("images", "labels"):
            for path in (batch / split / kind).iterdir():
                shutil.copy2(path, current / split / kind / path.name)
    return earlier, current


def build(tmp_path: Path, current: Path, earlier: Path | None, name: str, **params):
    return replay.build(current, tmp_path / name, TrainParams(**params), earlier)


def test_replay_keeps_every_new_image_and_samples_the_size_asked(revisions, tmp_path: Path):
    earlier, current = revisions
    new = sorted(p.name for p in (current / "train" / "images").iterdir() if p.name[0] == "b")
    listing = build(tmp_path, current, earlier, "a", data="replay", replay_size=40, seed=5)
    assert listing.new == len(new) == 20 and listing.earlier == 40 and listing.repeats == 0
    assert set(new) <= set(listing.images) and len(listing.images) == 60
    shared = build(tmp_path, current, earlier, "b", data="replay", replay_size=0.25)
    assert shared.earlier == 40  # a quarter of the 160 earlier images
    everything = build(tmp_path, current, earlier, "c", data="replay", replay_size=10_000)
    assert everything.earlier == 160  # at most all of them


def test_the_sample_is_the_same_for_a_seed_and_another_for_another(revisions, tmp_path: Path):
    earlier, current = revisions
    first = build(tmp_path, current, earlier, "a", data="replay", replay_size=40, seed=5)
    again = build(tmp_path, current, earlier, "b", data="replay", replay_size=40, seed=5)
    other = build(tmp_path, current, earlier, "c", data="replay", replay_size=40, seed=6)
    assert first.images == again.images
    assert (tmp_path / "a" / "train.txt").read_text().splitlines() == [
        str((current / "train" / "images" / name).resolve()) for name in first.images
    ]
    assert other.images != first.images


def test_the_earlier_sample_is_class_balanced(revisions, tmp_path: Path):
    earlier, current = revisions
    before = Counter(replay.image_class(p) for p in (earlier / "train" / "images").iterdir())
    assert before["happy"] > 8 * max(before["contempt"], 1)  # the skew to balance
    listing = build(tmp_path, current, earlier, "a", data="replay", replay_size=40, seed=5)
    sampled = Counter(replay.image_class(current / "train" / "images" / name)
                      for name in listing.images if name[0] != "b")  # fmt: skip
    quota = max(sampled.values())  # the even share (one less where the last few ran out)
    for emotion, available in before.items():  # a class gives all it has, up to that share
        assert min(available, quota - 1) <= sampled[emotion] <= min(available, quota), (
            emotion, sampled, before,
        )  # fmt: skip
    assert max(sampled.values()) <= 40 // 3  # not the skew of the earlier data


def test_validation_and_test_stay_the_full_splits(revisions, tmp_path: Path):
    earlier, current = revisions
    listing = build(tmp_path, current, earlier, "a", data="replay", replay_size=40)
    data = yaml.safe_load(listing.data_yaml.read_text())
    assert data["train"] == str((tmp_path / "a" / "train.txt").resolve())
    assert data["val"] == str((current / "valid" / "images").resolve())
    assert data["test"] == str((current / "test" / "images").resolve())
    assert data["names"] == yaml.safe_load((current / "data.yaml").read_text())["names"]


def test_balancing_raises_the_rare_classes_share(revisions, tmp_path: Path):
    earlier, _ = revisions
    plain = build(tmp_path, earlier, None, "a")
    balanced = build(tmp_path, earlier, None, "b", balance="sample", balance_max_repeat=4)
    assert plain.repeats == 0 and balanced.repeats > 0

    def share(listing, emotions) -> float:
        return sum(listing.classes.get(e, 0) for e in emotions) / len(listing.images)

    rare, common = ("contempt", "disgust", "fear"), ("happy",)
    assert share(balanced, rare) > 1.5 * share(plain, rare)
    assert share(balanced, common) < share(plain, common)
    assert Counter(balanced.images).most_common(1)[0][1] <= 4  # at most balance_max_repeat
    assert set(balanced.images) == set(plain.images)  # every image still in


def test_an_empty_list_is_refused(tmp_path: Path):
    empty = tmp_path / "empty"
    for split in ("train", "valid", "test"):
        (empty / split / "images").mkdir(parents=True)
    (empty / "data.yaml").write_text("names: [a]\n")
    with pytest.raises(ValueError, match="empty"):
        build(tmp_path, empty, None, "out")


def test_ultralytics_reads_every_listing_repeats_included(revisions, tmp_path: Path):
    """The trainer's dataset holds the list as written: a repeated image counts each time."""
    from ml import yolo

    earlier, _ = revisions
    listing = build(tmp_path, earlier, None, "a", balance="sample")
    yolo.load(tmp_path / "ultralytics")
    from ultralytics.data.dataset import YOLODataset
    from ultralytics.data.utils import check_det_dataset

    data = check_det_dataset(str(listing.data_yaml))
    dataset = YOLODataset(img_path=data["train"], imgsz=64, data=data, augment=False)
    assert listing.repeats > 0 and len(dataset.labels) == len(listing.images)
    read = Counter(Path(path).name for path in dataset.im_files)
    assert read == Counter(listing.images)
