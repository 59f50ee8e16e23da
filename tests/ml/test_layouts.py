"""Dataset layouts -> canonical layout: tiny datasets built in tmp_path, no network, no GPU."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml
from PIL import Image

from ml.config import EMOTIONS
from ml.layouts import LayoutError, canonical_emotion, detect_layout, to_canonical

BOX = "0.5 0.5 0.4 0.6"


def image_bytes(color: int, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (color, 255 - color, 7)).save(buffer, fmt)
    return buffer.getvalue()


def put(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data)
    else:
        path.write_bytes(data)
    return path


def yolo_split(root: Path, split: str, items: dict[str, str | None]) -> None:
    """items: image stem -> label text (None = no label file, a background image)."""
    for index, (stem, label) in enumerate(items.items()):
        put(root / split / "images" / f"{stem}.png", image_bytes(index * 10))
        if label is not None:
            put(root / split / "labels" / f"{stem}.txt", label)


def label_ids(path: Path) -> list[int]:
    return [int(line.split()[0]) for line in path.read_text().splitlines()]


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


# --- canonical_emotion ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [("ANGRY", "anger"), ("Happiness", "happy"), ("surprised", "surprise"), (" Fearful ", "fear"),
     ("contemptuous", "contempt"), ("Disgusted", "disgust"), ("sadness", "sad"), ("Neutral", "neutral")],
)  # fmt: skip
def test_canonical_emotion_aliases_case_insensitive(name: str, expected: str) -> None:
    assert EMOTIONS[canonical_emotion(name)] == expected


def test_canonical_emotion_unknown_names_it_and_lists_the_eight() -> None:
    with pytest.raises(LayoutError) as err:
        canonical_emotion("bored")
    assert "'bored'" in str(err.value)
    assert all(name in str(err.value) for name in EMOTIONS)


# --- detect_layout --------------------------------------------------------------------------


def test_detect_layout_empty_folder_says_what_it_looked_for(tmp_path: Path) -> None:
    with pytest.raises(LayoutError) as err:
        detect_layout(tmp_path)
    message = str(err.value)
    assert str(tmp_path) in message
    assert "YOLO_format" in message and "data.yaml" in message and "<emotion>" in message


def test_detect_layout_each_kind(tmp_path: Path) -> None:
    put(tmp_path / "a" / "YOLO_format" / "train" / "images" / "x.png", image_bytes(1))
    put(tmp_path / "b" / "data.yaml", "names: [happy]\ntrain: train/images\n")
    put(tmp_path / "c" / "train" / "happy" / "x.png", image_bytes(1))
    assert detect_layout(tmp_path / "a") == "affectnet"
    assert detect_layout(tmp_path / "a" / "YOLO_format") == "affectnet"
    assert detect_layout(tmp_path / "b") == "yolo"
    assert detect_layout(tmp_path / "c") == "class-folders"


# --- AffectNet YOLO as published ------------------------------------------------------------


@pytest.mark.parametrize("from_parent", [True, False])
def test_affectnet_yolo_format(tmp_path: Path, from_parent: bool) -> None:
    root = tmp_path / "affectnet" / "YOLO_format"
    names = ["Anger", "Contempt", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise"]
    put(root / "data.yaml", yaml.safe_dump({"train": "../train/images", "val": "../valid/images",
                                            "test": "../test/images", "nc": 8, "names": names}))  # fmt: skip
    yolo_split(root, "train", {"a": f"7 {BOX}\n", "b": f"0 {BOX}\n4 {BOX}\n", "bg": None})
    yolo_split(root, "valid", {"c": f"1 {BOX}\n"})
    yolo_split(root, "test", {"d": f"6 {BOX}\n"})

    out = tmp_path / "out"
    counts = to_canonical(root.parent if from_parent else root, out)

    assert label_ids(out / "train" / "labels" / "a.txt") == [7]
    assert label_ids(out / "train" / "labels" / "b.txt") == [0, 4]
    assert not (out / "train" / "labels" / "bg.txt").exists()
    for split, stem in [("train", "a"), ("train", "bg"), ("valid", "c"), ("test", "d")]:
        assert (out / split / "images" / f"{stem}.png").read_bytes() == (
            root / split / "images" / f"{stem}.png"
        ).read_bytes()
    assert counts["train"]["surprise"] == 1 and counts["train"]["anger"] == 1
    assert counts["train"]["happy"] == 1 and counts["train"]["background"] == 1
    assert counts["valid"]["contempt"] == 1 and counts["test"]["sad"] == 1
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data["names"] == list(EMOTIONS) and data["val"] == "valid/images"


# --- any YOLO dataset with data.yaml --------------------------------------------------------


@pytest.mark.parametrize(
    "names", [["happy", "sad"], {0: "Happy", 1: "SAD"}, {"0": "happiness", "1": "sadness"}]
)
def test_yolo_names_list_or_dict_remap_ids(tmp_path: Path, names: list | dict) -> None:
    src = tmp_path / "src"
    put(src / "data.yaml", yaml.safe_dump({"names": names, "train": "train/images",
                                           "val": "val/images"}))  # fmt: skip
    yolo_split(src, "train", {"x": f"0 {BOX}\n1 {BOX}\n"})
    yolo_split(src, "val", {"y": f"1 {BOX}\n"})

    counts = to_canonical(src, tmp_path / "out")

    assert label_ids(tmp_path / "out" / "train" / "labels" / "x.txt") == [4, 6]
    assert label_ids(tmp_path / "out" / "valid" / "labels" / "y.txt") == [6]
    assert (tmp_path / "out" / "valid" / "labels" / "y.txt").read_text() == f"6 {BOX}\n"
    assert counts == {
        "train": {**dict.fromkeys(EMOTIONS, 0), "happy": 1, "sad": 1, "background": 0},
        "valid": {**dict.fromkeys(EMOTIONS, 0), "sad": 1, "background": 0},
    }


def test_yolo_valid_key_and_path_key(tmp_path: Path) -> None:
    src = tmp_path / "src"
    put(src / "data.yaml", yaml.safe_dump({"path": "dataset", "names": ["fear"],
                                           "train": "imgs/tr/images", "valid": "imgs/va/images"}))  # fmt: skip
    yolo_split(src / "dataset" / "imgs", "tr", {"p": f"0 {BOX}\n"})
    yolo_split(src / "dataset" / "imgs", "va", {"q": f"0 {BOX}\n"})

    to_canonical(src, tmp_path / "out")

    assert label_ids(tmp_path / "out" / "train" / "labels" / "p.txt") == [3]
    assert label_ids(tmp_path / "out" / "valid" / "labels" / "q.txt") == [3]
    assert not (tmp_path / "out" / "test").exists()


def test_yolo_absolute_split_path(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    yolo_split(elsewhere, "train", {"z": f"0 {BOX}\n"})
    src = tmp_path / "src"
    put(src / "data.yaml", yaml.safe_dump({"names": ["neutral"],
                                           "train": str(elsewhere / "train" / "images")}))  # fmt: skip
    to_canonical(src, tmp_path / "out")
    assert label_ids(tmp_path / "out" / "train" / "labels" / "z.txt") == [5]


def test_yolo_roboflow_parent_paths_resolve_as_in_ultralytics(tmp_path: Path) -> None:
    src = tmp_path / "renamed"  # an AffectNet-style export whose folder is not YOLO_format
    put(src / "data.yaml", yaml.safe_dump({"names": ["Sad"], "train": "../train/images"}))
    yolo_split(src, "train", {"r": f"0 {BOX}\n"})
    to_canonical(src, tmp_path / "out")
    assert label_ids(tmp_path / "out" / "train" / "labels" / "r.txt") == [6]


def test_yolo_wrong_field_count_lines_are_copied_unchanged(tmp_path: Path) -> None:
    src = tmp_path / "src"
    put(src / "data.yaml", yaml.safe_dump({"names": ["sad", "happy"], "train": "train/images"}))
    yolo_split(src, "train", {"x": f"1 {BOX}\n0 0.5 0.5\n"})
    to_canonical(src, tmp_path / "out")
    assert (tmp_path / "out/train/labels/x.txt").read_text() == f"4 {BOX}\n0 0.5 0.5\n"


def test_yolo_unknown_name_is_an_error_naming_it(tmp_path: Path) -> None:
    src = tmp_path / "src"
    put(src / "data.yaml", yaml.safe_dump({"names": ["happy", "person"], "train": "train/images"}))
    yolo_split(src, "train", {"x": f"0 {BOX}\n"})
    with pytest.raises(LayoutError, match=r"data\.yaml.*'person'"):
        to_canonical(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_yolo_id_not_in_names_names_file_and_line_and_leaves_nothing(tmp_path: Path) -> None:
    src = tmp_path / "src"
    put(src / "data.yaml", yaml.safe_dump({"names": ["happy", "sad"], "train": "train/images"}))
    yolo_split(src, "train", {"a": f"0 {BOX}\n", "b": f"1 {BOX}\n3 {BOX}\n"})
    with pytest.raises(LayoutError) as err:
        to_canonical(src, tmp_path / "out")
    assert f"{src / 'train' / 'labels' / 'b.txt'}:2" in str(err.value)
    assert "class id 3 is not in data.yaml names" in str(err.value)
    assert not (tmp_path / "out").exists()
    assert leftovers(tmp_path) == []


def test_yolo_id_outside_every_emotion_is_kept_for_validation_to_report(tmp_path: Path) -> None:
    src = tmp_path / "src"
    put(src / "data.yaml", yaml.safe_dump({"names": ["happy", "sad"], "train": "train/images"}))
    yolo_split(src, "train", {"b": f"1 {BOX}\n9 {BOX}\n"})
    to_canonical(src, tmp_path / "out")
    assert (tmp_path / "out/train/labels/b.txt").read_text() == f"6 {BOX}\n9 {BOX}\n"


# --- class folders --------------------------------------------------------------------------


def test_class_folders_val_train_test_aliases_and_name_collisions(tmp_path: Path) -> None:
    src = tmp_path / "src"
    jpg = image_bytes(3, "JPEG")
    put(src / "train" / "ANGRY" / "001.jpg", jpg)
    put(src / "train" / "Happiness" / "001.jpg", image_bytes(4, "JPEG"))
    put(src / "train" / "happiness" / ".DS_Store", "junk")
    put(src / "val" / "surprised" / "002.png", image_bytes(5))
    put(src / "test" / "contempt" / "003.png", image_bytes(6))
    out = tmp_path / "out"
    out.mkdir()  # an existing empty folder is fine

    counts = to_canonical(src, out)

    images = sorted(p.name for p in (out / "train" / "images").iterdir())
    assert images == ["ANGRY__001.jpg", "Happiness__001.jpg"]
    assert (out / "train" / "images" / "ANGRY__001.jpg").read_bytes() == jpg
    assert (out / "train" / "labels" / "ANGRY__001.txt").read_text() == "0 0.5 0.5 1.0 1.0\n"
    assert label_ids(out / "train" / "labels" / "Happiness__001.txt") == [4]
    assert label_ids(out / "valid" / "labels" / "surprised__002.txt") == [7]
    assert label_ids(out / "test" / "labels" / "contempt__003.txt") == [1]
    assert not (out / "val").exists()
    assert counts["train"]["anger"] == 1 and counts["train"]["happy"] == 1
    assert counts["valid"]["surprise"] == 1 and counts["test"]["contempt"] == 1
    assert yaml.safe_load((out / "data.yaml").read_text())["nc"] == 8


def test_class_folders_only_train_and_test(tmp_path: Path) -> None:
    src = tmp_path / "src"
    put(src / "train" / "sad" / "a.png", image_bytes(1))
    put(src / "test" / "fear" / "b.png", image_bytes(2))
    counts = to_canonical(src, tmp_path / "out")
    assert set(counts) == {"train", "test"}
    assert counts["train"]["sad"] == 1 and counts["test"]["fear"] == 1


def test_class_folders_unknown_emotion_names_the_folder(tmp_path: Path) -> None:
    src = tmp_path / "src"
    put(src / "train" / "happy" / "a.png", image_bytes(1))
    put(src / "train" / "bored" / "b.png", image_bytes(2))
    with pytest.raises(LayoutError, match=r"bored.*'bored'.*anger, contempt"):
        to_canonical(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert leftovers(tmp_path) == []


# --- the output folder ----------------------------------------------------------------------


def test_out_not_empty_is_an_error_and_nothing_is_written(tmp_path: Path) -> None:
    src = tmp_path / "src"
    put(src / "train" / "happy" / "a.png", image_bytes(1))
    out = tmp_path / "out"
    put(out / "keep.txt", "mine")
    with pytest.raises(LayoutError, match="must not exist or be empty"):
        to_canonical(src, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert leftovers(tmp_path) == []
