"""Images: every format and colour mode, EXIF orientation, bad files, size guard, atomic writes."""

from __future__ import annotations

import struct
import time
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image
from shared_data import MEDIA

from dpmesh_core.errors import MediaError
from dpmesh_core.io import atomic_write, atomic_write_text, image_size, read_image, write_image


def _pattern(h=24, w=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("ext", [".png", ".bmp", ".tif", ".tiff"])
def test_lossless_formats_roundtrip(tmp_path, ext):
    img = _pattern()
    p = tmp_path / f"a{ext}"
    Image.fromarray(img).save(p)
    out = read_image(p)
    assert out.dtype == np.uint8 and out.shape == (24, 32, 3)
    np.testing.assert_array_equal(out, img)


@pytest.mark.parametrize("ext,fmt", [(".jpg", "JPEG"), (".webp", "WEBP")])
def test_lossy_formats(tmp_path, ext, fmt):
    img = np.zeros((40, 60, 3), np.uint8)
    img[:, :30] = (200, 40, 40)
    img[:, 30:] = (30, 60, 220)
    p = tmp_path / f"a{ext}"
    Image.fromarray(img).save(p, format=fmt, quality=95)
    out = read_image(p)
    assert out.shape == (40, 60, 3) and out.dtype == np.uint8
    assert np.abs(out[5:-5, 5:25].astype(int) - (200, 40, 40)).max() < 12
    assert np.abs(out[5:-5, 35:-5].astype(int) - (30, 60, 220)).max() < 12


def test_16bit_rgb_png_scaled(tmp_path):
    rgb16 = np.zeros((10, 12, 3), np.uint16)
    rgb16[..., 0] = 65535
    rgb16[..., 1] = 257 * 100
    rgb16[..., 2] = 0
    p = tmp_path / "rgb16.png"
    assert cv2.imwrite(str(p), rgb16[..., ::-1])  # OpenCV writes BGR
    out = read_image(p)
    assert out.dtype == np.uint8 and out.shape == (10, 12, 3)
    np.testing.assert_array_equal(out[0, 0], [255, 100, 0])


def test_16bit_gray_png_scaled(tmp_path):
    g = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000).astype(np.uint16)
    p = tmp_path / "g16.png"
    assert cv2.imwrite(str(p), g)
    out = read_image(p)
    assert out.shape == (3, 4, 3)
    expected = np.rint(g / 257.0).astype(np.uint8)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], expected)


def test_rgba_composited_on_white(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 255  # red
    rgba[:4, :, 3] = 255  # top half opaque
    rgba[4:, :, 3] = 0  # bottom half transparent
    rgba[4:6, :, 3] = 0
    rgba[6:, :4, 3] = 128  # half-transparent red
    p = tmp_path / "rgba.png"
    Image.fromarray(rgba, "RGBA").save(p)
    out = read_image(p)
    np.testing.assert_array_equal(out[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(out[5, 5], [255, 255, 255])
    assert out[7, 0, 0] == 255 and abs(int(out[7, 0, 1]) - 127) <= 2


def test_grayscale_and_palette(tmp_path):
    g = np.arange(64, dtype=np.uint8).reshape(8, 8) * 3
    p = tmp_path / "g.png"
    Image.fromarray(g, "L").save(p)
    out = read_image(p)
    assert out.shape == (8, 8, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], g)
    pal = Image.fromarray(_pattern(8, 8)).convert("P")
    pp = tmp_path / "p.png"
    pal.save(pp)
    np.testing.assert_array_equal(read_image(pp), np.asarray(pal.convert("RGB")))


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_applied(tmp_path, orientation):
    img = np.zeros((20, 40, 3), np.uint8)  # wide image, a white block at the top-left corner
    img[:6, :8] = 255
    pil = Image.fromarray(img)
    exif = pil.getexif()
    exif[0x0112] = orientation
    p = tmp_path / f"o{orientation}.jpg"
    pil.save(p, exif=exif, quality=98)
    out = read_image(p)
    expected = np.asarray(Image.fromarray(img).transpose(
        {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_270, 8: Image.Transpose.ROTATE_90}[orientation]))
    assert out.shape == expected.shape
    assert image_size(p) == (out.shape[1], out.shape[0])
    assert np.abs(out.astype(int) - expected.astype(int)).mean() < 8
    # the bright block moved where the rotation puts it
    ys, xs = np.nonzero(out[..., 0] > 128)
    eys, exs = np.nonzero(expected[..., 0] > 128)
    assert abs(ys.mean() - eys.mean()) < 1.5 and abs(xs.mean() - exs.mean()) < 1.5


def test_real_photo():
    p = str(MEDIA / "COCO_val2014_000000000192.jpg")
    out = read_image(p)
    w, h = Image.open(p).size
    assert out.shape == (h, w, 3) and out.dtype == np.uint8 and out.std() > 10


def test_missing_zero_byte_corrupt_unknown(tmp_path):
    with pytest.raises(MediaError, match="no such file"):
        read_image(tmp_path / "nope.png")
    z = tmp_path / "zero.jpg"
    z.write_bytes(b"")
    with pytest.raises(MediaError, match="empty") as ei:
        read_image(z)
    assert ei.value.path == str(z)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(MediaError, match="junk.png"):
        read_image(junk)
    unk = tmp_path / "x.xyz"
    unk.write_bytes(np.random.default_rng(1).integers(0, 256, 500, dtype=np.uint8).tobytes())
    with pytest.raises(MediaError):
        read_image(unk)
    with pytest.raises(MediaError, match="directory"):
        read_image(tmp_path)


@pytest.mark.parametrize("ext,fmt", [(".jpg", "JPEG"), (".png", "PNG")])
def test_truncated(tmp_path, ext, fmt):
    p = tmp_path / f"full{ext}"
    Image.fromarray(_pattern(200, 200)).save(p, format=fmt)
    data = p.read_bytes()
    t = tmp_path / f"trunc{ext}"
    t.write_bytes(data[: len(data) // 2])
    with pytest.raises(MediaError, match="trunc"):
        read_image(t)


def _png_header_only(w, h):
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b"")


def test_huge_header_rejected_fast(tmp_path):
    p = tmp_path / "huge.png"
    p.write_bytes(_png_header_only(20000, 20000))
    t = time.perf_counter()
    with pytest.raises(MediaError, match="too large"):
        read_image(p)
    assert time.perf_counter() - t < 5.0  # generous: it must not decode 400 MP
    # our own limit, below Pillow's decompression-bomb guard
    q = tmp_path / "big.png"
    q.write_bytes(_png_header_only(5000, 5000))
    with pytest.raises(MediaError, match="too large: 5000x5000"):
        read_image(q, max_pixels=1_000_000)


def test_write_image_roundtrip_and_errors(tmp_path):
    img = _pattern(16, 20, seed=3)
    p = write_image(tmp_path / "sub" / "o.png", img)
    np.testing.assert_array_equal(read_image(p), img)
    with pytest.raises(MediaError, match="unknown image format"):
        write_image(tmp_path / "o.xyz", img)
    with pytest.raises(MediaError, match="uint8"):
        write_image(tmp_path / "f.png", img.astype(np.float32))
    assert sorted(f.name for f in tmp_path.iterdir()) == ["sub"]
    assert [f.name for f in (tmp_path / "sub").iterdir()] == ["o.png"]


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    p = tmp_path / "a.txt"
    atomic_write_text(p, "old")
    with pytest.raises(RuntimeError):
        with atomic_write(p, "w") as f:
            f.write("new, half written")
            raise RuntimeError("boom")
    assert p.read_text() == "old"
    assert [f.name for f in tmp_path.iterdir()] == ["a.txt"]
    with atomic_write(p, "wb") as f:
        f.write(b"new")
    assert p.read_bytes() == b"new"
    with pytest.raises(ValueError):
        with atomic_write(p, "a"):
            pass


def test_cmyk_jpeg(tmp_path):
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[:, :8] = (220, 30, 30)
    rgb[:, 8:] = (30, 30, 220)
    p = tmp_path / "cmyk.jpg"
    Image.fromarray(rgb).convert("CMYK").save(p, quality=98)
    assert Image.open(p).mode == "CMYK"
    out = read_image(p)
    assert out.shape == (16, 16, 3)
    assert np.abs(out[4:12, 1:6].astype(int) - (220, 30, 30)).max() < 25
    assert np.abs(out[4:12, 10:15].astype(int) - (30, 30, 220)).max() < 25


def test_atomic_write_gives_normal_permissions(tmp_path):
    import os
    import stat

    p = atomic_write_text(tmp_path / "perm.txt", "x")
    um = os.umask(0)
    os.umask(um)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~um  # as open() would create it, not mkstemp's 0600
    os.chmod(p, 0o640)
    atomic_write_text(p, "y")
    assert stat.S_IMODE(p.stat().st_mode) == 0o640  # an existing file keeps its permissions
