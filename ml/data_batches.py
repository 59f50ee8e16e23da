"""Writing revisions: a batch in (`add_batch`), a batch or named files out (`remove`), and the
check of a batch without recording it (`check_batch`).

Each builds the new dataset in a staging copy of the latest revision, can validate it before
anything is recorded (`check`: the validation rules, passed in by the wiring layer, so that a
batch with errors is refused unless forced) and records it all or nothing under the registry's
one lock (`ml.data_writes`).
"""

from __future__ import annotations

import filecmp
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import yaml

from ml import data_writes, layouts
from ml.config import Settings
from ml.data_registry import (
    DATASET,
    META,
    DataRegistryError,
    Revision,
    dvc_repo,
    init,
    pull,
    revision,
    revision_number,
    revision_tags,
    summarise,
)
from ml.dataset_format import (
    LABEL_SUFFIX,
    SPLITS,
    is_image,
    label_path,
    list_images,
    write_data_yaml,
)
from ml.records import DatasetRef, ValidationResult

Check = Callable[[DatasetRef, DatasetRef | None], ValidationResult]
"""Validates a staged dataset (the revision it would become) against the latest revision."""


class BatchRefused(DataRegistryError):
    """The dataset a write would record fails validation; nothing was recorded."""

    def __init__(self, what: str, result: ValidationResult):
        self.result = result
        super().__init__(
            "\n".join([f"{what}: refused, the dataset it would record as {result.revision} has "
                        f"data errors (nothing recorded; --force records it anyway):",
                        *result.errors, f"Data Docs: {result.docs_url}"])
        )  # fmt: skip

    def __reduce__(self):
        return (type(self), (str(self).split(":", 1)[0], self.result))


def _merge_batch(batch: Path, dataset: Path) -> int:
    """Copy a batch in the canonical layout into the dataset; returns the number of new images."""
    added = 0
    for split in SPLITS:
        if not (batch / split / "images").is_dir():
            continue
        for kind in ("images", "labels"):
            (dataset / split / kind).mkdir(parents=True, exist_ok=True)
        for image in sorted((batch / split / "images").iterdir()):
            label = batch / split / "labels" / f"{image.stem}.txt"
            for src, dst in ((image, dataset / split / "images" / image.name),
                             (label, dataset / split / "labels" / label.name)):  # fmt: skip
                if not src.exists():
                    continue  # an image without a label is a background image
                if dst.exists():
                    if filecmp.cmp(src, dst, shallow=False):
                        continue
                    raise DataRegistryError(
                        f"{split}/{src.parent.name}/{src.name}: a different file with this name is "
                        f"already in the dataset; rename the batch's files (names must be unique)"
                    )
                shutil.copy2(src, dst)
                added += src is image
    write_data_yaml(dataset)
    return added


def add_batch(
    settings: Settings,
    source: Path,
    note: str,
    *,
    check: Check | None = None,
    force: bool = False,
) -> Revision:
    """Append a batch (any layout `ml.layouts` reads) and record it as a new revision (pushed).

    The latest revision plus the batch is staged and, with `check`, validated first: errors
    refuse the batch (`BatchRefused`) unless `force`, which records it and says so."""
    with _batch_staged(settings, Path(source)) as (tag, base, staging, added):
        forced = _checked(f"batch {source}", staging, tag, base, settings, check, force)
        meta = {"source": note, "added_images": added, "forced_errors": forced,
                "warnings": _capped(_unpaired_files(Path(source)))}  # fmt: skip
        message = f"{tag}: +{added} images from {note}" + _forced_note(forced)
        return _record(settings, Path(settings.registry_repo), tag, message, meta)


def check_batch(settings: Settings, source: Path, check: Check) -> ValidationResult:
    """Validate the dataset `add_batch` would record, recording nothing."""
    with _batch_staged(settings, Path(source)) as (tag, base, staging, _):
        return check(_staged_ref(staging, tag), _pulled(settings, base))


def remove(
    settings: Settings,
    reason: str,
    *,
    batch: str | None = None,
    files: Sequence[str] = (),
    check: Check | None = None,
    force: bool = False,
) -> Revision:
    """Record a new revision without a batch's files (`batch`: the revision that added them) or
    without `files` (dataset paths of images or labels; each takes its partner along). Earlier
    revisions keep their files and stay reproducible."""
    if not reason.strip():
        raise DataRegistryError("say why the data goes (--reason): it is kept in the revision")
    if (batch is None) == (not files):
        raise DataRegistryError("name either a batch (--batch rN) or files (--files), not both")
    repo_path = init(settings)
    with _writing(settings, repo_path) as (tag, base):
        if base is None:
            raise DataRegistryError(f"{repo_path}: the registry has no revision yet")
        current = pull(settings, base.name).path
        doomed = _batch_files(settings, batch, current) if batch else _named(current, files)
        what = f"batch {batch}" if batch else f"{len(doomed)} named files"
        staging = data_writes.fresh_staging(repo_path)
        _copy_dataset(current, staging, leave_out=doomed)
        removed = sum(is_image(path) for path in doomed)
        forced = _checked(f"removing {what}", staging, tag, base, settings, check, force)
        meta = {"source": f"removed {what}: {reason}", "removed_images": removed,
                "forced_errors": forced}  # fmt: skip
        message = f"{tag}: -{removed} images ({what} removed: {reason})" + _forced_note(forced)
        return _record(settings, repo_path, tag, message, meta)


@contextmanager
def _writing(settings: Settings, repo_path: Path) -> Iterator[tuple[str, Revision | None]]:
    """The lock around a write, the name of the revision it makes and the latest one; errors
    of git, DVC and the disk become one-line DataRegistryErrors."""
    from dvc.exceptions import DvcException

    try:
        data_writes.exclude_work_folders(repo_path)
        with data_writes.locked(repo_path):
            tags = revision_tags(repo_path)
            yield f"r{len(tags) + 1}", revision(settings, tags[-1]) if tags else None
    except data_writes.DataWriteError as exc:
        raise DataRegistryError(str(exc)) from None
    except DvcException as exc:
        raise DataRegistryError(
            f"DVC failed ({type(exc).__name__}: {exc}); remote {settings.remote_url}; "
            f"nothing was recorded"
        ) from None
    except OSError as exc:
        if isinstance(exc, FileNotFoundError | FileExistsError):
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        raise DataRegistryError(f"{exc.strerror or exc}{where}; nothing was recorded") from None


@contextmanager
def _batch_staged(
    settings: Settings, source: Path
) -> Iterator[tuple[str, Revision | None, Path, int]]:
    """Under the write lock: the name the batch's revision would get, the latest revision, the
    staging folder holding both, and how many images the batch adds."""
    if not source.is_dir():
        raise DataRegistryError(f"{source}: batch folder not found")
    repo_path = init(settings)
    with _writing(settings, repo_path) as (tag, base):
        yield tag, base, *_stage_batch(settings, repo_path, base, source)


def _stage_batch(
    settings: Settings, repo_path: Path, base: Revision | None, source: Path
) -> tuple[Path, int]:
    """The latest revision's dataset plus the batch, in the staging folder; new image count."""
    staging = data_writes.fresh_staging(repo_path)
    if base is not None:
        _copy_dataset(pull(settings, base.name).path, staging)
    settings.home.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="batch-", dir=settings.home) as tmp:
        try:
            layouts.to_canonical(source, Path(tmp) / "batch")
        except layouts.LayoutError as exc:
            raise DataRegistryError(str(exc)) from None
        added = _merge_batch(Path(tmp) / "batch", staging)
    if added == 0:
        raise DataRegistryError(f"{source}: the batch adds no new images to the dataset")
    return staging, added


def _checked(
    what: str,
    staging: Path,
    tag: str,
    base: Revision | None,
    settings: Settings,
    check: Check | None,
    force: bool,
) -> int:
    """Run `check` on the staged dataset; the errors it found when `force` records them anyway."""
    if check is None:
        return 0
    result = check(_staged_ref(staging, tag), _pulled(settings, base))
    if result.ok:
        return 0
    if not force:
        raise BatchRefused(what, result)
    return len(result.errors)


def _staged_ref(staging: Path, tag: str) -> DatasetRef:
    return DatasetRef(revision=tag, commit="", digest="", path=staging)


def _pulled(settings: Settings, base: Revision | None) -> DatasetRef | None:
    return pull(settings, base.name) if base else None


def _forced_note(forced: int) -> str:
    return f" [recorded with --force despite {forced} data errors]" if forced else ""


def _capped(lines: list[str], limit: int = 50) -> list[str]:
    return lines if len(lines) <= limit else [*lines[:limit], f"... and {len(lines) - limit} more"]


def _record(settings: Settings, repo_path: Path, tag: str, message: str, meta: dict) -> Revision:
    def store(dataset: Path) -> None:
        write_data_yaml(dataset)
        repo = dvc_repo(repo_path)
        repo.add(str(dataset))
        try:
            repo.push(targets=[str(dataset)])
        except Exception as exc:  # DVC's own errors and the remote's (OSError, botocore, ...)
            remote = repo.config["remote"].get(repo.config["core"].get("remote"), {})
            raise DataRegistryError(
                f"DVC remote {remote.get('url', '?')} is unreachable or refused the push "
                f"({type(exc).__name__}: {exc}); nothing was recorded"
            ) from None

    staging = repo_path / data_writes.STAGING
    meta = {"revision": tag, **meta, "counts": summarise(staging)}
    text = yaml.safe_dump(meta, sort_keys=False)
    data_writes.record(repo_path, DATASET, tag, message, store, {META: text})
    return revision(settings, tag)


def _dataset_files(root: Path) -> list[str]:
    """Dataset-relative paths of every image and label file of a dataset folder."""
    found = []
    for split in SPLITS:
        found += [str(p.relative_to(root)) for p in list_images(root / split / "images")]
        labels = root / split / "labels"
        found += [str(p.relative_to(root)) for p in sorted(labels.glob(f"*{LABEL_SUFFIX}"))]
    return found


def _copy_dataset(source: Path, out: Path, leave_out: frozenset[str] = frozenset()) -> None:
    for relative in _dataset_files(source):
        if relative not in leave_out:
            (out / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / relative, out / relative)


def _batch_files(settings: Settings, name: str, current: Path) -> frozenset[str]:
    """The files batch `name` added that the latest revision still holds unchanged."""
    rev = revision(settings, name)
    if rev.added_images == 0:
        raise DataRegistryError(f"{name} added no images ({rev.source}); nothing to take out")
    number = revision_number(name)
    added = pull(settings, name).path
    before = set(_dataset_files(pull(settings, f"r{number - 1}").path)) if number > 1 else set()
    doomed = frozenset(
        path for path in _dataset_files(added)
        if path not in before and (current / path).is_file()
        and filecmp.cmp(added / path, current / path, shallow=False)
    )  # fmt: skip
    if not doomed:
        raise DataRegistryError(f"none of {name}'s files is in the latest revision any more")
    return doomed


def _named(current: Path, files: Sequence[str]) -> frozenset[str]:
    """The named dataset paths with their partners (an image's label, a label's image)."""
    present = set(_dataset_files(current))
    doomed = set()
    for entry in files:
        path = Path(entry.strip())
        if str(path) not in present:
            raise DataRegistryError(
                f"{entry}: not in the latest revision (expected a path like "
                f"train/images/x.png or train/labels/x.txt)"
            )
        image = current / path
        if image.parent.name == "labels":
            doomed |= {p for p in present if Path(p).parent.parent == path.parent.parent
                       and Path(p).parent.name == "images" and Path(p).stem == path.stem}  # fmt: skip
        else:
            label = label_path(image)
            doomed |= {str(label.relative_to(current))} & present
        doomed.add(str(path))
    return frozenset(doomed)


def _unpaired_files(source: Path) -> list[str]:
    """Images without a label file (recorded as background images, no face) and label files
    without an image (left out), for a batch in a YOLO layout; one line per file, paths as in
    `source`. Other layouts pair images and labels themselves: none."""
    source = Path(source)
    layout = layouts.detect_layout(source)
    if layout not in ("affectnet", "yolo"):
        return []
    lines = []
    for folder in layouts.yolo_splits(source, layout).images.values():
        images = list_images(folder, recursive=True)
        stems = {image.with_suffix("") for image in images}
        for image in images:
            if not layouts.yolo_label_path(image).is_file():
                lines.append(f"{_shown(image, source)}: no label file; recorded as a background "
                             f"image (no face)")  # fmt: skip
        label_root = layouts.yolo_label_path(folder / "x.png").parent
        for label in sorted(label_root.rglob(f"*{LABEL_SUFFIX}")) if label_root.is_dir() else []:
            image_stem = Path(str(label).replace(str(label_root), str(folder), 1)).with_suffix("")
            if label.name != "classes.txt" and image_stem not in stems:
                lines.append(f"{_shown(label, source)}: no image with this name; left out")
    return lines


def _shown(path: Path, source: Path) -> str:
    return str(path.relative_to(source)) if path.is_relative_to(source) else str(path)
