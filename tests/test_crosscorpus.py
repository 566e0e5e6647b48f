"""The leave-one-corpus-out figure: what the model learns (``cross_corpus.train_on``) and how a
held-out clip is answered on the emotions every corpus shares."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ser.training.crosscorpus import answers_among, cross_corpus
from tests.test_train_eval import generated_inputs, generated_metadata, small_params


def test_a_held_out_clip_is_answered_with_the_most_probable_shared_emotion():
    oof = pd.DataFrame({"utterance_id": ["a", "b", "c"], "corpus": ["tess"] * 3,
                        "y_true": ["sad", "calm", "happy"], "y_pred": ["calm", "calm", "happy"],
                        "p_calm": [0.6, 0.9, 0.1], "p_happy": [0.1, 0.05, 0.7], "p_sad": [0.3, 0.05, 0.2]})
    answered = answers_among(oof, ["happy", "sad"])
    # calm is not scored: its clip is left out, and calm is never an answer
    assert answered["utterance_id"].tolist() == ["a", "c"]
    assert answered["y_pred"].tolist() == ["sad", "happy"]


def test_an_emotion_the_model_does_not_learn_is_refused_by_name():
    oof = pd.DataFrame({"y_true": ["sad"], "y_pred": ["sad"], "p_sad": [1.0]})
    with pytest.raises(ValueError, match=r"\['fear'\] are not classes the model learns"):
        answers_among(oof, ["sad", "fear"])


@pytest.fixture(scope="module")
def five_emotions():
    metadata = generated_metadata()
    inputs, copies = generated_inputs(metadata)
    # a fifth emotion, which the recipe learns but the held-out corpus is not scored on: half of
    # the sad clips, moved along a feature of their own
    calm = np.asarray(metadata.index % 8 == 7)
    assert set(metadata.loc[calm, "emotion"]) == {"sad"}
    metadata.loc[calm, "emotion"] = "calm"
    inputs.X[calm, 2] += 4.0
    copies.X[calm, 2] += 4.0
    return metadata, inputs, copies


def test_train_on_all_learns_the_recipes_classes_and_reports_the_shared_only_model_beside(five_emotions):
    metadata, inputs, copies = five_emotions
    params = small_params("logreg", protocol="speaker_kfold")
    shared = ["angry", "happy", "sad"]
    summary = cross_corpus(metadata, inputs, copies, params, shared, transductive=True, train_on="all")
    headline, other = summary["headline"], summary["train_on_shared"]
    assert headline["train_on"] == "all" and headline["trained_classes"] == ["angry", "calm", "happy", "neutral", "sad"]
    assert other["train_on"] == "shared" and other["trained_classes"] == shared
    assert summary["transductive_speaker_norm"]["transductive"] is True and headline["transductive"] is False
    for figure in (headline, other, summary["transductive_speaker_norm"]):
        assert set(figure["held_out"]) == {"ravdess", "tess"}
        for corpus, scored in figure["held_out"].items():
            # every clip of a shared emotion is scored, and nothing else
            assert scored["n_clips"] == int(((metadata["corpus"] == corpus) & metadata["emotion"].isin(shared)).sum())
        assert figure["mean_uar"] == pytest.approx(np.mean([s["uar"] for s in figure["held_out"].values()]))
    # the features carry the emotion, so the generalization figure is well above chance (1/3)
    assert headline["mean_uar"] > 0.6
    # the params section given to cross_corpus is left as it was
    assert params["train"]["emotions"] is None and params["split"]["protocol"] == "speaker_kfold"


def test_train_on_shared_puts_the_shared_only_model_in_the_headline(five_emotions):
    metadata, inputs, copies = five_emotions
    summary = cross_corpus(metadata, inputs, copies, small_params("logreg"), ["angry", "happy", "sad"],
                           transductive=False, train_on="shared")
    assert summary["headline"]["trained_classes"] == ["angry", "happy", "sad"]
    assert summary["train_on_all"]["trained_classes"] == ["angry", "calm", "happy", "neutral", "sad"]
    assert "transductive_speaker_norm" not in summary
    with pytest.raises(ValueError, match="cross_corpus.train_on: unknown 'some'"):
        cross_corpus(metadata, inputs, copies, small_params("logreg"), ["sad"], train_on="some")
