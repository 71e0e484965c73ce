"""Typed configuration: dataclasses loaded strictly from dicts / YAML / JSON.

Every config in the project is a (frozen or plain) dataclass. ``from_dict(Cls, data)`` builds one from
nested plain data and raises ``ConfigError`` naming the dotted key of any unknown key or bad value;
``to_dict`` goes back. Configs are saved beside checkpoints with ``save_config`` and reloaded with
``load_config`` so a checkpoint always carries the config that built it.

Also here: ``ModelFiles``, where the user's model files are (SMPL, DPMesh checkpoint, SD1.5, ControlNet),
read from the user's config dir and overridable by environment variables.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConfigError

T = TypeVar("T")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp)


def _coerce(value: Any, tp: Any, key: str, source: str | None) -> Any:
    """Check/convert ``value`` to annotation ``tp``; raise ConfigError naming ``key`` on mismatch."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errs = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key, source)
            except ConfigError as e:
                errs.append(str(e))
        raise ConfigError(f"bad value {value!r}; expected {' | '.join(_type_name(a) for a in args)}", key, source)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"bad value {value!r}; expected one of {list(args)}", key, source)
        return value
    if is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"expected a mapping for {_type_name(tp)}, got {type(value).__name__}", key, source)
        return from_dict(tp, value, _prefix=key, source=source)
    if origin in (list, tuple, typing.Sequence) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"expected a list, got {value!r}", key, source)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"expected {len(args)} items, got {len(value)}", key, source)
            return tuple(_coerce(v, a, f"{key}[{i}]", source) for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else Any
        out = [_coerce(v, inner, f"{key}[{i}]", source) for i, v in enumerate(value)]
        return tuple(out) if (origin is tuple or tp is tuple) else out
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"expected a mapping, got {value!r}", key, source)
        vt = args[1] if len(args) == 2 else Any
        return {k: _coerce(v, vt, f"{key}.{k}", source) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"expected true/false, got {value!r}", key, source)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"expected an integer, got {value!r}", key, source)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"expected a number, got {value!r}", key, source)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"expected a string, got {value!r}", key, source)
        return value
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"expected a path, got {value!r}", key, source)
        return Path(value)
    return value


def from_dict(cls: type[T], data: dict[str, Any] | None, *, _prefix: str = "", source: str | None = None) -> T:
    """Build dataclass ``cls`` from nested plain data, strictly.

    Unknown keys and values of the wrong type raise ``ConfigError`` naming the dotted key. Missing keys
    take the dataclass defaults. A dataclass may define ``validate(self)`` raising ``ConfigError`` for
    range checks; it is called after construction.
    """
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls) if f.init}
    unknown = sorted(set(data) - set(known))
    if unknown:
        k = f"{_prefix}.{unknown[0]}" if _prefix else unknown[0]
        raise ConfigError(f"unknown key (known: {', '.join(sorted(known))})", k, source)
    kwargs = {}
    for name, value in data.items():
        k = f"{_prefix}.{name}" if _prefix else name
        kwargs[name] = _coerce(value, hints[name], k, source)
    try:
        obj = cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(str(e), _prefix or None, source) from e
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def to_dict(obj: Any) -> Any:
    """Dataclass (nested) → plain JSON/YAML-able data."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def replace(obj: T, **changes: Any) -> T:
    """``dataclasses.replace`` that re-runs ``validate``."""
    new = dataclasses.replace(obj, **changes)
    v = getattr(new, "validate", None)
    if callable(v):
        v()
    return new


def read_mapping(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML or JSON mapping; ConfigError if unreadable or not a mapping."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read config: {e.strerror or e}", source=str(p)) from e
    try:
        if p.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as e:  # noqa: BLE001 - parser errors vary by library
        where = " ".join(str(e).split())  # one line: yaml's messages span several
        raise ConfigError(f"not valid YAML/JSON: {where[:200]}", source=str(p)) from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("top level must be a mapping", source=str(p))
    return data


def load_config(cls: type[T], path: str | os.PathLike) -> T:
    """Load dataclass ``cls`` from a YAML/JSON file, strictly (ConfigError names file and key)."""
    return from_dict(cls, read_mapping(path), source=str(path))


def save_config(obj: Any, path: str | os.PathLike) -> Path:
    """Atomically write a dataclass as YAML (``.yaml``/``.yml``) or JSON (anything else)."""
    p = Path(path)
    data = to_dict(obj)
    if p.suffix.lower() in (".yaml", ".yml"):
        import yaml

        text = yaml.safe_dump(data, sort_keys=False)
    else:
        text = json.dumps(data, indent=2)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, p)
    return p


@dataclass
class ModelFiles:
    """Locations of the user's model files. None = not set.

    smpl: SMPL neutral model (.pkl, v1.0 chumpy pickles allowed, or .npz).
    dpmesh_checkpoint: official ``*_best_ckpt.pth.tar`` or a folder converted by ``dpmesh convert``.
    sd15: Stable Diffusion 1.5 (diffusers folder or single .safetensors/.ckpt).
    controlnet: ControlNet weights (diffusers folder or single file).
    detector: the 2-D detector the app uses, "yolo" (default, YOLO11n-pose) or "mmpose" (a user's mmpose
    model: ``mmpose_pose_config`` + ``mmpose_pose_checkpoint``, optionally an mmdet person detector
    ``mmpose_det_config`` + ``mmpose_det_checkpoint``; needs a Python environment that has mmpose).
    j_regressor_extra: SPIN's ``J_regressor_extra.npy`` (row 3 = the head-top joint of the DPMesh network's
    SMPL-30 set; official checkpoints do not carry it). Without it the head-top is SMPL vertex 411.
    Environment overrides: DPMESH_SMPL, DPMESH_CHECKPOINT, DPMESH_SD15, DPMESH_CONTROLNET,
    DPMESH_J_REGRESSOR_EXTRA.
    """

    smpl: str | None = None
    dpmesh_checkpoint: str | None = None
    sd15: str | None = None
    controlnet: str | None = None
    detector: str = "yolo"
    mmpose_pose_config: str | None = None
    mmpose_pose_checkpoint: str | None = None
    mmpose_det_config: str | None = None
    mmpose_det_checkpoint: str | None = None
    j_regressor_extra: str | None = None

    def validate(self) -> None:
        if self.detector not in ("yolo", "mmpose"):
            raise ConfigError(f"unknown detector {self.detector!r}; choose yolo or mmpose", "detector")

    ENV = {"smpl": "DPMESH_SMPL", "dpmesh_checkpoint": "DPMESH_CHECKPOINT", "sd15": "DPMESH_SD15",
           "controlnet": "DPMESH_CONTROLNET", "j_regressor_extra": "DPMESH_J_REGRESSOR_EXTRA"}

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> ModelFiles:
        from .paths import model_files_file

        p = Path(path) if path else model_files_file()
        obj = cls()
        if p.exists():
            obj = from_dict(cls, read_mapping(p), source=str(p))
        for name, env in cls.ENV.items():
            if os.environ.get(env):
                setattr(obj, name, os.environ[env])
        return obj

    def save(self, path: str | os.PathLike | None = None) -> Path:
        from .paths import model_files_file

        return save_config(self, Path(path) if path else model_files_file())
