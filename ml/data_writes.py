"""How the data registry writes a revision: under one lock, from a staging copy, all or nothing.

Every write (``add_batch``, ``remove``) runs inside :func:`locked`, which holds an exclusive
``flock`` on ``.git/emoflow.lock`` of the registry repository and first repairs what an
interrupted write left (:func:`recover`). The new dataset is built in a staging folder beside
the working tree; :func:`record` then swaps it in, adds and pushes it with DVC, and commits
and tags the pointer. A journal (``.git/emoflow-write.json``: the commit before the write and
the tag it makes) says how far a write got: if its tag exists the write finished and only
cleaning up is left; otherwise git is reset to the commit before and the previous dataset
folder is put back. So an error, a full disk or a killed process leaves the registry as it
was, and the batch can simply be added again.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK = ".git/emoflow.lock"
JOURNAL = ".git/emoflow-write.json"
STAGING = ".emoflow-staging"  # the dataset being built (excluded from git)
PREVIOUS = ".emoflow-previous"  # the dataset folder before the swap, until the write is done
LOCK_WAIT_SECONDS = 600.0


class DataWriteError(RuntimeError):
    """A registry write failed and was undone; the message says what failed."""


def git(repo: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=emoflow", "-c", "user.email=emoflow@localhost",
         *args],
        capture_output=True, text=True,
    )  # fmt: skip
    if result.returncode != 0:
        raise DataWriteError(f"git {' '.join(args)} in {repo}: {result.stderr.strip()}")
    return result.stdout.strip()


def exclude_work_folders(repo: Path) -> None:
    """Keep the staging folders out of `git status` (they never reach a commit anyway)."""
    exclude = repo / ".git" / "info" / "exclude"
    exclude.parent.mkdir(parents=True, exist_ok=True)
    text = exclude.read_text() if exclude.exists() else ""
    missing = [f"/{name}/" for name in (STAGING, PREVIOUS) if f"/{name}/" not in text]
    if missing:
        exclude.write_text(text + "".join(f"{line}\n" for line in missing))


@contextmanager
def locked(repo: Path, wait_seconds: float = LOCK_WAIT_SECONDS) -> Iterator[None]:
    """Hold the registry's write lock (waiting for another writer), after repairing whatever an
    interrupted write left behind."""
    path = repo / LOCK
    with open(path, "a") as handle:
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise DataWriteError(
                        f"{path}: another emoflow command has been writing to the data registry "
                        f"for over {wait_seconds:.0f} s; try again when it has finished"
                    ) from None
                time.sleep(0.2)
        try:
            recover(repo)
            yield
        finally:
            shutil.rmtree(repo / STAGING, ignore_errors=True)
            fcntl.flock(handle, fcntl.LOCK_UN)


def recover(repo: Path) -> None:
    """Finish cleaning up after a write that got as far as its tag; undo one that did not."""
    journal = repo / JOURNAL
    if journal.exists():
        written = json.loads(journal.read_text())
        if not git(repo, "tag", "--list", written["tag"]):
            previous, dataset = repo / PREVIOUS, repo / written["dataset"]
            if previous.is_dir():  # first, as it frees the space a full disk needs for git
                shutil.rmtree(dataset, ignore_errors=True)
                os.replace(previous, dataset)
            git(repo, "reset", "--quiet", "--hard", written["head"])
        journal.unlink()
    for name in (STAGING, PREVIOUS):
        shutil.rmtree(repo / name, ignore_errors=True)


def fresh_staging(repo: Path) -> Path:
    staging = repo / STAGING
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    return staging


def record(
    repo: Path,
    dataset: str,
    tag: str,
    message: str,
    store: Callable[[Path], None],
    files: dict[str, str],
) -> None:
    """Swap the staging folder in as `dataset`, `store` it (DVC add and push), write `files`
    (path -> text), commit them with the pointer and tag the commit `tag` — or, on any error,
    put everything back as it was and raise DataWriteError."""
    journal = repo / JOURNAL
    head = git(repo, "rev-parse", "HEAD")
    journal.write_text(json.dumps({"head": head, "tag": tag, "dataset": dataset}))
    try:
        if (repo / dataset).exists():
            os.replace(repo / dataset, repo / PREVIOUS)
        os.replace(repo / STAGING, repo / dataset)
        store(repo / dataset)
        for path, text in files.items():
            (repo / path).write_text(text)
        git(repo, "add", f"{dataset}.dvc", *files, str(Path(dataset).parent / ".gitignore"))
        git(repo, "commit", "--quiet", "-m", message)
        git(repo, "tag", tag)
    except BaseException:  # the caller says what failed (a full disk is an OSError there)
        recover(repo)
        raise
    recover(repo)  # the tag exists: only the previous dataset folder is left to remove
