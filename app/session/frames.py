"""The shown video's frames, decoded off the GUI thread: a ``jobs.frames.FramePrefetcher`` per opened video,
handed to the Document (``Document.frame_source``), told which frame is shown and whether the video plays.

A frame the prefetcher has is taken from its cache; a miss (a jump while scrubbing, before the prefetcher
got there) is still decoded on the GUI thread by the Document, so a scrubbed-to frame shows at once. Play
(``widgets.timeline``) only moves to frames the prefetcher has (``decoded``), so it never decodes here.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, Signal

from ..document import Document
from ..jobs.frames import FRAME_CACHE, FramePrefetcher


class FramesController(QObject):
    """Signals: ended(frame) (the video does not decode from ``frame`` on: a truncated file), message(str),
    playing_changed(bool) (Play started or stopped)."""

    ended = Signal(int)
    message = Signal(str)
    playing_changed = Signal(bool)

    def __init__(self, doc: Document, capacity: int = FRAME_CACHE, parent: QObject | None = None):
        super().__init__(parent)
        self.doc = doc
        self.capacity = capacity
        self.prefetcher: FramePrefetcher | None = None
        self.playing = False
        self.ended.connect(self._on_ended)
        doc.media_changed.connect(self._on_media)
        doc.frame_changed.connect(self._on_frame)

    def _on_media(self) -> None:
        self.close()
        if self.doc.is_video and self.doc.media_path:
            self.prefetcher = FramePrefetcher(self.doc.media_path, self.capacity, on_end=self.ended.emit)
            self.prefetcher.show(self.doc.current_frame, self.playing)
            self.doc.frame_source = self.prefetcher

    def _on_frame(self, frame: int) -> None:
        if self.prefetcher is not None:
            self.prefetcher.show(frame, self.playing)

    def _on_ended(self, frame: int) -> None:
        if self.prefetcher is not None and self.prefetcher.end == frame:
            self.message.emit(f"The video does not decode past frame {frame} (truncated file?): frames 1 to "
                              f"{frame} can be shown.")

    # ------------------------------------------------------------------ for Play (the timeline)
    def set_playing(self, on: bool) -> None:
        changed = bool(on) != self.playing
        self.playing = bool(on)
        if self.prefetcher is not None:
            self.prefetcher.show(self.doc.current_frame, self.playing)
        if changed:
            self.playing_changed.emit(self.playing)

    def play_clock(self, frame: int) -> None:
        """Playback's clock is at ``frame`` (ahead of the shown one when frames are dropped): decode from there."""
        if self.prefetcher is not None:
            self.prefetcher.show(max(frame, self.doc.current_frame), True)

    def decoded(self, frame: int) -> bool:
        """Whether ``frame`` can be shown without decoding on this thread."""
        if self.doc.has_image(frame):
            return True
        return self.prefetcher is not None and self.prefetcher.has(frame)

    def end(self) -> int | None:
        """The first frame that does not decode, once the prefetcher found one."""
        return None if self.prefetcher is None else self.prefetcher.end

    def close(self) -> None:
        """Stop the prefetch thread (media closed, app quitting)."""
        if self.doc.frame_source is self.prefetcher:
            self.doc.frame_source = None
        if self.prefetcher is not None:
            self.prefetcher.close()
            self.prefetcher = None
