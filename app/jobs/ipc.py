"""The app's worker processes and their sockets (no Qt): starting a server process, ending it, images sent
once then named by token, and exceptions made safe to unpickle in the app process.

A worker process is ``python -m app.jobs --inference-server FD`` / ``--render-server FD``: a fresh
interpreter (nothing of the parent, e.g. a script's main module, runs again) connected through one end of a
socket pair (``multiprocessing.connection.Connection``: pickled messages).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import pickle
import subprocess
import sys
import weakref
from typing import Any

from dpmesh_core.errors import DPMeshError

log = logging.getLogger(__name__)

IMAGE_SLOTS = 4  # images the inference process keeps (by token) so that an edit does not send its image again


class InferenceProcessError(DPMeshError):
    """The inference process stopped (crashed, was killed) or cannot be started; the next job starts it
    again."""


class RemoteError(DPMeshError):
    """An unexpected error (not a ``DPMeshError``) raised in the inference process, as ``"Type: message"``
    (what the in-thread worker shows); the traceback is in the process's log (stderr)."""


class ConnectionLost(Exception):
    """The other end of a worker socket went away."""


_PORTABLE_MODULES = ("builtins", "dpmesh_core.errors", __name__)


def portable(e: BaseException) -> BaseException:
    """``e`` if the app process can unpickle it without importing anything heavy (torch), else the
    nearest equivalent with the same message: the closest ``dpmesh_core.errors`` class, or RemoteError."""
    cls = type(e)
    if cls.__module__ in _PORTABLE_MODULES:
        try:
            pickle.loads(pickle.dumps(e))
            return e
        except Exception:  # noqa: BLE001 - not faithfully picklable: fall through
            pass
    if isinstance(e, DPMeshError):
        for base in cls.__mro__:
            if base.__module__ == "dpmesh_core.errors":
                out = base.__new__(base)
                Exception.__init__(out, str(e))
                return out
    return RemoteError(f"{cls.__name__}: {e}")


def portable_value(v: Any, depth: int = 4) -> Any:
    """``v`` with the exceptions inside (plain lists, tuples, dicts and the protocol's reply dataclasses,
    a few levels) made portable."""
    import dataclasses

    if isinstance(v, BaseException):
        return portable(v)
    if depth <= 0:
        return v
    if type(v) in (list, tuple):
        return type(v)(portable_value(x, depth - 1) for x in v)
    if type(v) is dict:
        return {k: portable_value(x, depth - 1) for k, x in v.items()}
    if dataclasses.is_dataclass(v) and type(v).__module__ == "app.jobs.protocol":
        return dataclasses.replace(v, **{f.name: portable_value(getattr(v, f.name), depth - 1)
                                         for f in dataclasses.fields(v)})
    return v


class ImageRef:
    """An image in a request: its pixels the first time (``data``), then only its token."""

    __slots__ = ("token", "data")

    def __init__(self, token: int, data: Any = None):
        self.token, self.data = token, data

    def __getstate__(self) -> tuple:
        return self.token, self.data

    def __setstate__(self, state: tuple) -> None:
        self.token, self.data = state


class ImageSlots:
    """The process's side: the last ``size`` images (or other arrays) by token (least recently used goes
    first)."""

    def __init__(self, size: int = IMAGE_SLOTS) -> None:
        self.size = size
        self.images: collections.OrderedDict[int, Any] = collections.OrderedDict()

    def resolve(self, ref: ImageRef) -> Any:
        if ref.data is not None:
            if ref.token:
                self.images[ref.token] = ref.data
                while len(self.images) > self.size:
                    self.images.popitem(last=False)
            return ref.data
        self.images.move_to_end(ref.token)  # KeyError: the client lost track (a bug): reported as an error
        return self.images[ref.token]


class ImageMirror:
    """The client's side of ``ImageSlots``: which images (or other arrays, by identity, held weakly) the
    process has. The app never changes an image or a result's array in place (a new frame or a new fit
    makes new arrays), so identity is enough."""

    def __init__(self, size: int = IMAGE_SLOTS) -> None:
        self.size = size
        self.refs: collections.OrderedDict[int, Any] = collections.OrderedDict()
        self._next = 1

    def ref(self, image: Any) -> ImageRef:
        for token, w in self.refs.items():
            if w() is image:
                self.refs.move_to_end(token)
                return ImageRef(token)
        try:
            w = weakref.ref(image)
        except TypeError:
            return ImageRef(0, image)  # token 0: used once, not kept
        token, self._next = self._next, self._next + 1
        self.refs[token] = w
        while len(self.refs) > self.size:
            self.refs.popitem(last=False)
        return ImageRef(token, image)

    def clear(self) -> None:
        self.refs.clear()


#: pictures at least this large come back from a render process through a shared file, not the socket
SHARED_PICTURE_BYTES = 256 * 1024


class PictureRef:
    """A picture in a reply, left in a file in shared memory (``SharedPictures``): its path, shape, dtype."""

    __slots__ = ("path", "shape", "dtype")

    def __init__(self, path: str, shape: tuple[int, ...], dtype: str):
        self.path, self.shape, self.dtype = path, tuple(shape), dtype

    def __getstate__(self) -> tuple:
        return self.path, self.shape, self.dtype

    def __setstate__(self, state: tuple) -> None:
        self.path, self.shape, self.dtype = state


def _shared_dir() -> str:
    import tempfile

    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()


class SharedPictures:
    """The render process's side: its large replies (a 1280x720 3-D view is 2.7 MB) are written into a file in
    shared memory, one per shape, and only a ``PictureRef`` goes through the socket. Pickling 2.7 MB through
    the socket pair costs 8-10 ms; the client's copy out of the mapped file under 1 ms. One client per
    process, which copies a picture out before it sends its next request, so one file per shape suffices.
    Files of render processes that died without removing theirs are removed at start."""

    PREFIX = "dpmesh-picture-"

    def __init__(self) -> None:
        self.dir = _shared_dir()
        self.files: dict[tuple, tuple[str, Any]] = {}
        try:
            names = os.listdir(self.dir)
        except OSError:
            names = []
        for name in names:
            if name.startswith(self.PREFIX):
                try:
                    pid = int(name[len(self.PREFIX):].split("-")[0])
                    os.kill(pid, 0)
                except ProcessLookupError:
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(self.dir, name))
                except (ValueError, PermissionError):
                    pass

    def put(self, picture: Any) -> Any:
        """``picture`` itself when small (or not an array), else a ``PictureRef`` to a shared copy of it."""
        import numpy as np

        if not isinstance(picture, np.ndarray) or picture.nbytes < SHARED_PICTURE_BYTES:
            return picture
        key = (picture.shape, picture.dtype.str)
        slot = self.files.get(key)
        try:
            if slot is None:
                path = os.path.join(self.dir, f"{self.PREFIX}{os.getpid()}-{len(self.files)}")
                slot = self.files[key] = (path, np.memmap(path, picture.dtype, "w+", shape=picture.shape))
            slot[1][...] = picture
        except (OSError, ValueError) as e:  # no room in shared memory (or no such file system): the socket
            log.warning("picture sent through the socket: shared memory unavailable (%s)", e)
            return picture
        return PictureRef(slot[0], picture.shape, picture.dtype.str)

    def close(self) -> None:
        for path, _ in self.files.values():
            with contextlib.suppress(OSError):
                os.unlink(path)  # (the mapping itself goes with the dict)
        self.files.clear()


class SharedPicturesReader:
    """The client's side of ``SharedPictures``: the picture a ``PictureRef`` names, copied out of its file
    (the process writes the next picture of that shape into the same file)."""

    def __init__(self) -> None:
        self.maps: dict[str, tuple[tuple, str, Any]] = {}

    def get(self, ref: Any) -> Any:
        import numpy as np

        if not isinstance(ref, PictureRef):
            return ref
        kept = self.maps.get(ref.path)
        if kept is None or kept[0] != ref.shape or kept[1] != ref.dtype:
            kept = self.maps[ref.path] = (ref.shape, ref.dtype, np.memmap(ref.path, np.dtype(ref.dtype), "r",
                                                                          shape=ref.shape))
        return np.array(kept[2])

    def clear(self) -> None:
        self.maps.clear()


def spawn_server(flag: str, nice: int = 0) -> tuple[Any, Any]:
    """Start ``python -m app.jobs FLAG FD`` connected through a socket pair. Returns (Popen, Connection).

    ``nice``: run it that much below this process's priority (POSIX niceness, set right after the start,
    before the child has any thread of its own, so the threads it starts later — llvmpipe's — inherit it).
    Work the user is not waiting for (the 3-D view) then yields the 2 cores to what they are (a drag's fit
    and overlay) instead of sharing them, and still runs at full speed when nothing else does."""
    import socket
    from multiprocessing.connection import Connection

    if os.name != "posix":
        raise OSError("the worker processes need a POSIX socket pair here")
    ours, theirs = socket.socketpair()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.jobs", flag, str(theirs.fileno())],
            pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            cwd=os.getcwd())
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    if nice:
        try:
            os.setpriority(os.PRIO_PROCESS, proc.pid, os.getpriority(os.PRIO_PROCESS, 0) + int(nice))
        except OSError as e:  # not allowed here: it runs at our priority
            log.info("could not lower the priority of %s (%s)", flag, e)
    return proc, Connection(ours.detach())


def end_server(proc: Any, conn: Any, wait_s: float) -> None:
    """Ask a server process to end (a ``None`` message), wait ``wait_s``, then kill it if it has not."""
    try:
        conn.send(None)
    except (OSError, BrokenPipeError):
        pass
    try:
        proc.wait(wait_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(2)
