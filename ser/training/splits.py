"""Evaluation splits that never let a speaker, a duplicate clip or an augmented copy of a test
clip reach the training side.

Groups are speakers joined by ``duplicate_of`` links (union-find): if a clip of speaker A is a
byte-identical copy of a clip of speaker B, A and B form one group, so the pair cannot straddle
folds. Augmented rows take the fold of their ``source_utterance_id``.

Protocols (``split.protocol``):

- ``speaker_kfold``: k folds of whole groups. Within each corpus, groups are dealt round-robin
  to folds in a seeded order, one gender after the other, so RAVDESS's 24 actors give 6 folds of
  4 actors (2 female, 2 male); the deal continues across corpora so fold sizes stay level.
- ``leave_one_corpus_out``: fold k = corpus k (train on the others: cross-corpus).
- ``random``: stratified k folds over clips, speakers shared between train and test. It is
  speaker-DEPENDENT, kept only for comparison with the seeds, and labelled so in every output.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

PROTOCOLS = ("speaker_kfold", "leave_one_corpus_out", "random")


class _UnionFind:
    def __init__(self):
        self.parent: dict[str, str] = {}

    def find(self, node: str) -> str:
        self.parent.setdefault(node, node)
        root = node
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[node] != root:  # path compression
            self.parent[node], node = root, self.parent[node]
        return root

    def union(self, a: str, b: str) -> None:
        root_a, root_b = self.find(a), self.find(b)
        if root_a != root_b:
            # The smaller name becomes the root, so group names do not depend on row order.
            low, high = sorted((root_a, root_b))
            self.parent[high] = low


def _duplicate_links(metadata: pd.DataFrame) -> list[tuple[str, str]]:
    if "duplicate_of" not in metadata.columns:
        return []
    linked = metadata[metadata["duplicate_of"].notna()]
    return list(zip(linked["utterance_id"].astype(str), linked["duplicate_of"].astype(str)))


def speaker_groups(metadata: pd.DataFrame) -> pd.Series:
    """Group name per utterance (index utterance_id): its speaker, merged with every speaker it
    shares a duplicate clip with."""
    speakers = metadata.set_index("utterance_id")["speaker"].astype(str)
    links = _UnionFind()
    for speaker in speakers.unique():
        links.find(speaker)
    for utterance, original in _duplicate_links(metadata):
        if original in speakers.index:
            links.union(speakers[utterance], speakers[original])
    return speakers.map(links.find).rename("group")


def duplicate_groups(metadata: pd.DataFrame) -> pd.Series:
    """Group name per utterance joining only duplicate clips (for the ``random`` protocol)."""
    ids = metadata["utterance_id"].astype(str)
    links = _UnionFind()
    for utterance in ids:
        links.find(utterance)
    for utterance, original in _duplicate_links(metadata):
        if original in links.parent:
            links.union(utterance, original)
    return pd.Series([links.find(u) for u in ids], index=pd.Index(ids, name="utterance_id"), name="group")


def _speaker_kfold(metadata: pd.DataFrame, groups: pd.Series, n_folds: int, seed: int) -> pd.Series:
    rng = np.random.default_rng(seed)
    frame = metadata.assign(group=groups.values)
    summary = (frame.groupby("group")
               .agg(corpus=("corpus", lambda s: s.mode().iloc[0]),
                    gender=("gender", lambda s: s.mode().iloc[0] if s.notna().any() else "unknown")))
    if len(summary) < n_folds:
        raise ValueError(f"split.n_folds={n_folds} but only {len(summary)} speaker groups "
                         f"({', '.join(sorted(summary.index))}); lower n_folds")
    fold_of_group: dict[str, int] = {}
    next_fold = 0
    # Corpora with more speakers first, so the big-speaker corpora (TESS) top up the folds.
    corpus_order = summary["corpus"].value_counts().sort_index().sort_values(ascending=False, kind="stable").index
    for corpus in corpus_order:
        in_corpus = summary[summary["corpus"] == corpus]
        by_gender = [list(rng.permutation(sorted(in_corpus.index[in_corpus["gender"] == g])))
                     for g in sorted(in_corpus["gender"].unique())]
        rng.shuffle(by_gender)
        # One gender after the other with a running counter: each fold gets its share of each.
        for group in [g for same_gender in by_gender for g in same_gender]:
            fold_of_group[group] = next_fold
            next_fold = (next_fold + 1) % n_folds
    return groups.map(fold_of_group)


def assign_folds(metadata: pd.DataFrame, protocol: str = "speaker_kfold", n_folds: int = 6, seed: int = 42,
                 labels: pd.Series | None = None) -> pd.DataFrame:
    """Fold per utterance: a frame indexed by utterance_id with ``fold`` (int) and ``group``.

    ``labels`` (aligned with metadata rows) stratifies the ``random`` protocol.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown split.protocol '{protocol}'; choose one of {PROTOCOLS}")
    metadata = metadata.reset_index(drop=True)
    if metadata["utterance_id"].duplicated().any():
        raise ValueError("metadata has repeated utterance_id values; cannot split")
    if protocol == "random":
        groups = duplicate_groups(metadata)
        strata = (labels.reset_index(drop=True) if labels is not None else metadata["emotion"]).astype(str)
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        folds = np.empty(len(metadata), dtype=int)
        for fold, (_, test) in enumerate(splitter.split(np.zeros(len(metadata)), strata.values, groups.values)):
            folds[test] = fold
        return pd.DataFrame({"fold": folds, "group": groups.values}, index=groups.index)
    groups = speaker_groups(metadata)
    if protocol == "leave_one_corpus_out":
        corpora = sorted(metadata["corpus"].astype(str).unique())
        if len(corpora) < 2:
            raise ValueError(f"leave_one_corpus_out needs at least two corpora; data.corpora gives {corpora}")
        fold = metadata["corpus"].astype(str).map({c: i for i, c in enumerate(corpora)}).values
        return pd.DataFrame({"fold": fold.astype(int), "group": groups.values}, index=groups.index)
    fold = _speaker_kfold(metadata, groups, n_folds, seed)
    return pd.DataFrame({"fold": fold.astype(int).values, "group": groups.values}, index=groups.index)


def training_mask(folds: pd.DataFrame, test_fold: int) -> np.ndarray:
    """Rows allowed on the training side of ``test_fold``: not in it, and sharing no group with
    it (a cross-corpus duplicate under leave_one_corpus_out, for instance)."""
    test_groups = set(folds.loc[folds["fold"] == test_fold, "group"])
    return ((folds["fold"] != test_fold) & ~folds["group"].isin(test_groups)).to_numpy()


def validation_groups(folds: pd.DataFrame, metadata: pd.DataFrame, train_rows: np.ndarray, fraction: float,
                      seed: int, protocol: str = "speaker_kfold") -> np.ndarray:
    """Mask (over ``folds`` rows) of a validation split carved out of ``train_rows``, disjoint in
    groups (speakers) from what stays for training. Speakers are drawn per corpus, so a corpus
    of two speakers (TESS) is not halved; at least one group is drawn overall."""
    if fraction <= 0:
        return np.zeros(len(folds), dtype=bool)
    rng = np.random.default_rng(seed)
    candidates = folds.loc[train_rows]
    corpus = metadata.set_index("utterance_id").loc[candidates.index, "corpus"].astype(str)
    chosen: list[str] = []
    if protocol == "random":
        unique = sorted(candidates["group"].unique())
        count = max(1, int(round(fraction * len(unique))))
        chosen = list(rng.choice(unique, size=count, replace=False))
    else:
        for name in sorted(corpus.unique()):
            unique = sorted(candidates.loc[(corpus == name).to_numpy(), "group"].unique())
            count = int(round(fraction * len(unique)))
            if count and count < len(unique):
                chosen += list(rng.choice(unique, size=count, replace=False))
        if not chosen:
            unique = sorted(candidates["group"].unique())
            if len(unique) > 1:
                chosen = [rng.choice(unique)]
    return train_rows & folds["group"].isin(chosen).to_numpy()


def augmented_folds(folds: pd.DataFrame, augmented_index: pd.DataFrame) -> pd.DataFrame:
    """Fold and group of each augmented row, taken from its source clip (index utterance_id)."""
    sources = augmented_index["source_utterance_id"].astype(str)
    missing = ~sources.isin(folds.index)
    known = augmented_index.loc[~missing]
    taken = folds.loc[known["source_utterance_id"].astype(str)]
    return pd.DataFrame({"fold": taken["fold"].values, "group": taken["group"].values,
                         "source_utterance_id": known["source_utterance_id"].astype(str).values},
                        index=pd.Index(known["utterance_id"].astype(str), name="utterance_id"))


def describe(folds: pd.DataFrame, metadata: pd.DataFrame) -> dict[str, Any]:
    """Per-fold sizes and speakers, for logs and run metadata."""
    speakers = metadata.set_index("utterance_id").loc[folds.index, "speaker"].astype(str)
    return {int(fold): {"clips": int(len(rows)), "speakers": sorted(speakers.loc[rows.index].unique())}
            for fold, rows in folds.groupby("fold")}
