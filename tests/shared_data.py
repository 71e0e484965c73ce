"""Where ``../shared`` (photos, street.avi, reference outputs) is for the tests and the benchmarks: the folder
named by ``DPMESH_SHARED``, else the ``shared`` folder beside the checkout (as CI lays it out)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DPMESH_SHARED", REPO.parent / "shared"))
MEDIA = SHARED / "media"
REFERENCE = SHARED / "reference"
