"""Files of the encoder's model cache: their checksum, and folders put in place whole."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def sha256_of(path: str | os.PathLike) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def install_folder(scratch: Path, target: Path) -> None:
    """Move the finished folder ``scratch`` to ``target`` by renames only, so no process ever
    reads a half-written file there."""
    if target.exists():
        for child in scratch.iterdir():
            os.replace(child, target / child.name)
    else:
        try:
            os.replace(scratch, target)
        except OSError:  # another process renamed its own copy into place first
            pass
