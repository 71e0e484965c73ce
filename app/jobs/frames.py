"""Video frames decoded off the GUI thread: ``FramePrefetcher``.

A background thread owns its own reader of the video file (a ``VideoReader`` is not thread-safe: the
Document's reader stays the GUI thread's) and decodes the frames around the shown one into a small bounded
cache. While the video plays it decodes sequentially ahead of the shown frame (``ahead`` frames); when the
player drops frames (the shown frame jumps), the window jumps with it and the reader grabs forward on this
thread. When idle it keeps a few frames on either side of the shown one (``around``), for stepping.

``get(i)`` never decodes: it returns the cached frame or None. A frame that does not decode (a truncated
file) ends the video for the prefetcher: ``end`` is its index, ``on_end(i)`` is called once (from the
prefetch thread), and nothing at or after it is decoded again. ``close()`` stops and joins the thread.
No Qt here: the caller turns ``on_end`` into a signal.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["FramePrefetcher", "FRAME_CACHE"]

#: default cache size in frames (a 1280x720 RGB frame is 2.7 MB: 24 frames ~ 66 MB)
FRAME_CACHE = 24


def _open_media(path: str) -> Any:
    from dpmesh_core import api

    return api.open_media(path)


class FramePrefetcher:
    """Decodes frames of the video at ``path`` on its own thread, around the frame ``show`` names.

    capacity: the most frames kept (>= 2); ahead: frames decoded ahead of the shown one while playing
    (default capacity // 2); around: frames kept on each side of the shown one when idle.
    Counters (read from any thread): ``decoded`` frames decoded here, ``hits`` / ``misses`` of ``get``.
    """

    def __init__(self, path: str, capacity: int = FRAME_CACHE, ahead: int | None = None, around: int = 2,
                 on_end: Callable[[int], None] | None = None, opener: Callable[[str], Any] = _open_media):
        self.path = str(path)
        self.capacity = max(int(capacity), 2)
        self.ahead = min(max(int(ahead if ahead is not None else self.capacity // 2), 1), self.capacity)
        self.around = max(int(around), 0)
        self.on_end = on_end
        self._opener = opener
        self._cv = threading.Condition()
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cursor = 0
        self._playing = False
        self._stop = False
        self._num_frames: int | None = None  # known once the thread opened the file
        self.end: int | None = None  # first frame that does not decode (truncated file), if found
        self.error: str | None = None  # why the file could not be opened here, if it could not
        self.decoded = 0
        self.hits = 0
        self.misses = 0
        self._thread = threading.Thread(target=self._run, name="frame-prefetch", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ GUI-thread API
    def show(self, frame: int, playing: bool = False) -> None:
        """The shown frame (or, while playing, where the clock is): decode around / ahead of it."""
        with self._cv:
            self._cursor = max(int(frame), 0)
            self._playing = bool(playing)
            self._cv.notify()

    def get(self, frame: int) -> np.ndarray | None:
        """The decoded frame (H, W, 3) uint8 RGB, or None when it is not decoded (yet). Never decodes."""
        with self._cv:
            img = self._cache.get(int(frame))
            if img is None:
                self.misses += 1
            else:
                self.hits += 1
            return img

    def has(self, frame: int) -> bool:
        with self._cv:
            return int(frame) in self._cache

    def cached(self) -> list[int]:
        with self._cv:
            return sorted(self._cache)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread (after the frame it is decoding) and drop the cache."""
        with self._cv:
            self._stop = True
            self._cv.notify()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)
        with self._cv:
            self._cache.clear()

    # ------------------------------------------------------------------ the thread
    def _wanted(self) -> list[int]:
        """Frames to have, most urgent first (called with the lock held)."""
        n = self._num_frames or 0
        if self.end is not None:
            n = min(n, self.end)
        c = min(self._cursor, max(n - 1, 0))
        if self._playing:
            order = range(c, c + self.ahead)
        else:
            order = [c]
            for d in range(1, self.around + 1):
                order += [c + d, c - d]
        return [f for f in order if 0 <= f < n]

    def _evict(self, wanted: list[int]) -> None:
        keep = set(wanted)
        c = self._cursor
        while len(self._cache) > self.capacity:
            # frames no longer wanted first, the furthest from the shown frame first (behind counts double)
            victim = max(self._cache, key=lambda f: (f not in keep, (c - f) * 2 if f < c else f - c))
            del self._cache[victim]

    def _run(self) -> None:
        try:
            media = self._opener(self.path)
        except Exception as e:  # noqa: BLE001 - reported through .error; the GUI reader reports it to the user
            self.error = str(e)
            return
        try:
            with self._cv:
                self._num_frames = int(media.num_frames)
            self._loop(media)
        finally:
            media.close()

    def _loop(self, media: Any) -> None:
        from dpmesh_core.errors import MediaError

        while True:
            with self._cv:
                while True:
                    if self._stop:
                        return
                    wanted = self._wanted()
                    todo = next((f for f in wanted if f not in self._cache), None)
                    if todo is not None:
                        break
                    self._cv.wait()
            try:
                img = np.ascontiguousarray(media.frame(todo))
            except MediaError:
                with self._cv:
                    self.end = todo
                    self._num_frames = min(self._num_frames or todo, todo)
                if self.on_end is not None:
                    self.on_end(todo)
                continue
            except Exception as e:  # noqa: BLE001 - a decoder failure must not kill the thread silently
                with self._cv:
                    self.error = f"frame {todo}: {e}"
                    self.end = todo
                    self._num_frames = min(self._num_frames or todo, todo)
                if self.on_end is not None:
                    self.on_end(todo)
                continue
            with self._cv:
                self.decoded += 1
                self._cache[todo] = img
                self._evict(self._wanted())
