"""A static HTML report of the data, the features and the model, with its figures beside it.

:func:`build_report` reads the pipeline's outputs (``metadata.parquet``, the feature tables,
``data/train/`` and ``metrics/evaluate.json``) and writes ``index.html`` (rendered from
``ser/templates/report.html.j2``) plus one PNG per figure into a folder; :func:`log_report` logs
that folder to the training run in MLflow.

Figures (file names are stable; :data:`FIGURES` lists them):

* data: clips per corpus and emotion, duration histogram, one waveform and one spectrogram per
  emotion;
* features: distributions of a few key acoustic features per emotion;
* model: confusion matrix, loss/accuracy curves, per-class precision/recall/F1, per-corpus and
  per-fold scores, the reliability diagram of the calibrated probabilities; the evaluation
  protocol is named at the top of the page; one recording assembled from example clips with pauses
  between them, as ``ser predict --timeline`` sees it (the final model, ``predict.segments``).
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import matplotlib

matplotlib.use("Agg")  # files only: no display on a build machine

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ser.training import evaluate, metrics

FIGURES = {
    "data_counts": "Clips per corpus and emotion",
    "data_durations": "Clip durations",
    "data_waveforms": "One waveform per emotion",
    "data_spectrograms": "One spectrogram per emotion",
    "feature_distributions": "Key features per emotion",
    "model_confusion": "Confusion matrix (out-of-fold)",
    "model_curves": "Loss and accuracy curves",
    "model_per_class": "Per-class precision, recall and F1",
    "model_per_corpus": "Scores per corpus",
    "model_per_fold": "Scores per fold",
    "model_reliability": "Reliability of the calibrated probabilities (held-out speakers)",
    "model_timeline": "One recording as a timeline: example clips of four emotions with pauses between them, "
                      "the speech segments found and the emotion the model gives each (ser predict --timeline)",
}

# eGeMAPS descriptors that track arousal and valence in the literature: pitch level and range,
# loudness, voice quality (jitter, shimmer, HNR), and spectral balance.
KEY_FEATURES = (
    "F0semitoneFrom27.5Hz_sma3nz_amean",
    "F0semitoneFrom27.5Hz_sma3nz_stddevNorm",
    "loudness_sma3_amean",
    "jitterLocal_sma3nz_amean",
    "shimmerLocaldB_sma3nz_amean",
    "HNRdBACF_sma3nz_amean",
    "alphaRatioV_sma3nz_amean",
    "spectralFlux_sma3_amean",
)
KEY_FUNCTIONAL_HINTS = ("rms", "zcr", "centroid", "pitch", "f0", "mfcc_0", "mfcc0", "bandwidth")
FIGURE_DPI = 110


@dataclass
class Report:
    folder: Path
    figures: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def index(self) -> Path:
        return self.folder / "index.html"


# ---- inputs ------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def _classes(train_dir: Path, oof: pd.DataFrame) -> list[str]:
    listed = _read_json(train_dir / "classes.json")
    if isinstance(listed, dict):
        listed = listed.get("classes", [])
    if listed:
        return [str(c) for c in listed]
    return sorted(c.removeprefix("p_") for c in oof.columns if c.startswith("p_"))


def find_protocol(evaluation: dict[str, Any], run: dict[str, Any]) -> str:
    for source in (evaluation, run, evaluation.get("split", {}), run.get("split", {})):
        if isinstance(source, dict):
            for key in ("protocol", "split_protocol", "split.protocol"):
                if source.get(key):
                    return str(source[key])
    return "unknown (not recorded in metrics/evaluate.json or run.json)"


def find_run_id(run: dict[str, Any]) -> str | None:
    for key in ("run_id", "mlflow_run_id", "id"):
        if run.get(key):
            return str(run[key])
    return None


# ---- plotting helpers ---------------------------------------------------------------------------
def _save(fig, out_dir: Path, name: str, report: Report) -> None:
    path = out_dir / f"{name}.png"
    fig.savefig(path, dpi=FIGURE_DPI, bbox_inches="tight")
    plt.close(fig)
    report.figures[name] = path


def _message_figure(text: str):
    fig, ax = plt.subplots(figsize=(6, 1.6))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    return fig


def _grid(n: int, columns: int = 4, cell=(3.6, 2.4)):
    rows = max(1, int(np.ceil(n / columns)))
    fig, axes = plt.subplots(rows, columns, figsize=(cell[0] * columns, cell[1] * rows), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    return fig, axes.ravel()


def _emotion_order(values: pd.Series) -> list[str]:
    canonical = ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised", "boredom"]
    present = list(dict.fromkeys(values.dropna().astype(str)))
    return [e for e in canonical if e in present] + sorted(e for e in present if e not in canonical)


# ---- data ---------------------------------------------------------------------------------------
def plot_counts(metadata: pd.DataFrame):
    ok = metadata[metadata["status"] == "ok"]
    table = ok.groupby(["emotion", "corpus"]).size().unstack("corpus", fill_value=0)
    table = table.reindex(_emotion_order(ok["emotion"]))
    fig, ax = plt.subplots(figsize=(9, 3.8))
    table.plot.bar(ax=ax, width=0.8)
    ax.set_ylim(0, 1.1 * max(1, int(table.to_numpy().max())))  # room for the count labels
    ax.legend(title="corpus", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_xlabel("emotion")
    ax.set_ylabel("clips")
    ax.set_title("Clips per corpus and emotion (status ok)")
    ax.tick_params(axis="x", rotation=30)
    for container in ax.containers:
        ax.bar_label(container, fontsize=7)
    return fig, table


def plot_durations(metadata: pd.DataFrame):
    ok = metadata[metadata["status"] == "ok"]
    fig, ax = plt.subplots(figsize=(9, 3.4))
    bins = np.linspace(0, max(1.0, float(ok["duration_s"].quantile(0.995))), 40)
    for corpus, rows in ok.groupby("corpus"):
        ax.hist(rows["duration_s"].clip(upper=bins[-1]), bins=bins, alpha=0.6, label=f"{corpus} (n={len(rows)})")
    ax.set_xlabel("duration (s)")
    ax.set_ylabel("clips")
    ax.set_title("Clip durations")
    ax.legend()
    return fig


def example_clips(metadata: pd.DataFrame) -> pd.DataFrame:
    """The first usable clip (by utterance_id) of each emotion: a stable, reproducible choice."""
    ok = metadata[metadata["status"] == "ok"].sort_values("utterance_id")
    order = _emotion_order(ok["emotion"])
    chosen = ok.groupby("emotion", sort=False).head(1).set_index("emotion")
    return chosen.reindex([e for e in order if e in chosen.index])


def _read_example(path: Path) -> tuple[np.ndarray, int]:
    from ser.audio import decode, to_mono

    samples, sample_rate = decode(path)
    return to_mono(samples), sample_rate


def plot_examples(examples: pd.DataFrame, root: Path, report: Report):
    import librosa
    import librosa.display

    wave_fig, wave_axes = _grid(len(examples))
    spec_fig, spec_axes = _grid(len(examples))
    for (emotion, row), wave_ax, spec_ax in zip(examples.iterrows(), wave_axes, spec_axes):
        path = Path(row["path"]) if Path(row["path"]).is_absolute() else root / row["path"]
        title = f"{emotion}\n{row['utterance_id']}"
        try:
            y, sample_rate = _read_example(path)
        except Exception as exc:  # a missing clip costs its panel, not the report
            report.notes.append(f"example clip for {emotion} unreadable: {exc}")
            for ax in (wave_ax, spec_ax):
                ax.set_title(title, fontsize=8)
                ax.text(0.5, 0.5, "unreadable", ha="center", va="center")
            continue
        librosa.display.waveshow(y, sr=sample_rate, ax=wave_ax, color="#4f46e5")
        wave_ax.set_title(title, fontsize=8)
        wave_ax.set_xlabel("")
        mel = librosa.feature.melspectrogram(y=y, sr=sample_rate, n_mels=64, fmax=min(8000, sample_rate / 2))
        librosa.display.specshow(librosa.power_to_db(mel, ref=np.max), sr=sample_rate, x_axis="time",
                                 y_axis="mel", fmax=min(8000, sample_rate / 2), ax=spec_ax, cmap="magma")
        spec_ax.set_title(title, fontsize=8)
        spec_ax.set_xlabel("")
    wave_fig.suptitle("Waveform of one clip per emotion")
    spec_fig.suptitle("Log-mel spectrogram of one clip per emotion")
    wave_fig.tight_layout()
    spec_fig.tight_layout()
    return wave_fig, spec_fig


# ---- features -----------------------------------------------------------------------------------
def key_feature_table(features_dir: Path) -> pd.DataFrame | None:
    """Key features indexed by utterance_id: eGeMAPS descriptors when present, else functionals."""
    egemaps = features_dir / "egemaps.parquet"
    if egemaps.is_file():
        table = pd.read_parquet(egemaps)
        columns = [c for c in KEY_FEATURES if c in table.columns]
        if columns:
            return table.set_index("utterance_id")[columns]
    functionals = features_dir / "functionals.parquet"
    if functionals.is_file():
        table = pd.read_parquet(functionals).set_index("utterance_id")
        columns = [c for c in table.columns if any(h in c.lower() for h in KEY_FUNCTIONAL_HINTS)][:6]
        return table[columns or list(table.columns[:6])]
    return None


def plot_feature_distributions(features: pd.DataFrame, metadata: pd.DataFrame):
    joined = features.join(metadata.set_index("utterance_id")["emotion"], how="inner")
    order = _emotion_order(joined["emotion"])
    columns = list(features.columns)
    fig, axes = _grid(len(columns), columns=2, cell=(6.5, 2.8))
    for name, ax in zip(columns, axes):
        groups = [joined.loc[joined["emotion"] == e, name].dropna().to_numpy() for e in order]
        ax.boxplot(groups, showfliers=False)
        ax.set_xticks(range(1, len(order) + 1), order, rotation=30, fontsize=8)
        ax.set_title(name, fontsize=9)
    fig.suptitle("Distribution of key features per emotion (box: quartiles, whiskers: 1.5 IQR)")
    fig.tight_layout()
    return fig


# ---- model ----------------------------------------------------------------------------------------
# Scores come from ser.training.metrics and the confusion / curves / per-class figures from ser.training.evaluate,
# the code that writes metrics/evaluate.json, so the report and that file can never disagree.
def scores_by(oof: pd.DataFrame, column: str) -> pd.DataFrame:
    table = pd.DataFrame({key: {**metrics.scores(rows["y_true"], rows["y_pred"]), "clips": len(rows)}
                          for key, rows in oof.groupby(column)}).T.rename_axis(column)
    table["clips"] = table["clips"].astype(int)
    return table


def per_class_table(oof: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    return pd.DataFrame(metrics.per_class(oof["y_true"], oof["y_pred"], classes)).T.rename_axis("class")


def plot_score_bars(table: pd.DataFrame, title: str):
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(table) + 3), 3.4))
    table[["accuracy", "uar", "macro_f1"]].astype(float).plot.bar(ax=ax, width=0.8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("score")
    ax.set_title(title)
    ax.tick_params(axis="x", rotation=0)
    ax.legend(["accuracy", "UAR (balanced accuracy)", "macro F1"], fontsize=8, loc="lower right")
    for container in ax.containers:
        ax.bar_label(container, fmt="%.2f", fontsize=7)
    return fig


# ---- the model on one long recording ----------------------------------------------------------------
TIMELINE_CLIPS = 4
TIMELINE_GAPS_S = [1.0, 1.5, 1.2, 1.8, 1.0]
# The page's palette (ser/serving/static/index.html), so a timeline looks the same in both.
EMOTION_COLOURS = {"neutral": "#64748b", "calm": "#0ea5e9", "happy": "#eab308", "sad": "#2563eb", "angry": "#dc2626",
                   "fearful": "#7c3aed", "disgust": "#16a34a", "surprised": "#f97316", "boredom": "#a16207",
                   "uncertain": "#9ca3af"}


def timeline_example(metadata: pd.DataFrame, root: Path, model_dir: Path, predict_params: Any):
    """The figure, and the timeline and the truth it draws: the first clip (by utterance_id) of
    each of up to four of the model's emotions, front-end processed, with pauses of low noise
    between them, segmented and scored by the model in ``model_dir`` as ``ser predict --timeline``
    does. These clips were in the final model's training data: the figure shows the tool, the
    scores above measure the model."""
    import io

    import soundfile as sf

    from ser.audio import load_audio
    from ser.serving.predict import load_bundle_predictor
    from ser.serving.timeline import assemble, timeline

    predictor = load_bundle_predictor(model_dir, predict_params)
    if predictor.bundle.speaker_norm != "none":
        return _message_figure("The model standardizes per speaker (transductive): it scores a speaker's "
                               "recordings together, not one recording, so no timeline is drawn."), None, []
    examples = example_clips(metadata)
    examples = examples[examples.index.isin(predictor.classes)].head(TIMELINE_CLIPS)
    paths = [Path(p) if Path(p).is_absolute() else root / p for p in examples["path"]]
    clips = [load_audio(path, predictor.bundle.audio) for path in paths]
    rate = predictor.sample_rate
    y, truth = assemble(clips, rate, TIMELINE_GAPS_S)
    buffer = io.BytesIO()
    sf.write(buffer, y, rate, format="WAV", subtype="FLOAT")
    found = timeline(predictor, buffer.getvalue(), predictor.segments, "example")
    truth_s = [(start / rate, end / rate, emotion) for (start, end), emotion in zip(truth, examples.index)]

    fig, (wave_ax, strip_ax) = plt.subplots(2, 1, figsize=(10, 3.4), sharex=True,
                                            gridspec_kw={"height_ratios": [3, 1]})
    t = np.arange(y.size) / rate
    wave_ax.plot(t, y, color="#4f46e5", linewidth=0.4)
    for start, end, emotion in truth_s:
        wave_ax.axvspan(start, end, color="#e4e7ec", zorder=0)
        wave_ax.text((start + end) / 2, 1.02, f"clip: {emotion}", ha="center", va="bottom", fontsize=8,
                     transform=wave_ax.get_xaxis_transform())
    wave_ax.set_yticks([])
    wave_ax.set_ylim(-1, 1)
    for segment in found.segments:
        colour = EMOTION_COLOURS.get(segment.label, "#9ca3af")
        strip_ax.axvspan(segment.start_s, segment.end_s, color=colour, alpha=0.35 + 0.65 * segment.confidence)
        strip_ax.text((segment.start_s + segment.end_s) / 2, 0.5, f"{segment.label}\n{100 * segment.confidence:.0f}%",
                      ha="center", va="center", fontsize=8, color="white")
    strip_ax.set_yticks([])
    strip_ax.set_xlim(0, y.size / rate)
    strip_ax.set_xlabel("seconds")
    strip_ax.set_ylabel("model", rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(f"ser predict --timeline on {len(clips)} example clips with pauses: {len(found.segments)} "
                 "speech segments found", fontsize=10)
    fig.tight_layout()
    return fig, found, truth_s


def plot_timeline_example(metadata: pd.DataFrame, root: Path, train_dir: Path | None, predict_params: Any,
                          report: Report):
    model_dir = Path(train_dir or ".") / "model"
    if train_dir is None or predict_params is None or not (model_dir / "bundle.json").is_file():
        return _message_figure(f"No model in {model_dir} (or no predict params) to draw a timeline with.")
    try:
        return timeline_example(metadata, root, model_dir, predict_params)[0]
    except Exception as exc:  # an unreadable example clip or model costs this figure, not the report
        report.notes.append(f"timeline example not drawn: {type(exc).__name__}: {exc}")
        return _message_figure(f"Timeline example not drawn: {exc}")


# ---- the report -----------------------------------------------------------------------------------
@dataclass
class PipelineOutputs:
    """What the earlier stages wrote, read once and shared by the figures and the page."""

    metadata: pd.DataFrame
    oof: pd.DataFrame
    history: pd.DataFrame
    classes: list[str]
    evaluation: dict[str, Any]
    run: dict[str, Any]
    calibration: dict[str, Any] | None = None

    @property
    def protocol(self) -> str:
        return find_protocol(self.evaluation, self.run)

    @property
    def model_type(self) -> str:
        run, evaluation = self.run, self.evaluation
        return str(run.get("model_type") or evaluation.get("model_type") or run.get("model", "the model"))


@dataclass
class ShownTables:
    """The tables printed beside their figures."""

    counts: pd.DataFrame
    examples: pd.DataFrame
    per_class: pd.DataFrame
    per_corpus: pd.DataFrame
    per_fold: pd.DataFrame


def read_outputs(metadata_path: str | os.PathLike, train_dir: Path, metrics_path: str | os.PathLike,
                 calibration_path: str | os.PathLike | None = None) -> PipelineOutputs:
    oof = pd.read_parquet(train_dir / "oof_predictions.parquet")
    oof["y_true"], oof["y_pred"] = oof["y_true"].astype(str), oof["y_pred"].astype(str)
    history_path = train_dir / "history.csv"
    history = pd.read_csv(history_path) if history_path.is_file() and history_path.stat().st_size else pd.DataFrame()
    return PipelineOutputs(metadata=pd.read_parquet(metadata_path), oof=oof, history=history,
                           classes=_classes(train_dir, oof), evaluation=_read_json(Path(metrics_path)),
                           run={**_read_json(train_dir / "train_info.json"), **_read_json(train_dir / "run.json")},
                           calibration=_read_json(Path(calibration_path)) if calibration_path else None)


def draw_figures(outputs: PipelineOutputs, features_dir: Path, root: Path, report: Report,
                 train_dir: Path | None = None, predict_params: Any = None) -> ShownTables:
    """Save every figure of :data:`FIGURES` into ``report.folder``; returns the tables shown beside them.
    The timeline example needs the final model (``train_dir/model``) and the ``predict:`` section."""
    from tqdm.auto import tqdm

    metadata, oof, classes = outputs.metadata, outputs.oof, outputs.classes
    steps = tqdm(total=len(FIGURES), desc="report figures", unit="figure")

    def done(name: str, fig) -> None:
        _save(fig, report.folder, name, report)
        steps.update(1)

    counts_fig, counts = plot_counts(metadata)
    done("data_counts", counts_fig)
    done("data_durations", plot_durations(metadata))
    examples = example_clips(metadata)
    wave_fig, spec_fig = plot_examples(examples, root, report)
    done("data_waveforms", wave_fig)
    done("data_spectrograms", spec_fig)
    features = key_feature_table(features_dir)
    if features is None or features.empty:
        report.notes.append(f"no feature tables in {features_dir}")
        done("feature_distributions", _message_figure(f"No feature tables found in {features_dir}."))
    else:
        done("feature_distributions", plot_feature_distributions(features, metadata))
    confusion_title = f"Confusion matrix, {outputs.protocol} (row-normalized)"
    done("model_confusion", evaluate.plot_confusion(oof, classes, confusion_title))
    done("model_curves", evaluate.plot_curves(outputs.history))
    per_class = per_class_table(oof, classes)
    done("model_per_class", evaluate.plot_per_class(metrics.per_class(oof["y_true"], oof["y_pred"], classes)))
    per_corpus = scores_by(oof, "corpus")
    done("model_per_corpus", plot_score_bars(per_corpus, "Scores per corpus (out-of-fold)"))
    per_fold = scores_by(oof, "fold")
    done("model_per_fold", plot_score_bars(per_fold, "Scores per fold (out-of-fold)"))
    done("model_reliability", evaluate.reliability_figure(outputs.calibration) if outputs.calibration
         else _message_figure("No calibration figures (metrics/calibration.json) were given."))
    done("model_timeline", plot_timeline_example(metadata, root, train_dir, predict_params, report))
    steps.close()
    return ShownTables(counts=counts, examples=examples, per_class=per_class, per_corpus=per_corpus, per_fold=per_fold)


# ---- the page -------------------------------------------------------------------------------------
# The markup lives in ser/templates/report.html.j2; Python only hands it plain values.
def format_number(value: Any, digits: int) -> str:
    """Floats with ``digits`` decimals, anything else as text: how pandas' ``float_format`` printed tables."""
    if isinstance(value, (float, np.floating)):
        return "NaN" if np.isnan(value) else f"{value:.{digits}f}"
    return str(value)


@functools.cache
def _environment() -> jinja2.Environment:
    # Escaping on for every template, whatever its name: labels, corpus names and clip ids come
    # from the data. StrictUndefined turns a context key the template expects but did not get
    # into an error instead of a silently blank cell.
    environment = jinja2.Environment(loader=jinja2.PackageLoader("ser", "templates"),
                                     autoescape=jinja2.select_autoescape(("html", "html.j2"), default=True),
                                     undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    environment.filters["number"] = format_number
    return environment


def _axis_name(name: Any) -> str:
    return "" if name is None else str(name)


def table_context(frame: pd.DataFrame, digits: int = 3) -> dict[str, Any]:
    """A table as plain values; the template formats the numbers with ``digits`` decimals."""
    return {"columns_name": _axis_name(frame.columns.name), "index_name": _axis_name(frame.index.name),
            "columns": [str(c) for c in frame.columns], "digits": digits,
            "rows": [{"label": str(label), "cells": list(cells)} for label, *cells in frame.itertuples(name=None)]}


def _evaluation_table(evaluation: dict[str, Any]) -> dict[str, Any] | None:
    headline = {k: v for k, v in evaluation.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
    if not headline:
        return None
    return table_context(pd.DataFrame({"value": pd.Series(headline, dtype=object)}))


def page_context(report: Report, outputs: PipelineOutputs, tables: ShownTables) -> dict[str, Any]:
    """Everything ``report.html.j2`` shows, as plain values."""
    oof, metadata = outputs.oof, outputs.metadata
    return {
        "protocol": outputs.protocol,
        "model_type": outputs.model_type,
        "transductive": bool(outputs.evaluation.get("transductive")),
        "overall": {**metrics.scores(oof["y_true"], oof["y_pred"]), "clips": len(oof)},
        "clips": len(metadata),
        "statuses": [{"name": str(name), "count": int(count)}
                     for name, count in metadata["status"].value_counts().items()],
        "examples": [{"emotion": str(emotion), "utterance_id": str(row["utterance_id"])}
                     for emotion, row in tables.examples.iterrows()],
        "figures": {name: {"src": path.name, "caption": FIGURES[name]} for name, path in report.figures.items()},
        "counts": table_context(tables.counts, digits=0),
        "per_class": table_context(tables.per_class),
        "per_corpus": table_context(tables.per_corpus),
        "per_fold": table_context(tables.per_fold),
        "evaluation": _evaluation_table(outputs.evaluation),
        "notes": list(report.notes),
    }


def render_page(context: dict[str, Any]) -> str:
    return _environment().get_template("report.html.j2").render(context)


def build_report(metadata_path: str | os.PathLike, features_dir: str | os.PathLike, train_dir: str | os.PathLike,
                 metrics_path: str | os.PathLike, out_dir: str | os.PathLike, root: str | os.PathLike,
                 calibration_path: str | os.PathLike | None = None, predict_params: Any = None) -> Report:
    """Write ``index.html`` and every figure of :data:`FIGURES` into ``out_dir``; relative clip
    paths are read under ``root``; ``calibration_path`` is metrics/calibration.json;
    ``predict_params`` (the ``predict:`` section) windows and segments the timeline example."""
    root = Path(root)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.png"):
        stale.unlink()
    report = Report(out)
    outputs = read_outputs(metadata_path, Path(train_dir), metrics_path, calibration_path)
    tables = draw_figures(outputs, Path(features_dir), root, report, Path(train_dir), predict_params)
    report.index.write_text(render_page(page_context(report, outputs, tables)), encoding="utf-8")
    return report


def log_report(report_dir: str | os.PathLike, run_json: str | os.PathLike, tracking_uri: str | None = None,
               artifact_path: str = "report") -> str | None:
    """Log the report folder to the MLflow run named in ``run.json``; returns the run id.

    The store is ``tracking_uri`` when given, else the one ``run.json`` recorded. Returns
    ``None`` (and logs nothing) when ``run.json`` names no run; a named run that cannot be
    reached is an error.
    """
    from mlflow.tracking import MlflowClient

    run = _read_json(Path(run_json))
    run_id = find_run_id(run)
    if run_id is None:
        return None
    tracking_uri = tracking_uri or run["tracking_uri"]
    client = MlflowClient(tracking_uri=tracking_uri)
    client.get_run(run_id)  # a clear MlflowException if the run is not in this store
    client.log_artifacts(run_id, str(report_dir), artifact_path=artifact_path)
    return run_id
