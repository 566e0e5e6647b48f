"""The typed schema of ``params.yaml``: one model per section, checked once at the entry points.

``params.yaml`` is the only place defaults live: every field here is required, so a key missing
from the file is an error, not a silent fallback, and an unknown key (a typo such as
``model.svm.gama``) is refused. Errors name the dotted key and what was expected.

Entry points validate once (:func:`load`) and hand the library the typed section objects
(``params.features.whisper.layers``); the library reads attributes and never re-casts. A
public library function that takes a section also accepts the plain mapping (a notebook, a
test) and types it once with :func:`typed`. Numbers keep the type they were written with
(``trim_top_db: 40`` stays 40), so ``as_dict()`` is the mapping as written and the hashes
keyed on it (the feature cache) and the logged params do not move.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, TypeVar, Union, get_args

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

def _number(value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"Input should be a valid number, got {type(value).__name__}")
    if isinstance(value, int):
        return value
    try:
        return float(value)
    except ValueError:
        raise ValueError("Input should be a valid number, unable to parse string as a number") from None


# A real number as written: an integer stays an int (40, not 40.0), anything else is a float.
Number = Annotated[Union[StrictInt, float], BeforeValidator(_number)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)

    def as_dict(self) -> dict[str, Any]:
        """The section as the mapping params.yaml holds (for hashes, logs and files)."""
        return self.model_dump(mode="json", by_alias=True)


SectionT = TypeVar("SectionT", bound=Section)


# --- data -------------------------------------------------------------------------------------

class DownloadParams(Section):
    retries: int
    backoff_s: Number
    timeout_s: Number
    strict: bool


BuiltinCorpus = Literal["ravdess", "tess", "cremad", "savee", "emodb", "emovo", "eyase"]
# The one taxonomy (``ser.data.corpora.base.CANONICAL_EMOTIONS``; a test keeps the two equal).
Emotion = Literal["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised", "boredom"]
# A user corpus's name becomes a folder (data/raw/<name>/) and the prefix of its ids and speakers.
CUSTOM_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class CustomCorpusParams(Section):
    """A user's labelled recordings (``data.custom.<name>``): a CSV manifest or a folder tree."""
    manifest: Optional[str]            # CSV: path, emotion, speaker[, gender, language]; paths relative to it
    root: Optional[str]                # folder-per-emotion tree: <root>/<label>/[<speaker>/]<files>
    speaker_pattern: Optional[str]     # folder tree: regex on the file stem (group 'speaker', else group 1)
    emotions: dict[str, Optional[Emotion]]  # their label -> canonical emotion; null excludes the label
    language: str                      # ISO 639-1, for rows that do not say

    @model_validator(mode="after")
    def _layout(self):
        problems = []
        if (self.manifest is None) == (self.root is None):
            problems.append("give exactly one of manifest (a CSV) or root (a folder per emotion)")
        if self.speaker_pattern is not None:
            if self.manifest is not None:
                problems.append("speaker_pattern applies to a folder tree; a manifest names speakers in its "
                                "speaker column")
            try:
                re.compile(self.speaker_pattern)
            except re.error as exc:
                problems.append(f"speaker_pattern {self.speaker_pattern!r} is not a regular expression ({exc})")
        if not self.emotions:
            problems.append("emotions maps none of your labels")
        if not re.fullmatch(r"[a-z]{2}", self.language):
            problems.append(f"language {self.language!r} is not an ISO 639-1 code (two lower-case letters)")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class DataParams(Section):
    corpora: list[str]                 # built-in names (BuiltinCorpus) and names declared under custom
    custom: dict[str, CustomCorpusParams]
    min_duration_s: Number
    silence_peak: Number
    workers: int
    executor: Literal["process", "serial", "ray"]
    ray_address: Optional[str]
    download: DownloadParams

    @field_validator("custom")
    @classmethod
    def _custom_names(cls, custom: dict[str, CustomCorpusParams]) -> dict[str, CustomCorpusParams]:
        for name in custom:
            if name in get_args(BuiltinCorpus):
                raise ValueError(f"{name!r} is a built-in corpus; give your corpus another name")
            if not CUSTOM_NAME.match(name):
                raise ValueError(f"{name!r}: a corpus name is lower-case letters, digits and _ "
                                 "(it names data/raw/<name>/ and prefixes ids and speakers)")
        return custom

    @model_validator(mode="after")
    def _known_corpora(self):
        """Each selected corpus is built in or declared; the error names the list entry."""
        known = get_args(BuiltinCorpus)
        unknown = [InitErrorDetails(
            type=PydanticCustomError(
                "unknown_corpus", "'{name}' is neither a built-in corpus ({builtin}) nor declared under "
                "data.custom ({custom})",
                {"name": name, "builtin": ", ".join(known), "custom": ", ".join(self.custom) or "none declared"}),
            loc=("corpora", index), input=name)
            for index, name in enumerate(self.corpora) if name not in known and name not in self.custom]
        if unknown:
            raise ValidationError.from_exception_data(type(self).__name__, unknown)
        return self


class AudioParams(Section):
    sample_rate: int
    trim_silence: bool
    trim_top_db: Number
    normalize: Literal["none", "peak", "loudness"]
    peak_level: Number
    loudness_lufs: Number
    max_seconds: Number


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
    pad_seconds: Number
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
    contrast_fmin: Number
    contrast_bands: int
    cache_dir: Optional[str]
    executor: Literal["process", "serial", "ray"]
    workers: int
    ray_address: Optional[str]
    whisper: WhisperParams


# --- augment ----------------------------------------------------------------------------------

class NoiseParams(Section):
    p: Number
    min_snr_db: Number
    max_snr_db: Number


class ShiftParams(Section):
    p: Number
    max_fraction: Number
    rollover: bool


class PitchParams(Section):
    p: Number
    min_semitones: Number
    max_semitones: Number


class StretchParams(Section):
    p: Number
    min_rate: Number
    max_rate: Number
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
    val_speakers_fraction: Number
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
    C: Number
    max_iter: int
    std_weight: Number = Field(gt=0.0, le=1.0)
    embedding_norm: bool
    input: str


class SvmParams(Section):
    C: Number
    kernel: Literal["rbf", "linear", "poly", "sigmoid"]
    gamma: Union[Number, Literal["scale", "auto"]]
    calibration_folds: int
    input: str


class MlpParams(Section):
    hidden_layer_sizes: list[int]
    alpha: Number
    learning_rate_init: Number
    batch_size: int
    max_iter: int
    patience: int
    early_stopping: bool
    input: str


class RandomForestParams(Section):
    n_estimators: int
    max_depth: Optional[int]
    min_samples_leaf: int
    max_features: Union[Literal["sqrt", "log2"], Number, None]
    n_jobs: int
    input: str


class DecisionTreeParams(Section):
    max_depth: Optional[int]
    min_samples_leaf: int
    input: str


class KerasParams(Section):
    """What every Keras family shares: front end, head and optimisation."""
    max_steps: int
    dropout: Number
    dense_units: int
    pooling: Literal["stats", "attention", "mean"]
    attention_units: int
    time_masks: int
    time_width: Number
    freq_masks: int
    freq_width: Number
    proj_units: int
    proj_above: int
    proj_skip: bool
    epochs: int
    batch_size: int
    learning_rate: Number
    schedule: Literal["cosine", "constant"]
    warmup_epochs: int
    min_lr_ratio: Number
    weight_decay: Number
    clipnorm: Number
    label_smoothing: Number
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

    def of(self, model_type: str | None = None) -> Section:
        """The block of ``model_type`` (default: ``type``), e.g. ``model.of("lstm").units``."""
        return getattr(self, model_type or self.type)


def params_class(model_type: str) -> type[Section]:
    """The schema class of a family's block ``model.<type>`` (e.g. ``SvmParams`` for ``svm``)."""
    blocks = [name for name in ModelParams.model_fields if name not in ("type", "features", "keras")]
    if model_type not in blocks:
        raise ValueError(f"unknown model type '{model_type}'; choose one of {blocks}")
    return ModelParams.model_fields[model_type].annotation



def model_block(model_type: str, values: Any, source: str = "params") -> Section:
    """``model.<model_type>`` typed as its family's section (a mapping validated once)."""
    return typed(params_class(model_type), values, f"model.{model_type}", source)

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


class SegmentParams(Section):
    on_db: Number
    off_db: Number
    above_floor_db: Number
    min_silence_s: Number
    min_speech_s: Number

    @model_validator(mode="after")
    def _hysteresis(self):
        if self.on_db <= 0 or self.off_db <= 0:
            raise ValueError(f"segments.on_db and off_db must be positive dB, got {self.on_db}, {self.off_db}")
        if self.min_silence_s < 0 or self.min_speech_s < 0:
            raise ValueError("segments.min_silence_s and min_speech_s cannot be negative")
        return self


class PredictParams(Section):
    window_s: Number
    hop_s: Number
    min_confidence: Optional[Number]
    segments: SegmentParams


class ServeParams(Section):
    max_bytes: int
    workers: int
    max_queue: int
    timeout_s: Number
    allow_path: bool
    path_root: Optional[str]
    max_streams: int = Field(ge=0)  # 0: no live streams
    stream_max_s: Number = Field(gt=0)
    stream_idle_s: Number = Field(gt=0)
    stream_max_frame_bytes: int = Field(gt=0)
    stream_every_s: Number = Field(gt=0)


# --- tune (ser tune: hyper-parameter search) ----------------------------------------------------

class LogUniform(Section):
    loguniform: tuple[Number, Number]

    @model_validator(mode="after")
    def _bounds(self):
        low, high = self.loguniform
        if not 0 < low < high:
            raise ValueError(f"loguniform needs 0 < low < high, got {list(self.loguniform)}")
        return self


class Uniform(Section):
    uniform: tuple[Number, Number]

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


def _check(schema: type[SectionT], values: Any, prefix: str, source: str) -> SectionT:
    try:
        return schema.model_validate(values)
    except ValidationError as exc:
        problems = [_describe(error, prefix) for error in exc.errors()]
        raise ParamsError(f"{source}: " + "; ".join(problems)) from None


def validate(params: Any, source: str = "params") -> Params:
    """The whole file, typed: every section present, with no unknown keys, the Keras family
    blocks completed from ``model.keras``."""
    if isinstance(params, Params):
        return params
    if not isinstance(params, dict):
        raise ParamsError(f"{source}: expected a mapping at the top level, got {type(params).__name__}")
    if "model" in params:
        params = {**params, "model": with_keras_defaults(params["model"])}
    return _check(Params, params, "", source)


def validate_section(name: str, values: Any, source: str = "params") -> Section:
    """One section by its name in params.yaml (for callers handed a section, not the file)."""
    if name not in SECTIONS:
        raise ParamsError(f"{source}: no section '{name}' in the schema (sections: {', '.join(SECTIONS)})")
    return typed(SECTIONS[name], values, name, source)


def typed(schema: type[SectionT], values: Any, prefix: str = "", source: str = "params") -> SectionT:
    """``values`` as a ``schema`` object: itself when it already is one, else the mapping
    validated (what a public library function does once with a section it was handed)."""
    if isinstance(values, schema):
        return values
    if isinstance(values, Section):
        values = values.as_dict()
    if schema is Params:  # the whole file: its Keras family blocks are completed there
        return validate(values, source)
    if schema is ModelParams:
        values = with_keras_defaults(values)
    if not prefix and schema is not Params:  # errors name the dotted key from the file's top
        prefix = next((name for name, cls in SECTIONS.items() if cls is schema), schema.__name__)
    return _check(schema, values, prefix, source)


def override(params: SectionT, changes: dict[str, Any]) -> SectionT:
    """A copy of ``params`` with dotted keys replaced and validated again, as
    ``dvc exp run -S key=value`` would: ``override(params, {"model.type": "lstm"})``.

    ``params`` holds the Keras family blocks completed from ``model.keras``, so a change of
    ``model.keras.<key>`` is also made in every family block whose value equals the old shared
    one (what completing the changed file would give; a family that wrote the same value as the
    shared one itself cannot be told apart and follows too). Changes of ``model.keras.*`` are made
    before those of the family blocks, so ``{"model.keras.epochs": 5, "model.lstm.epochs": 9}``
    leaves lstm at 9 in either order."""
    values = copy.deepcopy(params.as_dict())
    keras = {Params: ["model", "keras"], ModelParams: ["keras"]}.get(type(params))

    def shared(dotted: str) -> bool:
        return keras is not None and dotted.split(".")[:-1] == keras

    for dotted, value in sorted(changes.items(), key=lambda item: not shared(item[0])):
        *path, last = dotted.split(".")
        target = values
        for key in path:
            if not isinstance(target.get(key), dict):
                raise ParamsError(f"{dotted}: no section {key!r} to set a key in")
            parent, target = target, target[key]
        if shared(dotted) and last in target:
            old = target[last]
            for family in KERAS_FAMILIES:
                block = parent.get(family)
                if isinstance(block, dict) and last in block and block[last] == old:
                    block[last] = copy.deepcopy(value)
        target[last] = value
    return typed(type(params), values, source="override")


def read_yaml(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def load(path: str | os.PathLike) -> Params:
    """Read and validate a params file: the entry points' one way in."""
    return validate(read_yaml(path), str(Path(path)))


def section(name: str, path: str | os.PathLike) -> Section:
    """One validated section of a params file (the whole file is checked)."""
    return getattr(load(path), name)


def flatten(params: dict[str, Any] | Section, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists are kept as JSON strings (MLflow params)."""
    if isinstance(params, Section):
        params = params.as_dict()
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


def _plain(value: Any) -> Any:
    return value.as_dict() if isinstance(value, Section) else str(value)


def params_hash(*sections: dict[str, Any] | Section) -> str:
    """A short stable hash of parameter sections (typed or as mappings, the same hash): keys
    caches by the params that shaped them."""
    blob = json.dumps(sections, sort_keys=True, default=_plain).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
