"""Shared pytest fixtures. Keep this small: each fixture documents itself."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # so test files can `from tests.corpus_fixtures import ...`
    sys.path.insert(0, str(REPO_ROOT))

from tests.corpus_fixtures import make_mirror  # noqa: E402


@pytest.fixture(scope="session")
def real_mirror() -> Path:
    """The real corpora: $SER_DATA_MIRROR, else <repo>/../shared/datasets.

    Fails (never skips) when the mirror is missing, so CI cannot pass without the real data.
    """
    configured = os.environ.get("SER_DATA_MIRROR")
    mirror = Path(configured) if configured else REPO_ROOT.parent / "shared" / "datasets"
    missing = [name for name in ("ravdess", "tess") if not (mirror / name).is_dir()]
    if missing:
        pytest.fail(
            f"the real corpus mirror is missing: {mirror} has no {', '.join(n + '/' for n in missing)} "
            f"({'from SER_DATA_MIRROR' if configured else 'SER_DATA_MIRROR is unset, so the default <repo>/../shared/datasets was used'}). "
            "Point SER_DATA_MIRROR at a folder holding ravdess/ and tess/.",
            pytrace=False,
        )
    return mirror.resolve()


@pytest.fixture(scope="session")
def tiny_mirror(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic RAVDESS + TESS mirror (64 + 42 one-second 16 kHz clips, both genders,
    every emotion). Use with ``data.download.strict: false``; treat it as read-only."""
    root = tmp_path_factory.mktemp("tiny_mirror")
    make_mirror(root, ("ravdess", "tess"), small=True)
    return root
