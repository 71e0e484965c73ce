"""Atomic file writes: write a temporary file beside the target, fsync it, then ``os.replace``.

A failing write (exception inside the ``with`` block) removes the temporary file and leaves any previous
version of the target untouched, so there is never a partial file at ``path``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "atomic_path", "atomic_write_bytes", "atomic_write_text"]


def _tmp_name(path: Path) -> str:
    # Keep the suffix so writers that pick a format from it (OpenCV, trimesh) still work.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    return tmp


def _umask() -> int:
    """The process umask, read without changing it (os.umask would briefly alter process-wide state)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def _final_mode(path: Path) -> int:
    """Permissions the target should get: the existing file's, else what ``open()`` would give."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


def _fsync_dir(directory: Path) -> None:
    if os.name != "posix":
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, mkdir: bool = True) -> Iterator[Path]:
    """Yield a temporary path (same directory, same suffix) to write with any library; on success it is
    fsynced and moved onto ``path``; on an exception it is removed and ``path`` is left as it was."""
    path = Path(path)
    if mkdir:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(_tmp_name(path))
    try:
        yield tmp
        if not tmp.exists():
            raise OSError(f"{path}: the writer produced no file")
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if os.name == "posix":  # mkstemp creates 0600 files; give the result normal permissions
            os.chmod(tmp, _final_mode(path))
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike, mode: str = "wb", encoding: str | None = None, mkdir: bool = True
) -> Iterator[IO[Any]]:
    """Open a temporary file for writing (``mode`` "wb" or "w"/"wt"; text defaults to UTF-8), yield it,
    then fsync + ``os.replace`` it onto ``path``. On an exception the temporary file is removed."""
    if mode not in ("w", "wt", "wb"):
        raise ValueError(f"atomic_write: unsupported mode {mode!r} (use 'wb', 'w' or 'wt')")
    if "b" not in mode and encoding is None:
        encoding = "utf-8"
    with atomic_path(path, mkdir=mkdir) as tmp:
        with open(tmp, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_write(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; returns the path."""
    with atomic_write(path, "w", encoding=encoding) as f:
        f.write(text)
    return Path(path)
