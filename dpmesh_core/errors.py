"""One error hierarchy for the whole project.

Every error a user can cause (a bad file, a bad config, missing model files) is a ``DPMeshError``;
the CLI turns them into a one-line message and a non-zero exit code, the app into a dialog.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from os import PathLike


class DPMeshError(Exception):
    """Base class of every error raised on purpose by dpmesh_core.

    Pickles faithfully (same class, same message, same attributes), although subclasses build their
    message in ``__init__``: errors cross process boundaries (the app's inference process).
    """

    exit_code = 1

    def __reduce__(self) -> tuple:
        return _rebuild_error, (type(self), self.args, dict(self.__dict__))


def _rebuild_error(cls: type, args: tuple, state: dict) -> DPMeshError:
    """Unpickle a ``DPMeshError`` without calling its ``__init__`` (which would format the message again)."""
    err = cls.__new__(cls)
    Exception.__init__(err, *args)
    err.__dict__.update(state)
    return err


class InputError(DPMeshError, ValueError):
    """A user-supplied input (file, array, argument) is unusable.

    ``path`` names the offending file when there is one.
    """

    exit_code = 2

    def __init__(self, message: str, path: str | PathLike | None = None):
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)


class MediaError(InputError):
    """An image or video cannot be read (missing, corrupt, truncated, unknown format, too large)."""


class TruncatedMediaError(MediaError):
    """A video ended early (truncated or corrupt): the frames decoded before the break were processed and their
    outputs kept; raised once those are written, so the run still ends with exit code 2."""


class KeypointFileError(InputError):
    """A key-point file is malformed (unknown format, NaN, wrong joint count, negative confidence...)."""


class ProjectFileError(InputError):
    """A project file is corrupt, or from a newer format version."""


class ConfigError(DPMeshError, ValueError):
    """A configuration has an unknown key or a bad value. ``key`` names it (dotted path)."""

    exit_code = 2

    def __init__(self, message: str, key: str | None = None, source: str | None = None):
        self.key = key
        self.source = source
        where = " ".join(p for p in (source and f"{source}:", key and f"[{key}]") if p)
        super().__init__(f"{where} {message}".strip())


class ModelFilesMissingError(DPMeshError, FileNotFoundError):
    """A model file the user must provide (or a package that carries one) is missing.

    Names the file, where it was looked for, and how to get it.
    """

    exit_code = 3

    def __init__(self, what: str, searched: Iterable[str] = (), how_to_get: str = ""):
        self.what = what
        self.searched = [str(s) for s in searched]
        self.how_to_get = how_to_get
        msg = f"missing model file: {what}"
        if self.searched:
            msg += "; looked in: " + ", ".join(self.searched)
        if how_to_get:
            msg += f". {how_to_get}"
        super().__init__(msg)


class CheckpointMismatchError(DPMeshError):
    """A checkpoint does not match the architecture: lists missing, unexpected and mis-shaped keys."""

    exit_code = 3

    def __init__(
        self,
        path: str | PathLike | None,
        missing: Sequence[str] = (),
        unexpected: Sequence[str] = (),
        shape_mismatch: Sequence[str] = (),
        note: str = "",
    ):
        self.path = None if path is None else str(path)
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.shape_mismatch = list(shape_mismatch)

        def _fmt(name: str, keys: list[str]) -> str:
            if not keys:
                return ""
            shown = ", ".join(keys[:12]) + (f", ... ({len(keys)} in all)" if len(keys) > 12 else "")
            return f"\n  {name} ({len(keys)}): {shown}"

        msg = f"{self.path or 'checkpoint'}: does not match the architecture"
        if note:
            msg += f" ({note})"
        msg += _fmt("missing keys", self.missing)
        msg += _fmt("unexpected keys", self.unexpected)
        msg += _fmt("wrong shapes", self.shape_mismatch)
        super().__init__(msg)


class UnsafeFileError(InputError):
    """A pickle-based file asked for something a restricted unpickler refuses (possible code execution)."""


class EstimationError(DPMeshError):
    """Mesh recovery failed for one person (e.g. fewer than 2 visible joints); others are unaffected."""

    def __init__(self, message: str, person_index: int | None = None):
        self.person_index = person_index
        super().__init__(f"person {person_index}: {message}" if person_index is not None else message)


class Cancelled(DPMeshError):
    """A long job was cancelled by the user."""


def _errno_name(e: OSError) -> str:
    import errno as _errno

    return _errno.errorcode.get(e.errno or 0, "") if e.errno else ""


def describe_oserror(e: OSError) -> str:
    """``"permission denied (EACCES)"``: an ``OSError``'s cause in words, with its errno name."""
    import errno as _errno

    words = {_errno.ELOOP: "symbolic link loop", _errno.EACCES: "permission denied",
             _errno.EPERM: "operation not permitted", _errno.ENOSPC: "no space left on the device",
             _errno.EROFS: "read-only file system", _errno.EEXIST: "exists and is not a folder",
             _errno.ENOTDIR: "a path component is not a folder", _errno.ENOENT: "no such file or folder",
             _errno.EDQUOT: "disk quota exceeded", _errno.EFBIG: "file too large",
             _errno.ENAMETOOLONG: "name too long", _errno.EISDIR: "is a folder"}
    text = words.get(e.errno or 0) or (e.strerror or str(e)).lower()
    name = _errno_name(e)
    return f"{text} ({name})" if name else text


class OutputError(DPMeshError):
    """The output cannot be written: the output path is a file, read-only, full, locked by another run, or
    holds results of an earlier run (``--overwrite`` / ``--resume``). ``path`` names it."""

    exit_code = 4

    def __init__(self, message: str, path: str | PathLike | None = None):
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)

    @classmethod
    def from_oserror(cls, e: OSError, path: str | PathLike | None = None, what: str = "") -> OutputError:
        """``OutputError("PATH: WHAT: CAUSE (ERRNO)")`` from an ``OSError`` (its own file name if it has one)."""
        where = e.filename if e.filename else path
        return cls(f"{what}: {describe_oserror(e)}" if what else describe_oserror(e), where)


class Interrupted(DPMeshError):
    """The run was interrupted (Ctrl-C or SIGTERM): exit code 130."""

    exit_code = 130


class BatchError(InputError):
    """Some inputs of a batch failed (each listed in ``failures``: {input: error}); the others completed.
    Exit code 2."""

    def __init__(self, failures: dict):
        self.failures = dict(failures)
        first = next(iter(self.failures.values()), None)
        more = f" (and {len(self.failures) - 1} more)" if len(self.failures) > 1 else ""
        super().__init__(f"{len(self.failures)} input(s) failed: {first}{more}")
