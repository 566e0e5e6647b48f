"""numba's on-disk cache survives the parallel features stage.

librosa compiles several ``@guvectorize(cache=True)`` functions (``util.utils._localmax``,
``_localmin``, ``__peak_pick``, ``core.audio._zc_wrapper``, ``core.pitch._pi_wrapper``) the
moment it is imported. numba caches each as two files (kernel and wrapper); two processes
compiling one at the same moment can leave a pair that segfaults every later process that loads
it (numba issue #10128). That is how a features run once made ``chroma_stft`` crash in every
process of the environment. Pool workers now compile into private cache folders
(``ser.runtime.executor.use_private_numba_cache``).

Every round starts from an empty cache: ``NUMBA_CACHE_DIR`` of the subprocesses points at a
fresh folder, so the real environment's cache is neither used nor touched.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.params_support import REPO, params as project_params
from tests.test_features import AUDIO, FEATURES, write_corpus

ROUNDS = 3
# A fresh process that loads what the cache holds and runs every cached librosa gufunc on every
# compiled signature: a kernel/wrapper mismatch is a segfault (returncode -11), not an exception.
CHECK = r"""
import sys
import numpy as np
import librosa
from numba.np.ufunc.gufunc import GUFunc

noise = np.random.default_rng(0).standard_normal(16000)
for dtype in (np.float32, np.float64):
    chroma = librosa.feature.chroma_stft(y=noise.astype(dtype), sr=16000)  # estimate_tuning -> piptrack
    assert chroma.shape[0] == 12 and np.isfinite(chroma).all()
for name, module in sorted(sys.modules.items()):
    if not name.startswith("librosa") or module is None:
        continue
    for gufunc in (v for v in vars(module).values() if isinstance(v, GUFunc)):
        ufunc = gufunc.ufunc
        shapes = ufunc.signature.split("->")[0].replace("),(", ")|(").split("|")
        for types in ufunc.types:
            inputs = [np.abs(noise[:64] * 10).astype(code) if shape == "(n)" else np.array(1).astype(code)
                      for shape, code in zip(shapes, types.split("->")[0])]
            ufunc(*inputs)
print("cache ok")
"""


def run_check(cache_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir)}
    return subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def stage_inputs(tmp_path_factory) -> tuple[Path, Path]:
    """Ten short clips (two batches, so both workers start at once) and a params file asking
    for the functionals (chroma, zero-crossing rate, ...) on a two-worker process pool."""
    folder = tmp_path_factory.mktemp("numba_stage")
    metadata = folder / "metadata.parquet"
    write_corpus(folder / "audio", count=10).to_parquet(metadata)
    params = folder / "params.yaml"
    params.write_text(yaml.safe_dump(project_params(audio=AUDIO, features={
        **FEATURES, "sets": ["functionals"], "executor": "process", "workers": 2, "cache_dir": None})))
    return metadata, params


@pytest.mark.slow
@pytest.mark.parametrize("round_", range(ROUNDS))
def test_parallel_features_leave_a_numba_cache_every_later_process_can_load(tmp_path, stage_inputs, round_):
    metadata, params = stage_inputs
    shared = tmp_path / "numba-cache"  # empty: what the environment's cache is before a first run
    shared.mkdir()
    env = {**os.environ, "NUMBA_CACHE_DIR": str(shared)}
    stage = subprocess.run([sys.executable, str(REPO / "stages" / "features.py"), "--metadata", str(metadata),
                            "--out", str(tmp_path / "features"), "--params", str(params)],
                           env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert stage.returncode == 0, stage.stderr[-3000:]
    assert "10 clips" in stage.stdout and "0 failed" in stage.stdout, stage.stdout

    # Every cache folder the run wrote, loaded by a fresh process: none may crash. (An empty
    # folder is skipped: compiling from nothing there would test nothing the run did.)
    slots = sorted(p for p in (shared / "ser-workers").glob("slot-*") if p.is_dir())
    shared_entries = [p.relative_to(shared) for p in shared.rglob("*.nb[ic]") if "ser-workers" not in p.parts]
    for folder in ([shared] if shared_entries else []) + slots:
        check = run_check(folder)
        assert check.returncode == 0, (f"a fresh process using {folder} failed with returncode "
                                       f"{check.returncode} (-11 = SIGSEGV):\n{check.stderr[-2000:]}")
        assert "cache ok" in check.stdout

    # The workers compiled nothing into the shared folder (the features stage's parent process
    # does not run librosa), and librosa into folders of their own, one each.
    assert not shared_entries, f"pool workers wrote the shared numba cache: {shared_entries[:5]}"
    assert len(slots) == 2 and all(any(s.rglob("*_pi_wrapper*.nbi")) for s in slots), slots
