"""Dataset layouts users bring, converted to emoflow's one canonical layout.

Canonical layout (what :func:`ml.data_batches.add_batch` merges)::

    <out>/data.yaml                      names = ml.config.EMOTIONS, nc = 8
    <out>/{train,valid,test}/images/     image files, copied byte for byte
    <out>/{train,valid,test}/labels/     one ``class cx cy w h`` line per face, ids = EMOTIONS index

Accepted source layouts (:func:`detect_layout` says which one a folder holds):

``affectnet``
    AffectNet in YOLO format as published on Kaggle (``fatihkgg/affectnet-yolo-format``): a
    ``YOLO_format/`` folder (the source may be it or the folder that holds it) with
    ``{train,valid,test}/{images,labels}``. Class names come from its ``data.yaml`` when present
    (``Anger`` ... ``Surprise``), else the published order; ids are mapped through the names.
``yolo``
    Any YOLO dataset with a ``data.yaml``: ``names`` as a list or a ``{id: name}`` dict; split keys
    ``train``, ``val`` or ``valid``, ``test``; paths relative to the YAML's folder, to its ``path:``
    key (itself relative to the YAML's folder) or absolute; the ``../split/images`` form of
    Roboflow exports also resolves, as in ultralytics. Labels of ``.../images/x.png`` are in
    ``.../labels/x.txt`` (ultralytics' rule: the last ``/images/`` becomes ``/labels/``).
``class-folders``
    ``<split>/<emotion>/*.jpg|png`` with split folders ``train``, ``val``/``valid``, ``test``; one
    face per image, labelled with a whole-image box ``id 0.5 0.5 1.0 1.0``.
``label-studio``
    A Label Studio JSON export (the file itself), its images beside it: see `ml.label_studio`.

Output image names: YOLO layouts keep the file name (images found in sub-folders of an images
folder get ``<sub>__<name>``); class folders always get ``<emotion folder>__<name>``, so the same
file name in two emotion folders cannot collide. Names that would still collide are an error.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ml.config import EMOTIONS
from ml.dataset_format import SPLITS, list_images, read_label, write_data_yaml

SPLIT_FOLDERS: dict[str, str] = {"train": "train", "val": "valid", "valid": "valid", "test": "test"}
"""Split folder (or data.yaml key) -> canonical split name."""

AFFECTNET_NAMES: tuple[str, ...] = (
    "Anger", "Contempt", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise",
)  # fmt: skip
"""Class names of the published AffectNet YOLO set, used when its data.yaml is missing."""

BACKGROUND = "background"
"""Key in the counts of :func:`to_canonical` for images that hold no face."""

ALIASES: dict[str, str] = {
    "anger": "anger", "angry": "anger",
    "contempt": "contempt", "contemptuous": "contempt",
    "disgust": "disgust", "disgusted": "disgust",
    "fear": "fear", "fearful": "fear", "afraid": "fear", "scared": "fear",
    "happy": "happy", "happiness": "happy", "joy": "happy", "joyful": "happy",
    "neutral": "neutral",
    "sad": "sad", "sadness": "sad",
    "surprise": "surprise", "surprised": "surprise",
}  # fmt: skip
"""Accepted emotion names (lower case) -> the EMOTIONS name. ``calm`` is deliberately absent:
datasets such as RAVDESS label calm and neutral as two different classes."""

LAYOUT_DIR = "YOLO_format"
DATA_YAML_NAMES = ("data.yaml", "data.yml")


class LayoutError(ValueError):
    """A source folder is not in an accepted layout; the message names the file and the rule."""


def canonical_emotion(name: str) -> int:
    """Class id (index in EMOTIONS) of an emotion name or alias, case-insensitive."""
    key = str(name).strip().lower()
    if key not in ALIASES:
        raise LayoutError(
            f"unknown emotion name {name!r}; expected one of {', '.join(EMOTIONS)} "
            "(or an alias such as angry, happiness, surprised)"
        )
    return EMOTIONS.index(ALIASES[key])


def detect_layout(source: Path) -> str:
    """Which layout ``source`` holds: ``"affectnet"``, ``"yolo"``, ``"class-folders"``, or
    ``"label-studio"`` (a JSON export file)."""
    source = Path(source)
    if source.is_file() and source.suffix.lower() == ".json":
        return "label-studio"
    if not source.is_dir():
        raise LayoutError(f"{source}: dataset folder not found")
    if source.name == LAYOUT_DIR or (source / LAYOUT_DIR).is_dir():
        return "affectnet"
    if _data_yaml(source) is not None:
        return "yolo"
    if _class_split_dirs(source):
        return "class-folders"
    hint = ""
    if any((source / name / "images").is_dir() for name in SPLIT_FOLDERS):
        hint = " (it has <split>/images but no data.yaml naming the classes)"
    raise LayoutError(
        f"{source}: no known dataset layout{hint}; looked for a {LAYOUT_DIR}/ folder (AffectNet "
        f"YOLO), a data.yaml (YOLO dataset) and {{train,val,valid,test}}/<emotion>/ image "
        "folders (class folders)"
    )


def to_canonical(source: Path, out: Path) -> dict[str, dict[str, int]]:
    """Write ``source`` into ``out`` in the canonical layout; returns images per split per emotion.

    ``out`` must not exist or be an empty folder. Everything is written into a temporary sibling
    folder that is renamed to ``out`` at the end, so an error leaves nothing behind. Counts: an
    image counts once under each emotion it shows, images without a face under ``background``.
    """
    source, out = Path(source), Path(out)
    layout = detect_layout(source)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LayoutError(f"{out}: output folder must not exist or be empty")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        if layout == "label-studio":
            from ml.label_studio import LabelStudioError
            from ml.label_studio import to_canonical as from_label_studio

            try:
                counts = from_label_studio(source, tmp, canonical_emotion)
            except LabelStudioError as exc:
                raise LayoutError(str(exc)) from None
        elif layout == "class-folders":
            counts = _convert_class_folders(source, tmp)
        else:
            counts = _convert_yolo(yolo_splits(source, layout), tmp)
        write_data_yaml(tmp)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return counts


# --- YOLO layouts ---------------------------------------------------------------------------


@dataclass
class _YoloSplits:
    """Image folder per canonical split, and the source class id -> emoflow class id map."""

    images: dict[str, Path]
    id_map: dict[int, int]
    names_file: Path | None


def _data_yaml(folder: Path) -> Path | None:
    return next((folder / n for n in DATA_YAML_NAMES if (folder / n).is_file()), None)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise LayoutError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise LayoutError(f"{path}: expected a mapping with names and train/val/test paths")
    return raw


def _id_map(names: Any, where: Path | str) -> dict[int, int]:
    """Source class id -> emoflow class id, from a names list or {id: name} dict."""
    if isinstance(names, list | tuple):
        items = list(enumerate(names))
    elif isinstance(names, dict):
        try:
            items = [(int(k), v) for k, v in names.items()]
        except (TypeError, ValueError) as exc:
            raise LayoutError(f"{where}: names keys must be class ids (0, 1, ...)") from exc
    else:
        raise LayoutError(f"{where}: expected `names` as a list or a {{id: name}} mapping")
    id_map = {}
    for source_id, name in items:
        try:
            id_map[source_id] = canonical_emotion(name)
        except LayoutError as exc:
            raise LayoutError(f"{where}: names[{source_id}]: {exc}") from None
    return id_map


def yolo_splits(source: Path, layout: str) -> _YoloSplits:
    if layout == "affectnet":
        root = source if source.name == LAYOUT_DIR else source / LAYOUT_DIR
        yaml_path = _data_yaml(root)
        names = _read_yaml(yaml_path).get("names") if yaml_path else list(AFFECTNET_NAMES)
        if names is None:
            raise LayoutError(f"{yaml_path}: no `names` key")
        images = {}
        for folder, split in SPLIT_FOLDERS.items():
            if (root / folder / "images").is_dir():
                _add_split(images, split, root / folder / "images", root / folder)
        if not images:
            raise LayoutError(f"{root}: expected {{train,valid,test}}/images folders")
        return _YoloSplits(images, _id_map(names, yaml_path or root), yaml_path)

    yaml_path = _data_yaml(source)
    assert yaml_path is not None
    data = _read_yaml(yaml_path)
    if "names" not in data:
        raise LayoutError(f"{yaml_path}: no `names` key (the class names)")
    id_map = _id_map(data["names"], yaml_path)
    base = yaml_path.parent
    if data.get("path"):
        base = Path(str(data["path"])).expanduser()
        base = base if base.is_absolute() else yaml_path.parent / base
    images = {}
    for key, split in SPLIT_FOLDERS.items():
        if not data.get(key):
            continue
        value = data[key]
        for entry in value if isinstance(value, list) else [value]:
            _add_split(images, split, _resolve(base, str(entry), yaml_path, key), yaml_path)
    if not images:
        raise LayoutError(f"{yaml_path}: names no split; expected train, val (or valid), test keys")
    return _YoloSplits(images, id_map, yaml_path)


def _add_split(images: dict[str, Path], split: str, folder: Path, where: Path) -> None:
    if split in images and images[split].resolve() != folder.resolve():
        raise LayoutError(f"{where}: both `val` and `valid` are given ({images[split]}, {folder})")
    images[split] = folder


def _resolve(base: Path, entry: str, yaml_path: Path, key: str) -> Path:
    """A split path from data.yaml, resolved as ultralytics does (incl. Roboflow's ``../``)."""
    path = Path(entry).expanduser()
    if not path.is_absolute():
        path = base / entry
        if not path.exists() and entry.startswith("../"):
            path = base / entry[3:]
    if not path.is_dir():
        raise LayoutError(f"{yaml_path}: {key}: {entry!r} -> {path} is not a folder of images")
    return path


def yolo_label_path(image: Path) -> Path:
    """ultralytics' rule: the last ``/images/`` in the path becomes ``/labels/``, suffix ``.txt``
    (with no ``/images/`` in the path, the label lies beside the image)."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return Path(sb.join(str(image).rsplit(sa, 1))).with_suffix(".txt")


def _convert_yolo(splits: _YoloSplits, out: Path) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        if split not in splits.images:
            continue
        folder = splits.images[split]
        counts[split] = _empty_counts()
        taken: dict[str, Path] = {}
        images_out, labels_out = _split_dirs(out, split)
        for image in list_images(folder, recursive=True):
            name = "__".join(image.relative_to(folder).parts)
            _claim(taken, name, image)
            shutil.copyfile(image, images_out / name)
            label = yolo_label_path(image)
            ids: set[int] = set()
            if label.is_file():
                text, ids = _remap_label(label, splits.id_map, splits.names_file)
                (labels_out / Path(name).with_suffix(".txt").name).write_text(text)
            _count(counts[split], ids)
    return counts


def _remap_label(
    label: Path, id_map: dict[int, int], names_file: Path | None
) -> tuple[str, set[int]]:
    """Label text with class ids remapped, and the emoflow ids it holds.

    Blank lines are dropped; lines without five fields, with a non-integer class, or with a
    class id outside emoflow's 0..7 that the names do not cover are copied as they are:
    validation reports them with file and line. An uncovered id inside 0..7 is an error here,
    since copying it would silently read as another emotion."""
    lines, ids = [], set()
    for line in read_label(label):
        number, fields = line.number, line.fields
        source_id = _class_id(fields[0]) if len(fields) == 5 else None
        if source_id is None or (source_id not in id_map and not 0 <= source_id < len(EMOTIONS)):
            lines.append(line.text)
            continue
        if source_id not in id_map:
            raise LayoutError(
                f"{label}:{number}: class id {source_id} is not in "
                f"{names_file.name if names_file else 'the dataset'} names "
                f"(known ids: {', '.join(map(str, sorted(id_map))) or 'none'})"
            )
        ids.add(id_map[source_id])
        lines.append(" ".join([str(id_map[source_id]), *fields[1:]]))
    return "".join(f"{line}\n" for line in lines), ids


def _class_id(text: str) -> int | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value.is_integer() else None


# --- class folders --------------------------------------------------------------------------


def _class_split_dirs(source: Path) -> dict[str, Path]:
    """Canonical split -> split folder holding emotion sub-folders (not images/labels)."""
    found: dict[str, Path] = {}
    for folder, split in SPLIT_FOLDERS.items():
        path = source / folder
        if not path.is_dir():
            continue
        subdirs = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
        if not subdirs or any(p.name in ("images", "labels") for p in subdirs):
            continue
        if split in found:
            raise LayoutError(f"{source}: both val/ and valid/ are present; keep one")
        found[split] = path
    return found


def _convert_class_folders(source: Path, out: Path) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    split_dirs = _class_split_dirs(source)
    for split in (s for s in SPLITS if s in split_dirs):
        split_dir = split_dirs[split]
        counts[split] = _empty_counts()
        taken: dict[str, Path] = {}
        images_out, labels_out = _split_dirs(out, split)
        for folder in sorted(p for p in split_dir.iterdir() if p.is_dir() and p.name[0] != "."):
            try:
                class_id = canonical_emotion(folder.name)
            except LayoutError as exc:
                raise LayoutError(f"{folder}: {exc}") from None
            for image in list_images(folder):
                name = f"{folder.name}__{image.name}"
                _claim(taken, name, image)
                shutil.copyfile(image, images_out / name)
                (labels_out / Path(name).with_suffix(".txt").name).write_text(
                    f"{class_id} 0.5 0.5 1.0 1.0\n"
                )
                _count(counts[split], {class_id})
    return counts


# --- shared helpers -------------------------------------------------------------------------


def _claim(taken: dict[str, Path], name: str, image: Path) -> None:
    """Refuse two source images that would get the same name (case-insensitively) in a split."""
    other = taken.setdefault(name.lower(), image)
    if other != image:
        raise LayoutError(f"{image}: its canonical name {name} is already taken by {other}")


def _split_dirs(out: Path, split: str) -> tuple[Path, Path]:
    images, labels = out / split / "images", out / split / "labels"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    return images, labels


def _empty_counts() -> dict[str, int]:
    return dict.fromkeys((*EMOTIONS, BACKGROUND), 0)


def _count(counts: dict[str, int], ids: set[int]) -> None:
    for class_id in ids:
        counts[EMOTIONS[class_id]] += 1
    if not ids:
        counts[BACKGROUND] += 1
