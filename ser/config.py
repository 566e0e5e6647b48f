"""Reading ``params.yaml``: the whole file, or one section of it."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import yaml

DEFAULT_PARAMS = "params.yaml"


def load_params(path: str | os.PathLike = DEFAULT_PARAMS) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        params = yaml.safe_load(f) or {}
    if not isinstance(params, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(params).__name__}")
    return params


def section(name: str, path: str | os.PathLike = DEFAULT_PARAMS) -> dict[str, Any]:
    """One top-level section of params.yaml, e.g. ``section("features")``."""
    params = load_params(path)
    if name not in params:
        raise KeyError(f"{path}: no section '{name}'")
    return params[name]


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists are kept as JSON strings (MLflow params)."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            flat[name] = json.dumps(value)
        else:
            flat[name] = value
    return flat


def params_hash(*sections: dict[str, Any]) -> str:
    """A short stable hash of parameter sections: keys caches by the params that shaped them."""
    blob = json.dumps(sections, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def repo_root(start: str | os.PathLike | None = None) -> Path:
    """The nearest folder at or above ``start`` holding params.yaml (DVC_ROOT wins when set)."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / DEFAULT_PARAMS).is_file():
            return folder
    return here
