"""Reading and writing still images as RGB uint8 arrays.

``read_image`` returns ``(H, W, 3)`` uint8 RGB whatever the file holds:

* JPEG, PNG (8- and 16-bit), BMP, TIFF, WebP (anything Pillow identifies);
* the EXIF orientation tag is applied (``ImageOps.exif_transpose``), so the array is upright as a viewer
  shows it;
* grayscale (``L``, ``1``, 16-bit ``I;16``) is replicated to 3 channels;
* 16-bit (or 32-bit integer) samples are scaled to 8 bits by ``round(v / 257)`` (65535 -> 255);
* images with an alpha channel (RGBA, LA, palette with transparency) are **composited on white**
  (transparent pixels become white, half-transparent ones are blended), not just stripped of alpha;
* CMYK / YCbCr / LAB are converted to RGB by Pillow.

Size is checked from the header *before* any pixel is decoded: an image with more than ``max_pixels``
pixels raises ``MediaError("too large ...")`` without allocating. Pillow's own decompression-bomb guard
(``PIL.Image.MAX_IMAGE_PIXELS``, an error above twice that, about 179 MP by default) is not modified by this
module (it is process-global); when it trips first, it is reported as the same "too large" ``MediaError``.
Missing, zero-byte, truncated, corrupt and unknown-format files raise ``MediaError`` naming the file.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np

from ..errors import MediaError
from .atomic import atomic_path

log = logging.getLogger(__name__)

__all__ = ["IMAGE_EXTENSIONS", "VIDEO_EXTENSIONS", "read_image", "image_size", "write_image", "to_rgb8"]

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
VIDEO_EXTENSIONS: frozenset[str] = frozenset(
    {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".mts", ".ts"}
)

DEFAULT_MAX_PIXELS = 200_000_000


def _check_file(path: Path) -> None:
    """Exists, is a readable file, not empty: else ``MediaError`` naming the cause (no such file, symbolic
    link loop (ELOOP), permission denied (EACCES)...), never a misleading "corrupt"."""
    from ..errors import describe_oserror

    try:
        st = path.stat()
    except FileNotFoundError:
        raise MediaError("no such file", path) from None
    except OSError as e:
        raise MediaError(f"cannot access the file: {describe_oserror(e)}", path) from None
    if path.is_dir():
        raise MediaError("is a directory, not an image", path)
    if st.st_size == 0:
        raise MediaError("empty file (0 bytes)", path)
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        raise MediaError(f"cannot read the file: {describe_oserror(e)}", path) from None


def _open_header(path: Path, max_pixels: int):
    """Open lazily (header only) and check the size. Returns an un-decoded ``PIL.Image``."""
    from PIL import Image, UnidentifiedImageError

    _check_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except Image.DecompressionBombError as e:
        raise MediaError(f"too large to decode safely ({e})", path) from None
    except UnidentifiedImageError:
        raise MediaError("unknown or corrupt image format", path) from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise MediaError(f"corrupt image header ({e})", path) from None
    w, h = img.size
    if w <= 0 or h <= 0:
        img.close()
        raise MediaError(f"invalid image size {w}x{h}", path)
    if w * h > max_pixels:
        img.close()
        raise MediaError(f"too large: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}", path)
    return img


def image_size(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) of an image after EXIF orientation, read from the header only."""
    path = Path(path)
    img = _open_header(path, max_pixels)
    try:
        w, h = img.size
        try:
            orient = int(img.getexif().get(0x0112, 1))
        except Exception:  # a broken EXIF block must not make the size unreadable
            orient = 1
        return (h, w) if orient in (5, 6, 7, 8) else (w, h)
    finally:
        img.close()


def to_rgb8(arr_or_img) -> np.ndarray:
    """Convert a ``PIL.Image`` (any mode) to (H, W, 3) uint8 RGB following the module's rules."""
    from PIL import Image

    img = arr_or_img
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8).copy()
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"), dtype=np.uint8).copy()
    if mode in ("L", "1"):
        g = np.asarray(img.convert("L"), dtype=np.uint8)
        return np.repeat(g[:, :, None], 3, axis=2)
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(img)
        if a.ndim == 3:  # some Pillow builds expose 16-bit RGB as (H, W, 3)
            a = a[..., :3]
        a = np.clip(a.astype(np.float64), 0, 65535)
        g = np.rint(a / 257.0).astype(np.uint8)
        return g if g.ndim == 3 else np.repeat(g[:, :, None], 3, axis=2)
    if mode == "F":
        a = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        hi = float(a.max()) if a.size else 0.0
        a = a * 255.0 if hi <= 1.0 else a / max(hi, 1e-12) * 255.0
        g = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return np.repeat(g[:, :, None], 3, axis=2)
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def read_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB, upright (EXIF applied), alpha composited on white.

    Raises ``MediaError`` (naming the file) for a missing, empty, truncated, corrupt, unknown-format or
    too-large (``> max_pixels`` pixels, checked from the header before decoding) file.
    """
    from PIL import ImageOps

    path = Path(path)
    img = _open_header(path, max_pixels)
    try:
        try:
            img.load()
        except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as e:
            raise MediaError(f"truncated or corrupt image data ({e})", path) from None
        try:
            img = ImageOps.exif_transpose(img)
        except Exception as e:  # malformed EXIF: keep the stored orientation, not a fatal error
            log.warning("%s: cannot apply EXIF orientation (%s); using the stored orientation", path, e)
        try:
            out = to_rgb8(img)
        except (ValueError, OSError) as e:
            raise MediaError(f"unsupported colour mode {img.mode!r} ({e})", path) from None
    finally:
        img.close()
    if out.ndim != 3 or out.shape[2] != 3 or out.dtype != np.uint8:  # defensive: should never happen
        raise MediaError(f"unsupported image layout {out.shape} {out.dtype}", path)
    return np.ascontiguousarray(out)


_PIL_FORMATS = {
    ".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF",
    ".webp": "WEBP",
}


def write_image(path: str | os.PathLike, rgb: np.ndarray, quality: int = 95) -> Path:
    """Write (H, W, 3) uint8 RGB (or (H, W) gray, or (H, W, 4) RGBA) atomically; format from the suffix
    (.png .jpg .jpeg .bmp .tif .tiff .webp). ``quality`` applies to JPEG / WebP. Returns the path."""
    from PIL import Image

    path = Path(path)
    fmt = _PIL_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise MediaError(f"unknown image format {path.suffix!r}; use one of {sorted(_PIL_FORMATS)}", path)
    a = np.asarray(rgb)
    if a.dtype != np.uint8:
        raise MediaError(f"image array must be uint8, got {a.dtype}", path)
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))) or a.shape[0] == 0 or a.shape[1] == 0:
        raise MediaError(f"image array must be (H, W), (H, W, 3) or (H, W, 4), got {a.shape}", path)
    if a.ndim == 3 and a.shape[2] == 4 and fmt in ("JPEG", "BMP"):
        a = a[..., :3]
    img = Image.fromarray(np.ascontiguousarray(a))
    kw = {"quality": int(quality)} if fmt in ("JPEG", "WEBP") else {}
    with atomic_path(path) as tmp:
        img.save(tmp, format=fmt, **kw)
    return path
