"""Lineage: which code and which params produced a model."""

from __future__ import annotations

import hashlib
import os
import subprocess

from ml.config import PROJECT_ROOT
from ml.params import Params

UNKNOWN = "unknown"
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
