"""The drawn sample data: layout, labels, determinism, drift knobs and argument checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from pydantic import ValidationError

from ml import sample_data
from ml.config import EMOTIONS
from ml.dataset_format import SPLITS
from ml.params import class_weights
from ml.sample_data import IMAGE_SIZE, Shift, generate

COUNTS = {"train": 12, "valid": 4, "test": 4}


def files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def labels(root: Path, split: str = "train") -> list[list[str]]:
    return [p.read_text().splitlines() for p in sorted((root / split / "labels").glob("*.txt"))]


def classes(root: Path, split: str = "train") -> list[int]:
    return [int(lines[0].split()[0]) for lines in labels(root, split)]


def mean_pixel(root: Path, split: str = "train") -> float:
    return float(
        np.mean([np.asarray(Image.open(p)).mean() for p in (root / split / "images").glob("*.png")])
    )


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("gen") / "ds", **COUNTS, seed=3).parent


def test_same_arguments_give_byte_identical_files(dataset: Path, tmp_path: Path) -> None:
    again = generate(tmp_path / "again", **COUNTS, seed=3).parent
    first, second = files(dataset), files(again)
    assert first.keys() == second.keys()
    assert [k for k in first if first[k] != second[k]] == []
    other_seed = files(generate(tmp_path / "other", **COUNTS, seed=4).parent)
    same = [a == b for a, b in zip(first.values(), other_seed.values(), strict=True)]
    assert not all(same), "another seed must draw other images"


def test_layout_and_data_yaml(dataset: Path) -> None:
    data = yaml.safe_load((dataset / "data.yaml").read_text())
    assert data == {
        "train": "train/images",
        "val": "valid/images",
        "test": "test/images",
        "nc": 8,
        "names": list(EMOTIONS),
    }
    for split in SPLITS:
        images = sorted(p.name for p in (dataset / split / "images").iterdir())
        label_files = sorted(p.name for p in (dataset / split / "labels").iterdir())
        expected = [f"s3_{split}_{i:06d}" for i in range(COUNTS[split])]
        assert images == [f"{stem}.png" for stem in expected]
        assert label_files == [f"{stem}.txt" for stem in expected]
    assert sorted(p.name for p in dataset.iterdir()) == ["data.yaml", "test", "train", "valid"]


def test_every_label_is_one_valid_yolo_line(dataset: Path) -> None:
    for split in SPLITS:
        for lines in labels(dataset, split):
            assert len(lines) == 1
            fields = lines[0].split()
            assert len(fields) == 5
            assert fields[0].isdigit() and 0 <= int(fields[0]) < len(EMOTIONS)
            assert all(len(f.split(".")[1]) == 6 for f in fields[1:]), lines
            cx, cy, w, h = map(float, fields[1:])
            assert 0 < w <= 1 and 0 < h <= 1
            # the box lies inside the image (clipped), up to the 6-decimal rounding
            assert cx - w / 2 >= -1e-6 and cx + w / 2 <= 1 + 1e-6
            assert cy - h / 2 >= -1e-6 and cy + h / 2 <= 1 + 1e-6
            assert 0.3 < max(w, h), "the face fills much of the crop"


def test_images_are_96px_rgb_png(dataset: Path) -> None:
    for split in SPLITS:
        for path in (dataset / split / "images").iterdir():
            with Image.open(path) as im:
                assert (im.format, im.mode, im.size) == ("PNG", "RGB", (IMAGE_SIZE, IMAGE_SIZE))


def test_face_box_sizes_vary_within_the_documented_range(tmp_path: Path) -> None:
    root = generate(tmp_path / "ds", train=60, valid=0, test=0).parent
    sides = [max(map(float, lines[0].split()[3:])) for lines in labels(root)]
    assert 0.5 <= min(sides) and max(sides) <= 1.0
    assert max(sides) - min(sides) > 0.2, "face scale must vary"


def test_brightness_and_contrast_shift_change_the_pixels(tmp_path: Path) -> None:
    base = generate(tmp_path / "base", train=16, valid=0, test=0)
    bright = generate(tmp_path / "bright", train=16, valid=0, test=0, shift=Shift(brightness=0.3))
    dark = generate(tmp_path / "dark", train=16, valid=0, test=0, shift=Shift(brightness=-0.3))
    m0, m_bright, m_dark = (mean_pixel(p.parent) for p in (base, bright, dark))
    assert m_bright - m0 > 40 and m0 - m_dark > 40

    flat = generate(tmp_path / "flat", train=16, valid=0, test=0, shift=Shift(contrast=0.4))
    std = [
        np.mean([np.asarray(Image.open(p)).std() for p in (d.parent / "train/images").iterdir()])
        for d in (base, flat)
    ]
    assert std[1] < 0.6 * std[0]
    # same seed, same faces: labels do not move with pixel-level drift
    assert labels(base.parent) == labels(flat.parent) == labels(bright.parent)


def test_face_scale_shrinks_the_boxes(tmp_path: Path) -> None:
    def mean_area(scale: float) -> float:
        root = generate(
            tmp_path / f"s{scale}", train=30, valid=0, test=0, shift=Shift(face_scale=scale)
        ).parent
        return float(
            np.mean([float(x[0].split()[3]) * float(x[0].split()[4]) for x in labels(root)])
        )

    assert mean_area(0.6) < 0.5 * mean_area(1.0)


def test_class_weights_change_the_class_mix(tmp_path: Path) -> None:
    uniform = classes(generate(tmp_path / "u", train=80, valid=0, test=0).parent)
    assert len(set(uniform)) >= 7
    only_happy = Shift(class_weights=[0, 0, 0, 0, 1, 0, 0, 0])
    assert set(
        classes(generate(tmp_path / "h", train=40, valid=0, test=0, shift=only_happy).parent)
    ) == {4}
    mostly_sad = Shift(class_weights=[1, 1, 1, 1, 1, 1, 30, 1])
    mix = classes(generate(tmp_path / "s", train=80, valid=0, test=0, shift=mostly_sad).parent)
    assert mix.count(6) > 50


def test_the_affectnet_mix_makes_its_skew(tmp_path: Path) -> None:
    skew = Shift(class_weights=class_weights("affectnet"))
    mix = Counter(classes(generate(tmp_path / "a", train=400, valid=0, test=0, shift=skew).parent))
    share = {name: mix[i] / 400 for i, name in enumerate(EMOTIONS)}
    assert share["happy"] + share["neutral"] > 0.6  # AffectNet: 0.73
    assert share["contempt"] + share["disgust"] < 0.06  # AffectNet: 0.026
    assert share["happy"] > share["neutral"] > share["surprise"] > share["contempt"]
    named = Shift(class_weights=class_weights("happy=5,contempt=0"))
    mix = Counter(classes(generate(tmp_path / "n", train=200, valid=0, test=0, shift=named).parent))
    assert mix[EMOTIONS.index("contempt")] == 0
    assert mix[EMOTIONS.index("happy")] > 2 * mix[EMOTIONS.index("sad")]


def test_the_command_takes_a_class_mix_and_refuses_a_bad_one(tmp_path: Path, make_settings):
    from emoflow import services
    from ml import data_registry
    from ml.config import PROJECT_ROOT

    settings = make_settings(tmp_path / "home")

    def add_batch(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(services.BIN / "emoflow"), "data", "add-batch", "--sample", "--no-trigger",
             "--train", "300", "--valid", "8", "--test", "8", *args],
            env=services.settings_env(settings), capture_output=True, text=True,
            cwd=PROJECT_ROOT, timeout=300,
        )  # fmt: skip

    refused = add_batch("--class-mix", "joy=3")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().startswith(
        "emoflow: error: --class-mix: class mix 'joy=3': 'joy'"
    )
    recorded = add_batch("--class-mix", "affectnet")
    assert recorded.returncode == 0, recorded.stderr
    revision = data_registry.revision(settings, "r1")
    train = revision.counts["train"]["classes"]
    assert (train["happy"] + train["neutral"]) / 300 > 0.6, train
    assert train["contempt"] + train["disgust"] < 18, train
    assert "class_mix=affectnet" in revision.source


def test_prefix_and_seed_keep_batches_apart(tmp_path: Path) -> None:
    a = generate(tmp_path / "a", train=2, valid=1, test=1, seed=0, prefix="new-a").parent
    b = generate(tmp_path / "b", train=2, valid=1, test=1, seed=0, prefix="new-b").parent
    c = generate(tmp_path / "c", train=2, valid=1, test=1, seed=1, prefix="new-a").parent
    names = [{p.name for p in root.rglob("*.png")} for root in (a, b, c)]
    assert not names[0] & names[1] and not names[0] & names[2] and not names[1] & names[2]
    assert "new-a0_train_000000.png" in names[0]  # prefix + seed, then split and index


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        (dict(train=-1), ValueError, "train"),
        (dict(valid=2.5), TypeError, "valid"),
        (dict(test=True), TypeError, "test"),
        (dict(train=0, valid=0, test=0), ValueError, "nothing to generate"),
        (dict(seed=-1), ValueError, "seed"),
        (dict(prefix="a/b"), ValueError, "prefix"),
        (dict(prefix=""), ValueError, "prefix"),
        (dict(prefix="b1"), ValueError, "not end with a digit"),
        (dict(prefix="x" * 33), ValueError, "prefix"),
        (dict(shift={"brightness": 0.1}), TypeError, "Shift"),
    ],
)
def test_bad_arguments_raise_clear_errors(tmp_path: Path, kwargs, error, words) -> None:
    args = dict(train=1, valid=1, test=1) | kwargs
    with pytest.raises(error, match=words):
        generate(tmp_path / "out", **args)
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        (dict(class_weights=[1.0] * 7), "needs 8 weights"),
        (dict(class_weights=[1.0] * 7 + [-1.0]), "'surprise'"),
        (dict(class_weights=[0.0] * 8), "at least one weight"),
        (dict(class_weights=[1.0] * 7 + [float("nan")]), "finite"),
        (dict(brightness=1.5), "brightness"),
        (dict(contrast=0.0), "contrast"),
        (dict(face_scale=0.0), "face_scale"),
        (dict(hue=0.1), "hue"),
    ],
)
def test_bad_shift_is_refused(fields, words) -> None:
    with pytest.raises(ValidationError, match=words):
        Shift(**fields)


def test_existing_non_empty_folder_is_refused_and_left_alone(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=str(out)):
        generate(out, train=2, valid=1, test=1)
    assert files(tmp_path) == {"ds/keep.txt": b"mine"}

    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(FileExistsError, match="file"):
        generate(a_file, train=1, valid=0, test=0)


def test_existing_empty_folder_is_filled(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    out.mkdir()
    assert generate(out, train=1, valid=1, test=1) == out / "data.yaml"
    assert (out / "train/images/s0_train_000000.png").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_failure_midway_leaves_nothing_half_written(tmp_path: Path, monkeypatch) -> None:
    real = sample_data.draw_face
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) > 5:
            raise RuntimeError("disk on fire")
        return real(*args, **kwargs)

    monkeypatch.setattr(sample_data, "draw_face", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        generate(tmp_path / "ds", train=4, valid=4, test=4)
    assert list(tmp_path.iterdir()) == []


def test_draw_face_refuses_unknown_emotion() -> None:
    with pytest.raises(ValueError, match="emotion_id"):
        sample_data.draw_face(np.random.default_rng(0), 8)


def test_ultralytics_finds_the_splits_from_another_working_directory(
    dataset: Path, tmp_path: Path
) -> None:
    """data.yaml has no `path:`; ultralytics must resolve the splits next to the YAML file."""
    script = textwrap.dedent(
        f"""
        import json
        import ultralytics.data.utils as u
        u.check_font = lambda *a, **k: None  # it would try to fetch Arial.ttf from the internet
        data = u.check_det_dataset({str(dataset / "data.yaml")!r})
        print(json.dumps({{k: str(data[k]) for k in ("train", "val", "test", "nc")}}))
        """
    )
    env = os.environ | {
        "YOLO_OFFLINE": "true",
        "YOLO_AUTOINSTALL": "false",
        "YOLO_CONFIG_DIR": str(tmp_path / "ycfg"),
    }
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {
        "train": str((dataset / "train/images").resolve()),
        "val": str((dataset / "valid/images").resolve()),
        "test": str((dataset / "test/images").resolve()),
        "nc": "8",
    }
