"""The training list: which train images a run learns from, and how often.

`cumulative` takes every train image of the revision. `replay` takes every image added since
the parent's revision (the train images the parent's revision lacks) and a class-balanced
sample of the earlier ones, drawn from the seed. `balance: sample` then lists the images of
rare classes more often. The result is a text file of image paths and a data.yaml whose `val`
and `test` are the revision's full splits (ultralytics reads a .txt list as a split): nothing
is copied. An image's class is its first box's emotion (a face crop holds one), or
`background` for an image without a box (never repeated).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import yaml
from pydantic import BaseModel

from ml.config import EMOTIONS
from ml.dataset_format import label_path, list_images, read_label
from ml.params import TrainParams

BACKGROUND = "background"


class TrainList(BaseModel):
    data_yaml: Path  # train: the list; val, test: the revision's full splits
    images: list[str]  # train-split file names, once per listing (sorted)
    new: int  # images added since the parent's revision (all listed)
    earlier: int  # earlier images sampled
    repeats: int  # extra listings from balancing
    classes: dict[str, int]  # listings per class


def image_class(image: Path) -> str:
    label = label_path(image)
    lines = read_label(label) if label.is_file() else []
    if not lines:
        return BACKGROUND
    class_id = lines[0].fields[0]
    return (
        EMOTIONS[int(class_id)]
        if class_id.isdigit() and int(class_id) < len(EMOTIONS)
        else BACKGROUND
    )


def balanced_sample(
    by_class: dict[str, list[str]], size: int, rng: np.random.Generator
) -> list[str]:
    """`size` names (at most all of them) spread as evenly over the classes as they allow: a
    class with fewer images than its share gives all it has, the others share the rest."""
    pools = {
        c: [names[i] for i in rng.permutation(len(names))] for c, names in sorted(by_class.items())
    }
    taken = dict.fromkeys(pools, 0)
    left = min(size, sum(map(len, pools.values())))
    while left:
        open_classes = [c for c in pools if taken[c] < len(pools[c])]
        quota = left // len(open_classes)
        if quota == 0:  # fewer left than classes: one more each for a random few
            chosen = rng.choice(len(open_classes), size=left, replace=False)
            open_classes, quota = [open_classes[i] for i in sorted(chosen)], 1
        for c in open_classes:
            step = min(quota, len(pools[c]) - taken[c])
            taken[c] += step
            left -= step
    return [name for c in pools for name in pools[c][: taken[c]]]


def repeat_rare(names: list[str], classes: dict[str, str], max_repeat: float,
                rng: np.random.Generator) -> list[str]:  # fmt: skip
    """Each image of class c listed n_max / n_c times on average (n: images per class, n_max
    the largest class's), at most `max_repeat`; the fraction is drawn per image."""
    counts = Counter(classes[n] for n in names if classes[n] != BACKGROUND)
    if not counts:
        return list(names)
    largest = max(counts.values())
    listed = []
    for name in names:
        c = classes[name]
        factor = 1.0 if c == BACKGROUND else min(max_repeat, largest / counts[c])
        whole = int(factor)
        listed += [name] * (whole + int(rng.random() < factor - whole))
    return listed


def build(dataset: Path, out_dir: Path, params: TrainParams, base: Path | None) -> TrainList:
    """The training list of `dataset` (a revision's folder) under `out_dir`; `base` is the
    parent's revision folder for `replay` (None: every train image)."""
    rng = np.random.default_rng(params.seed)
    images = list_images(dataset / "train" / "images")
    classes = {image.name: image_class(image) for image in images}
    if base is None:
        chosen, new, earlier = list(classes), len(classes), 0
    else:
        before = {image.name for image in list_images(base / "train" / "images")}
        fresh = [name for name in classes if name not in before]
        by_class: dict[str, list[str]] = {}
        for name in classes:
            if name in before:
                by_class.setdefault(classes[name], []).append(name)
        known = sum(map(len, by_class.values()))
        size = (
            params.replay_size
            if isinstance(params.replay_size, int)
            else round(params.replay_size * known)
        )
        sample = balanced_sample(by_class, size, rng)
        chosen, new, earlier = fresh + sample, len(fresh), len(sample)
    listed = (
        repeat_rare(chosen, classes, params.balance_max_repeat, rng)
        if params.balance == "sample"
        else chosen
    )
    if not listed:
        raise ValueError(f"{dataset}: the training list is empty (no train images to learn from)")
    listed.sort()
    out_dir.mkdir(parents=True, exist_ok=True)
    train_txt = out_dir / "train.txt"
    images_dir = (dataset / "train" / "images").resolve()
    train_txt.write_text("".join(f"{images_dir / name}\n" for name in listed), encoding="utf-8")
    data = yaml.safe_load((dataset / "data.yaml").read_text(encoding="utf-8"))
    data.update(train=str(train_txt.resolve()), val=str((dataset / "valid" / "images").resolve()),
                test=str((dataset / "test" / "images").resolve()))  # fmt: skip
    data_yaml = out_dir / "data.yaml"
    data_yaml.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    mix = Counter(classes[name] for name in listed)
    return TrainList(
        data_yaml=data_yaml, images=listed, new=new, earlier=earlier,
        repeats=len(listed) - len(chosen), classes=dict(sorted(mix.items())),
    )  # fmt: skip
