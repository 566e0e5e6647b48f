"""The on-disk layout of a feature folder (``data/features/``, ``data/augmented/``): a few large
files, never one per clip, written by streaming rows so memory stays bounded.

- ``functionals.parquet`` / ``egemaps.parquet`` / ``whisper.parquet``: ``utterance_id`` + one
  float32 column per value
- ``sequences/index.parquet`` (``utterance_id``, ``row``) + ``sequences/<kind>.npy`` (N x T x D
  float32; ``whisper_frames`` N x T x depths x d_model float16)
- ``failures.parquet``: ``utterance_id``, ``problem``
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ser.features.sequences import SEQUENCE_KINDS

TABLE_SETS = ("functionals", "egemaps", "whisper")
# Every frame-sequence kind a feature folder can hold, with its stored dtype.
SEQUENCE_DTYPES = {**{kind: np.dtype(np.float32) for kind in SEQUENCE_KINDS},
                   "whisper_frames": np.dtype(np.float16)}
FAILURES_FILE = "failures.parquet"
INFO_FILE = "info.json"
SEQUENCES_DIR = "sequences"


class TableWriter:
    """Appends (ids, matrix) batches to a Parquet file as row groups."""

    def __init__(self, path: str | os.PathLike, columns: Sequence[str]):
        self.path = Path(path)
        self.columns = list(columns)
        self.schema = pa.schema([pa.field("utterance_id", pa.string())]
                                + [pa.field(name, pa.float32()) for name in self.columns])
        self._writer = pq.ParquetWriter(self.path, self.schema)

    def write(self, ids: Sequence[str], matrix: np.ndarray) -> None:
        if matrix.shape != (len(ids), len(self.columns)):
            raise ValueError(f"{self.path}: batch of shape {matrix.shape}, expected "
                             f"({len(ids)}, {len(self.columns)})")
        arrays = [pa.array(list(ids), pa.string())]
        arrays += [pa.array(matrix[:, j], pa.float32()) for j in range(matrix.shape[1])]
        self._writer.write_table(pa.Table.from_arrays(arrays, schema=self.schema))

    def close(self) -> None:
        self._writer.close()  # a file with the schema and no rows when nothing was written


def write_failures(path: str | os.PathLike, failures: Sequence[tuple[str, str]]) -> None:
    table = pa.table({"utterance_id": pa.array([u for u, _ in failures], pa.string()),
                      "problem": pa.array([p for _, p in failures], pa.string())})
    pq.write_table(table, path)


def _missing(folder: Path, what: str) -> FileNotFoundError:
    return FileNotFoundError(f"{folder}: no {what}; run the features/augment stage with that set "
                             f"enabled in features.sets")


def load_table(folder: str | os.PathLike, set_name: str) -> pd.DataFrame:
    """``functionals`` or ``egemaps`` of a feature folder, indexed by utterance_id (float32)."""
    if set_name not in TABLE_SETS:
        raise ValueError(f"load_table: '{set_name}' is not a table set; choose one of {list(TABLE_SETS)}")
    folder = Path(folder)
    path = folder / f"{set_name}.parquet"
    if not path.is_file():
        raise _missing(folder, path.name)
    return pd.read_parquet(path).set_index("utterance_id")


def load_sequences(folder: str | os.PathLike, kind: str) -> tuple[list[str], np.ndarray]:
    """``(utterance_ids, array[N, T, ...])`` of one sequence kind (memory-mapped, read-only)."""
    if kind not in SEQUENCE_DTYPES:
        raise ValueError(f"load_sequences: unknown kind '{kind}'; choose one of {list(SEQUENCE_DTYPES)}")
    folder = Path(folder)
    index_path = folder / SEQUENCES_DIR / "index.parquet"
    array_path = folder / SEQUENCES_DIR / f"{kind}.npy"
    if not index_path.is_file() or not array_path.is_file():
        raise _missing(folder, f"{SEQUENCES_DIR}/{kind}.npy")
    index = pd.read_parquet(index_path).sort_values("row")
    array = np.load(array_path, mmap_mode="r")
    if len(index) != array.shape[0]:
        raise ValueError(f"{array_path}: {array.shape[0]} rows but the index lists {len(index)}")
    return index["utterance_id"].tolist(), array


def load_failures(folder: str | os.PathLike) -> pd.DataFrame:
    path = Path(folder) / FAILURES_FILE
    if not path.is_file():
        raise _missing(Path(folder), FAILURES_FILE)
    return pd.read_parquet(path)
