"""The inputs a model can read: feature tables (one, or several fused with ``+``) and frame
sequences, and which feature sets each needs."""

from __future__ import annotations

TABLES = ("functionals", "egemaps", "whisper")
# A tabular input is one table or several fused with "+" (e.g. "whisper+egemaps"); "both" is
# the historical name of "functionals+egemaps".
TABULAR_INPUTS = (*TABLES, "both", "whisper+egemaps", "whisper+functionals+egemaps")
SEQUENCE_INPUTS = ("logmel", "mfcc", "fbank", "whisper_frames")
FEATURE_INPUTS = TABULAR_INPUTS + SEQUENCE_INPUTS


def tabular_sets(feature_input: str) -> list[str]:
    """The feature tables a tabular input is made of, in column order."""
    if feature_input == "both":
        return ["functionals", "egemaps"]
    parts = [part.strip() for part in str(feature_input).split("+")]
    if not all(part in TABLES for part in parts) or len(set(parts)) != len(parts):
        raise ValueError(f"'{feature_input}' is not a tabular feature input: use one of {list(TABLES)} "
                         f"or several joined with '+' (e.g. whisper+egemaps), or 'both'")
    return parts


def is_feature_input(feature_input: str) -> bool:
    if feature_input in SEQUENCE_INPUTS:
        return True
    try:
        tabular_sets(feature_input)
    except ValueError:
        return False
    return True


def extraction_sets(feature_input: str) -> list[str]:
    """The ``features.sets`` names ``ser.features.extract`` must compute for this input."""
    if feature_input == "whisper_frames":
        return ["whisper"]
    if feature_input in SEQUENCE_INPUTS:
        return ["sequences"]
    return tabular_sets(feature_input)
