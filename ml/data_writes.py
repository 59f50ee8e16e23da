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

A registry with a git remote (``origin``: `Settings.data_git_remote`, which every worker clones)
is first made the remote's copy (:func:`sync`, under the lock), and a write ends by pushing
``main`` and its tag in one atomic push (:func:`publish`). A push that fails (the remote is
unreachable, or another clone recorded that revision first) undoes the local commit and tag:
a revision exists only once the remote has it.
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
REMOTE = "origin"  # the registry's git remote, where `Settings.data_git_remote` names one
MIRRORED = ("+refs/heads/main:refs/remotes/origin/main", "+refs/tags/*:refs/tags/*")


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


def remote_url(repo: Path) -> str | None:
    """The URL of the registry's git remote; None for a registry without one."""
    try:
        return git(repo, "remote", "get-url", REMOTE)
    except DataWriteError:
        return None


def sync(repo: Path, *, reset: bool = False) -> None:
    """Fetch the git remote's `main` and tags (the revisions; a local tag the remote lacks, left
    by a write killed before its push, goes); with `reset`, also move the local `main` there.
    No-op for a registry without a remote."""
    url = remote_url(repo)
    if url is None:
        return
    try:
        git(repo, "fetch", "--quiet", "--prune", "--no-write-fetch-head", REMOTE, *MIRRORED)
    except DataWriteError as exc:
        raise DataWriteError(
            f"the data registry's git remote {url} could not be fetched from ({_one_line(exc)})"
        ) from None
    if reset:
        git(repo, "reset", "--quiet", "--hard", f"refs/remotes/{REMOTE}/main")


def publish(repo: Path, tag: str) -> None:
    """Push `main` and `tag` to the git remote in one atomic push; if it fails, delete the
    local tag (the caller's recovery then undoes the commit) and raise DataWriteError."""
    url = remote_url(repo)
    if url is None:
        return
    try:
        git(repo, "push", "--quiet", "--atomic", REMOTE, "HEAD:refs/heads/main", f"refs/tags/{tag}")
    except DataWriteError as exc:
        git(repo, "tag", "--delete", tag)
        raise DataWriteError(
            f"{tag}: the data registry's git remote {url} refused or missed the push, so nothing "
            f"was recorded (another writer may have recorded {tag} first: try again): "
            f"{_one_line(exc)}"
        ) from None


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


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
            sync(repo, reset=True)
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
    (path -> text), commit them with the pointer, tag the commit `tag` and push both to the git
    remote, if any — or, on any error, put everything back as it was and raise."""
    journal = repo / JOURNAL
    head = git(repo, "rev-parse", "HEAD")
    journal.write_text(json.dumps({"head": head, "tag": tag, "dataset": dataset}))
    try:
        if (repo / dataset).exists():
            os.replace(repo / dataset, repo / PREVIOUS)
        (repo / dataset).parent.mkdir(exist_ok=True)  # git keeps no empty folder: a fresh clone
        os.replace(repo / STAGING, repo / dataset)
        store(repo / dataset)
        for path, text in files.items():
            (repo / path).write_text(text)
        git(repo, "add", f"{dataset}.dvc", *files, str(Path(dataset).parent / ".gitignore"))
        git(repo, "commit", "--quiet", "-m", message)
        git(repo, "tag", tag)
        publish(repo, tag)
    except BaseException:  # the caller says what failed (a full disk is an OSError there)
        recover(repo)
        raise
    recover(repo)  # the tag exists: only the previous dataset folder is left to remove
