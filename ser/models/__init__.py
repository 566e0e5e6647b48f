"""Model families and the bundle that carries a fitted one: ``MODELS`` (the registry,
:mod:`ser.models.registry`), ``ModelBundle`` (:mod:`ser.models.bundle`), and what a model can
read (:mod:`ser.models.inputs`)."""

from ser.models.bundle import ModelBundle
from ser.models.registry import (KERAS_TYPES, MODEL_TYPES, MODELS, SKLEARN_TYPES, is_keras, load_estimator,
                                 resolve_feature_input, uses_validation)

__all__ = [
    "KERAS_TYPES", "MODELS", "MODEL_TYPES", "ModelBundle", "SKLEARN_TYPES",
    "is_keras", "load_estimator", "resolve_feature_input", "uses_validation",
]
