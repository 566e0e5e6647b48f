"""The report stage: every listed figure, the protocol on top, and the same files in the MLflow run.

The inputs are a small but complete set of pipeline outputs built here: generated clips, their
real eGeMAPS features, out-of-fold predictions, per-epoch histories and evaluate.json as
``ser.training.evaluate`` writes it.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from markupsafe import escape

from ser.training.report import (FIGURES, PipelineOutputs, Report, ShownTables, build_report, example_clips, log_report,
                        page_context, per_class_table, render_page, scores_by)
from tests.serve_support import PYTHON, REPO, project_params, subprocess_env

EMOTIONS = ("neutral", "happy", "sad", "angry")
CORPORA = ("ravdess", "tess")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def voiced_clip(f0: float, seconds: float, rate: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    vibrato = 1 + 0.03 * np.sin(2 * np.pi * 5 * t)
    phase = 2 * np.pi * np.cumsum(f0 * vibrato) / rate
    y = sum(np.sin(k * phase) / k for k in range(1, 6)) * np.hanning(t.size)
    return (0.3 * y / np.abs(y).max() + 0.003 * rng.standard_normal(t.size)).astype(np.float32)


def make_pipeline_outputs(root: Path, with_epochs: bool = True, run_id: str | None = None) -> dict[str, Path]:
    from ser.training import evaluate
    from ser.audio import load_audio
    from ser.features import EGEMAPS_NAMES, extract

    rng = np.random.default_rng(7)
    params = project_params()
    rows, egemaps = [], []
    (root / "audio").mkdir(parents=True)
    for corpus in CORPORA:
        for e, emotion in enumerate(EMOTIONS):
            for k in range(3):
                utterance = f"{corpus}_{emotion}_{k}"
                path = root / "audio" / f"{utterance}.wav"
                seconds = 0.8 + 0.2 * k + (0.5 if corpus == "ravdess" else 0.0)
                sf.write(path, voiced_clip(110 + 40 * e + 7 * k, seconds, 16000, rng), 16000)
                rows.append({"utterance_id": utterance, "corpus": corpus, "path": str(path),
                             "speaker": f"{corpus}_{k}", "gender": "female" if k % 2 else "male",
                             "emotion": emotion, "duration_s": seconds, "status": "ok", "problem": None})
                signal = load_audio(path, params["audio"])
                extracted = extract(signal, params["audio"], params["features"], ["egemaps"])
                egemaps.append([utterance, *extracted["egemaps"]])
    rows.append({"utterance_id": "tess_broken", "corpus": "tess", "path": str(root / "audio" / "gone.wav"),
                 "speaker": "tess_9", "gender": "female", "emotion": "sad", "duration_s": 0.0,
                 "status": "quarantined", "problem": "cannot decode audio"})
    metadata = pd.DataFrame(rows)
    metadata.to_parquet(root / "metadata.parquet", index=False)

    features = root / "features"
    features.mkdir()
    pd.DataFrame(egemaps, columns=["utterance_id", *EGEMAPS_NAMES]).to_parquet(features / "egemaps.parquet", index=False)

    train = root / "train"
    train.mkdir()
    classes = list(EMOTIONS)
    ok = metadata[metadata["status"] == "ok"].reset_index(drop=True)
    logits = rng.normal(size=(len(ok), len(classes)))
    logits[np.arange(len(ok)), [classes.index(e) for e in ok["emotion"]]] += 1.5
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    oof = pd.DataFrame({"utterance_id": ok["utterance_id"], "corpus": ok["corpus"], "fold": np.arange(len(ok)) % 3,
                        "y_true": ok["emotion"], "y_pred": [classes[i] for i in probabilities.argmax(axis=1)],
                        **{f"p_{c}": probabilities[:, i] for i, c in enumerate(classes)}})
    oof.to_parquet(train / "oof_predictions.parquet", index=False)
    history = pd.DataFrame(columns=["fold", "epoch", "loss", "val_loss", "accuracy", "val_accuracy"])
    if with_epochs:
        history = pd.DataFrame([{"fold": fold, "epoch": epoch, "loss": 2.0 / (epoch + 1), "val_loss": 2.2 / (epoch + 1) + 0.1,
                                 "accuracy": 1 - 0.5 / (epoch + 1), "val_accuracy": 0.9 - 0.5 / (epoch + 1)}
                                for fold in (-1, 0, 1, 2) for epoch in range(6)])
    history.to_csv(train / "history.csv", index=False)
    (train / "classes.json").write_text(json.dumps(classes))
    (train / "train_info.json").write_text(json.dumps({"protocol": "speaker_kfold", "model_type": "cnn1d"}))
    (train / "run.json").write_text(json.dumps({"run_id": run_id} if run_id else {}))
    metrics = root / "evaluate.json"
    metrics.write_text(json.dumps(evaluate.summarize(oof, classes, "speaker_kfold")))
    return {"metadata": root / "metadata.parquet", "features": features, "train": train, "metrics": metrics}


@pytest.mark.slow
def test_report_stage_writes_every_figure_and_logs_them_to_the_run(tmp_path):
    from mlflow.tracking import MlflowClient

    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.create_experiment("report-test", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id
    inputs = make_pipeline_outputs(tmp_path / "pipeline", run_id=run_id)
    out = tmp_path / "reports"

    result = subprocess.run([PYTHON, "stages/report.py", "--metadata", str(inputs["metadata"]),
                             "--features", str(inputs["features"]), "--train", str(inputs["train"]),
                             "--metrics", str(inputs["metrics"]), "--out", str(out)],
                            cwd=REPO, capture_output=True, text=True, timeout=600,
                            env=subprocess_env(MLFLOW_TRACKING_URI=tracking_uri))
    assert result.returncode == 0, result.stderr[-3000:]

    page = (out / "index.html").read_text()
    for name in FIGURES:
        image = out / f"{name}.png"
        assert image.read_bytes()[:8] == PNG_MAGIC, name
        assert f'src="{name}.png"' in page, name
    assert page.index("speaker_kfold") < page.index("<h2>Data</h2>")  # the protocol is named at the top
    for emotion in EMOTIONS:
        assert f"<th>{emotion}</th>" in page  # per-class table and counts table list every class
    for corpus in CORPORA:
        assert f"<th>{corpus}</th>" in page  # per-corpus scores

    logged = {Path(a.path).name for a in client.list_artifacts(run_id, "report")}
    assert logged == {"index.html", *(f"{name}.png" for name in FIGURES)}


def test_report_without_epochs_or_a_run_still_draws_everything(tmp_path):
    inputs = make_pipeline_outputs(tmp_path / "pipeline", with_epochs=False)
    report = build_report(inputs["metadata"], inputs["features"], inputs["train"], inputs["metrics"],
                          tmp_path / "reports", root=tmp_path)

    assert set(report.figures) == set(FIGURES)
    assert all(path.stat().st_size > 1000 for path in report.figures.values())
    assert log_report(report.folder, inputs["train"] / "run.json") is None  # no run named: nothing logged


HOSTILE = '<script>alert("label")</script>'


def page_context_with_label(label: str, folder: Path) -> dict:
    """A page context whose corpus, class, clip id, protocol, model type and note all carry ``label``."""
    classes = ["neutral", label]
    oof = pd.DataFrame({"utterance_id": [f"{label}_0", "u1", "u2", "u3"], "corpus": [label, label, "tess", "tess"],
                        "fold": [0, 1, 0, 1], "y_true": ["neutral", label, "neutral", label],
                        "y_pred": ["neutral", label, label, label]})
    metadata = oof[["utterance_id", "corpus"]].assign(emotion=oof["y_true"], status="ok")
    outputs = PipelineOutputs(metadata=metadata, oof=oof, history=pd.DataFrame(), classes=classes,
                              evaluation={"protocol": label, "transductive": True}, run={"model_type": label})
    tables = ShownTables(counts=pd.crosstab(metadata["emotion"], metadata["corpus"]), examples=example_clips(metadata),
                         per_class=per_class_table(oof, classes), per_corpus=scores_by(oof, "corpus"),
                         per_fold=scores_by(oof, "fold"))
    report = Report(folder, figures={"data_counts": folder / "data_counts.png"}, notes=[f"clip {label} unreadable"])
    return page_context(report, outputs, tables)


def test_user_controlled_strings_are_escaped_everywhere_on_the_page(tmp_path):
    page = render_page(page_context_with_label(HOSTILE, tmp_path))

    escaped = str(escape(HOSTILE))
    assert "<script" not in page.lower()
    assert f"<strong>{escaped}</strong>" in page  # protocol and model type
    assert f"<th>{escaped}</th>" in page  # class and corpus labels in the tables
    assert f"<code>{escaped}_0</code>" in page  # example clip id
    assert f"<li>clip {escaped} unreadable</li>" in page
    assert '<img src="data_counts.png" alt="Clips per corpus and emotion">' in page


def test_every_context_value_is_required_by_the_template(tmp_path):
    context = page_context_with_label("angry", tmp_path)
    render_page(context)  # complete: renders

    for key in context:
        incomplete = {k: v for k, v in context.items() if k != key}
        with pytest.raises(jinja2.UndefinedError, match=f"'{key}' is undefined"):
            render_page(incomplete)
