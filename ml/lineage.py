"""Lineage: which code and which params produced a model."""

from __future__ import annotations

import subprocess

from ml.config import PROJECT_ROOT
from ml.params import Params


def code_commit() -> str:
    """The project's git commit, with `-dirty` when tracked files differ from it."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


def lineage_tags(params: Params) -> dict[str, str]:
    return {"git_commit": code_commit(), "params_digest": params.digest}
