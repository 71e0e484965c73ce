"""A training run's folder: ``<output_dir>/checkpoints/step_NNNNNNN/`` (complete once ``train_state.pt`` is
in it) and ``<output_dir>/latest`` naming the newest. Read by the loop (resume) and by evaluation."""

from __future__ import annotations

import os
from pathlib import Path

STATE_NAME = "train_state.pt"


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The complete checkpoint folders of a run, oldest first."""
    d = Path(output_dir) / "checkpoints"
    return sorted(p for p in d.glob("step_*") if (p / STATE_NAME).is_file()) if d.is_dir() else []


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint folder of a run, or None."""
    ptr = Path(output_dir) / "latest"
    if ptr.is_file():
        p = Path(output_dir) / ptr.read_text(encoding="utf-8").strip()
        if (p / STATE_NAME).is_file():
            return p
    ck = list_checkpoints(output_dir)
    return ck[-1] if ck else None
