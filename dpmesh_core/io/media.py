"""One object for an image or a video: ``open_media(path) -> Media``.

An image is a one-frame medium (``num_frames == 1``, ``fps is None``); a video has its frame count and
frame rate. ``frame(i)`` returns (H, W, 3) uint8 RGB. Directories are not media (the CLI iterates them).
The kind is chosen by the file suffix (``IMAGE_EXTENSIONS`` / ``VIDEO_EXTENSIONS``); a file with another
suffix is tried as an image, then as a video.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import MediaError
from .images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, read_image
from .video import VideoReader

__all__ = ["Media", "open_media", "is_media_file"]


class Media:
    """An opened image or video.

    kind: "image" | "video"; path: Path; num_frames: int (1 for images); fps: float | None (None for
    images); size: (width, height) pixels. ``frame(i)`` -> (H, W, 3) uint8 RGB (a fresh array).
    """

    def __init__(self, path: Path, kind: str, image: np.ndarray | None = None, video: VideoReader | None = None):
        self.path = Path(path)
        self.kind = kind
        self._image = image
        self._video = video
        if kind == "image":
            if image is None:
                raise ValueError("image media needs its pixels")
            image.setflags(write=False)
            self._num_frames = 1
            self.fps: float | None = None
            self.size = (int(image.shape[1]), int(image.shape[0]))
        elif kind == "video":
            if video is None:
                raise ValueError("video media needs a reader")
            self._num_frames = video.num_frames
            self.fps = video.fps
            self.size = video.size
        else:
            raise ValueError(f"unknown media kind {kind!r}")

    @property
    def num_frames(self) -> int:
        """1 for an image; a video's frame count (lowered if the file turns out truncated)."""
        if self._video is not None:
            self._num_frames = self._video.num_frames
        return self._num_frames

    def frame(self, i: int = 0) -> np.ndarray:
        i = int(i)
        if i < 0 or i >= self.num_frames:
            raise MediaError(f"frame {i} out of range (0..{self.num_frames - 1})", self.path)
        if self.kind == "image":
            if self._image is None:
                raise MediaError("media is closed", self.path)
            return self._image.copy()
        if self._video is None:
            raise MediaError("media is closed", self.path)
        return self._video.read(i)

    def __len__(self) -> int:
        return self.num_frames

    def __iter__(self):
        for i in range(self.num_frames):
            yield self.frame(i)

    def close(self) -> None:
        if self._video is not None:
            self._video.close()
            self._video = None
        self._image = None

    def __enter__(self) -> Media:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Media({self.kind}, {str(self.path)!r}, frames={self.num_frames}, fps={self.fps}, size={self.size})"


def is_media_file(path: str | os.PathLike) -> bool:
    """True when ``path`` has an image or video suffix (used to filter directory listings)."""
    s = Path(path).suffix.lower()
    return s in IMAGE_EXTENSIONS or s in VIDEO_EXTENSIONS


def open_media(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> Media:
    """Open an image or a video file. Raises ``MediaError`` for directories, missing, empty, corrupt or
    unknown files."""
    path = Path(path)
    if path.is_dir():
        raise MediaError("is a directory; media is a single image or video file", path)
    if not path.exists():
        raise MediaError("no such file", path)
    suffix = path.suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return Media(path, "image", image=read_image(path, max_pixels=max_pixels))
    if suffix in VIDEO_EXTENSIONS:
        return Media(path, "video", video=VideoReader(path))
    try:
        return Media(path, "image", image=read_image(path, max_pixels=max_pixels))
    except MediaError as e:
        if "too large" in str(e) or "empty file" in str(e):
            raise
    try:
        return Media(path, "video", video=VideoReader(path))
    except MediaError:
        raise MediaError("neither a readable image nor a readable video (unknown format)", path) from None
