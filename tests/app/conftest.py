"""Shared fixtures of the app tests (pytest-qt, QT_QPA_PLATFORM=offscreen)."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture(scope="session", autouse=True)
def pinned_singletons():
    """The reference-count pin ``app.main`` applies at start (PySide6's emit drops references to True):
    the tests drive thousands of signals in one process."""
    from app.runtime import pin_singletons

    pin_singletons()


@pytest.fixture
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)


@pytest.fixture
def isolated_home(tmp_path, monkeypatch):
    """DPMESH_HOME in a temporary folder (autosave / recovery files, model settings)."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("DPMESH_HOME", str(home))
    return home
