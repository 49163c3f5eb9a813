"""Files written all at once (a crash, a kill or a concurrent writer never leaves half a file) and JSON."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from utils import UserError

if TYPE_CHECKING:
    pass


def atomic_write(path: str | Path, content: str | bytes | Callable[[str], object]) -> None:
    """Write a file all at once: to a temporary file beside it, then rename over it.

    content is text, bytes, or a function that writes a file at the path it is given (torch.save,
    savefig). A crash, a kill or a concurrent writer never leaves a half-written file at path.
    """
    path = Path(path)
    # A folder of its own per write keeps concurrent writers apart, while the file in it keeps a fixed
    # name: torch.save records the file's name inside its archive, so the bytes stay reproducible.
    tmp_dir = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    tmp = tmp_dir / f"{path.name}.tmp"
    try:
        if callable(content):
            content(str(tmp))
        else:
            tmp.write_bytes(content.encode() if isinstance(content, str) else content)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def write_json(path: str | Path, data) -> None:
    atomic_write(path, json.dumps(data, indent=2) + "\n")


def read_json(path: str | Path):
    """A JSON file's contents; an unreadable or invalid file is a UserError naming it."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is not a readable JSON file ({e}); rerun what wrote it") from None


def git_commit(repo: Path) -> str:
    """The commit checked out in repo (short hash), marked where tracked files differ from it; 'unknown' outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit} with uncommitted changes" if changed else commit
