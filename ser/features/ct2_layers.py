"""Shallower copies of a CTranslate2 Whisper encoder: read and write ``model.bin`` by variable.

CTranslate2 returns only the encoder's last layer, while the layers below it carry more of how
something is said than of what is said, which is what emotion recognition needs. CTranslate2
builds an encoder with as many layers as ``model.bin`` holds ``encoder/layer_<i>`` variables, so
a copy without the layers from ``depth`` up is the same encoder stopped at ``depth`` (its final
layer norm kept). The format is CTranslate2's own (``ctranslate2.specs.ModelSpec.save``):

    u32 binary version, string spec name, u32 revision, u32 variable count,
    per variable: string name, u8 rank, u32 dims[rank], u8 dtype, u32 byte count, bytes;
    u32 alias count, per alias: string alias, string variable name.

A string is a u16 length (NUL included), the UTF-8 bytes, a NUL.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterator
from typing import BinaryIO

import numpy as np

_ENCODER_LAYER = re.compile(r"^encoder/layer_(\d+)/")
_COPY_BLOCK = 1 << 22


class ModelFileError(ValueError):
    """``model.bin`` is not a CTranslate2 model file this reader understands."""


def _unpack(handle: BinaryIO, fmt: str) -> tuple:
    size = struct.calcsize(fmt)
    data = handle.read(size)
    if len(data) != size:
        raise ModelFileError(f"{handle.name}: ends in the middle of its header")
    return struct.unpack(fmt, data)


def _read_string(handle: BinaryIO) -> bytes:
    (length,) = _unpack(handle, "<H")
    return handle.read(length)  # NUL included, as written back


def _write_string(handle: BinaryIO, raw: bytes) -> None:
    handle.write(struct.pack("<H", len(raw)))
    handle.write(raw)


def _variables(handle: BinaryIO) -> Iterator[tuple[str, bytes, bytes, int, int]]:
    """(name, its raw string, raw header bytes after the name, offset of the data, data size)
    per variable; the handle is left after the last variable."""
    (count,) = _unpack(handle, "<I")
    for _ in range(count):
        name = _read_string(handle)
        (rank,) = _unpack(handle, "<B")
        dims = handle.read(4 * rank)
        dtype, size = _unpack(handle, "<BI")
        header = struct.pack("<B", rank) + dims + struct.pack("<BI", dtype, size)
        offset = handle.tell()
        yield name.rstrip(b"\0").decode("utf-8"), name, header, offset, size
        handle.seek(offset + size)


def _preamble(handle: BinaryIO) -> bytes:
    start = handle.tell()
    _unpack(handle, "<I")
    _read_string(handle)
    _unpack(handle, "<I")
    end = handle.tell()
    handle.seek(start)
    return handle.read(end - start)


def encoder_depth(model_bin: str | os.PathLike) -> int:
    """How many encoder layers ``model_bin`` holds."""
    with open(model_bin, "rb") as handle:
        _preamble(handle)
        layers = {int(match.group(1)) for name, *_ in _variables(handle)
                  if (match := _ENCODER_LAYER.match(name))}
    if not layers:
        raise ModelFileError(f"{model_bin}: no encoder layers (not a CTranslate2 Whisper model)")
    return max(layers) + 1


def write_truncated(model_bin: str | os.PathLike, target: str | os.PathLike, depth: int) -> None:
    """Copy ``model_bin`` to ``target`` without the encoder layers from ``depth`` up."""
    with open(model_bin, "rb") as source, open(target, "wb") as out:
        out.write(_preamble(source))
        kept = []
        for name, raw_name, header, offset, size in _variables(source):
            match = _ENCODER_LAYER.match(name)
            if match is None or int(match.group(1)) < depth:
                kept.append((raw_name, header, offset, size))
        tail = source.read()  # the aliases
        out.write(struct.pack("<I", len(kept)))
        for raw_name, header, offset, size in kept:
            _write_string(out, raw_name)
            out.write(header)
            source.seek(offset)
            for done in range(0, size, _COPY_BLOCK):
                out.write(source.read(min(_COPY_BLOCK, size - done)))
        out.write(tail)


# CTranslate2's DataType enum, as stored in model.bin.
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def read_variables(model_bin: str | os.PathLike, prefix: str = "") -> dict[str, np.ndarray]:
    """The variables of ``model_bin`` whose names start with ``prefix``, as numpy arrays."""
    found = {}
    with open(model_bin, "rb") as handle:
        _preamble(handle)
        for name, _, header, offset, size in _variables(handle):
            if not name.startswith(prefix):
                continue
            rank = header[0]
            dims = struct.unpack(f"<{rank}I", header[1:1 + 4 * rank])
            dtype = _DTYPES.get(header[1 + 4 * rank])
            if dtype is None:
                raise ModelFileError(f"{model_bin}: variable {name} has a data type this reader does not know "
                                     f"({header[1 + 4 * rank]})")
            handle.seek(offset)
            data = handle.read(size)
            if len(data) != size:
                raise ModelFileError(f"{model_bin}: ends in the middle of variable {name}")
            found[name] = np.frombuffer(data, dtype=dtype).reshape(dims)
            handle.seek(offset + size)
    return found
