"""The schema of ``metadata.parquet`` (one row per clip) and its validation.

Rows of quarantined clips keep whatever could be learnt about them, so label and audio
columns are nullable; for ``status == "ok"`` rows they are all required.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ser.data.corpora.base import CANONICAL_EMOTIONS, GENDERS, INTENSITIES

STATUSES = ("ok", "quarantined")

METADATA_SCHEMA = pa.schema([
    pa.field("utterance_id", pa.string(), nullable=False),
    pa.field("corpus", pa.string(), nullable=False),
    pa.field("path", pa.string(), nullable=False),
    pa.field("speaker", pa.string()),
    pa.field("gender", pa.string()),
    pa.field("emotion", pa.string()),
    pa.field("emotion_raw", pa.string()),
    pa.field("intensity", pa.string()),
    pa.field("statement", pa.string()),
    pa.field("language", pa.string(), nullable=False),
    pa.field("sample_rate", pa.int32()),
    pa.field("channels", pa.int32()),
    pa.field("duration_s", pa.float64()),
    pa.field("pcm_sha256", pa.string()),
    pa.field("duplicate_of", pa.string()),
    pa.field("status", pa.string(), nullable=False),
    pa.field("problem", pa.string()),
])
COLUMNS: tuple[str, ...] = tuple(METADATA_SCHEMA.names)
# Required on every ok row: what training and splitting rely on. Gender may be unknown (a user
# corpus whose manifest does not say): target gender leaves those clips out, splits deal them apart.
REQUIRED_WHEN_OK = ("speaker", "emotion", "emotion_raw", "intensity", "statement",
                    "sample_rate", "channels", "duration_s", "pcm_sha256")


class SchemaError(ValueError):
    """metadata that breaks the contract; the message lists every violation found."""


def to_table(frame: pd.DataFrame) -> pa.Table:
    """Validate ``frame`` and convert it to a table with exactly :data:`METADATA_SCHEMA`."""
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise SchemaError(f"metadata lacks columns {missing}")
    frame = frame.loc[:, list(COLUMNS)]
    try:
        table = pa.Table.from_pandas(frame, schema=METADATA_SCHEMA, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
        raise SchemaError(f"metadata does not fit the schema: {exc}") from None
    validate(table)
    return table


def validate(data: pa.Table | pd.DataFrame) -> None:
    """Raise :class:`SchemaError` listing every contract violation in ``data``."""
    if isinstance(data, pa.Table):
        if data.schema.remove_metadata() != METADATA_SCHEMA:
            raise SchemaError(f"schema differs from METADATA_SCHEMA:\n{data.schema}")
        frame = data.to_pandas()
    else:
        frame = data
    problems: list[str] = []

    def check(mask: pd.Series, message: str) -> None:
        if mask.any():
            examples = ", ".join(map(str, frame.loc[mask, "utterance_id"].head(5)))
            problems.append(f"{int(mask.sum())} rows {message} (e.g. {examples})")

    for column in ("utterance_id", "corpus", "path", "language", "status"):
        check(frame[column].isna(), f"have no {column}")
    duplicated = frame["utterance_id"].duplicated(keep=False) & frame["utterance_id"].notna()
    check(duplicated, "share an utterance_id")
    check(~frame["status"].isin(STATUSES), f"have a status outside {STATUSES}")
    ok = frame["status"] == "ok"
    for column in REQUIRED_WHEN_OK:
        check(ok & frame[column].isna(), f"are ok but have no {column}")
    check(ok & frame["problem"].notna(), "are ok but carry a problem")
    check(~ok & frame["problem"].isna(), "are quarantined without a problem")
    check(frame["emotion"].notna() & ~frame["emotion"].isin(CANONICAL_EMOTIONS),
          "have a non-canonical emotion")
    check(frame["gender"].notna() & ~frame["gender"].isin(GENDERS), "have a gender outside female/male")
    check(frame["intensity"].notna() & ~frame["intensity"].isin(INTENSITIES),
          f"have an intensity outside {INTENSITIES}")
    prefixed = pd.Series([isinstance(s, str) and s.startswith(f"{c}_")
                          for s, c in zip(frame["speaker"], frame["corpus"])], index=frame.index)
    check(frame["speaker"].notna() & ~prefixed, "have a speaker not prefixed by its corpus")
    check(ok & ~(frame["duration_s"] > 0), "are ok but have no positive duration")
    known_ok = set(frame.loc[ok, "utterance_id"])
    linked = frame["duplicate_of"].notna()
    check(linked & ~frame["duplicate_of"].isin(known_ok), "are duplicates of a row that is not an ok row")
    check(linked & (frame["duplicate_of"] == frame["utterance_id"]), "are duplicates of themselves")
    if problems:
        raise SchemaError("metadata breaks its contract:\n  " + "\n  ".join(problems))


def write_metadata(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Validate and write atomically (a reader never sees a half-written file)."""
    path = Path(path)
    table = to_table(frame)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    pq.write_table(table, partial)
    os.replace(partial, path)
    return path


def read_metadata(path: str | os.PathLike, *, only_ok: bool = False) -> pd.DataFrame:
    """Read and validate metadata.parquet; ``only_ok`` keeps the rows usable for training."""
    table = pq.read_table(path)
    validate(table)
    frame = table.to_pandas()
    return frame[frame["status"] == "ok"].reset_index(drop=True) if only_ok else frame


def keep_ids_unique(row: dict, seen: dict[str, str], rows: list[dict], origin: str, problem: str) -> None:
    """Quarantine ``row`` under a suffixed id (``<id>__2``, ...) when an earlier row from another
    ``origin`` has its id: ids must stay unique, and the clip is kept in the table with ``problem``.

    A suffix that is itself taken (a file named ``<id>__2`` of its own, or an earlier suffixed
    row) moves on to the next free number; every id given out is recorded in ``seen``."""
    first = seen.setdefault(row["utterance_id"], origin)
    if first != origin:
        base = row["utterance_id"]
        number = sum(1 for r in rows if r["utterance_id"].startswith(base + "__")) + 2
        while f"{base}__{number}" in seen:
            number += 1
        row.update(utterance_id=f"{base}__{number}", status="quarantined", problem=f"{problem} {first}")
        seen[row["utterance_id"]] = origin
