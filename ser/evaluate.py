"""Scores and figures from out-of-fold predictions (``data/train/oof_predictions.parquet``).

Every number is recomputed from the saved predictions (with ``ser.metrics``), so any figure can
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

from ser.metrics import summarize  # noqa: E402

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


# ---- the stage's work ------------------------------------------------------------------------------
def evaluate(train_dir: str | os.PathLike, metrics_path: str | os.PathLike, plots_dir: str | os.PathLike,
             protocol: str | None = None) -> tuple[dict[str, Any], str]:
    """Write ``metrics_path`` and the plots from ``train_dir``; returns the summary and the
    per-class text report (``ser.tracking.log_evaluation`` adds both to the training run)."""
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
    for name, figure in figures.items():
        figure.savefig(plots_dir / name, dpi=110)
        plt.close(figure)
    report = classification_report(oof["y_true"].astype(str), oof["y_pred"].astype(str), labels=classes,
                                   zero_division=0, digits=4)
    return summary, report

