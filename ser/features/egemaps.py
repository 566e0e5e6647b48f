"""The 88 eGeMAPSv02 functionals (openSMILE): F0, jitter, shimmer, HNR, formants, loudness,
alpha ratio, Hammarberg index, spectral slopes.

This module imports ``opensmile`` at the top on purpose: in a process that also uses
TensorFlow, opensmile must be loaded first (the other order corrupts the heap at the first
eGeMAPS call), and importing this module early is how ser guarantees that.
"""

from __future__ import annotations

import os
import threading

import numpy as np
import opensmile
from opensmile.core.config import config as opensmile_config

# The names openSMILE gives, in its order (tests check them against opensmile itself); a
# constant so that reading feature tables never needs to start openSMILE.
EGEMAPS_NAMES: tuple[str, ...] = (
    'F0semitoneFrom27.5Hz_sma3nz_amean',
    'F0semitoneFrom27.5Hz_sma3nz_stddevNorm',
    'F0semitoneFrom27.5Hz_sma3nz_percentile20.0',
    'F0semitoneFrom27.5Hz_sma3nz_percentile50.0',
    'F0semitoneFrom27.5Hz_sma3nz_percentile80.0',
    'F0semitoneFrom27.5Hz_sma3nz_pctlrange0-2',
    'F0semitoneFrom27.5Hz_sma3nz_meanRisingSlope',
    'F0semitoneFrom27.5Hz_sma3nz_stddevRisingSlope',
    'F0semitoneFrom27.5Hz_sma3nz_meanFallingSlope',
    'F0semitoneFrom27.5Hz_sma3nz_stddevFallingSlope',
    'loudness_sma3_amean',
    'loudness_sma3_stddevNorm',
    'loudness_sma3_percentile20.0',
    'loudness_sma3_percentile50.0',
    'loudness_sma3_percentile80.0',
    'loudness_sma3_pctlrange0-2',
    'loudness_sma3_meanRisingSlope',
    'loudness_sma3_stddevRisingSlope',
    'loudness_sma3_meanFallingSlope',
    'loudness_sma3_stddevFallingSlope',
    'spectralFlux_sma3_amean',
    'spectralFlux_sma3_stddevNorm',
    'mfcc1_sma3_amean',
    'mfcc1_sma3_stddevNorm',
    'mfcc2_sma3_amean',
    'mfcc2_sma3_stddevNorm',
    'mfcc3_sma3_amean',
    'mfcc3_sma3_stddevNorm',
    'mfcc4_sma3_amean',
    'mfcc4_sma3_stddevNorm',
    'jitterLocal_sma3nz_amean',
    'jitterLocal_sma3nz_stddevNorm',
    'shimmerLocaldB_sma3nz_amean',
    'shimmerLocaldB_sma3nz_stddevNorm',
    'HNRdBACF_sma3nz_amean',
    'HNRdBACF_sma3nz_stddevNorm',
    'logRelF0-H1-H2_sma3nz_amean',
    'logRelF0-H1-H2_sma3nz_stddevNorm',
    'logRelF0-H1-A3_sma3nz_amean',
    'logRelF0-H1-A3_sma3nz_stddevNorm',
    'F1frequency_sma3nz_amean',
    'F1frequency_sma3nz_stddevNorm',
    'F1bandwidth_sma3nz_amean',
    'F1bandwidth_sma3nz_stddevNorm',
    'F1amplitudeLogRelF0_sma3nz_amean',
    'F1amplitudeLogRelF0_sma3nz_stddevNorm',
    'F2frequency_sma3nz_amean',
    'F2frequency_sma3nz_stddevNorm',
    'F2bandwidth_sma3nz_amean',
    'F2bandwidth_sma3nz_stddevNorm',
    'F2amplitudeLogRelF0_sma3nz_amean',
    'F2amplitudeLogRelF0_sma3nz_stddevNorm',
    'F3frequency_sma3nz_amean',
    'F3frequency_sma3nz_stddevNorm',
    'F3bandwidth_sma3nz_amean',
    'F3bandwidth_sma3nz_stddevNorm',
    'F3amplitudeLogRelF0_sma3nz_amean',
    'F3amplitudeLogRelF0_sma3nz_stddevNorm',
    'alphaRatioV_sma3nz_amean',
    'alphaRatioV_sma3nz_stddevNorm',
    'hammarbergIndexV_sma3nz_amean',
    'hammarbergIndexV_sma3nz_stddevNorm',
    'slopeV0-500_sma3nz_amean',
    'slopeV0-500_sma3nz_stddevNorm',
    'slopeV500-1500_sma3nz_amean',
    'slopeV500-1500_sma3nz_stddevNorm',
    'spectralFluxV_sma3nz_amean',
    'spectralFluxV_sma3nz_stddevNorm',
    'mfcc1V_sma3nz_amean',
    'mfcc1V_sma3nz_stddevNorm',
    'mfcc2V_sma3nz_amean',
    'mfcc2V_sma3nz_stddevNorm',
    'mfcc3V_sma3nz_amean',
    'mfcc3V_sma3nz_stddevNorm',
    'mfcc4V_sma3nz_amean',
    'mfcc4V_sma3nz_stddevNorm',
    'alphaRatioUV_sma3nz_amean',
    'hammarbergIndexUV_sma3nz_amean',
    'slopeUV0-500_sma3nz_amean',
    'slopeUV500-1500_sma3nz_amean',
    'spectralFluxUV_sma3nz_amean',
    'loudnessPeaksPerSec',
    'VoicedSegmentsPerSec',
    'MeanVoicedSegmentLengthSec',
    'StddevVoicedSegmentLengthSec',
    'MeanUnvoicedSegmentLength',
    'StddevUnvoicedSegmentLength',
    'equivalentSoundLevel_dBp',
)

_smile: opensmile.Smile | None = None
_per_thread = threading.local()


def _extractor() -> opensmile.Smile:
    """One openSMILE front object per process, created on first use (a per-process resource:
    the configuration is located and checked once, not per clip)."""
    global _smile
    if _smile is None:
        _smile = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                                 feature_level=opensmile.FeatureLevel.Functionals)
    return _smile


class _ReusableSmile:
    """An initialized openSMILE graph that is reset and rerun for each signal.

    ``Smile.process_signal`` parses the whole eGeMAPS configuration and builds a new graph on
    every call, a large share of the per-clip cost; openSMILE's ``reset()`` allows running an
    initialized graph again. It does what ``Smile._extract`` does per call (same options,
    int16 input, same sink), so the values are identical (tests check this). Not re-entrant:
    one per thread and sample rate.
    """

    def __init__(self, sample_rate: int):
        smile = _extractor()
        options = smile._options()
        options["source"] = os.path.join(smile.default_config_root, opensmile_config.EXTERNAL_INPUT_CONFIG)
        options["sampleRate"] = int(sample_rate)
        options["nBits"] = 16
        self._api = smile._smile(options=options)
        self._used = False

    def __call__(self, y: np.ndarray) -> np.ndarray:
        if self._used:
            self._api.reset()
        self._used = True
        rows: list[np.ndarray] = []
        self._api.external_sink_set_callback_ex(opensmile_config.EXTERNAL_OUTPUT_COMPONENT,
                                                opensmile.Smile._sink_callback(rows, [], []))
        # openSMILE reads 16-bit PCM; clip first so an over-range sample saturates, not wraps
        pcm = (np.clip(y, -1.0, 32767 / 32768) * 32768).astype(np.int16)
        self._api.external_audio_source_write_data(opensmile_config.EXTERNAL_SOURCE_COMPONENT, pcm.tobytes())
        self._api.external_audio_source_set_eoi(opensmile_config.EXTERNAL_SOURCE_COMPONENT)
        self._api.run()
        if not rows:
            return np.full(len(EGEMAPS_NAMES), np.nan, dtype=np.float32)
        return np.vstack(rows).reshape(-1).astype(np.float32)

    def free(self) -> None:
        self._api.free()


def _reusable(sample_rate: int) -> _ReusableSmile:
    graphs = getattr(_per_thread, "graphs", None)
    if graphs is None:
        graphs = _per_thread.graphs = {}
    if sample_rate not in graphs:
        graphs[sample_rate] = _ReusableSmile(sample_rate)
    return graphs[sample_rate]


def egemaps(y: np.ndarray, sample_rate: int) -> np.ndarray:
    """The 88 eGeMAPSv02 functionals of a mono signal, float32, ordered as EGEMAPS_NAMES."""
    y = np.asarray(y, dtype=np.float32)
    try:
        values = _reusable(int(sample_rate))(y)
    except Exception:
        # A graph whose run failed is in an unknown state: drop it, and let openSMILE's own
        # path (a fresh graph) give the answer or the error.
        graph = _per_thread.graphs.pop(int(sample_rate), None)
        if graph is not None:
            graph.free()
        values = _extractor().process_signal(y, int(sample_rate)).to_numpy(dtype=np.float32).reshape(-1)
    if values.size != len(EGEMAPS_NAMES):
        raise ValueError(f"openSMILE returned {values.size} eGeMAPS values, expected {len(EGEMAPS_NAMES)}")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"eGeMAPS undefined for this signal ({y.size / sample_rate:.3f} s): "
                         "openSMILE returned NaN (too short or no usable frames)")
    return values
