"""Where the project keeps its files (platformdirs), with a ``DPMESH_HOME`` override.

With ``DPMESH_HOME=/some/dir`` everything lives below it (``cache/``, ``config/``, ``data/``, ``logs/``),
which is what tests and CI use. Nothing here creates a directory at import time.
"""

from __future__ import annotations

import os
from pathlib import Path

APP_NAME = "dpmesh-studio"


def _home() -> Path | None:
    h = os.environ.get("DPMESH_HOME")
    return Path(h).expanduser() if h else None


def _dir(kind: str) -> Path:
    home = _home()
    if home is not None:
        return home / kind
    import platformdirs

    fn = {
        "cache": platformdirs.user_cache_dir,
        "config": platformdirs.user_config_dir,
        "data": platformdirs.user_data_dir,
        "logs": platformdirs.user_log_dir,
    }[kind]
    return Path(fn(APP_NAME, appauthor=False))


def cache_dir(*parts: str, create: bool = True) -> Path:
    """Cache directory (re-creatable data: Anny's build cache, converted checkpoints, SMPL caches)."""
    p = _dir("cache").joinpath(*parts)
    if create:
        p.mkdir(parents=True, exist_ok=True)
    return p


def config_dir(create: bool = True) -> Path:
    """User settings (model file locations, recent files)."""
    p = _dir("config")
    if create:
        p.mkdir(parents=True, exist_ok=True)
    return p


def data_dir(*parts: str, create: bool = True) -> Path:
    """User data (autosave / recovery files, training runs by default)."""
    p = _dir("data").joinpath(*parts)
    if create:
        p.mkdir(parents=True, exist_ok=True)
    return p


def logs_dir(create: bool = True) -> Path:
    p = _dir("logs")
    if create:
        p.mkdir(parents=True, exist_ok=True)
    return p


def anny_cache_dir() -> Path:
    """Anny's build cache, kept under our cache dir (Anny reads ``ANNY_CACHE_DIR``)."""
    return cache_dir("anny")


def model_files_file() -> Path:
    """JSON file remembering where the user's model files are (SMPL, DPMesh checkpoint, SD1.5...)."""
    return config_dir() / "model_files.json"
