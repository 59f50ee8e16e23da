"""The data registry: a git repository whose tags are data revisions, its data in a DVC remote.

Layout of the registry repository (``Settings.registry_repo``)::

    data/emotions.dvc        pointer committed to git, one commit + tag ``rN`` per revision
    data/emotions.meta.yaml  what the revision holds (counts per split and class) and its source
    data/emotions/           the dataset (YOLO layout), ignored by git, pushed to the DVC remote
      data.yaml
      {train,valid,test}/{images,labels}/

A revision is named by its tag; its identity is the tag plus the DVC content digest of the
dataset folder. Pulling a revision copies exactly those files into a workspace folder.

Writes (a batch in, a batch or files out) build the new dataset in a staging copy of the
latest revision, can check it before anything is recorded (`check`: the validation rules,
passed in by the wiring layer) and record it all or nothing under one lock (ml.data_writes).
"""

from __future__ import annotations

import filecmp
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import yaml
from pydantic import BaseModel

from ml import data_writes, layouts
from ml.config import EMOTIONS, Settings
from ml.dataset_format import (
    LABEL_SUFFIX,
    SPLITS,
    is_image,
    label_path,
    list_images,
    read_label,
    write_data_yaml,
)
from ml.records import DatasetRef, ValidationResult

DATASET = "data/emotions"
META = f"{DATASET}.meta.yaml"

Check = Callable[[DatasetRef, DatasetRef | None], ValidationResult]
"""Validates a staged dataset (the revision it would become) against the latest revision."""


class DataRegistryError(RuntimeError):
    """The registry or a batch is not as expected; the message says what and where."""


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


class Revision(BaseModel):
    name: str
    commit: str
    digest: str
    date: str
    message: str
    source: str = ""  # where the batch that made this revision came from
    added_images: int = 0
    removed_images: int = 0
    forced_errors: int = 0  # recorded with --force despite this many validation errors
    warnings: list[str] = []  # e.g. images without labels, labels without images in the batch
    counts: dict[str, dict] = {}  # split -> {"images", "boxes", "background", "classes": {...}}


def summarise(dataset: Path) -> dict[str, dict]:
    """Images, boxes, background images and boxes per emotion, for each split of a dataset."""
    counts = {}
    for split in SPLITS:
        images = list_images(dataset / split / "images")
        classes = dict.fromkeys(EMOTIONS, 0)
        boxes = background = 0
        for image in images:
            label = label_path(image)
            ids = [line.fields[0] for line in read_label(label)] if label.exists() else []
            background += not ids
            for class_id in ids:
                boxes += 1
                if class_id.isdigit() and int(class_id) < len(EMOTIONS):
                    classes[EMOTIONS[int(class_id)]] += 1
        counts[split] = {"images": len(images), "boxes": boxes, "background": background,
                         "classes": classes}  # fmt: skip
    return counts


def _git(repo: Path, *args: str) -> str:
    try:
        return data_writes.git(repo, *args)
    except data_writes.DataWriteError as exc:
        raise DataRegistryError(str(exc)) from None


def _dvc_repo(path: Path):
    from dvc.repo import Repo

    return Repo(str(path))


def init(settings: Settings) -> Path:
    """Create the registry repository and its default DVC remote; no-op when it exists."""
    repo_path = Path(settings.registry_repo)
    if (repo_path / ".dvc").is_dir():
        return repo_path
    from dvc.repo import Repo

    repo_path.mkdir(parents=True, exist_ok=True)
    _git(repo_path, "init", "--quiet", "--initial-branch", "main")
    repo = Repo.init(str(repo_path))
    with repo.config.edit() as conf:
        conf["core"]["analytics"] = False
        conf["core"]["check_update"] = False
        conf["core"]["autostage"] = True
        conf["remote"]["storage"] = {"url": settings.remote_url}
        conf["core"]["remote"] = "storage"
    (repo_path / "data").mkdir(exist_ok=True)
    data_writes.exclude_work_folders(repo_path)
    _git(repo_path, "add", "-A")
    _git(repo_path, "commit", "--quiet", "-m", "Create the emoflow data registry")
    return repo_path


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
    source = Path(source)
    if not source.is_dir():
        raise DataRegistryError(f"{source}: batch folder not found")
    repo_path = init(settings)
    with _writing(settings, repo_path) as (tag, base):
        staging, added = _stage_batch(settings, repo_path, base, source)
        forced = _checked(f"batch {source}", staging, tag, base, settings, check, force)
        meta = {"source": note, "added_images": added, "forced_errors": forced,
                "warnings": _capped(layouts.unpaired_files(source))}  # fmt: skip
        message = f"{tag}: +{added} images from {note}" + _forced_note(forced)
        return _record(settings, repo_path, tag, message, meta)


def check_batch(settings: Settings, source: Path, check: Check) -> ValidationResult:
    """Validate the dataset `add_batch` would record, recording nothing."""
    source = Path(source)
    if not source.is_dir():
        raise DataRegistryError(f"{source}: batch folder not found")
    repo_path = init(settings)
    with _writing(settings, repo_path) as (tag, base):
        staging, _ = _stage_batch(settings, repo_path, base, source)
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
            tags = _tags(repo_path)
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
        repo = _dvc_repo(repo_path)
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


def _digest(pointer_text: str, where: str) -> str:
    outs = (yaml.safe_load(pointer_text) or {}).get("outs") or [{}]
    md5 = outs[0].get("md5")
    if not md5:
        raise DataRegistryError(f"{where}: DVC pointer has no md5")
    return md5.removesuffix(".dir")


def revision(settings: Settings, name: str = "latest") -> Revision:
    """Resolve a revision name (a tag, or `latest`) to its commit and content digest."""
    repo_path = Path(settings.registry_repo)
    if not (repo_path / ".dvc").is_dir():
        raise DataRegistryError(f"{repo_path}: no data registry here; run `emoflow data init`")
    if name == "latest":
        tags = _tags(repo_path)
        if not tags:
            raise DataRegistryError(f"{repo_path}: the registry has no revision yet")
        name = tags[-1]
    try:
        commit = _git(repo_path, "rev-list", "-n", "1", f"refs/tags/{name}")
    except DataRegistryError:
        known = ", ".join(_tags(repo_path)) or "none"
        raise DataRegistryError(f"unknown data revision {name!r} (known: {known})") from None
    pointer = _git(repo_path, "show", f"{commit}:{DATASET}.dvc")
    meta = yaml.safe_load(_git(repo_path, "show", f"{commit}:{META}")) or {}
    date, message = _git(repo_path, "log", "-1", "--format=%cI%n%s", commit).split("\n", 1)
    return Revision(
        name=name, commit=commit, digest=_digest(pointer, f"{name}:{DATASET}.dvc"),
        date=date, message=message, source=meta.get("source", ""),
        added_images=meta.get("added_images", 0), removed_images=meta.get("removed_images", 0),
        forced_errors=meta.get("forced_errors", 0), warnings=meta.get("warnings", []),
        counts=meta.get("counts", {}),
    )  # fmt: skip


def revision_at(settings: Settings, moment: datetime) -> Revision:
    """The newest revision recorded at or before `moment` (timezone-aware): what "latest" meant
    then, so a run created at `moment` reads the same revision on every retry."""
    recorded = [rev for rev in revisions(settings) if datetime.fromisoformat(rev.date) <= moment]
    if not recorded:
        raise DataRegistryError(
            f"{settings.registry_repo}: no data revision was recorded by {moment.isoformat()}"
        )
    return recorded[-1]


def revision_number(name: str) -> int:
    """3 for r3: revisions are numbered in the order they were recorded."""
    if not (name.startswith("r") and name[1:].isdigit()):
        raise DataRegistryError(f"{name!r} is not a data revision name (r1, r2, ...)")
    return int(name[1:])


def _tags(repo_path: Path) -> list[str]:
    tags = _git(repo_path, "tag", "--list", "r*").split()
    return sorted((t for t in tags if t[1:].isdigit()), key=lambda t: int(t[1:]))


def revisions(settings: Settings) -> list[Revision]:
    repo_path = Path(settings.registry_repo)
    if not (repo_path / ".dvc").is_dir():
        return []
    return [revision(settings, tag) for tag in _tags(repo_path)]


def pull(settings: Settings, name: str = "latest") -> DatasetRef:
    """Fetch a revision from the DVC remote into its own workspace folder (reused if present)."""
    rev = revision(settings, name)
    workspace = settings.workspaces_dir / f"{rev.name}-{rev.digest[:12]}"
    if not (workspace / "data.yaml").is_file():
        from dvc.repo import Repo

        settings.workspaces_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{rev.name}-", dir=settings.workspaces_dir))
        try:
            Repo.get(settings.registry_repo, DATASET, out=str(tmp / "data"), rev=rev.commit)
            os.replace(tmp / "data", workspace)
        except Exception as exc:  # DVC's errors and the remote's (OSError, botocore, ...)
            raise DataRegistryError(
                f"{rev.name}: could not be fetched from the DVC remote of {settings.registry_repo}"
                f" (unreachable, or it lacks the data: {type(exc).__name__}: {exc})"
            ) from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return DatasetRef(revision=rev.name, commit=rev.commit, digest=rev.digest, path=workspace)
