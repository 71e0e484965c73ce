"""Shared fixtures: where ../shared is, a private DPMESH_HOME for each test session, offscreen Qt."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from shared_data import REPO, SHARED

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# Caches (Anny's ~40 s first build) are shared between test runs, inside the checkout.
os.environ.setdefault("DPMESH_HOME", str(REPO / ".dpmesh-home"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"the shared reference folder {SHARED} is missing (set DPMESH_SHARED)")
    return SHARED


@pytest.fixture(scope="session")
def media_dir(shared_dir: Path) -> Path:
    return shared_dir / "media"


@pytest.fixture(scope="session")
def reference_dir(shared_dir: Path) -> Path:
    return shared_dir / "reference"


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Run the suite's (small) torch work on one intra-op thread, restored at the end: on a shared 2-core
    machine two spinning OpenMP threads per process can make small ops 10x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
