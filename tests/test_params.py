"""The params schema: params.yaml validates; a wrong type, an unknown key or a missing key fails
with the key's dotted name; the library never discovers the project or DVC by itself."""

from __future__ import annotations

import ast
import copy
from pathlib import Path

import pytest
import yaml

from ser.params import (KERAS_FAMILIES, AudioParams, ParamsError, load, override, params_hash, typed, validate,
                        validate_section)
from tests.params_support import PARAMS, REPO


def raw_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_the_shipped_params_file_validates_and_comes_back_as_written():
    """As written, with every Keras family block completed from ``model.keras``."""
    raw = raw_params()
    loaded = load(REPO / "params.yaml").as_dict()
    assert {name: value for name, value in loaded.items() if name != "model"} == {
        name: value for name, value in raw.items() if name != "model"}
    for name, block in raw["model"].items():
        completed = {**raw["model"]["keras"], **block} if name in KERAS_FAMILIES else block
        assert loaded["model"][name] == completed, name


def test_numbers_keep_the_type_they_were_written_with_so_hashes_do_not_move():
    """``trim_top_db: 40`` stays the int 40: the feature cache is keyed on the section as written."""
    raw = raw_params()
    audio = load(REPO / "params.yaml").audio
    assert type(audio.trim_top_db) is type(raw["audio"]["trim_top_db"])
    assert isinstance(audio.peak_level, float)
    assert params_hash(audio) == params_hash(raw["audio"])
    assert params_hash({"audio": audio}) == params_hash({"audio": raw["audio"]})


def test_typed_sections_come_in_as_objects_or_as_mappings():
    loaded = load(REPO / "params.yaml")
    assert typed(AudioParams, loaded.audio) is loaded.audio
    assert typed(AudioParams, PARAMS["audio"]) == loaded.audio
    assert loaded.model.of().C == PARAMS["model"][PARAMS["model"]["type"]]["C"]
    with pytest.raises(ParamsError, match=r"audio\.sample_rate: .*valid integer"):
        typed(AudioParams, {**PARAMS["audio"], "sample_rate": "fast"})


def test_an_override_is_validated_like_dvc_exp_run_set():
    loaded = load(REPO / "params.yaml")
    changed = override(loaded, {"model.type": "lstm", "model.lstm.units": [32]})
    assert changed.model.of().units == [32] and loaded.model.lstm.units != [32]
    with pytest.raises(ParamsError, match=r"model\.type"):
        override(loaded, {"model.type": "transformer"})


@pytest.mark.parametrize(("path", "value", "message"), [
    (("model", "svm", "C"), "ten", r"model\.svm\.C: .*valid number"),
    (("features", "n_mfcc"), [40], r"features\.n_mfcc: .*valid integer"),
    (("split", "protocol"), "leave_one_out", r"split\.protocol: .*speaker_kfold"),
    (("data", "corpora"), ["ravdess", "iemocap"], r"data\.corpora\.1: .*ravdess"),
    (("features", "whisper", "compute_type"), "int4", r"features\.whisper\.compute_type"),
])
def test_a_wrong_type_names_the_dotted_key(path, value, message):
    params = copy.deepcopy(PARAMS)
    target = params
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(ParamsError, match=message):
        validate(params, "params.yaml")


def test_an_unknown_key_is_refused_with_its_dotted_name():
    params = copy.deepcopy(PARAMS)
    params["model"]["svm"]["gama"] = 0.001
    params["extra_section"] = {}
    with pytest.raises(ParamsError) as caught:
        validate(params, "params.yaml")
    assert "model.svm.gama: unknown key" in str(caught.value)
    assert "extra_section: unknown key" in str(caught.value)


def test_a_missing_key_is_an_error_not_a_silent_default():
    params = raw_params()
    del params["model"]["keras"]["patience"]
    del params["audio"]
    with pytest.raises(ParamsError) as caught:
        validate(params, "params.yaml")
    assert "model.keras.patience: missing" in str(caught.value) and "audio: missing" in str(caught.value)
    assert "model.lstm.patience: missing" in str(caught.value)  # no family has it either


def test_keras_families_take_the_shared_block_and_override_it_with_their_own():
    params = raw_params()
    params["model"]["keras"]["patience"] = 9
    params["model"]["gru"]["patience"] = 2
    model = validate(params, "params.yaml").model
    assert model.gru.patience == 2
    assert all(model.of(family).patience == 9 for family in ("cnn1d", "cnn2d", "lstm", "bilstm", "clstm"))
    assert model.cnn1d.max_steps == params["model"]["cnn1d"]["max_steps"] != params["model"]["keras"]["max_steps"]
    assert validate_section("model", params["model"]) == model


def test_one_section_validates_alone():
    assert validate_section("audio", PARAMS["audio"]).as_dict() == PARAMS["audio"]
    with pytest.raises(ParamsError, match=r"audio\.sample_rate: missing"):
        validate_section("audio", {k: v for k, v in PARAMS["audio"].items() if k != "sample_rate"})


def test_a_stage_refuses_a_bad_params_file(tmp_path):
    import subprocess
    import sys

    bad = copy.deepcopy(PARAMS)
    bad["features"]["sets"] = ["functionals", "wav2vec"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(bad))
    result = subprocess.run([sys.executable, str(REPO / "stages" / "features.py"), "--metadata", "x.parquet",
                             "--out", str(tmp_path / "out"), "--params", str(tmp_path / "params.yaml")],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode != 0 and "features.sets.1" in result.stderr


# ---- the library boundary ------------------------------------------------------------------
ENTRY_ONLY = {"ser/project.py", "ser/cli.py", "ser/__main__.py"}


def library_modules() -> list[Path]:
    return [p for p in sorted((REPO / "ser").rglob("*.py")) if str(p.relative_to(REPO)) not in ENTRY_ONLY]


def test_the_library_never_discovers_the_project_or_dvc():
    offenders = []
    for path in library_modules():
        source = path.read_text()
        tree = ast.parse(source)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "ser.project":
                offenders.append(f"{path.relative_to(REPO)} imports ser.project")
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and (
                    node.value.startswith("DVC_") or node.value == "params.yaml"):
                offenders.append(f"{path.relative_to(REPO)} names {node.value!r}")
    assert offenders == []


def test_no_params_defaults_hide_in_the_library():
    """``params.get("key", default)`` would be a second home for a default that params.yaml owns."""
    names = {"params", "p", "feature_params", "audio_params", "train_params", "split_params", "model_params",
             "augment_params", "noise", "shift", "pitch", "stretch", "settings"}
    offenders = []
    for path in library_modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id in names):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert offenders == []


def test_the_whole_file_types_as_written_like_load():
    """``typed(Params, ...)`` completes the Keras family blocks, as :func:`load` does."""
    from ser.params import Params

    loaded = load(REPO / "params.yaml")
    assert typed(Params, raw_params()) == loaded
    assert typed(Params, loaded) is loaded
    with pytest.raises(ParamsError, match=r"audio\.sample_rate"):
        typed(Params, {**raw_params(), "audio": {**raw_params()["audio"], "sample_rate": "fast"}})


@pytest.mark.parametrize("order", ["keras first", "family first"])
def test_an_override_of_the_shared_keras_block_is_what_the_changed_file_gives(order):
    raw = raw_params()
    loaded = load(REPO / "params.yaml")
    changes = {"model.keras.max_steps": 50, "model.keras.pooling": "mean", "model.gru.pooling": "attention"}
    if order == "family first":
        changes = dict(reversed(list(changes.items())))
    changed = override(loaded, changes)
    raw["model"]["keras"].update(max_steps=50, pooling="mean")
    raw["model"]["gru"]["pooling"] = "attention"
    assert changed == validate(raw, "params.yaml")  # dvc exp run -S would write the file, then load it
    assert changed.model.lstm.max_steps == 50 and changed.model.cnn1d.max_steps == 100  # cnn1d writes its own
    assert changed.model.cnn2d.pooling == "attention" and changed.model.lstm.pooling == "mean"
    # a model section alone takes keras.<key> the same way
    alone = override(loaded.model, {"keras.max_steps": 50})
    assert alone.lstm.max_steps == alone.keras.max_steps == 50 and alone.cnn1d.max_steps == 100
