"""Lineage: which code and which params produced a model, and which model it was built on."""

from __future__ import annotations

import hashlib
import os
import subprocess

from pydantic import BaseModel

from ml.config import PROJECT_ROOT, Settings
from ml.params import Params

UNKNOWN = "unknown"
PARENT_TAG, PARENT_RUN_TAG = "parent_version", "parent_run"
"""Run tags of a warm start or replay: the version (and its run) it was built on."""
BUILD_COMMIT_VARIABLE = "EMOFLOW_GIT_COMMIT"
"""Set by the image build (`docker compose build` passes GIT_COMMIT, see Dockerfile), where the
code has no .git folder to ask."""


def code_commit() -> str:
    """The code's identity: the git commit, with `-dirty-<digest of the diff>` when tracked
    files differ from it (so two different edits never share an identity); without a git
    repository, the commit the build baked in; else `unknown`, which no earlier run matches."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), *args], capture_output=True, text=True, check=True
        ).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        diff = git("diff", "HEAD", "--binary")
    except (subprocess.CalledProcessError, FileNotFoundError):
        return os.environ.get(BUILD_COMMIT_VARIABLE, "").strip() or UNKNOWN
    if not diff:
        return commit
    return f"{commit}-dirty-{hashlib.sha256(diff.encode()).hexdigest()[:12]}"


def lineage_tags(params: Params) -> dict[str, str]:
    return {"git_commit": code_commit(), "params_digest": params.digest}


class Link(BaseModel):
    """One model version in a lineage chain: what its run trained on and from."""

    version: int
    run_id: str
    data_revision: str
    init: str  # what the run started from: champion (the parent's weights) or scratch
    data: str  # what it trained on: cumulative or replay (since the parent's revision)
    parent: int | None  # the version it was built on


def chain(settings: Settings, version: int) -> list[Link]:
    """`version`, the version it was built on, that one's, ..., newest first; the last one
    was built on nothing (trained from scratch on the cumulative data)."""
    from ml import registry

    client = registry.client(settings)
    links: list[Link] = []
    following: int | None = version
    while following is not None and all(link.version != following for link in links):
        run_id = client.get_model_version(settings.model_name, str(following)).run_id
        run = client.get_run(run_id)
        tags, params = run.data.tags, run.data.params
        parent = int(tags[PARENT_TAG]) if tags.get(PARENT_TAG, "").isdigit() else None
        links.append(Link(
            version=following, run_id=run_id, data_revision=tags.get("data_revision", UNKNOWN),
            init=params.get("init_used", "scratch"), data=params.get("data_used", "cumulative"),
            parent=parent,
        ))  # fmt: skip
        following = parent
    return links
