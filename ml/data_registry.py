"""The data registry: a git repository whose tags are data revisions, its data in a DVC remote.

Layout of the registry repository (``Settings.registry_repo``)::

    data/emotions.dvc        pointer committed to git, one commit + tag ``rN`` per revision
    data/emotions.meta.yaml  what the revision holds (counts per split and class) and its source
    data/emotions/           the dataset (YOLO layout), ignored by git, pushed to the DVC remote
      data.yaml
      {train,valid,test}/{images,labels}/

A revision is named by its tag; its identity is the tag plus the DVC content digest of the
dataset folder. Pulling a revision copies exactly those files into a workspace folder.

Revisions are written by `ml.data_batches` (a batch in, a batch or files out), all or nothing
under one lock (`ml.data_writes`); this module reads them and creates the registry.

With a git remote (`Settings.data_git_remote`, e.g. a bare repository) each worker has its own
clone: `init` clones the remote (or creates the registry and pushes it there), the first read
on a worker clones it, and reads fetch its tags first (at most every `FETCH_EVERY_SECONDS` in a
process, so once per step); writes push (`ml.data_writes`). The data itself comes from the DVC
remote, so workers share nothing but the two remotes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from datetime import datetime
from pathlib import Path

import yaml
from pydantic import BaseModel

from ml import data_writes
from ml.config import EMOTIONS, Settings
from ml.dataset_format import SPLITS, is_image, label_path, list_images, read_label
from ml.records import DatasetRef

DATASET = "data/emotions"
META = f"{DATASET}.meta.yaml"
FETCH_EVERY_SECONDS = 5.0
_fetched: dict[str, float] = {}  # registry path -> when this process last fetched its remote


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


def dvc_repo(path: Path):
    from dvc.repo import Repo

    return Repo(str(path))


def _is_path(url: str) -> bool:
    """A git remote named by a local path (not ssh://, https://, file:// or host:path)."""
    return "://" not in url and ":" not in url


def _clone(url: str, repo_path: Path) -> None:
    """Clone the registry's git remote to `repo_path` (through a temporary name, so a process
    cloning beside this one finds either nothing or a whole clone)."""
    repo_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{repo_path.name}-", dir=repo_path.parent))
    try:
        _git(tmp, "clone", "--quiet", str(Path(url).absolute()) if _is_path(url) else url, "clone")
        try:
            os.rename(tmp / "clone", repo_path)
        except OSError:
            if not (repo_path / ".git").is_dir():
                raise
    except DataRegistryError as exc:
        raise DataRegistryError(
            f"the data registry's git remote {url}: {' '.join(str(exc).split())}"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    data_writes.exclude_work_folders(repo_path)


def _local(settings: Settings) -> Path:
    """The local registry, its tags fresh from the git remote where one is set (cloned on the
    first read of a worker; fetched at most every FETCH_EVERY_SECONDS)."""
    repo_path = Path(settings.registry_repo)
    remote = settings.data_git_remote
    if remote is None:
        return repo_path
    last = _fetched.get(str(repo_path))
    if not (repo_path / ".git").is_dir():
        _clone(remote, repo_path)
    elif last is None or time.monotonic() - last >= FETCH_EVERY_SECONDS:
        try:
            data_writes.sync(repo_path)
        except data_writes.DataWriteError as exc:
            raise DataRegistryError(str(exc)) from None
    _fetched[str(repo_path)] = time.monotonic()
    return repo_path


def init(settings: Settings) -> Path:
    """Create the registry repository and its default DVC remote; no-op when it exists. With a
    git remote: clone it, or, if it holds no registry yet, create the registry and push it there
    (a remote that is a local path, absent or an empty folder, is made a bare repository first)."""
    repo_path = Path(settings.registry_repo)
    remote = settings.data_git_remote
    if remote and not (repo_path / ".git").is_dir():
        bare = Path(remote)
        if _is_path(remote) and not any(bare.glob("*")):
            bare.mkdir(parents=True, exist_ok=True)  # absent, or an empty volume
            _git(bare, "init", "--quiet", "--bare", "--initial-branch", "main")
        _clone(remote, repo_path)  # an empty remote clones to an empty repository
    if (repo_path / ".dvc").is_dir():
        return repo_path
    from dvc.repo import Repo

    repo_path.mkdir(parents=True, exist_ok=True)
    if not (repo_path / ".git").is_dir():
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
    if remote:
        _git(repo_path, "push", "--quiet", "--set-upstream", data_writes.REMOTE, "main")
    return repo_path


def _digest(pointer_text: str, where: str) -> str:
    outs = (yaml.safe_load(pointer_text) or {}).get("outs") or [{}]
    md5 = outs[0].get("md5")
    if not md5:
        raise DataRegistryError(f"{where}: DVC pointer has no md5")
    return md5.removesuffix(".dir")


def revision(settings: Settings, name: str = "latest") -> Revision:
    """Resolve a revision name (a tag, or `latest`) to its commit and content digest."""
    repo_path = _local(settings)
    if not (repo_path / ".dvc").is_dir():
        raise DataRegistryError(f"{repo_path}: no data registry here; run `emoflow data init`")
    if name == "latest":
        tags = revision_tags(repo_path)
        if not tags:
            raise DataRegistryError(f"{repo_path}: the registry has no revision yet")
        name = tags[-1]
    try:
        commit = _git(repo_path, "rev-list", "-n", "1", f"refs/tags/{name}")
    except DataRegistryError:
        known = ", ".join(revision_tags(repo_path)) or "none"
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


def revision_tags(repo_path: Path) -> list[str]:
    tags = _git(repo_path, "tag", "--list", "r*").split()
    return sorted((t for t in tags if t[1:].isdigit()), key=lambda t: int(t[1:]))


def revisions(settings: Settings) -> list[Revision]:
    repo_path = _local(settings)
    if not (repo_path / ".dvc").is_dir():
        return []
    return [revision(settings, tag) for tag in revision_tags(repo_path)]


def split_image_names(settings: Settings, name: str, split: str) -> set[str]:
    """File names of the images in split `split` of revision `name`, read from its DVC
    manifest (from the cache, else the remote), pulling no data; none without that folder."""
    from dvc.repo import Repo

    rev = revision(settings, name)
    where = f"{DATASET}/{split}/images"
    try:
        entries = Repo.ls(str(_local(settings)), path=where, rev=rev.commit)
    except FileNotFoundError:
        return set()
    except Exception as exc:  # DVC's errors and the remote's (OSError, botocore, ...)
        raise DataRegistryError(f"{rev.name}: could not list {where} ({type(exc).__name__}: "
                                f"{exc})") from exc  # fmt: skip
    return {e["path"] for e in entries if is_image(e["path"]) and not e["path"].startswith(".")}


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
