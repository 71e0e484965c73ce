"""One restricted unpickler for every pickle the project reads from disk (SMPL model files, YOLO checkpoints,
3DPW sequence files): a file from the internet must not be able to run code.

``RestrictedUnpickler`` refuses every global its caller's allow-list does not resolve; the allow-list is a
function ``(module, name) -> object or None`` so that each caller can map a global to a stand-in (chumpy
objects, torch storages) instead of the real thing. ``numpy_global`` is the shared allow-list of numpy
arrays, scalars and dtypes (old and new module names) with the plain builtins a numpy pickle needs.
"""

from __future__ import annotations

import builtins
import collections
import copyreg
import importlib
import pickle
import re
from collections.abc import Callable
from typing import IO, Any

from ..errors import UnsafeFileError

Allow = Callable[[str, str], Any]  # (module, name) -> the object to use, or None (refused)

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")

_NUMPY = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy", "ndarray"), ("numpy", "dtype"),
}
# the builtins a numpy / protocol-2 pickle refers to (bytes in protocol 2 come through _codecs.encode)
_PLAIN = {
    ("builtins", "object"): object, ("builtins", "set"): set, ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice, ("collections", "OrderedDict"): collections.OrderedDict,
    ("copyreg", "_reconstructor"): copyreg._reconstructor,
}
_ALIASES = {"__builtin__": "builtins", "copy_reg": "copyreg"}  # Python 2 pickles


def numpy_global(module: str, name: str) -> Any:
    """The numpy arrays / scalars / dtypes globals and the plain builtins their pickles need, else None.
    Accepts numpy's old (``numpy.core``) and new (``numpy._core``) module names and Python 2 names."""
    module = _ALIASES.get(module, module)
    if (module, name) in _PLAIN:
        return _PLAIN[(module, name)]
    if (module, name) == ("_codecs", "encode"):
        import _codecs

        return _codecs.encode
    old = module.replace("numpy._core", "numpy.core")
    if (old, name) not in _NUMPY:
        return None
    for m in (module.replace("numpy.core", "numpy._core"), old):
        try:
            return getattr(importlib.import_module(m), name)
        except (ImportError, AttributeError):
            continue
    return None


def builtin_containers(module: str, name: str) -> Any:
    """``tuple``, ``list``, ``dict``, ``set``, ``frozenset`` (as a pickle names them), else None."""
    if _ALIASES.get(module, module) == "builtins" and name in ("tuple", "list", "dict", "set", "frozenset"):
        return getattr(builtins, name)
    return None


def allow_any(*allows: Allow) -> Allow:
    """An allow-list that tries ``allows`` in order (the first that resolves wins)."""

    def allow(module: str, name: str) -> Any:
        for a in allows:
            obj = a(module, name)
            if obj is not None:
                return obj
        return None

    return allow


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves globals only through ``allow`` (see the module docstring) and persistent
    ids only through ``persistent`` (refused when None). Anything else raises ``UnsafeFileError`` naming
    the global and ``path``."""

    def __init__(self, file: IO[bytes], allow: Allow, path: str | None = None, *, encoding: str = "ASCII",
                 persistent: Callable[[Any], Any] | None = None, what: str = "the file"):
        super().__init__(file, encoding=encoding)
        self._allow, self._path, self._persistent, self._what = allow, path, persistent, what

    def find_class(self, module: str, name: str) -> Any:  # noqa: D401 - pickle API
        if not (_IDENT.match(module or "") and _IDENT.match(name or "")):
            raise UnsafeFileError(f"pickle asks for a malformed global {module!r}.{name!r}", self._path)
        obj = self._allow(module, name)
        if obj is None:
            raise UnsafeFileError(f"pickle asks for global '{module}.{name}', which is not allowed in {self._what}",
                                  self._path)
        return obj

    def persistent_load(self, pid: Any) -> Any:  # noqa: D401 - pickle API
        if self._persistent is None:
            raise UnsafeFileError(f"unexpected persistent id {pid!r:.80}", self._path)
        return self._persistent(pid)
