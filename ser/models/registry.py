"""One registry of model families: ``MODELS[type](params_of_type, input_shape, n_classes, seed,
feature_names=None)`` (the column names of a table input, which some params refer to).
``params_of_type`` is the family's block, ``model.<type>`` (its schema class, or the plain mapping,
typed once here by :func:`ser.params.model_block`); the estimator keeps it typed as ``estimator.params``.

Every estimator has ``fit(X, y, X_val=None, y_val=None, sample_weight=None) -> history``
(a dict of per-epoch lists, ``{}`` for models without epochs), ``predict_proba(X)``,
``save(folder)`` and the class method ``load(folder)``. Standardization is part of the
estimator (a scikit-learn scaler, or the Keras network's first layer), fitted on the training
data ``fit`` receives only.

Keras families are imported lazily: TensorFlow costs seconds to import, and must be imported
after opensmile (see ``ser.models.keras_models``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

from ser.models.inputs import FEATURE_INPUTS, SEQUENCE_INPUTS, TABULAR_INPUTS, is_feature_input
from ser.params import KERAS_FAMILIES, Section, model_block

SKLEARN_TYPES = ("logreg", "mlp", "svm", "random_forest", "decision_tree")
KERAS_TYPES = KERAS_FAMILIES  # the schema's Keras blocks, each completed from model.keras
MODEL_TYPES = SKLEARN_TYPES + KERAS_TYPES


def _module_for(model_type: str):
    if model_type in SKLEARN_TYPES:
        return importlib.import_module("ser.models.sklearn_models")
    if model_type in KERAS_TYPES:
        return importlib.import_module("ser.models.keras_models")
    raise ValueError(f"unknown model type '{model_type}'; choose one of {list(MODEL_TYPES)}")


def _factory(model_type: str) -> Callable[..., Any]:
    def build(params_of_type: Section | dict[str, Any], input_shape: tuple[int, ...], n_classes: int, seed: int,
              feature_names: Sequence[str] | None = None):
        params_of_type = model_block(model_type, params_of_type)
        return _module_for(model_type).build(model_type, params_of_type, tuple(input_shape),
                                             int(n_classes), int(seed), feature_names=feature_names)

    build.__name__ = f"build_{model_type}"
    return build


MODELS: dict[str, Callable[..., Any]] = {t: _factory(t) for t in MODEL_TYPES}


def load_estimator(model_type: str, folder) -> Any:
    estimator = _module_for(model_type).load(folder)
    if estimator.model_type != model_type:
        raise ValueError(f"{folder}: holds a '{estimator.model_type}' estimator, not '{model_type}'")
    return estimator


def is_keras(model_type: str) -> bool:
    return model_type in KERAS_TYPES


def uses_validation(model_type: str) -> bool:
    """Whether the type trains by epochs and stops early on a validation split; the others
    would only lose training speakers to one."""
    return is_keras(model_type) or model_type == "mlp"


def resolve_feature_input(model_type: str, features: str, params_of_type: Section | dict[str, Any]) -> str:
    """``model.features`` (auto | sequences | a table or tables fused with ``+`` | both | a
    sequence kind) resolved to the concrete input this type trains on; ``auto`` is the type's
    own ``input`` param (of ``params_of_type``, the block ``model.<type>``)."""
    params_of_type = model_block(model_type, params_of_type)
    sequence_kind = params_of_type.input
    if features in (None, "auto"):
        features = sequence_kind
    if features == "sequences":
        if not is_keras(model_type):
            raise ValueError(f"{model_type} is a scikit-learn model and needs a tabular input "
                             f"{TABULAR_INPUTS}, not sequences")
        if sequence_kind not in SEQUENCE_INPUTS:
            raise ValueError(f"model.features=sequences needs a sequence kind in model.{model_type}.input "
                             f"(one of {SEQUENCE_INPUTS}); {model_type} has '{sequence_kind}'")
        return sequence_kind
    if not is_feature_input(features):
        raise ValueError(f"unknown model.features '{features}'; choose auto, sequences or one of {FEATURE_INPUTS}")
    if features in SEQUENCE_INPUTS and not is_keras(model_type):
        raise ValueError(f"{model_type} is a scikit-learn model and needs a tabular input {TABULAR_INPUTS}")
    return features
