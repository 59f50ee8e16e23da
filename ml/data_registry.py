"""The data registry: a git repository whose tags are data revisions, its data in a DVC remote.

Layout of the registry repository (``Settings.registry_repo``)::

    data/emotions.dvc        pointer committed to git, one commit + tag ``rN`` per revision
    data/emotions.meta.yaml  what the revision holds (counts per split and class) and its source
    data/emotions/           the dataset (YOLO layout), ignored by git, pushed to the DVC remote
      data.yaml
      {train,valid,test}/{images,labels}/

A revision is named by its tag; its identity is the tag plus the DVC content digest of the
dataset folder. Pulling a revision copies exactly those files into a workspace folder.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import tempfile
from datetime import datetime
from pathlib import Path

import yaml
from pydantic import BaseModel

from ml import layouts
from ml.config import EMOTIONS, Settings
from ml.dataset_format import SPLITS, label_path, list_images, read_label, write_data_yaml
from ml.records import DatasetRef

DATASET = "data/emotions"
META = f"{DATASET}.meta.yaml"


class DataRegistryError(RuntimeError):
    """The registry or a batch is not as expected; the message says what and where."""


class Revision(BaseModel):
    name: str
    commit: str
    digest: str
    date: str
    message: str
    source: str = ""  # where the batch that made this revision came from
    added_images: int = 0
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
    result = subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=emoflow", "-c", "user.email=emoflow@localhost",
         *args],
        capture_output=True, text=True,
    )  # fmt: skip
    if result.returncode != 0:
        raise DataRegistryError(f"git {' '.join(args)} in {repo}: {result.stderr.strip()}")
    return result.stdout.strip()


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


def add_batch(settings: Settings, source: Path, note: str) -> Revision:
    """Append a batch (any layout `ml.layouts` reads) and record it as a new revision (pushed)."""
    source = Path(source)
    if not source.is_dir():
        raise DataRegistryError(f"{source}: batch folder not found")
    repo_path = init(settings)
    dataset = repo_path / DATASET
    if (repo_path / f"{DATASET}.dvc").exists() and not dataset.is_dir():
        _dvc_repo(repo_path).checkout(targets=[str(dataset)])
    with tempfile.TemporaryDirectory(prefix="batch-", dir=settings.home) as tmp:
        try:
            layouts.to_canonical(source, Path(tmp) / "batch")
        except layouts.LayoutError as exc:
            raise DataRegistryError(str(exc)) from None
        added = _merge_batch(Path(tmp) / "batch", dataset)
    if added == 0:
        raise DataRegistryError(f"{source}: the batch adds no new images to the dataset")
    repo = _dvc_repo(repo_path)
    repo.add(str(dataset))
    repo.push(targets=[str(dataset)])
    name = f"r{len(revisions(settings)) + 1}"
    meta = {"revision": name, "source": note, "added_images": added, "counts": summarise(dataset)}
    (repo_path / META).write_text(yaml.safe_dump(meta, sort_keys=False))
    _git(repo_path, "add", f"{DATASET}.dvc", META, "data/.gitignore")
    _git(repo_path, "commit", "--quiet", "-m", f"{name}: +{added} images from {note}")
    _git(repo_path, "tag", name)
    return revision(settings, name)


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
        added_images=meta.get("added_images", 0), counts=meta.get("counts", {}),
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
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return DatasetRef(revision=rev.name, commit=rev.commit, digest=rev.digest, path=workspace)
