"""The DPMesh network (spec §2): conditions, diffusers backbone with LoRA and attention recording, fusion,
JOTR-style regressor, pose decoders, camera; checkpoints (ours and the official release); the Predictor.

Names are imported lazily (diffusers/peft load only when first used):

* ``NetworkConfig``, ``preset`` — architecture configs (``"tiny"``, ``"sd15"``).
* ``DPMeshNetwork``, ``NetworkOutput``, ``save_network``, ``load_network`` — the network and our format.
* ``DPMeshPredictor`` — the network behind the ``Estimator`` interface.
* ``load_official_checkpoint``, ``convert_official``, ``load_sd15``, ``load_controlnet`` — user files.
* ``PoseVQVAE`` — the paper's VQ-VAE pose tokenizer (pre-trained by ``dpmesh_core.train``).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "NetworkConfig": "config", "BackboneConfig": "config", "HeadConfig": "config", "preset": "config",
    "DPMeshNetwork": "network", "NetworkOutput": "network", "save_network": "network", "load_network": "network",
    "DPMeshPredictor": "predictor", "PoseVQVAE": "pose_decoders", "VPoserDecoder": "pose_decoders",
    "DPMeshBackbone": "backbone", "make_heatmaps": "conditions", "KeypointPrompt": "conditions",
    "load_official_checkpoint": "checkpoint", "convert_official": "checkpoint", "load_sd15": "checkpoint",
    "load_controlnet": "checkpoint",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{mod}"), name)
