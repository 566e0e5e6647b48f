"""The features and augment stages write byte-identical folders from the same inputs and params,
whatever the executor (serial, a 2-worker process pool, results handed back in reverse), the
state of the per-clip cache (none, cold, warm), the order of the metadata rows and the folder the
repository sits in. DVC hashes these folders: one differing byte makes a clean ``dvc repro``
disagree with the committed dvc.lock.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from ser.data.augment import compute_augmented
from ser.runtime import make_executor
from ser.runtime.executor import Executor, SerialExecutor
from ser.features import compute_features, load_failures
from tests.corpus_fixtures import write_bad_clip, write_clip

REPO_ROOT = Path(__file__).resolve().parent.parent
CLIPS = 8


def project_sections() -> tuple[dict, dict, dict]:
    """audio, features and augment as params.yaml has them, with cheap feature sets."""
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text(encoding="utf-8"))
    features = {**params["features"], "sets": ["functionals", "sequences"], "cache_dir": None,
                "executor": "serial", "workers": 1}
    augment = {**params["augment"], "copies": 2}
    return params["audio"], features, augment


class ReversedExecutor(Executor):
    """Runs every item, then hands the outcomes back last first: the worst completion order."""

    def map(self, fn, items, *, desc=None, total=None):
        yield from reversed(list(SerialExecutor().map(fn, items)))


def write_repo(root: Path) -> pd.DataFrame:
    """Clips under ``root/data/raw`` and their metadata with repo-relative paths (as harmonize
    writes them): clips of different lengths, one that cannot be decoded, one quarantined."""
    rows = []
    for i in range(CLIPS):
        relative = f"data/raw/toy/clip{i}.wav"
        write_clip(root / relative, seconds=0.6 + 0.1 * i, emotion=("happy", "sad")[i % 2],
                   gender=("female", "male")[i % 3 == 0], seed=i)
        rows.append((f"toy_{i:02d}", relative, "ok"))
    write_bad_clip(root / "data/raw/toy/broken.wav", "random_bytes")
    rows.append(("toy_broken", "data/raw/toy/broken.wav", "ok"))
    write_clip(root / "data/raw/toy/short.wav", seconds=0.1, seed=99)
    rows.append(("toy_short", "data/raw/toy/short.wav", "quarantined"))
    return pd.DataFrame([{
        "utterance_id": uid, "corpus": "toy", "path": relative, "speaker": f"toy_{n % 3}",
        "gender": "female" if n % 2 else "male", "emotion": ("happy", "sad", "angry")[n % 3],
        "pcm_sha256": hashlib.sha256((root / relative).read_bytes()).hexdigest(),
        "status": status, "problem": None if status == "ok" else "too short"}
        for n, (uid, relative, status) in enumerate(rows)])


def digests(folder: Path) -> dict[str, str]:
    return {path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, pd.DataFrame]:
    """The same clips in two clones at paths of different lengths, and their metadata."""
    base = tmp_path_factory.mktemp("determinism")
    first = base / "repo"
    metadata = write_repo(first)
    second = base / "elsewhere" / "a-clean-clone"
    shutil.copytree(first, second)
    return first, second, metadata


def assert_identical(folders: dict[str, Path]) -> None:
    found = {name: digests(folder) for name, folder in folders.items()}
    reference_name, reference = next(iter(found.items()))
    assert reference, f"{reference_name}: no files written"
    problems = []
    for name, files in found.items():
        if files.keys() != reference.keys():
            problems.append(f"{name} and {reference_name} hold different files: "
                            f"{sorted(files.keys() ^ reference.keys())}")
        differing = sorted(path for path in files.keys() & reference.keys() if files[path] != reference[path])
        if differing:
            problems.append(f"{name} differs from {reference_name} in {differing}")
    assert not problems, "; ".join(problems)


def check_failures(folder: Path, *roots: Path) -> None:
    failures = load_failures(folder)
    assert len(failures) >= 1
    # the clip is named by its repo-relative path, never by the clone's absolute one
    assert failures["problem"].str.contains("data/raw/toy/broken.wav", regex=False).all()
    for root in roots:
        assert not failures["problem"].str.contains(str(root), regex=False).any()


def test_features_are_byte_identical_whatever_the_executor_cache_and_clone(repos, tmp_path):
    first, second, metadata = repos
    audio, features, _ = project_sections()
    shuffled = metadata.sample(frac=1.0, random_state=3)
    runs = {
        "serial, no cache": compute_features(metadata, tmp_path / "serial", audio, features, root=first,
                                             executor=make_executor("serial"), progress=False),
        "2 workers, cold cache, other clone": compute_features(
            shuffled, tmp_path / "pool", audio, features, root=second, cache_dir=tmp_path / "cache",
            executor=make_executor("process", 2, batch_size=1), progress=False),
        "reversed, warm cache, other clone": compute_features(
            shuffled, tmp_path / "warm", audio, features, root=second, cache_dir=tmp_path / "cache",
            executor=ReversedExecutor(), progress=False),
    }
    summaries = list(runs.values())
    assert summaries[0]["clips"] == CLIPS and summaries[0]["failed"] == 1
    assert summaries[1]["computed"] == CLIPS and summaries[2]["computed"] == 0
    assert summaries[2]["from_cache"] == CLIPS  # the warm run really read the cache
    assert_identical({"serial": tmp_path / "serial", "pool": tmp_path / "pool", "warm": tmp_path / "warm"})
    check_failures(tmp_path / "serial", first, second)


def test_augmented_copies_are_byte_identical_whatever_the_executor_cache_and_clone(repos, tmp_path):
    first, second, metadata = repos
    audio, features, augment = project_sections()
    shuffled = metadata.sample(frac=1.0, random_state=5)
    summaries = [
        compute_augmented(metadata, tmp_path / "serial", audio, features, augment, root=first,
                          executor=make_executor("serial"), progress=False),
        compute_augmented(shuffled, tmp_path / "pool", audio, features, augment, root=second,
                          cache_dir=tmp_path / "cache", executor=make_executor("process", 2, batch_size=1),
                          progress=False),
        compute_augmented(shuffled, tmp_path / "warm", audio, features, augment, root=second,
                          cache_dir=tmp_path / "cache", executor=ReversedExecutor(), progress=False),
    ]
    copies = augment["copies"]
    assert summaries[0]["clips"] == CLIPS * copies and summaries[0]["failed"] == copies
    assert summaries[1]["computed"] == CLIPS * copies and summaries[2]["from_cache"] == CLIPS * copies
    assert_identical({"serial": tmp_path / "serial", "pool": tmp_path / "pool", "warm": tmp_path / "warm"})
    check_failures(tmp_path / "serial", first, second)
