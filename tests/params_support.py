"""The project's params.yaml, validated, as the tests' one source of defaults (as in the pipeline).

``PARAMS`` is the file as written (a plain mapping the tests change freely); the library types
what it is handed (``ser.params.typed``), and ``typed_params`` gives the object the stages pass.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from ser.params import Params, load, validate

REPO = Path(__file__).resolve().parents[1]
PARAMS = load(REPO / "params.yaml").as_dict()


def params(**sections: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of params.yaml with some keys of some sections replaced: ``params(audio={...})``."""
    result = copy.deepcopy(PARAMS)
    for name, overrides in sections.items():
        result[name] = {**result[name], **overrides}
    return result


def typed_params(**sections: dict[str, Any]) -> Params:
    """``params(...)`` validated: what ``ser.project.load_params`` gives an entry point."""
    return validate(params(**sections), "test params")


def section(name: str, **overrides: Any) -> dict[str, Any]:
    return {**copy.deepcopy(PARAMS[name]), **overrides}


def model_params(model_type: str, **overrides: Any) -> dict[str, Any]:
    """One model type's block of params.yaml with overrides (e.g. tiny Keras sizes)."""
    return {**copy.deepcopy(PARAMS["model"][model_type]), **overrides}
