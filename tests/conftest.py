"""Shared fixtures: the real data folder (GHOUL_DATA_DIR, set by .ci/run) and tiny helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    """The folder laid out like shared/data: from GHOUL_DATA_DIR, else ../shared/data beside the checkout."""
    env = os.environ.get("GHOUL_DATA_DIR")
    path = (Path(env) if env else REPO.parent / "shared" / "data").resolve()
    if not (path / "README.md").is_file():
        raise RuntimeError(f"test data not found at {path}: set GHOUL_DATA_DIR to the shared data folder")
    return path


@pytest.fixture(scope="session")
def data() -> Path:
    return data_dir()
