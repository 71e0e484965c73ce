"""Video frames as RGB uint8 arrays through OpenCV.

``VideoReader`` gives random access with exact frame indices: sequential reads decode forward (fast),
small forward jumps grab-and-discard, and longer jumps seek with ``CAP_PROP_POS_FRAMES``. Because some
codec/container pairs land elsewhere than asked (e.g. on a key-frame) while reporting the requested
position, every seek is verified twice: the reported position, and the decoded frame's timestamp
(``CAP_PROP_POS_MSEC``) against ``t0 + i / fps``. When either disagrees (or the read fails) the reader
rewinds and decodes forward from the start, which is slow but always correct, and compares: if the
frames differ, seeking is abandoned for that file (every later jump decodes forward); if they match,
the timestamps were uninformative (variable frame rate) and only the timestamp check is dropped.

A reader is not thread-safe: use one per thread. ``write_video`` writes frames atomically.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from ..errors import InputError, MediaError
from .atomic import atomic_path

log = logging.getLogger(__name__)

__all__ = ["VideoReader", "write_video"]

# Forward jumps up to this many frames are decoded (grab) rather than seeked.
_GRAB_WINDOW = 48


class VideoReader:
    """Random-access RGB frames of a video file.

    ``num_frames``: int, from the container, lowered when decoding finds the file shorter (truncated);
    ``fps``: float (frames per second; 0 if the container does not say);
    ``size``: (width, height) pixels. ``read(i)`` -> (H, W, 3) uint8 RGB of frame ``i`` (0-based).
    Iterating yields every frame in order. Use as a context manager or call ``close()``.
    """

    def __init__(self, path: str | os.PathLike):
        import cv2

        self.path = Path(path)
        from ..errors import describe_oserror

        try:
            st = self.path.stat()
        except FileNotFoundError:
            raise MediaError("no such file", self.path) from None
        except OSError as e:  # a symbolic link loop (ELOOP), a permission problem on a folder (EACCES)...
            raise MediaError(f"cannot access the file: {describe_oserror(e)}", self.path) from None
        if self.path.is_dir():
            raise MediaError("is a directory, not a video", self.path)
        if st.st_size == 0:
            raise MediaError("empty file (0 bytes)", self.path)
        try:
            with open(self.path, "rb") as f:
                f.read(1)
        except OSError as e:
            raise MediaError(f"cannot read the file: {describe_oserror(e)}", self.path) from None
        self._cv2 = cv2
        self._cap = self._open()
        w = int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        h = int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if np.isfinite(fps) and fps > 0 else 0.0
        self._next = 0  # index of the frame the next cap.read() returns
        self._last: tuple[int, np.ndarray] | None = None
        self._seek_ok = True
        self._check_ts = self.fps > 0  # verify seeks by the decoded frame's timestamp (see _ts_ok)
        self._t0 = 0.0
        # Decode the first frame: proves the stream is readable and gives the true size.
        first = self._read_next()
        if first is None:
            self.close()
            raise MediaError("no decodable video frame (corrupt or unsupported video)", self.path)
        self._t0 = float(self._cap.get(cv2.CAP_PROP_POS_MSEC) or 0.0)
        if first.shape[1] != w or first.shape[0] != h:
            w, h = first.shape[1], first.shape[0]
        self.size = (int(w), int(h))
        n = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        if n <= 0:
            n = self._count_frames()
        self.num_frames = int(n)

    # -- internals -------------------------------------------------------------------------------------
    def _open(self):
        cap = self._cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            cap.release()
            raise MediaError("cannot open as a video (unknown format or corrupt file)", self.path)
        return cap

    def _read_next(self) -> np.ndarray | None:
        ok, bgr = self._cap.read()
        if not ok or bgr is None:
            return None
        idx = self._next
        self._next += 1
        cv2 = self._cv2
        if bgr.ndim == 2:
            rgb = cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB)
        elif bgr.shape[2] == 4:
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGRA2RGB)
        else:
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        self._last = (idx, rgb)
        return rgb

    def _count_frames(self) -> int:
        self._rewind()
        n = 0
        while self._cap.grab():
            n += 1
        self._rewind()
        return n

    def _rewind(self) -> None:
        self._cap.release()
        self._cap = self._open()
        self._next = 0

    def _grab_to(self, i: int) -> bool:
        while self._next < i:
            if not self._cap.grab():
                return False
            self._next += 1
        return True

    def _seek(self, i: int) -> bool:
        cv2 = self._cv2
        if not self._seek_ok:
            return False
        if not self._cap.set(cv2.CAP_PROP_POS_FRAMES, float(i)):
            return False
        pos = self._cap.get(cv2.CAP_PROP_POS_FRAMES)
        if int(round(pos)) != i:
            log.info("%s: seek to frame %d landed on %s; decoding forward instead", self.path, i, pos)
            self._seek_ok = False
            return False
        self._next = i
        return True

    def _ts_ok(self, i: int) -> bool:
        """Whether the frame just decoded carries frame ``i``'s timestamp (constant frame rate assumed)."""
        if not self._check_ts:
            return True
        t = float(self._cap.get(self._cv2.CAP_PROP_POS_MSEC) or 0.0)
        expected = self._t0 + i * 1000.0 / self.fps
        return abs(t - expected) <= 0.5 * 1000.0 / self.fps

    def _ends_at(self, n: int) -> None:
        """Decoding forward stopped after ``n`` frames: the container's frame count was too high."""
        if 0 < n < self.num_frames:
            log.warning("%s: the file says %d frames but only %d decode (truncated?); using %d",
                        self.path, self.num_frames, n, n)
            self.num_frames = n

    def _decode_forward(self, i: int) -> np.ndarray | None:
        self._rewind()
        return self._read_next() if self._grab_to(i) else None

    # -- public ----------------------------------------------------------------------------------------
    def read(self, i: int) -> np.ndarray:
        """Frame ``i`` as (H, W, 3) uint8 RGB (a fresh array). Raises ``MediaError`` if out of range or
        undecodable."""
        if self._cap is None:
            raise MediaError("reader is closed", self.path)
        i = int(i)
        if i < 0 or i >= self.num_frames:
            raise MediaError(f"frame {i} out of range (0..{self.num_frames - 1})", self.path)
        if self._last is not None and self._last[0] == i:
            return self._last[1].copy()
        seeked = False
        if not (self._next <= i <= self._next + _GRAB_WINDOW):
            seeked = self._seek(i)
            if not seeked and i < self._next:
                self._rewind()
        if not self._grab_to(i):
            if not seeked:
                self._ends_at(self._next)
            raise MediaError(f"cannot decode frame {i} (file truncated?)", self.path)
        frame = self._read_next()
        if frame is None and not seeked:
            self._ends_at(self._next)
        elif seeked and frame is None:
            # A seek that reported the right position but could not decode: retry the slow, sure way.
            frame = self._decode_forward(i)
            if frame is None:
                self._ends_at(self._next)
            else:
                self._seek_ok = False
        elif seeked and not self._ts_ok(i):
            # The decoded frame's timestamp is not frame i's: either seeking lies here, or the video has a
            # variable frame rate. Decode forward once to tell which, and remember the verdict.
            sure = self._decode_forward(i)
            if sure is not None and np.array_equal(sure, frame):
                self._check_ts = False  # timestamps are uninformative; seeking is fine
            else:
                log.info("%s: seeking to frame %d returned another frame; decoding forward from now on",
                         self.path, i)
                self._seek_ok = False
            frame = sure
        if frame is None:
            raise MediaError(f"cannot decode frame {i} (file truncated?)", self.path)
        return frame.copy()

    def __len__(self) -> int:
        return self.num_frames

    def __iter__(self) -> Iterator[np.ndarray]:
        i = 0
        while i < self.num_frames:  # num_frames may shrink when the file turns out truncated
            try:
                frame = self.read(i)
            except MediaError:
                if i == 0:
                    raise
                if i < self.num_frames:
                    log.warning("%s: stopped at frame %d of %d (undecodable)", self.path, i, self.num_frames)
                return
            yield frame
            i += 1

    def close(self) -> None:
        if getattr(self, "_cap", None) is not None:
            self._cap.release()
            self._cap = None
        self._last = None

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"VideoReader({str(self.path)!r}, num_frames={self.num_frames}, fps={self.fps}, size={self.size})"


_FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "XVID"}


def write_video(
    path: str | os.PathLike, frames: Iterable[np.ndarray], fps: float, fourcc: str | None = None
) -> Path:
    """Write (H, W, 3) uint8 RGB frames to a video, atomically (no partial file on failure).

    Codec from the suffix unless ``fourcc`` is given: .mp4/.m4v/.mov -> "mp4v", .avi -> "MJPG",
    .mkv -> "XVID". Every frame must have the first frame's size. Returns the path.
    """
    import cv2

    path = Path(path)
    code = fourcc or _FOURCC.get(path.suffix.lower())
    if code is None or len(code) != 4:
        raise MediaError(f"unknown video format {path.suffix!r}; use one of {sorted(_FOURCC)}", path)
    if not (np.isfinite(fps) and fps > 0):
        raise InputError(f"fps must be positive, got {fps}", path)
    it = iter(frames)
    with atomic_path(path) as tmp:
        writer = None
        n = 0
        try:
            for frame in it:
                a = np.asarray(frame)
                if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
                    raise InputError(f"frame {n}: expected (H, W, 3) uint8, got {a.shape} {a.dtype}", path)
                if writer is None:
                    size = (a.shape[1], a.shape[0])
                    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*code), float(fps), size)
                    if not writer.isOpened():
                        raise MediaError(f"OpenCV cannot write {code!r} video", path)
                elif (a.shape[1], a.shape[0]) != size:
                    raise InputError(f"frame {n}: size {a.shape[1]}x{a.shape[0]} differs from {size}", path)
                writer.write(np.ascontiguousarray(a[:, :, ::-1]))
                n += 1
        finally:
            if writer is not None:
                writer.release()
        if n == 0:
            raise InputError("no frames to write", path)
    return path
