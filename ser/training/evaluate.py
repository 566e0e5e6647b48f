"""Scores and figures from out-of-fold predictions (``data/train/oof_predictions.parquet``).

Every number is recomputed from the saved predictions (with ``ser.training.metrics``), so any figure can
be redrawn without training again.

The figure functions return matplotlib Figures and take plain frames, for reuse by the report.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # noqa: E402  (no display in CI or under DVC)

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from sklearn.metrics import classification_report, confusion_matrix  # noqa: E402

from ser.training.metrics import summarize  # noqa: E402

# ---- figures ---------------------------------------------------------------------------------
def confusion_frame(oof: pd.DataFrame, classes: list[str], normalize: bool = True) -> pd.DataFrame:
    matrix = confusion_matrix(oof["y_true"].astype(str), oof["y_pred"].astype(str), labels=classes)
    matrix = matrix.astype(float)
    if normalize:
        totals = matrix.sum(axis=1, keepdims=True)
        matrix = np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)
    return pd.DataFrame(matrix, index=pd.Index(classes, name="actual"), columns=pd.Index(classes, name="predicted"))


def plot_confusion(oof: pd.DataFrame, classes: list[str], title: str = "Confusion matrix (row-normalized)") -> Figure:
    frame = confusion_frame(oof, classes)
    counts = confusion_frame(oof, classes, normalize=False)
    size = 1.0 + 0.75 * len(classes)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(frame.values, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    for i in range(len(classes)):
        for j in range(len(classes)):
            value = frame.values[i, j]
            ax.text(j, i, f"{value:.2f}\n({int(counts.values[i, j])})", ha="center", va="center", fontsize=7,
                    color="white" if value > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def mean_history(history: pd.DataFrame) -> pd.DataFrame:
    """Per-epoch mean over the cross-validation folds (the final fit, fold -1, left out)."""
    columns = ["epoch", "loss", "val_loss", "accuracy", "val_accuracy"]
    if history is None or history.empty:
        return pd.DataFrame(columns=columns)
    folds = history[history["fold"] >= 0]
    return folds.groupby("epoch", as_index=False)[columns[1:]].mean()[columns]


def plot_curves(history: pd.DataFrame, title: str = "Training curves (cross-validation folds)") -> Figure:
    fig, (ax_loss, ax_accuracy) = plt.subplots(1, 2, figsize=(11, 4))
    folds = history[history["fold"] >= 0] if history is not None and not history.empty else pd.DataFrame()
    if folds.empty:
        for ax in (ax_loss, ax_accuracy):
            ax.text(0.5, 0.5, "this model type trains without epochs", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
    else:
        for ax, metric in ((ax_loss, "loss"), (ax_accuracy, "accuracy")):
            for fold, rows in folds.groupby("fold"):
                ax.plot(rows["epoch"], rows[metric], color="tab:blue", alpha=0.3, lw=1)
                if rows[f"val_{metric}"].notna().any():
                    ax.plot(rows["epoch"], rows[f"val_{metric}"], color="tab:orange", alpha=0.3, lw=1)
            mean = mean_history(history)
            ax.plot(mean["epoch"], mean[metric], color="tab:blue", lw=2, label=f"train {metric} (mean)")
            if mean[f"val_{metric}"].notna().any():
                ax.plot(mean["epoch"], mean[f"val_{metric}"], color="tab:orange", lw=2,
                        label=f"validation {metric} (mean)")
            ax.set_xlabel("epoch")
            ax.set_ylabel(metric)
            ax.legend()
            ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_per_class(report: dict[str, dict[str, float]], title: str = "Per-class precision / recall / F1") -> Figure:
    classes = list(report)
    positions = np.arange(len(classes))
    width = 0.27
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(classes)), 4))
    for offset, metric in zip((-width, 0, width), ("precision", "recall", "f1")):
        ax.bar(positions + offset, [report[c][metric] for c in classes], width, label=metric)
    ax.set_xticks(positions, classes, rotation=45, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("score")
    ax.legend(ncol=3, loc="upper center", bbox_to_anchor=(0.5, 1.15))
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title, pad=28)
    fig.tight_layout()
    return fig


def plot_reliability(table: list[dict[str, Any]], title: str) -> Figure:
    """Accuracy against confidence per bin (the diagonal is perfect calibration), with how many
    clips each bin holds."""
    fig, (ax, ax_count) = plt.subplots(2, 1, figsize=(5.5, 6), height_ratios=(3, 1), sharex=True)
    used = [row for row in table if row["count"]]
    centres = [(row["low"] + row["high"]) / 2 for row in table]
    width = table[0]["high"] - table[0]["low"]
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="perfect calibration")
    ax.bar([(r["low"] + r["high"]) / 2 for r in used], [r["accuracy"] for r in used], width=width * 0.9,
           color="tab:blue", alpha=0.7, label="accuracy in the bin")
    ax.plot([r["confidence"] for r in used], [r["accuracy"] for r in used], "o", color="tab:orange",
            label="(mean confidence, accuracy)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title)
    ax_count.bar(centres, [row["count"] for row in table], width=width * 0.9, color="tab:grey")
    ax_count.set_xlabel("confidence (top probability)")
    ax_count.set_ylabel("clips")
    ax_count.set_xlim(0, 1)
    fig.tight_layout()
    return fig


def reliability_figure(calibration: dict[str, Any]) -> Figure:
    """The reliability diagram of ``metrics/calibration.json``'s content."""
    in_corpus = calibration["in_corpus"]
    return plot_reliability(calibration["reliability"], f"Reliability after temperature scaling "
                                                        f"(ECE {in_corpus['ece']:.3f}, before {in_corpus['ece_before']:.3f})")


COVERAGE_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def calibration_report(oof: pd.DataFrame, classes: list[str], cross_corpus: dict[str, Any] | None,
                       temperature: float) -> dict[str, Any]:
    """The content of ``metrics/calibration.json``: in-corpus ECE before and after temperature
    scaling (each fold's rows rescaled by a temperature fitted on the other folds), coverage at
    confidence thresholds, the reliability table, and the cross-corpus figure's ECE."""
    from ser.training.calibration import summary

    labels = pd.Index(classes).get_indexer(oof["y_true"].astype(str))
    in_corpus = summary(oof[[f"p_{c}" for c in classes]].to_numpy(dtype=np.float64), labels,
                        oof["fold"].to_numpy(), classes, COVERAGE_THRESHOLDS)
    report = {"protocol": "speaker-independent folds (in_corpus); leave-one-corpus-out, 4 classes (cross_corpus)",
              "bins": len(in_corpus["reliability"]), "deployed_temperature": temperature,
              "in_corpus": {key: in_corpus[key] for key in ("ece_before", "ece", "temperatures")},
              "coverage": in_corpus["coverage"], "reliability": in_corpus["reliability"]}
    if cross_corpus is not None:
        report["cross_corpus"] = cross_corpus["headline"]["calibration"]
    return report


# ---- the stage's work ------------------------------------------------------------------------------
def evaluate(train_dir: str | os.PathLike, metrics_path: str | os.PathLike, plots_dir: str | os.PathLike,
             protocol: str | None = None, calibration_path: str | os.PathLike | None = None,
             cross_corpus_path: str | os.PathLike | None = None) -> tuple[dict[str, Any], str]:
    """Write ``metrics_path`` and the plots from ``train_dir`` (and ``calibration_path`` with the
    cross-corpus ECE of ``cross_corpus_path``); returns the summary and the per-class text report
    (``ser.training.tracking.log_evaluation`` adds both to the training run)."""
    train_dir, metrics_path, plots_dir = Path(train_dir), Path(metrics_path), Path(plots_dir)
    oof = pd.read_parquet(train_dir / "oof_predictions.parquet")
    classes = json.loads((train_dir / "classes.json").read_text(encoding="utf-8"))
    history = pd.read_csv(train_dir / "history.csv")
    info = json.loads((train_dir / "train_info.json").read_text(encoding="utf-8"))
    if protocol and protocol != info["protocol"]:
        raise ValueError(f"split.protocol is '{protocol}' but {train_dir} was trained with '{info['protocol']}'; "
                         "re-run the train stage")
    protocol = info["protocol"]
    summary = summarize(oof, classes, protocol, {
        "model_type": info["model_type"], "feature_input": info["feature_input"],
        "target": info["target"], "classes": classes,
        "speaker_norm": info["speaker_norm"], "transductive": bool(info["transductive"])})
    if summary["speaker_dependent"]:
        summary["warning"] = "random protocol: speakers appear on both sides; scores are speaker-dependent"
    elif summary["transductive"]:
        summary["warning"] = ("train.speaker_norm: speaker: each test speaker's unlabeled clips normalized its "
                              "features (transductive); not comparable with the speaker-independent headline")

    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    metrics_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    plots_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"actual": oof["y_true"].astype(str), "predicted": oof["y_pred"].astype(str)}).to_csv(
        plots_dir / "confusion.csv", index=False)
    mean_history(history).to_csv(plots_dir / "history.csv", index=False)
    suffix = (" [SPEAKER-DEPENDENT]" if summary["speaker_dependent"]
              else " [TRANSDUCTIVE: speaker-normalized]" if summary["transductive"] else "")
    figures = {
        "confusion.png": plot_confusion(oof, classes, f"{info['model_type']} confusion, {protocol}{suffix}"),
        "curves.png": plot_curves(history),
        "per_class.png": plot_per_class(summary["per_class"]),
    }
    if calibration_path is not None:
        cross = (json.loads(Path(cross_corpus_path).read_text(encoding="utf-8"))
                 if cross_corpus_path is not None and Path(cross_corpus_path).is_file() else None)
        calibration = calibration_report(oof, classes, cross, float(info.get("temperature", 1.0)))
        Path(calibration_path).write_text(json.dumps(calibration, indent=2) + "\n", encoding="utf-8")
        figures["reliability.png"] = reliability_figure(calibration)
    for name, figure in figures.items():
        figure.savefig(plots_dir / name, dpi=110)
        plt.close(figure)
    report = classification_report(oof["y_true"].astype(str), oof["y_pred"].astype(str), labels=classes,
                                   zero_division=0, digits=4)
    return summary, report

