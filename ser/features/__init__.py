"""Features of front-end-processed audio: functionals, eGeMAPS, fixed-length sequences and
Whisper encoder features, each set an object of the one registry (``FEATURE_SETS``, in
:mod:`ser.features.sets`) that ``extract`` and the features stage loop over.

The names below are imported on first use (PEP 562), not with the package: scoring one clip
with a Whisper-feature model needs neither openSMILE, pandas/pyarrow (the feature store) nor
the parallel feature stage, and ``ser predict`` pays for every import at each cold start.

openSMILE must still be loaded before TensorFlow in any process that uses both (the other
order corrupts the heap at the first eGeMAPS call): ``ser.models.keras_models`` imports it
first, and ``ser.features.egemaps`` imports it at its top.
"""

__all__ = [
    "EGEMAPS_NAMES", "FEATURE_SETS", "FeatureSet", "SEQUENCE_KINDS", "compute_features", "extract",
    "extract_clip", "functional_names", "load_failures", "load_sequences", "load_table",
    "n_frames", "set_params_hash",
]


def __getattr__(name: str) -> object:
    if name == "EGEMAPS_NAMES":
        from ser.features.egemaps import EGEMAPS_NAMES as value
    elif name == "compute_features":
        from ser.features.compute import compute_features as value
    elif name in ("FEATURE_SETS", "FeatureSet", "extract", "extract_clip", "set_params_hash"):
        from ser.features import extraction

        value = getattr(extraction, name)
    elif name == "functional_names":
        from ser.features.functionals import functional_names as value
    elif name in ("SEQUENCE_KINDS", "n_frames"):
        from ser.features import sequences

        value = getattr(sequences, name)
    elif name in ("load_failures", "load_sequences", "load_table"):
        from ser.features import store

        value = getattr(store, name)
    else:  # a submodule (``from ser.features import whisper``) is found by the import system
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
