"""The tables of README.md and docs/RESULTS.md whose numbers live in metrics/*.json, rendered from them.

Each generated table sits between ``<!-- begin generated: NAME -->`` and
``<!-- end generated: NAME -->``; everything else in the file is written by hand. After a run
that changes metrics (``dvc repro``, a benchmark), rewrite the tables:

    python tools/results.py            # rewrite the tables of README.md and docs/RESULTS.md
    python tools/results.py --check    # exit 1 if a table is stale
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "RESULTS.md"
CORPORA = ("ravdess", "tess", "savee", "emovo", "eyase")


def _read(metrics: Path, name: str) -> dict | None:
    path = metrics / name
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _uar(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def headline(metrics: Path) -> list[str]:
    """The default model's figures: speaker-independent per corpus, then leave-one-corpus-out."""
    evaluated, cross = _read(metrics, "evaluate.json"), _read(metrics, "cross_corpus.json")
    lines = [f"Model `{evaluated['model_type']}` on `{evaluated['feature_input']}` "
             "(`metrics/evaluate.json`, `metrics/cross_corpus.json`); UAR.", "",
             "| protocol | " + " | ".join(c.upper() for c in CORPORA) + " | mean / all |",
             "| --- |" + " --- |" * (len(CORPORA) + 1)]
    per_corpus = evaluated["per_corpus"]
    lines.append(f"| speaker-independent, {evaluated['n_folds']} folds, every class | "
                 + " | ".join(_uar(per_corpus.get(c, {}).get("uar")) for c in CORPORA)
                 + f" | {_uar(evaluated['uar'])} (all clips) |")
    figures = [("headline", "leave-one-corpus-out (held out), 4 shared classes"),
               ("train_on_shared", "leave-one-corpus-out, trained on the 4 shared classes only"),
               ("train_on_all", "leave-one-corpus-out, trained on every class"),
               ("transductive_speaker_norm", "TRANSDUCTIVE: leave-one-corpus-out, speakers normalized "
                                             "with their unlabeled clips")]
    for key, label in figures:
        if key not in cross:
            continue
        held_out = cross[key]["held_out"]
        lines.append(f"| {label} | " + " | ".join(_uar(held_out.get(c, {}).get("uar")) for c in CORPORA)
                     + f" | {_uar(cross[key]['mean_uar'])} (mean) |")
    return lines


def emobox(metrics: Path) -> list[str]:
    """The EmoBox partitions against the published frozen-encoder results."""
    box = _read(metrics, "emobox.json")
    if box is None:
        return ["Not measured: `python benchmarks/bench_emobox.py`."]
    published = box["published"]
    lines = ["`metrics/emobox.json` (`python benchmarks/bench_emobox.py`); UA.", "",
             "| partition | this recipe | whisper-large-v3 (published) | best published |", "| --- | --- | --- | --- |"]
    ravdess = published["ravdess_8class_ua_6folds"]
    lines.append(f"| RAVDESS, 8 classes, EmoBox's 6 folds | {_uar(box['ravdess_6fold']['ua'])} | "
                 f"{_uar(ravdess['whisper-large-v3'])} | {_uar(max(ravdess.values()))} |")
    for pair, figure in box["track2"].items():
        reference = published["track2_accuracy"].get(pair, {})
        lines.append(f"| track 2, {pair.replace('->', ' to ')}, 4 classes | {_uar(figure['ua'])} | "
                     f"{_uar(reference.get('whisper-large-v3'))} | "
                     f"{_uar(max(reference.values()) if reference else None)} |")
    return lines


def families(metrics: Path) -> list[str]:
    """The Keras families as queued DVC experiments (``benchmarks/bench_families.py``)."""
    bench = _read(metrics, "bench_families.json")
    if bench is None:
        return ["Not measured yet: `python benchmarks/bench_families.py`."]
    lines = [f"`{bench['command']}` ({bench['machine_cores']} cores; "
             "`metrics/bench_families.json`, `python benchmarks/bench_families.py`). RAVDESS: "
             "speaker-independent UAR of the all-corpora model's folds; LOCO: five-corpus "
             "leave-one-corpus-out mean, 4 shared classes; wall: the whole queued experiment.", "",
             "| model | input | RAVDESS | LOCO mean | LOCO held out (" + ", ".join(CORPORA) + ") | wall | parameters |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in bench["rows"]:
        wall = f"{row['wall_s'] / 60:.1f} min" if row.get("wall_s") else "-"
        parameters = f"{row['parameters'] / 1000:.0f}k" if row.get("parameters") else "-"
        held_out = " ".join(_uar(row["loco_held_out_uar"].get(c)) for c in CORPORA)
        name = row["model_type"] + (" (the default, workspace)" if row["experiment"].startswith("workspace") else "")
        lines.append(f"| {name} | {row['input']} | {_uar(row['ravdess_uar'])} | {_uar(row['loco_mean_uar'])} | "
                     f"{held_out} | {wall} | {parameters} |")
    for failure in bench.get("failed", []):
        lines.append(f"| {failure} | - | - | - | - | - | - |")
    return lines


LANGUAGES = {"emovo": "Italian", "eyase": "Egyptian Arabic, semi-natural"}


def readme_in_corpus(metrics: Path) -> list[str]:
    """The README's evaluation table: the default model's speaker-independent figures per corpus."""
    evaluated, data = _read(metrics, "evaluate.json"), _read(metrics, "data.json")
    lines = [f"| scope (speaker-independent, {evaluated['n_folds']} folds) | UAR | accuracy | macro-F1 |",
             "| --- | --- | --- | --- |"]
    for corpus, figures in evaluated["per_corpus"].items():
        summary = data.get(corpus, {})
        speakers = summary.get("female_speakers", 0) + summary.get("male_speakers", 0)
        about = ", ".join([f"{len(summary.get('emotions', {}))} classes", f"{speakers} speakers"]
                          + ([LANGUAGES[corpus]] if corpus in LANGUAGES else []))
        uar = f"**{figures['uar']:.3f}**" if corpus == "ravdess" else _uar(figures["uar"])
        lines.append(f"| {corpus.upper()} ({about}) | {uar} | {_uar(figures['accuracy'])} | {_uar(figures['macro_f1'])} |")
    lines.append(f"| all {evaluated['n_clips']} clips | {_uar(evaluated['uar'])} | {_uar(evaluated['accuracy'])} | "
                 f"{_uar(evaluated['macro_f1'])} |")
    return lines


def readme_emobox(metrics: Path) -> list[str]:
    box = _read(metrics, "emobox.json")
    published = box["published"]
    encoders = ("whisper-large-v3", "wavlm-large", "hubert-large")
    names = {"whisper-large-v3": "EmoBox: Whisper-large-v3", "wavlm-large": "WavLM-large", "hubert-large": "HuBERT-large"}
    lines = ["| protocol | ser (Whisper-base, linear probe) | " + " | ".join(names[e] for e in encoders) + " |",
             "| --- |" + " --- |" * (len(encoders) + 1)]
    ravdess = published["ravdess_8class_ua_6folds"]
    lines.append(f"| RAVDESS 8 classes, 6 folds of 4 actors, mean UA | **{box['ravdess_6fold']['ua']:.3f}** | "
                 + " | ".join(_uar(ravdess.get(e)) for e in encoders) + " |")
    for pair, figure in box["track2"].items():
        source, target = pair.split("->")
        reference = published["track2_accuracy"].get(pair, {})
        lines.append(f"| track 2: trained on {source.upper()}, tested on {target.upper()} ({figure['n_clips']} clips) | "
                     f"{_uar(figure['ua'])} | " + " | ".join(_uar(reference.get(e)) for e in encoders) + " |")
    return lines


def readme_loco(metrics: Path) -> list[str]:
    cross = _read(metrics, "cross_corpus.json")
    columns = [("headline", "UAR (non-transductive, the headline)"),
               ("train_on_shared", "trained on the 4 classes only"),
               ("train_on_all", "trained on every class"),
               ("transductive_speaker_norm", "speaker-normalized (TRANSDUCTIVE)")]
    columns = [(key, label) for key, label in columns if key in cross]
    lines = ["| held-out corpus | " + " | ".join(label for _, label in columns) + " |",
             "| --- |" + " --- |" * len(columns)]
    for corpus in cross["corpora"]:
        lines.append(f"| {corpus.upper()} | "
                     + " | ".join(_uar(cross[key]["held_out"][corpus]["uar"]) for key, _ in columns) + " |")
    means = [f"**{cross[key]['mean_uar']:.3f}**" if key == "headline" else _uar(cross[key]["mean_uar"])
             for key, _ in columns]
    lines.append("| **mean** | " + " | ".join(means) + " |")
    return lines


TABLES: dict[str, Callable[[Path], list[str]]] = {
    "headline": headline, "emobox": emobox, "families": families,
    "readme_in_corpus": readme_in_corpus, "readme_emobox": readme_emobox, "readme_loco": readme_loco}
DOCUMENTS = (REPO / "README.md", RESULTS)
BLOCK = re.compile(r"(<!-- begin generated: (?P<name>[a-z_]+) -->\n)(?P<body>.*?)(<!-- end generated: (?P=name) -->)",
                   re.S)


def render(text: str, metrics: Path) -> str:
    """``text`` with every generated block rewritten from ``metrics``."""
    def table(match: re.Match) -> str:
        name = match["name"]
        if name not in TABLES:
            raise KeyError(f"docs/RESULTS.md names a generated table '{name}' that tools/results.py does not know")
        return match[1] + "\n".join(TABLES[name](metrics)) + "\n" + match[4]

    return BLOCK.sub(table, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if a document is stale, change nothing")
    parser.add_argument("--metrics", default=REPO / "metrics", type=Path)
    args = parser.parse_args(argv)
    stale = []
    for document in DOCUMENTS:
        text = document.read_text(encoding="utf-8")
        rendered = render(text, args.metrics)
        if rendered == text:
            continue
        stale.append(document)
        if not args.check:
            document.write_text(rendered, encoding="utf-8")
            print(f"{document.relative_to(REPO)}: tables rewritten from {args.metrics}")
    if args.check and stale:
        print("stale: " + ", ".join(str(d.relative_to(REPO)) for d in stale) + ": run python tools/results.py",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
