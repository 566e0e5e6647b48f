"""A persistent per-clip feature cache: one SQLite file, written only by the parent process.

Entries are keyed by (kind, params hash, clip key): the clip key is the clip's
``pcm_sha256`` (or a derived key for augmented copies) and the params hash covers exactly the
params that shape that feature set, so a params change or a new clip recomputes only what it
must, even though DVC reruns the whole stage.

Writes are SQLite transactions, and a clip's arrays always share one (:meth:`FeatureCache.put_clip`),
so a process killed at any moment leaves every clip whole or absent, never half written. Commits
also come every second or so, so an interrupted run keeps almost all it computed.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    kind TEXT NOT NULL,
    params TEXT NOT NULL,
    clip TEXT NOT NULL,
    dtype TEXT NOT NULL,
    shape TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (kind, params, clip)
)
"""
_QUERY_CHUNK = 500


class FeatureCache:
    FILENAME = "features.sqlite"

    def __init__(self, folder: str | os.PathLike, commit_every: int = 256, commit_seconds: float = 1.0):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / self.FILENAME
        self._db = sqlite3.connect(self.path, timeout=120)
        self._db.execute("PRAGMA journal_mode=WAL")
        # In WAL mode NORMAL loses no committed transaction when the process dies (only, at
        # worst, the last ones on a power cut), and the database stays consistent either way.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)
        self._db.commit()
        self._pending: list[tuple] = []
        self._commit_every = commit_every
        self._commit_seconds = commit_seconds
        self._last_commit = time.monotonic()

    def present(self, kind: str, params: str) -> set[str]:
        rows = self._db.execute("SELECT clip FROM entries WHERE kind = ? AND params = ?", (kind, params))
        return {clip for (clip,) in rows}

    def put_clip(self, clip: str, entries: Iterable[tuple[str, str, np.ndarray]]) -> None:
        """Store ``(kind, params, array)`` entries of one clip; they are committed together."""
        for kind, params, array in entries:
            array = np.ascontiguousarray(array)
            self._pending.append((kind, params, clip, array.dtype.str, json.dumps(array.shape),
                                  array.tobytes()))
        due = time.monotonic() - self._last_commit >= self._commit_seconds
        if len(self._pending) >= self._commit_every or due:
            self.commit()

    def commit(self) -> None:
        if self._pending:
            with self._db:  # one transaction: a failure part-way rolls all of it back
                self._db.executemany("INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?, ?)", self._pending)
            self._pending.clear()
        self._last_commit = time.monotonic()

    def get_many(self, kind: str, params: str, clips: Iterable[str]) -> dict[str, np.ndarray]:
        clips = list(dict.fromkeys(clips))
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(clips), _QUERY_CHUNK):
            chunk = clips[start:start + _QUERY_CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT clip, dtype, shape, data FROM entries WHERE kind = ? AND params = ? "
                f"AND clip IN ({marks})", (kind, params, *chunk))
            for clip, dtype, shape, data in rows:
                found[clip] = np.frombuffer(data, dtype=np.dtype(dtype)).reshape(json.loads(shape))
        return found

    def close(self) -> None:
        self.commit()
        self._db.close()

    def __enter__(self) -> FeatureCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
