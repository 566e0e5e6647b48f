"""Split guarantees: no speaker, no duplicate clip and no augmented copy of a test clip on the
training side; checked on generated metadata and on the real RAVDESS metadata."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ser.training import splits


def generated_metadata(speakers_per_corpus=(("ravdess", 12, 10), ("tess", 2, 40))) -> pd.DataFrame:
    rows = []
    emotions = ["angry", "happy", "neutral", "sad"]
    for corpus, n_speakers, clips in speakers_per_corpus:
        for s in range(n_speakers):
            for k in range(clips):
                rows.append({"utterance_id": f"{corpus}_{s:02d}_{k:03d}", "corpus": corpus,
                             "speaker": f"{corpus}_{s:02d}", "gender": "male" if s % 2 else "female",
                             "emotion": emotions[k % 4], "duplicate_of": None, "status": "ok"})
    return pd.DataFrame(rows)


def assert_no_group_straddles(folds: pd.DataFrame, metadata: pd.DataFrame) -> None:
    speaker = metadata.set_index("utterance_id")["speaker"]
    per_speaker = folds.assign(speaker=speaker.loc[folds.index].values).groupby("speaker")["fold"].nunique()
    assert (per_speaker == 1).all(), per_speaker[per_speaker > 1]
    linked = metadata[metadata["duplicate_of"].notna()]
    for utterance, original in zip(linked["utterance_id"], linked["duplicate_of"]):
        assert folds.loc[utterance, "fold"] == folds.loc[original, "fold"]


def test_speaker_kfold_keeps_speakers_whole_and_balanced():
    metadata = generated_metadata()
    folds = splits.assign_folds(metadata, "speaker_kfold", n_folds=6, seed=1)
    assert sorted(folds["fold"].unique()) == list(range(6))
    assert_no_group_straddles(folds, metadata)
    ravdess = folds[metadata["corpus"].values == "ravdess"]
    speakers = metadata.set_index("utterance_id").loc[ravdess.index, ["speaker", "gender"]]
    per_fold = speakers.assign(fold=ravdess["fold"].values).drop_duplicates("speaker")
    # 12 speakers into 6 folds: 2 per fold, one of each gender.
    assert per_fold.groupby("fold").size().tolist() == [2] * 6
    assert (per_fold.groupby("fold")["gender"].nunique() == 2).all()


def test_duplicates_across_speakers_join_one_group():
    metadata = generated_metadata()
    # A clip of speaker 03 that is a copy of a clip of speaker 08 (and one chained further).
    metadata.loc[metadata["utterance_id"] == "ravdess_03_001", "duplicate_of"] = "ravdess_08_005"
    metadata.loc[metadata["utterance_id"] == "ravdess_05_002", "duplicate_of"] = "ravdess_03_007"
    groups = splits.speaker_groups(metadata)
    assert groups["ravdess_03_000"] == groups["ravdess_08_000"] == groups["ravdess_05_000"]
    assert groups["ravdess_01_000"] != groups["ravdess_03_000"]
    for seed in range(5):
        folds = splits.assign_folds(metadata, "speaker_kfold", n_folds=4, seed=seed)
        assert_no_group_straddles(folds, metadata)
        assert folds.loc["ravdess_03_000", "fold"] == folds.loc["ravdess_08_000", "fold"] == folds.loc["ravdess_05_000", "fold"]


def test_training_side_and_validation_never_touch_test_groups():
    metadata = generated_metadata()
    folds = splits.assign_folds(metadata, "speaker_kfold", n_folds=3, seed=0)
    for fold in range(3):
        train = splits.training_mask(folds, fold)
        test = (folds["fold"] == fold).to_numpy()
        assert not (train & test).any() and (train | test).all()
        validation = splits.validation_groups(folds, metadata, train, 0.25, seed=fold)
        assert validation.any() and not (validation & ~train).any()
        fit_groups = set(folds.loc[train & ~validation, "group"])
        assert fit_groups.isdisjoint(folds.loc[validation, "group"])
        assert fit_groups.isdisjoint(folds.loc[test, "group"])
        # TESS has two speakers: validation speakers come from RAVDESS only, TESS is never halved.
        assert not folds.loc[validation].index.str.startswith("tess").any()


def test_augmented_rows_follow_their_source():
    metadata = generated_metadata()
    folds = splits.assign_folds(metadata, "speaker_kfold", n_folds=6, seed=0)
    index = pd.DataFrame({"utterance_id": [f"{u}__aug{k}" for u in metadata["utterance_id"] for k in range(2)],
                          "source_utterance_id": [u for u in metadata["utterance_id"] for _ in range(2)]})
    copies = splits.augmented_folds(folds, index)
    assert len(copies) == len(index)
    assert (copies["fold"].values == folds.loc[copies["source_utterance_id"], "fold"].values).all()


def test_leave_one_corpus_out_and_random_protocols():
    metadata = generated_metadata()
    loco = splits.assign_folds(metadata, "leave_one_corpus_out")
    assert loco.groupby(metadata["corpus"].values)["fold"].nunique().tolist() == [1, 1]
    assert loco["fold"].nunique() == 2
    with pytest.raises(ValueError, match="at least two corpora"):
        splits.assign_folds(metadata[metadata["corpus"] == "ravdess"], "leave_one_corpus_out")

    metadata.loc[metadata["utterance_id"] == "ravdess_00_001", "duplicate_of"] = "ravdess_04_002"
    shuffled = splits.assign_folds(metadata, "random", n_folds=5, seed=3)
    # Speaker-dependent by design: speakers straddle folds ...
    per_speaker = shuffled.groupby(metadata["speaker"].values)["fold"].nunique()
    assert (per_speaker > 1).any()
    # ... but a duplicate pair still does not.
    assert shuffled.loc["ravdess_00_001", "fold"] == shuffled.loc["ravdess_04_002", "fold"]


def test_splits_are_seeded_and_reject_bad_requests():
    metadata = generated_metadata()
    first = splits.assign_folds(metadata, "speaker_kfold", 6, seed=11)
    again = splits.assign_folds(metadata.sample(frac=1.0, random_state=0), "speaker_kfold", 6, seed=11)
    pd.testing.assert_series_equal(first["fold"].sort_index(), again["fold"].sort_index())
    other = splits.assign_folds(metadata, "speaker_kfold", 6, seed=12)
    assert not first["fold"].equals(other["fold"])
    with pytest.raises(ValueError, match="unknown split.protocol"):
        splits.assign_folds(metadata, "by_sentence")
    with pytest.raises(ValueError, match="only 14 speaker groups"):
        splits.assign_folds(metadata, "speaker_kfold", n_folds=20)


# ---- the real RAVDESS metadata ---------------------------------------------------------------
@pytest.fixture(scope="module")
def ravdess_metadata(real_mirror, tmp_path_factory) -> pd.DataFrame:
    """RAVDESS metadata as the harmonize stage builds it (decoded-audio hashes and duplicates)."""
    from tests.params_support import PARAMS
    from ser.data.harmonize import harmonize

    data_params = PARAMS["data"]
    return harmonize(real_mirror, ["ravdess"], data_params, root=tmp_path_factory.mktemp("root"))


@pytest.mark.mirror
@pytest.mark.slow
def test_real_ravdess_folds(ravdess_metadata):
    metadata = ravdess_metadata[ravdess_metadata["status"] == "ok"].reset_index(drop=True)
    assert len(metadata) >= 1400 and metadata["duplicate_of"].notna().sum() >= 1
    folds = splits.assign_folds(metadata, "speaker_kfold", n_folds=6, seed=42)
    assert_no_group_straddles(folds, metadata)
    actors = metadata.set_index("utterance_id").loc[folds.index, ["speaker", "gender"]].assign(fold=folds["fold"].values)
    per_fold = actors.drop_duplicates("speaker").groupby("fold")
    assert per_fold.size().tolist() == [4] * 6  # 6 folds of 4 actors
    assert (per_fold["gender"].apply(lambda g: sorted(g.value_counts().tolist())) == pd.Series([[2, 2]] * 6)).all()
    # Actor_07's two identical takes are linked and land in the same fold.
    pair = metadata[metadata["duplicate_of"].notna()].iloc[0]
    assert folds.loc[pair["utterance_id"], "fold"] == folds.loc[pair["duplicate_of"], "fold"]
    for fold in range(6):
        train = splits.training_mask(folds, fold)
        test_speakers = set(actors.loc[(folds["fold"] == fold).to_numpy(), "speaker"])
        assert test_speakers.isdisjoint(actors.loc[train, "speaker"])
        assert np.sum(train) == len(metadata) - np.sum(folds["fold"] == fold)
