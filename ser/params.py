"""The typed schema of ``params.yaml``: one model per section, checked once at the entry points.

``params.yaml`` is the only place defaults live: every field here is required, so a key missing
from the file is an error, not a silent fallback, and an unknown key (a typo such as
``model.svm.gama``) is refused. Errors name the dotted key and what was expected.

Validation does not rewrite values: the library receives the sections as the plain mappings
the file holds (``Params.sections``), so cache keys and logged params stay exactly as written.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)


# --- data -------------------------------------------------------------------------------------

class DownloadParams(Section):
    retries: int
    backoff_s: float
    timeout_s: float
    strict: bool


class DataParams(Section):
    corpora: list[Literal["ravdess", "tess", "cremad", "savee", "emodb", "emovo", "eyase"]]
    min_duration_s: float
    silence_peak: float
    workers: int
    executor: Literal["process", "serial", "ray"]
    ray_address: Optional[str]
    download: DownloadParams


class AudioParams(Section):
    sample_rate: int
    trim_silence: bool
    trim_top_db: float
    normalize: Literal["none", "peak", "loudness"]
    peak_level: float
    loudness_lufs: float
    max_seconds: float


# --- features ---------------------------------------------------------------------------------

class WhisperParams(Section):
    model_dir: Optional[str]
    compute_type: Literal["int8", "float32"]
    layers: list[int]

    @field_validator("layers")
    @classmethod
    def _depths(cls, layers: list[int]) -> list[int]:
        if not layers or layers != sorted(set(layers)) or layers[0] < 1:
            raise ValueError("encoder depths from 1 up, ascending, each once (e.g. [3, 6])")
        return layers
    pad_seconds: float
    frame_pool: int
    threads: int


class FeatureParams(Section):
    sets: list[Literal["functionals", "egemaps", "sequences", "whisper"]]
    n_mfcc: int
    n_mels: int
    n_fbank: int
    n_fft: int
    win_length: int
    hop_length: int
    contrast_fmin: float
    contrast_bands: int
    cache_dir: Optional[str]
    executor: Literal["process", "serial", "ray"]
    workers: int
    ray_address: Optional[str]
    whisper: WhisperParams


# --- augment ----------------------------------------------------------------------------------

class NoiseParams(Section):
    p: float
    min_snr_db: float
    max_snr_db: float


class ShiftParams(Section):
    p: float
    max_fraction: float
    rollover: bool


class PitchParams(Section):
    p: float
    min_semitones: float
    max_semitones: float


class StretchParams(Section):
    p: float
    min_rate: float
    max_rate: float
    leave_length_unchanged: bool


class AugmentParams(Section):
    copies: int
    seed: int
    noise: NoiseParams
    shift: ShiftParams
    pitch: PitchParams
    stretch: StretchParams


# --- split, train, cross-corpus ---------------------------------------------------------------

class SplitParams(Section):
    protocol: Literal["speaker_kfold", "leave_one_corpus_out", "random"]
    n_folds: int
    val_speakers_fraction: float
    seed: int


class TrainParams(Section):
    target: Literal["emotion", "gender", "emotion_gender"]
    emotions: Union[None, list[str], dict[str, str]]
    use_augmented: bool
    class_weight: Optional[Literal["balanced", "corpus_balanced"]]
    calibrate: bool
    speaker_norm: Literal["none", "speaker"]
    seed: int
    workers: int = Field(ge=0)


class CrossCorpusParams(Section):
    emotions: list[str]
    train_on: Literal["all", "shared"]
    transductive: bool


# --- models -----------------------------------------------------------------------------------

class LogregParams(Section):
    C: float
    max_iter: int
    std_weight: float = Field(gt=0.0, le=1.0)
    embedding_norm: bool
    input: str


class SvmParams(Section):
    C: float
    kernel: Literal["rbf", "linear", "poly", "sigmoid"]
    gamma: Union[float, Literal["scale", "auto"]]
    calibration_folds: int
    input: str


class MlpParams(Section):
    hidden_layer_sizes: list[int]
    alpha: float
    learning_rate_init: float
    batch_size: int
    max_iter: int
    patience: int
    early_stopping: bool
    input: str


class RandomForestParams(Section):
    n_estimators: int
    max_depth: Optional[int]
    min_samples_leaf: int
    max_features: Union[Literal["sqrt", "log2"], float, None]
    n_jobs: int
    input: str


class DecisionTreeParams(Section):
    max_depth: Optional[int]
    min_samples_leaf: int
    input: str


class KerasParams(Section):
    """What every Keras family shares: front end, head and optimisation."""
    max_steps: int
    dropout: float
    dense_units: int
    pooling: Literal["stats", "attention", "mean"]
    attention_units: int
    time_masks: int
    time_width: float
    freq_masks: int
    freq_width: float
    proj_units: int
    proj_above: int
    proj_skip: bool
    epochs: int
    batch_size: int
    learning_rate: float
    schedule: Literal["cosine", "constant"]
    warmup_epochs: int
    min_lr_ratio: float
    weight_decay: float
    clipnorm: float
    label_smoothing: float
    patience: int
    input: str


class Conv1dParams(KerasParams):
    filters: list[int]
    kernel_size: int


class Conv2dParams(KerasParams):
    filters: list[int]
    kernel_size: int
    freq_reduce: Literal["flatten", "mean"]


class RecurrentParams(KerasParams):
    units: list[int]


class ConvRecurrentParams(Conv2dParams):
    units: int


class ModelParams(Section):
    type: Literal["logreg", "mlp", "svm", "random_forest", "decision_tree",
                  "cnn1d", "cnn2d", "lstm", "bilstm", "gru", "clstm"]
    features: str
    keras: KerasParams  # what every Keras family block holds unless it says otherwise
    logreg: LogregParams
    svm: SvmParams
    mlp: MlpParams
    random_forest: RandomForestParams
    decision_tree: DecisionTreeParams
    cnn1d: Conv1dParams
    cnn2d: Conv2dParams
    lstm: RecurrentParams
    bilstm: RecurrentParams
    gru: RecurrentParams
    clstm: ConvRecurrentParams


KERAS_FAMILIES = tuple(name for name, field in ModelParams.model_fields.items()
                       if name != "keras" and isinstance(field.annotation, type)
                       and issubclass(field.annotation, KerasParams))


def with_keras_defaults(model: Any) -> Any:
    """The model section with every Keras family block completed from ``model.keras``: the
    shared values are written once in params.yaml, a family's own block overrides them."""
    if not isinstance(model, dict) or not isinstance(model.get("keras"), dict):
        return model
    completed = dict(model)
    for family in KERAS_FAMILIES:
        if isinstance(model.get(family), dict):
            completed[family] = {**model["keras"], **model[family]}
    return completed


# --- tracking, predict, serve -----------------------------------------------------------------

class MlflowParams(Section):
    experiment: str
    registered_model: str


class PredictParams(Section):
    window_s: float
    hop_s: float
    min_confidence: Optional[float]


class ServeParams(Section):
    max_bytes: int
    workers: int
    max_queue: int
    timeout_s: float
    allow_path: bool
    path_root: Optional[str]


# --- tune (ser tune: hyper-parameter search) ----------------------------------------------------

class LogUniform(Section):
    loguniform: tuple[float, float]

    @model_validator(mode="after")
    def _bounds(self):
        low, high = self.loguniform
        if not 0 < low < high:
            raise ValueError(f"loguniform needs 0 < low < high, got {list(self.loguniform)}")
        return self


class Uniform(Section):
    uniform: tuple[float, float]

    @model_validator(mode="after")
    def _bounds(self):
        if not self.uniform[0] < self.uniform[1]:
            raise ValueError(f"uniform needs low < high, got {list(self.uniform)}")
        return self


class IntRange(Section):
    bounds: tuple[int, int] = Field(alias="int")  # both ends included

    @model_validator(mode="after")
    def _bounds(self):
        if not self.bounds[0] < self.bounds[1]:
            raise ValueError(f"int needs low < high, got {list(self.bounds)}")
        return self


class Choice(Section):
    choice: list[Any] = Field(min_length=1)


Distribution = Union[LogUniform, Uniform, IntRange, Choice]


class AshaParams(Section):
    grace_period: int
    reduction_factor: int


class TuneParams(Section):
    model_type: Optional[str]
    num_samples: int = Field(ge=1)
    max_concurrent: int = Field(ge=1)
    cpus_per_trial: int = Field(ge=1)
    num_cpus: int = Field(ge=0)
    seed: int
    startup_trials: int = Field(ge=0)
    metric: Literal["uar", "macro_f1", "accuracy"]
    include_current: bool
    scheduler: Literal["fifo", "asha"]
    asha: AshaParams
    experiment: str
    best_params: str
    best_args: str
    ray_dir: str
    space: dict[str, dict[str, Distribution]]

    @model_validator(mode="after")
    def _known_keys(self):
        """A search over a key the model does not have would silently tune nothing."""
        blocks = {name: field.annotation for name, field in ModelParams.model_fields.items()
                  if name not in ("type", "features")}
        problems = [] if self.model_type is None or self.model_type in blocks else [
            f"model_type: unknown model type {self.model_type!r} (one of {', '.join(blocks)})"]
        for model_type, keys in self.space.items():
            if model_type not in blocks:
                problems.append(f"space.{model_type}: unknown model type (one of {', '.join(blocks)})")
                continue
            for key in keys:
                if key not in blocks[model_type].model_fields:
                    problems.append(f"space.{model_type}.{key}: model.{model_type} has no key {key!r}")
                elif key == "input":  # the features are loaded once per search, before the trials
                    problems.append(f"space.{model_type}.input: a search keeps its input; compare inputs "
                                    "with dvc exp run -S model.<type>.input=...")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class Params(Section):
    data: DataParams
    audio: AudioParams
    features: FeatureParams
    augment: AugmentParams
    split: SplitParams
    train: TrainParams
    cross_corpus: CrossCorpusParams
    model: ModelParams
    mlflow: MlflowParams
    predict: PredictParams
    serve: ServeParams
    tune: TuneParams


SECTIONS: dict[str, type[Section]] = {name: field.annotation for name, field in Params.model_fields.items()}


class ParamsError(ValueError):
    """params.yaml (or an override) does not match the schema; the message names each key."""


def _describe(error: dict[str, Any], prefix: str) -> str:
    key = ".".join(str(part) for part in (prefix, *error["loc"]) if part != "")
    kind = error["type"]
    if kind == "missing":
        return f"{key}: missing (params.yaml is where every default lives; add it there)"
    if kind == "extra_forbidden":
        return f"{key}: unknown key"
    return f"{key}: {error['msg']} (got {error.get('input')!r})"


def _check(schema: type[Section], values: Any, prefix: str, source: str) -> None:
    try:
        schema.model_validate(values)
    except ValidationError as exc:
        problems = [_describe(error, prefix) for error in exc.errors()]
        raise ParamsError(f"{source}: " + "; ".join(problems)) from None


def validate(params: Any, source: str = "params") -> dict[str, Any]:
    """The whole file: every section present, typed, with no unknown keys. Returns a deep copy
    of the mapping as written, the Keras family blocks completed from ``model.keras``."""
    if not isinstance(params, dict):
        raise ParamsError(f"{source}: expected a mapping at the top level, got {type(params).__name__}")
    if "model" in params:
        params = {**params, "model": with_keras_defaults(params["model"])}
    _check(Params, params, "", source)
    return copy.deepcopy(params)


def validate_section(name: str, values: Any, source: str = "params") -> dict[str, Any]:
    """One section (for callers that were handed a section rather than the file)."""
    if name not in SECTIONS:
        raise ParamsError(f"{source}: no section '{name}' in the schema (sections: {', '.join(SECTIONS)})")
    if name == "model":
        values = with_keras_defaults(values)
    _check(SECTIONS[name], values, name, source)
    return copy.deepcopy(values)


def read_yaml(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def load(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a params file: the entry points' one way in."""
    return validate(read_yaml(path), str(Path(path)))


def section(name: str, path: str | os.PathLike) -> dict[str, Any]:
    """One validated section of a params file (the whole file is checked)."""
    return load(path)[name]


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
