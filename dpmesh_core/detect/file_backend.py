"""Key-points from a file (COCO / COCO results / AlphaPose / OpenPose), behind the detector protocol.

Wraps :func:`dpmesh_core.io.keypoints.read_keypoints`. Keys are image file names (COCO, AlphaPose) or
frame indices (OpenPose folders, video COCO files). ``detect(image, key=...)`` returns the persons of
that key; without a key it uses the only key of a single-entry file, or, for frame-indexed files, the
next frame index (0, 1, 2, ... one per call, like reading a video; ``seek(i)`` moves it).
OpenPose-18 persons are converted to COCO-17 so every backend returns the same joint order.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..body.joints import convert, convert_visibility
from ..errors import InputError
from ..types import Person
from .base import as_box, as_rgb_uint8, pick_in_box


def _to_coco17(p: Person) -> Person:
    if p.joint_set == "coco17":
        return p
    kp = convert(p.keypoints, p.joint_set, "coco17")
    vis = convert_visibility(p.visible, p.joint_set, "coco17")
    return dataclasses.replace(p, keypoints=kp, visible=vis, joint_set="coco17",
                               edited=np.zeros(kp.shape[0], bool))


class FileKeypointsDetector:
    """Persons read from a key-point file; see the module docstring for how keys are chosen."""

    name = "file"
    licence = "n/a (your own key-point file)"

    def __init__(self, path: str | os.PathLike, format: str | None = None):
        from ..io.keypoints import read_keypoints

        self.path = Path(path)
        self._data: dict[Any, list[Person]] = {
            k: [_to_coco17(p) for p in v] for k, v in read_keypoints(self.path, format=format).items()
        }
        self._by_name = {Path(str(k)).name: k for k in self._data if isinstance(k, str)}
        self._cursor = 0

    def keys(self) -> list[Any]:
        """Every key of the file (file names and/or frame indices), in file order."""
        return list(self._data)

    def seek(self, frame_index: int) -> None:
        """Next ``detect`` without a key returns frame ``frame_index``."""
        self._cursor = int(frame_index)

    def persons(self, key: Any) -> list[Person]:
        """Persons of ``key`` (a file name, a path whose name is a key, or a frame index); [] if absent."""
        if key in self._data:
            return list(self._data[key])
        if isinstance(key, (str, os.PathLike)):
            name = Path(key).name
            if name in self._by_name:
                return list(self._data[self._by_name[name]])
            if name.isdigit() and int(name) in self._data:
                return list(self._data[int(name)])
        if isinstance(key, (int, np.integer)) and str(int(key)) in self._data:
            return list(self._data[str(int(key))])
        return []

    def _default_key(self) -> Any:
        if len(self._data) == 1:
            return next(iter(self._data))
        if all(isinstance(k, (int, np.integer)) for k in self._data):
            k = self._cursor
            self._cursor += 1
            return k
        raise InputError("this key-point file holds several images: pass key=<image file name>", self.path)

    def detect(self, image: Any = None, key: Any = None) -> list[Person]:
        """Persons of ``key`` (see module docstring). ``image`` is only checked, never analysed."""
        if image is not None:
            as_rgb_uint8(image)
        return self.persons(self._default_key() if key is None else key)

    def detect_in_box(self, image: Any, box: Any, key: Any = None) -> Person | None:
        """The file's person best matching ``box`` (IoU x score) in the image of ``key``, or None."""
        img = as_rgb_uint8(image)
        return pick_in_box(self.detect(img, key=key), as_box(box, img.shape))
