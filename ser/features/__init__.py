"""Features of front-end-processed audio: functionals, eGeMAPS and fixed-length sequences.

``egemaps`` is imported first on purpose: it loads openSMILE, which must precede TensorFlow in
any process that uses both.
"""

from ser.features.egemaps import EGEMAPS_NAMES  # noqa: I001  (import order matters, see above)
from ser.features.compute import compute_features
from ser.features.extraction import FEATURE_SETS, extract, extract_clip, set_params_hash
from ser.features.functionals import functional_names
from ser.features.sequences import SEQUENCE_KINDS, n_frames
from ser.features.store import load_failures, load_sequences, load_table

__all__ = [
    "EGEMAPS_NAMES", "FEATURE_SETS", "SEQUENCE_KINDS", "compute_features", "extract",
    "extract_clip", "functional_names", "load_failures", "load_sequences", "load_table",
    "n_frames", "set_params_hash",
]
