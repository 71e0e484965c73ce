"""The strict state-dict check every loader uses before ``load_state_dict(strict=True)``: one message listing
missing, unexpected and mis-shaped keys (``CheckpointMismatchError``), never a silent partial load.

Works on anything with ``.shape`` values (torch tensors, numpy arrays), so it imports no torch itself.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from typing import Any

from .errors import CheckpointMismatchError


def _numel(shape: Any) -> int:
    n = 1
    for x in tuple(shape):
        n *= int(x)
    return n


def state_dict_mismatch(expected: Mapping[str, Any], state: Mapping[str, Any], reshape_ok: Collection[str] = ()
                        ) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, mis-shaped) keys of ``state`` against ``expected`` (e.g. ``module.state_dict()``),
    each sorted; a mis-shaped key reads ``"key: file (shape) vs model (shape)"``. Keys named in ``reshape_ok``
    may differ in shape when they hold the same number of elements (the module reshapes them on load)."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    bad = sorted(f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                 for k in set(expected) & set(state) if tuple(state[k].shape) != tuple(expected[k].shape)
                 and not (k in reshape_ok and _numel(state[k].shape) == _numel(expected[k].shape)))
    return missing, unexpected, bad


def check_state_dict(expected: Any, state: Mapping[str, Any], path: str | os.PathLike | None,
                     note: str = "", reshape_ok: Collection[str] = ()) -> None:
    """Raise ``CheckpointMismatchError`` (naming ``path``) unless ``state`` has exactly the keys and shapes of
    ``expected``: a module (its ``state_dict()``) or a mapping of arrays. ``reshape_ok``: see
    :func:`state_dict_mismatch`."""
    own = expected.state_dict() if hasattr(expected, "state_dict") else expected
    missing, unexpected, bad = state_dict_mismatch(own, state, reshape_ok)
    if missing or unexpected or bad:
        raise CheckpointMismatchError(path, missing, unexpected, bad, note=note)
