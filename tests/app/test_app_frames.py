"""Video frames decoded off the GUI thread (app.jobs.frames, app.session.frames) and Play at the video's frame
rate (app.widgets.timeline), on the real street.avi."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from app.document import Document
from app.jobs.frames import FramePrefetcher
from app.session.frames import FramesController
from app.widgets.image_view import ImageView
from app.widgets.timeline import Timeline
from dpmesh_core import api
from dpmesh_core.errors import MediaError
from dpmesh_core.io.video import VideoReader


def _prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "frame-prefetch"]


def _wait(cond, timeout=20.0):
    t0 = time.perf_counter()
    while not cond():
        assert time.perf_counter() - t0 < timeout, "timed out"
        time.sleep(0.005)


def test_prefetched_frames_equal_the_readers(media_dir):
    path = media_dir / "street.avi"
    pf = FramePrefetcher(str(path), capacity=16, ahead=10, around=2)
    try:
        pf.show(0, playing=True)
        _wait(lambda: all(pf.has(i) for i in range(10)))
        with VideoReader(path) as r:
            for i in range(10):  # sequential, as Play reads
                np.testing.assert_array_equal(pf.get(i), r.read(i))
            pf.show(120, playing=False)  # a jump (seek on the prefetch thread), then a few frames around it
            _wait(lambda: all(pf.has(i) for i in range(118, 123)))
            for i in [122, 118, 120, 121, 119]:
                np.testing.assert_array_equal(pf.get(i), r.read(i))
        assert len(pf.cached()) <= 16  # bounded
        assert pf.get(60) is None  # get never decodes
    finally:
        pf.close()
    assert not pf.running


def test_play_shows_frames_at_the_video_rate_and_decodes_nothing_on_the_gui_thread(qtbot, media_dir):
    doc = Document()
    frames = FramesController(doc)
    tl = Timeline(doc)
    view = ImageView(doc)  # pulls the picture of every shown frame, as in the window
    for w in (tl, view):
        qtbot.addWidget(w)
    tl.frames = frames
    doc.set_media(api.open_media(media_dir / "street.avi"))
    gui_reads = []
    real_frame = doc.media.frame

    def counting_frame(i):
        if threading.current_thread() is threading.main_thread():
            gui_reads.append(i)
        return real_frame(i)

    doc.media.frame = counting_frame  # the Document's own reader: any call is a decode on the GUI thread
    shown = []
    doc.frame_changed.connect(lambda f: shown.append((f, doc.image(f))))
    selections = []  # nothing selected: a frame change says nothing about the selection (every panel redrew)
    doc.selection_changed.connect(selections.append)
    try:
        t0 = time.perf_counter()
        tl.set_playing(True)
        qtbot.waitUntil(lambda: doc.current_frame >= 30, timeout=30000)
        elapsed = time.perf_counter() - t0
        tl.set_playing(False)
        assert gui_reads == [] and doc.frames_decoded_here <= 1  # (frame 0, shown before Play)
        assert selections == []
        idx = [f for f, _ in shown]
        assert idx == sorted(set(idx)) and idx[0] >= 1  # forward only; dropped frames are skipped, not replayed
        assert tl.shown == len(idx) and tl.dropped == idx[-1] - len(idx)
        # at 50 fps, 30 frames take 0.6 s: a played frame is never shown before its time
        assert elapsed >= (idx[-1] - 1) / doc.fps
        with VideoReader(media_dir / "street.avi") as r:
            for f, img in shown[:: max(len(shown) // 6, 1)]:
                np.testing.assert_array_equal(img, r.read(f))  # the right picture for the frame
        print(f"30 frames: {elapsed:.2f} s, shown {tl.shown}, dropped {tl.dropped}, "
              f"prefetched {frames.prefetcher.decoded}")
    finally:
        tl.set_playing(False)
        frames.close()
        doc.set_media(None)


def test_closing_the_media_or_the_session_stops_the_prefetch_thread(qtbot, media_dir):
    from app.session import Session

    s = Session()  # its background processes start only when media opens through the session (not here)
    try:
        s.doc.set_media(api.open_media(media_dir / "street.avi"))
        pf = s.frames.prefetcher
        assert pf is not None and pf.running and s.doc.frame_source is pf
        _wait(lambda: pf.has(0))
        s.doc.set_media(None)  # File > New
        assert not pf.running and s.frames.prefetcher is None and s.doc.frame_source is None
        s.doc.set_media(api.open_media(media_dir / "street.avi"))
        pf2 = s.frames.prefetcher
        assert pf2 is not None and pf2 is not pf and pf2.running
    finally:
        s.shutdown()  # the app quitting
    assert not pf2.running and not _prefetch_threads()


def test_truncated_video_plays_the_frames_that_decode_and_reports_the_end(qtbot, media_dir, tmp_path):
    cut = tmp_path / "cut.avi"
    data = (media_dir / "street.avi").read_bytes()
    cut.write_bytes(data[: len(data) // 5])  # the first 20 %: 42 of the 205 frames the file claims decode
    doc = Document()
    frames = FramesController(doc)
    tl = Timeline(doc)
    view = ImageView(doc)
    for w in (tl, view):
        qtbot.addWidget(w)
    tl.frames = frames
    messages = []
    frames.message.connect(messages.append)
    doc.set_media(api.open_media(cut))
    try:
        assert doc.num_frames == 205  # the container's claim: nothing knows better yet
        doc.set_current_frame(35)
        shown = []
        doc.frame_changed.connect(lambda f: shown.append(f))
        tl.set_playing(True)
        qtbot.waitUntil(lambda: not tl.is_playing(), timeout=30000)
        assert doc.current_frame == 41 and shown and shown[-1] == 41  # played to the last frame that decodes
        assert frames.end() == 42 and frames.prefetcher.error is None and frames.prefetcher.running
        qtbot.waitUntil(lambda: bool(messages), timeout=5000)
        assert "frame 42" in messages[-1]
        with VideoReader(cut) as r:
            np.testing.assert_array_equal(doc.image(41), r.read(41))
        # the prefetch thread goes on serving the frames that decode
        doc.set_current_frame(10)
        _wait(lambda: frames.prefetcher.has(12))
        with pytest.raises(MediaError, match="cannot decode frame 100"):
            doc.image(100)  # scrubbing past the end: the Document's reader says so, as before
    finally:
        frames.close()
        doc.set_media(None)
    assert not _prefetch_threads()


def test_skeletons_are_painted_fast_while_playing_and_antialiased_once_stopped(qtbot, media_dir, tmp_path):
    """Play brings new persons with every frame: the image view paints their skeletons directly without
    antialiasing (no per-person pixmap, which would never be reused); stopped, the frame's skeletons are
    painted again antialiased, through their kept pixmaps."""
    from app_testkit import RecordingEstimator, make_person
    from PySide6.QtCore import QSettings

    from app.jobs import InferenceService
    from app.main_window import MainWindow
    from app.session import Session

    s = Session(inference=InferenceService(estimator_factory=lambda: RecordingEstimator()))
    s.auto_detect = False
    win = MainWindow(session=s, settings=QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat))
    win._no_prompt = True
    qtbot.addWidget(win)
    win.show()
    qtbot.waitExposed(win)
    try:
        s.doc.set_media(api.open_media(media_dir / "street.avi"))
        for f in range(40):
            s.doc.set_frame_persons(f, [make_person(i, x0=60 + 150 * i) for i in range(4)])
        item = win.image_view.persons_item
        qtbot.waitUntil(lambda: bool(item._pixmaps), timeout=10000)  # frame 0, still: kept pixmaps
        win.timeline.set_playing(True)
        painted = []  # (from here on: every paint is of a played frame until Play stops)
        real = item._paint_person
        item._paint_person = lambda painter, *a: (painted.append(
            painter.testRenderHint(painter.RenderHint.Antialiasing)), real(painter, *a))[1]
        qtbot.waitUntil(lambda: s.doc.current_frame >= 10, timeout=20000)
        assert item.fast and painted and not any(painted)  # played frames: no antialiasing
        assert not item._pixmaps
        win.timeline.set_playing(False)
        assert not item.fast
        del painted[:]
        qtbot.waitUntil(lambda: bool(item._pixmaps), timeout=10000)  # the stopped frame painted again
        assert painted and all(painted)
    finally:
        win.timeline.set_playing(False)
        s.shutdown()
