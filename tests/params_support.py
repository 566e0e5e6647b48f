"""The project's params.yaml, validated, as the tests' one source of defaults (as in the pipeline)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from ser.params import load

REPO = Path(__file__).resolve().parents[1]
PARAMS = load(REPO / "params.yaml")


def params(**sections: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of params.yaml with some keys of some sections replaced: ``params(audio={...})``."""
    result = copy.deepcopy(PARAMS)
    for name, overrides in sections.items():
        result[name] = {**result[name], **overrides}
    return result


def section(name: str, **overrides: Any) -> dict[str, Any]:
    return {**copy.deepcopy(PARAMS[name]), **overrides}


def model_params(model_type: str, **overrides: Any) -> dict[str, Any]:
    """One model type's block of params.yaml with overrides (e.g. tiny Keras sizes)."""
    return {**copy.deepcopy(PARAMS["model"][model_type]), **overrides}
