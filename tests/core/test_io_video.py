"""Video reading (sequential, seek, fallback), writing, and the Media facade."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from shared_data import MEDIA

from dpmesh_core.errors import InputError, MediaError
from dpmesh_core.io import Media, VideoReader, is_media_file, open_media, write_video

STREET = MEDIA / "street.avi"


def _frame(i, w=64, h=48):
    """A frame whose index can be read back despite lossy compression: a bright bar at x = 2 * i."""
    f = np.full((h, w, 3), 30, np.uint8)
    f[:, 2 * i: 2 * i + 2] = 250
    f[:4, :] = (i * 9 % 256, 100, 200)
    return f


def _index_of(frame):
    col = frame[8:, :, :].mean(axis=(0, 2))
    return int(np.argmax(col) // 2)


@pytest.fixture(scope="module")
def mjpg_video(tmp_path_factory):
    p = tmp_path_factory.mktemp("vid") / "clip.avi"
    write_video(p, (_frame(i) for i in range(30)), fps=25)
    return p


def test_write_and_read_sequential(mjpg_video):
    with VideoReader(mjpg_video) as r:
        assert r.num_frames == 30 and len(r) == 30
        assert r.size == (64, 48)
        assert abs(r.fps - 25) < 1e-6
        frames = list(r)
    assert len(frames) == 30
    assert [_index_of(f) for f in frames] == list(range(30))
    assert all(f.dtype == np.uint8 and f.shape == (48, 64, 3) for f in frames)


def test_random_seek_matches_sequential(mjpg_video):
    with VideoReader(mjpg_video) as r:
        seq = [r.read(i) for i in range(r.num_frames)]
    with VideoReader(mjpg_video) as r:
        for i in [17, 3, 29, 0, 28, 5, 5, 12]:
            np.testing.assert_array_equal(r.read(i), seq[i])
        with pytest.raises(MediaError, match="out of range"):
            r.read(30)
        with pytest.raises(MediaError, match="out of range"):
            r.read(-1)


def test_forward_decode_fallback_is_exact(mjpg_video):
    """When seeking is distrusted, reads decode forward (rewinding when needed) and stay exact."""
    with VideoReader(mjpg_video) as r:
        seq = list(r)
    with VideoReader(mjpg_video) as r:
        r._seek_ok = False  # what the reader does after catching CAP_PROP_POS_FRAMES lying
        for i in [25, 2, 29, 1, 14]:
            np.testing.assert_array_equal(r.read(i), seq[i])


class _LyingCapture:
    """A real cv2.VideoCapture whose seeks land 3 frames early while reporting the requested position
    (the failure some codec/container pairs show)."""

    def __init__(self, cap):
        self._cap = cap

    def set(self, prop, value):
        if prop == cv2.CAP_PROP_POS_FRAMES:
            self._claim = value
            return self._cap.set(prop, max(value - 3, 0))
        return self._cap.set(prop, value)

    def get(self, prop):
        if prop == cv2.CAP_PROP_POS_FRAMES and getattr(self, "_claim", None) is not None:
            claim, self._claim = self._claim, None
            return claim
        return self._cap.get(prop)

    def __getattr__(self, name):
        return getattr(self._cap, name)


class _LyingReader(VideoReader):
    def _open(self):
        return _LyingCapture(super()._open())


def test_lying_seek_is_caught(mjpg_video):
    with VideoReader(mjpg_video) as r:
        seq = list(r)
    with _LyingReader(mjpg_video) as r:
        for i in [25, 2, 29, 10, 14]:
            np.testing.assert_array_equal(r.read(i), seq[i])
        assert not r._seek_ok  # it stopped trusting seeks


def test_truncated_video_shrinks_frame_count(tmp_path, mjpg_video):
    cut = tmp_path / "cut.avi"
    data = Path(mjpg_video).read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.6)])
    with VideoReader(cut) as r:
        claimed = r.num_frames
        frames = list(r)
        assert 0 < len(frames) < claimed == 30
        assert r.num_frames == len(frames)  # corrected once decoding hit the end
        assert [_index_of(f) for f in frames] == list(range(len(frames)))
        with pytest.raises(MediaError, match="out of range"):
            r.read(29)


def test_mp4_written_and_read(tmp_path):
    p = write_video(tmp_path / "c.mp4", (_frame(i) for i in range(12)), fps=10)
    with VideoReader(p) as r:
        assert r.num_frames == 12
        assert _index_of(r.read(7)) == 7
        assert _index_of(r.read(2)) == 2


def test_street_video_seek_equals_sequential():
    with VideoReader(STREET) as r:
        assert r.num_frames == 205 and r.size == (1280, 720) and abs(r.fps - 50) < 1e-6
        wanted = {3, 47, 48, 101}
        seq = {}
        for i, f in enumerate(r):
            if i in wanted:
                seq[i] = f
            if i >= max(wanted):
                break
        assert len(seq) == len(wanted)
    rng = np.random.default_rng(0)
    order = list(rng.permutation(sorted(wanted)))
    with VideoReader(STREET) as r:
        for i in order:
            np.testing.assert_array_equal(r.read(int(i)), seq[int(i)])
        last = r.read(204)  # the last frame is reachable by seeking
        assert last.shape == (720, 1280, 3) and last.std() > 5


def test_bad_videos(tmp_path):
    z = tmp_path / "zero.mp4"
    z.write_bytes(b"")
    with pytest.raises(MediaError, match="empty"):
        VideoReader(z)
    junk = tmp_path / "junk.avi"
    junk.write_bytes(np.random.default_rng(2).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    with pytest.raises(MediaError, match="junk.avi"):
        VideoReader(junk)
    with pytest.raises(MediaError, match="no such file"):
        VideoReader(tmp_path / "missing.mp4")


def test_write_video_errors_leave_no_file(tmp_path):
    with pytest.raises(InputError, match="no frames"):
        write_video(tmp_path / "e.avi", [], fps=10)
    frames = [_frame(0), _frame(1, w=32)]
    with pytest.raises(InputError, match="differs"):
        write_video(tmp_path / "m.avi", frames, fps=10)
    with pytest.raises(MediaError, match="unknown video format"):
        write_video(tmp_path / "m.xyz", frames[:1], fps=10)
    assert list(tmp_path.iterdir()) == []


def test_open_media_image_video_and_errors(tmp_path, mjpg_video):
    img = np.random.default_rng(4).integers(0, 256, (10, 14, 3), dtype=np.uint8)
    ip = tmp_path / "a.png"
    Image.fromarray(img).save(ip)
    with open_media(ip) as m:
        assert isinstance(m, Media) and m.kind == "image"
        assert m.num_frames == 1 and m.fps is None and m.size == (14, 10)
        np.testing.assert_array_equal(m.frame(0), img)
        with pytest.raises(MediaError):
            m.frame(1)
    with open_media(mjpg_video) as m:
        assert m.kind == "video" and m.num_frames == 30 and m.fps == pytest.approx(25) and m.size == (64, 48)
        assert _index_of(m.frame(11)) == 11
    # a file without a known suffix is sniffed
    odd = tmp_path / "image.data"
    odd.write_bytes(ip.read_bytes())
    assert open_media(odd).kind == "image"
    oddv = tmp_path / "video.data"
    oddv.write_bytes(Path(mjpg_video).read_bytes())
    with open_media(oddv) as m:
        assert m.kind == "video" and m.num_frames == 30
    with pytest.raises(MediaError, match="directory"):
        open_media(tmp_path)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00\x01" * 300)
    with pytest.raises(MediaError, match="unknown format"):
        open_media(junk)
    assert is_media_file("x.JPG") and is_media_file("y.mp4") and not is_media_file("z.json")
    assert cv2.__version__  # OpenCV is the video backend
