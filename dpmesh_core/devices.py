"""The one device and dtype policy of the core (inference, training, evaluation).

* ``resolve_device("auto" | None)``: CUDA when available, else the CPU; an explicit CUDA device that is not
  available is a ``ConfigError`` (never a silent fall back to the CPU).
* ``resolve_dtype(dtype, device)``: inference weights/activations: CUDA → bf16 (fp16 where the GPU has no
  bf16), CPU → fp32, unless given ("fp32" / "bf16" / "fp16" or a torch dtype).
* ``training_precision(precision, device)``: the mixed precision training can use there (fp16 needs CUDA,
  bf16 on CUDA needs a GPU that has it; otherwise fp32, with a warning).
* ``autocast_for(device, precision)``: the autocast context of that precision (a no-op for fp32).
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Any

import torch

from .errors import ConfigError

log = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
                                  "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """"auto" (or None) → CUDA when available, else CPU; anything else as given (CUDA must be available)."""
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("CUDA requested but not available", "device")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``dtype`` as a torch dtype; None → bf16 on CUDA (fp16 where unsupported), fp32 elsewhere."""
    if isinstance(dtype, str):
        if dtype.lower() not in DTYPES:
            raise ConfigError(f"unknown dtype {dtype!r}; choose fp32, bf16 or fp16", "dtype")
        return DTYPES[dtype.lower()]
    if dtype is not None:
        return dtype
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def resolve_device_dtype(device: str | torch.device | None, dtype: str | torch.dtype | None
                         ) -> tuple[torch.device, torch.dtype]:
    """``(resolve_device(device), resolve_dtype(dtype, that device))``."""
    dev = resolve_device(device)
    return dev, resolve_dtype(dtype, dev)


def training_precision(precision: str, device: torch.device) -> str:
    """The mixed precision ("fp32" / "bf16" / "fp16") training can use on ``device`` (see the module doc)."""
    if precision == "fp16" and device.type != "cuda":
        log.warning("fp16 needs CUDA; training in fp32 on %s", device)
        return "fp32"
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        log.warning("this GPU has no bf16; training in fp32")
        return "fp32"
    return precision


def autocast_for(device: torch.device, precision: str) -> Any:
    """An autocast context for ``precision`` on ``device`` (nullcontext for fp32 / unsupported)."""
    if precision == "fp32":
        return nullcontext()
    if precision == "fp16" and device.type != "cuda":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
