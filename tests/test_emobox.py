"""EmoBox's partitions (``ser.training.emobox``): folds by actor, the track-2 lists matched clip by clip,
and UA as EmoBox reports it (mean of fold UAs) beside the pooled figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ser.training import emobox as emobox_module
from ser.data.corpora import ravdess, savee
from ser.training.emobox import (
    MissingClipsError,
    cross_corpus_ua,
    emobox,
    fold_actors,
    match_clips,
    ravdess_6fold,
    ravdess_folds,
)
from ser.training.train import ModelInputs
from tests.test_train_eval import small_params

REPO = Path(__file__).resolve().parents[1]

# EmoBox's RAVDESS folds (data/ravdess/fold_*/ravdess_test_fold_*.jsonl), as in the protocol file
EMOBOX_FOLDS = {"1": ["01", "11", "20", "21"], "2": ["04", "10", "12", "14"], "3": ["08", "09", "19", "23"],
                "4": ["03", "05", "07", "24"], "5": ["02", "15", "16", "18"], "6": ["06", "13", "17", "22"]}
FOUR = ["angry", "happy", "neutral", "sad"]
SAVEE_CODES = {"a": "angry", "h": "happy", "n": "neutral", "sa": "sad", "d": "disgust"}


def _row(corpus: str, uid: str, path: str, speaker: str, emotion: str, status: str = "ok") -> dict:
    return {"utterance_id": uid, "corpus": corpus, "path": path, "speaker": speaker, "gender": "male",
            "emotion": emotion, "duplicate_of": None, "status": status,
            "problem": None if status == "ok" else "test"}


def ravdess_rows(actors=tuple(f"{a:02d}" for a in range(1, 25)), codes=tuple(ravdess.EMOTIONS),
                 repetitions=("01", "02")) -> list[dict]:
    rows = []
    for actor in actors:
        for code in codes:
            for repetition in repetitions:
                stem = f"03-01-{code}-01-01-{repetition}-{actor}"
                clip = ravdess.parse(stem + ".wav")
                rows.append(_row("ravdess", f"ravdess_{clip.name}", f"data/raw/ravdess/Actor_{actor}/{stem}.flac",
                                 f"ravdess_{clip.speaker}", clip.emotion))
    return rows


def savee_rows(numbers=(1, 2, 3)) -> list[dict]:
    rows = []
    for speaker in savee.SPEAKERS:
        for code in SAVEE_CODES:
            for number in numbers:
                clip = savee.parse(f"{speaker}/{code}{number:02d}.wav")
                rows.append(_row("savee", f"savee_{clip.name}",
                                 f"data/raw/savee/AudioData/{speaker}/{code}{number:02d}.flac",
                                 f"savee_{speaker}", clip.emotion))
    return rows


def emotion_inputs(metadata: pd.DataFrame, seed: int = 0) -> ModelInputs:
    """Features that carry the emotion (the same direction in both corpora) plus noise."""
    rng = np.random.default_rng(seed)
    emotions = sorted(metadata["emotion"].unique())
    label = metadata["emotion"].map({e: i for i, e in enumerate(emotions)}).to_numpy()
    X = rng.normal(size=(len(metadata), len(emotions) + 2)).astype(np.float32)
    X[np.arange(len(X)), label] += 4.0
    return ModelInputs(metadata["utterance_id"].tolist(), X, [f"f{i}" for i in range(X.shape[1])])


def actor(uid: str) -> str:
    return uid[-2:]  # ravdess_03-01-EE-II-SS-RR-AA


# ---- folds by actor ----------------------------------------------------------------------------
def test_each_clip_takes_the_fold_of_its_actor():
    clips = pd.DataFrame(ravdess_rows())
    fold = ravdess_folds(clips, EMOBOX_FOLDS)
    assert sorted(set(fold)) == [1, 2, 3, 4, 5, 6]
    for number, expected in EMOBOX_FOLDS.items():
        in_fold = clips.loc[fold == int(number), "speaker"].str[-2:]
        assert sorted(in_fold.unique()) == sorted(expected)
        assert len(in_fold) == 4 * 8 * 2
    with pytest.raises(ValueError, match=r"actor 01 is a test actor of folds 1 and 2"):
        fold_actors({"1": ["01"], "2": ["01", "02"]})
    with pytest.raises(ValueError, match=r"actors \['24'\] are in no EmoBox test fold"):
        ravdess_folds(clips, EMOBOX_FOLDS | {"4": ["03", "05", "07"]})


@pytest.mark.parametrize("model_type", ["logreg", "mlp"])
def test_a_folds_test_actors_never_train_and_every_clip_is_tested_once(monkeypatch, model_type):
    metadata = pd.DataFrame(ravdess_rows())
    inputs = emotion_inputs(metadata)
    calls = []

    def spy(params, inputs, n_classes, fit_ids, y_fit, fit_corpora, test_ids, val_ids=None, y_val=None, augmented=None):
        calls.append((list(fit_ids), list(test_ids), list(val_ids or [])))
        return np.full((len(test_ids), n_classes), 1.0 / n_classes)

    monkeypatch.setattr(emobox_module, "fit_and_predict", spy)
    ravdess_6fold(metadata, inputs, small_params(model_type), EMOBOX_FOLDS)
    assert len(calls) == 6
    tested = []
    for (fit_ids, test_ids, val_ids), test_actors in zip(calls, EMOBOX_FOLDS.values()):
        assert {actor(u) for u in test_ids} == set(test_actors)
        assert len(test_ids) == 4 * 16
        assert not {actor(u) for u in fit_ids} & set(test_actors)
        assert not {actor(u) for u in val_ids} & set(test_actors)
        # the other 20 actors train (or validate): no clip is wasted, none is shared
        assert {actor(u) for u in fit_ids + val_ids} == {f"{a:02d}" for a in range(1, 25)} - set(test_actors)
        assert not set(fit_ids) & set(val_ids)
        if model_type == "mlp":  # early stopping on whole held-out speakers
            assert val_ids and not {actor(u) for u in fit_ids} & {actor(u) for u in val_ids}
        else:
            assert val_ids == []
        tested += test_ids
    assert sorted(tested) == sorted(metadata["utterance_id"])


# ---- UA: the mean of the fold UAs, and the pooled one ------------------------------------------
def test_ua_is_the_mean_of_fold_uas_and_pooled_ua_is_over_all_test_clips(monkeypatch):
    # 4 actors, 2 neutral + 2 sad clips each; fold 1 = actors 01..03, fold 2 = actor 04
    metadata = pd.DataFrame(ravdess_rows(actors=("01", "02", "03", "04"), codes=("01", "04")))
    inputs = emotion_inputs(metadata)
    truth = dict(zip(metadata["utterance_id"], metadata["emotion"]))

    def stub(params, inputs, n_classes, fit_ids, y_fit, fit_corpora, test_ids, val_ids=None, y_val=None, augmented=None):
        assert n_classes == 2  # classes: neutral, sad
        probabilities = np.zeros((len(test_ids), 2))
        for row, uid in enumerate(test_ids):
            # fold 1 answers neutral for everything; fold 2 (actor 04) is always right
            probabilities[row, 1 if actor(uid) == "04" and truth[uid] == "sad" else 0] = 1.0
        return probabilities

    monkeypatch.setattr(emobox_module, "fit_and_predict", stub)
    result = ravdess_6fold(metadata, inputs, small_params("logreg"), {"1": ["01", "02", "03"], "2": ["04"]})
    # by hand: fold 1 recalls neutral 6/6, sad 0/6 -> 0.5; fold 2 recalls both fully -> 1.0
    assert result["folds"] == pytest.approx([0.5, 1.0])
    assert result["ua"] == pytest.approx(0.75)
    # pooled: neutral 8/8, sad 2/8 -> (1 + 0.25) / 2
    assert result["pooled_ua"] == pytest.approx(0.625)


def test_track2_answers_the_most_probable_of_the_four_and_scores_ua_by_hand(monkeypatch):
    metadata = pd.DataFrame(ravdess_rows(actors=("01", "02"), codes=("01", "03", "04", "05", "07"))
                            + savee_rows())
    inputs = emotion_inputs(metadata)
    # 4 angry, 2 happy, 2 neutral, 2 sad listed clips of RAVDESS
    listed = ([f"Actor_{a}/03-01-05-01-01-{r}-{a}" for a in ("01", "02") for r in ("01", "02")]
              + [f"Actor_01/03-01-{c}-01-01-{r}-01" for c in ("03", "01", "04") for r in ("01", "02")])
    right = {"Actor_01/03-01-03-01-01-01-01", "Actor_01/03-01-04-01-01-01-01"}  # one happy, one sad
    learnt_seen = []

    def stub(params, inputs, n_classes, fit_ids, y_fit, fit_corpora, test_ids, val_ids=None, y_val=None, augmented=None):
        # train_on all: SAVEE's 5 classes, sorted: angry, disgust, happy, neutral, sad
        learnt_seen.append(n_classes)
        assert all(u.startswith("savee_") for u in fit_ids)
        columns = {"angry": 0, "happy": 2, "neutral": 3, "sad": 4}
        probabilities = np.full((len(test_ids), n_classes), 0.01)
        probabilities[:, 1] = 0.9  # disgust is the most probable overall, but not one of the four
        for row, uid in enumerate(test_ids):
            stem = uid.removeprefix("ravdess_")
            entry = f"Actor_{stem[-2:]}/{stem}"
            emotion = metadata.set_index("utterance_id").loc[uid, "emotion"]
            if emotion == "angry" or entry in right:
                probabilities[row, columns[emotion]] = 0.05
            else:  # wrong: angry for neutral, happy, sad
                probabilities[row, columns["angry"]] = 0.05
        return probabilities

    monkeypatch.setattr(emobox_module, "fit_and_predict", stub)
    result = cross_corpus_ua(metadata, inputs, small_params("logreg"), "savee", listed, "ravdess", FOUR, "all")
    assert learnt_seen == [5]
    # recalls by hand: angry 4/4, happy 1/2, neutral 0/2, sad 1/2 -> UA 0.5 (accuracy would be 0.6)
    assert result == {"ua": pytest.approx(0.5), "n_clips": 10}


# ---- the lists, clip by clip ------------------------------------------------------------------
def test_listed_clips_are_found_by_path_or_by_the_name_harmonization_gives():
    rows = ravdess_rows(actors=("01",), codes=("01", "05")) + savee_rows(numbers=(1,))
    rows.append(_row("savee", "savee_JK_a02", "data/raw/savee/JK_a02.flac", "savee_JK", "angry"))  # flat layout
    metadata = pd.DataFrame(rows)
    assert match_clips(metadata, "ravdess", ["Actor_01/03-01-05-01-01-02-01", "Actor_01/03-01-01-01-01-01-01"]) == [
        "ravdess_03-01-05-01-01-02-01", "ravdess_03-01-01-01-01-01-01"]
    assert match_clips(metadata, "savee", ["DC/a01", "KL/sa01", "JK/a02"]) == [
        "savee_DC_a01", "savee_KL_sa01", "savee_JK_a02"]


def test_a_missing_clip_fails_naming_it():
    rows = savee_rows(numbers=(1,))
    rows.append(_row("savee", "savee_DC_a02", "data/raw/savee/AudioData/DC/a02.flac", "savee_DC", "angry",
                     status="quarantined"))
    metadata = pd.DataFrame(rows)
    with pytest.raises(MissingClipsError, match=r"savee: 3 of 4 listed clips .*: DC/a02, JE/h07, XX/a01$"):
        match_clips(metadata, "savee", ["DC/a01", "DC/a02", "JE/h07", "XX/a01"])
    # a RAVDESS clip of SAVEE's list is not a SAVEE clip
    with pytest.raises(MissingClipsError, match=r"Actor_01/03-01-05-01-01-01-01"):
        match_clips(pd.DataFrame(rows + ravdess_rows(actors=("01",))), "savee", ["Actor_01/03-01-05-01-01-01-01"])


def test_track2_refuses_a_list_with_a_missing_clip_or_a_clip_without_features():
    metadata = pd.DataFrame(ravdess_rows(actors=("01", "02")) + savee_rows())
    inputs = emotion_inputs(metadata)
    params = small_params("logreg")
    with pytest.raises(MissingClipsError, match=r"Actor_09/03-01-05-01-01-01-09"):
        cross_corpus_ua(metadata, inputs, params, "savee", ["Actor_01/03-01-05-01-01-01-01",
                                                            "Actor_09/03-01-05-01-01-01-09"], "ravdess", FOUR)
    keep = [u != "ravdess_03-01-05-01-01-01-01" for u in inputs.ids]
    fewer = ModelInputs([u for u, k in zip(inputs.ids, keep) if k], inputs.X[keep], inputs.feature_names)
    with pytest.raises(MissingClipsError, match=r"ravdess: 1 clips have no model inputs: ravdess_03-01-05-01-01-01-01"):
        cross_corpus_ua(metadata, fewer, params, "savee", ["Actor_01/03-01-05-01-01-01-01"], "ravdess", FOUR)
    with pytest.raises(ValueError, match=r"outside \['angry', 'happy', 'neutral', 'sad'\]: ravdess_03-01-02"):
        cross_corpus_ua(metadata, inputs, params, "savee", ["Actor_01/03-01-02-01-01-01-01"], "ravdess", FOUR)


# ---- the whole benchmark, really fitted, on small generated data ---------------------------------
def test_the_benchmark_json_has_the_documented_shape_and_learns():
    metadata = pd.DataFrame(ravdess_rows(repetitions=("01",)) + savee_rows())
    inputs = emotion_inputs(metadata)
    ravdess_list = [f"Actor_{a:02d}/03-01-{c}-01-01-01-{a:02d}" for a in range(1, 25) for c in ("01", "03", "04", "05")]
    savee_list = [f"{s}/{c}0{n}" for s in savee.SPEAKERS for c in ("a", "h", "n", "sa") for n in (1, 2, 3)]
    published = {"track2_accuracy": {"savee->ravdess": {"x": 0.5}}}
    protocol = {"ravdess_test_actors_by_fold": EMOBOX_FOLDS, "track2_classes": FOUR, "published": published,
                "track2_test_clips": {"ravdess": ravdess_list, "savee": savee_list}}
    params = small_params("logreg")
    params["cross_corpus"] = {**params["cross_corpus"], "train_on": "shared"}
    result = emobox(metadata, inputs, params, protocol)
    assert set(result) == {"protocol", "ravdess_6fold", "track2", "published", "model_type", "feature_input"}
    assert result["published"] == published and result["model_type"] == "logreg"
    six = result["ravdess_6fold"]
    assert set(six) == {"ua", "folds", "pooled_ua"} and len(six["folds"]) == 6
    assert six["ua"] == pytest.approx(np.mean(six["folds"]))
    assert set(result["track2"]) == {"savee->ravdess", "ravdess->savee"}
    assert result["track2"]["savee->ravdess"]["n_clips"] == 96
    assert result["track2"]["ravdess->savee"]["n_clips"] == 48
    # the features carry the emotion: far above chance (1/8 and 1/4)
    assert six["ua"] > 0.8 and six["pooled_ua"] > 0.8
    assert all(figure["ua"] > 0.8 for figure in result["track2"].values())
    assert "mean of the 6 fold UAs" in result["protocol"] and "train_on=shared" in result["protocol"]


def test_augmented_copies_join_only_for_clips_on_the_training_side():
    ids = ["a", "b", "c"]
    inputs = ModelInputs(ids, np.arange(3, dtype=np.float32).reshape(3, 1))
    copies = ModelInputs(["a__aug0", "c__aug0", "c__aug1"], np.array([[10.0], [30.0], [31.0]], dtype=np.float32),
                         sources=["a", "c", "c"])
    X, y, corpora = emobox_module._training_rows(inputs, copies, ["a", "b"], np.array([4, 5]),
                                                 np.array(["ravdess", "savee"], dtype=object))
    # c is not trained on, so neither are its copies; a's copy is labelled (and placed) as a
    assert X.ravel().tolist() == [0.0, 1.0, 10.0]
    assert y.tolist() == [4, 5, 4] and corpora.tolist() == ["ravdess", "savee", "ravdess"]
