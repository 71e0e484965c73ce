"""The run manifest, the lock and the staging folders of a ``dpmesh predict`` output folder.

Layout of an output folder::

    OUT/dpmesh-run.json          the run manifest (below), rewritten atomically after every input
    OUT/.dpmesh-run.lock         lock file: held (``fcntl`` lock, via the ``filelock`` package) while a run
                                 writes the folder; the kernel releases it when the process dies, so a
                                 killed run never leaves a stale lock behind (``.dpmesh-run.pid`` names
                                 the holder, for the error message)
    OUT/.dpmesh-manifest.lock    short lock around each manifest update
    OUT/.dpmesh-staging-XXXX/    one input's outputs while they are being written (moved into OUT when the
                                 input completes); left only by a killed run, removed by the next run
    OUT/...                      the result files, named by ``dpmesh_core.io.mesh_export.mesh_filename``

Manifest (JSON, ``"format": "dpmesh-run", "version": 1``)::

    {"format": "dpmesh-run", "version": 1,
     "created": ISO time, "updated": ISO time,
     "status": "running" | "complete" | "failed" | "interrupted",
     "versions": {"dpmesh": ..., "python": ..., "torch": ..., "numpy": ...},
     "options": {... the PredictOptions that shape the results ...},
     "inputs": {INPUT_PATH: {"status": STATUS, "files": [NAME, ...], "error": str | null,
                             "error_type": str | null, "started": ISO | null, "finished": ISO | null,
                             "shard": ... (free for callers)}, ...}}

Per-input ``status``: ``pending`` (not started), ``running``, ``complete`` (every file listed in ``files``
was moved into the folder), ``failed`` (``error`` says why; the input left no file), ``interrupted`` (Ctrl-C
or SIGTERM while it ran; it left no file). ``files`` are names relative to the output folder.

API (used by ``dpmesh_core.api.predict``; meant for batch drivers such as sharded / multi-worker runs too):

* ``OutputLock(out_dir)`` — context manager; raises ``OutputError`` (exit code 4) at once when another
  process holds the folder. ``lock_name`` lets cooperating workers use their own lock.
* ``remove_stale_staging(out_dir)`` — remove ``.dpmesh-staging-*`` folders (call it while holding the lock).
* ``RunManifest.load(out_dir)`` (None when absent) / ``RunManifest.create(out_dir, inputs, options)``.
* ``manifest.set_input(path, status, files=..., error=...)`` — update one input and save atomically. Saves
  re-read the file under a short lock (``.dpmesh-manifest.lock``) and merge per input, so several processes
  (workers of one run, each updating its own inputs) can share one manifest.
* ``manifest.is_complete(path)`` — status ``complete`` and every listed file still exists (``--resume``).
* ``manifest.finish(status)`` — the run's overall status.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import OutputError
from .atomic import atomic_write_text

__all__ = [
    "MANIFEST_NAME", "LOCK_NAME", "STAGING_PREFIX", "INPUT_STATUSES", "RunManifest", "OutputLock",
    "remove_stale_staging", "versions",
]

MANIFEST_NAME = "dpmesh-run.json"
LOCK_NAME = ".dpmesh-run.lock"
MANIFEST_LOCK_NAME = ".dpmesh-manifest.lock"
STAGING_PREFIX = ".dpmesh-staging-"
FORMAT = "dpmesh-run"
VERSION = 1
INPUT_STATUSES = ("pending", "running", "complete", "failed", "interrupted")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def versions() -> dict[str, str]:
    """Versions that shape the results: dpmesh, Python, and torch/numpy when importable."""
    from .. import __version__

    out = {"dpmesh": __version__, "python": platform.python_version()}
    for mod in ("numpy", "torch"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a missing module is simply not listed
            pass
    return out


class OutputLock:
    """Exclusive right to write an output folder, for one process (``with OutputLock(out): ...``).

    Acquiring never waits: when another live process holds the folder, ``OutputError`` names the folder and
    that process' id. The lock is an ``fcntl`` lock (``filelock.FileLock``), released by the kernel when its
    process exits or is killed, so the lock file a dead run leaves behind does not block the next run.
    """

    def __init__(self, out_dir: str | os.PathLike, lock_name: str = LOCK_NAME):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / lock_name
        self._lock = None

    def acquire(self) -> OutputLock:
        import filelock

        lock = filelock.FileLock(str(self.path), timeout=0)
        try:
            lock.acquire()
        except filelock.Timeout:
            holder = ""
            try:
                holder = self.path.with_suffix(".pid").read_text().strip()
            except OSError:
                pass
            who = f" (process {holder})" if holder else ""
            raise OutputError(f"another dpmesh run{who} is writing to this folder; wait for it to finish or "
                              "choose another output folder", self.out_dir) from None
        except OSError as e:
            raise OutputError.from_oserror(e, self.out_dir, "cannot lock the output folder") from None
        self._lock = lock
        try:
            self.path.with_suffix(".pid").write_text(str(os.getpid()))
        except OSError:
            pass
        return self

    def release(self) -> None:
        if self._lock is not None:
            try:
                self.path.with_suffix(".pid").unlink(missing_ok=True)
            except OSError:
                pass
            self._lock.release()
            self._lock = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def remove_stale_staging(out_dir: str | os.PathLike) -> list[Path]:
    """Remove every ``.dpmesh-staging-*`` folder in ``out_dir`` (left by killed runs); returns those removed.
    Call it only while holding ``OutputLock``: then no live run owns any of them."""
    out = Path(out_dir)
    removed = []
    try:
        entries = list(out.iterdir())
    except OSError:
        return removed
    for p in entries:
        if p.name.startswith(STAGING_PREFIX) and p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


class RunManifest:
    """``dpmesh-run.json`` of one output folder (see the module doc). ``data`` is the JSON document."""

    def __init__(self, out_dir: str | os.PathLike, data: dict[str, Any]):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / MANIFEST_NAME
        self.data = data

    # ------------------------------------------------------------------ construction

    @classmethod
    def load(cls, out_dir: str | os.PathLike) -> RunManifest | None:
        """The folder's manifest, or None when there is none. A manifest that cannot be parsed raises
        ``OutputError`` naming it (it is not silently replaced: the folder holds someone's results)."""
        path = Path(out_dir) / MANIFEST_NAME
        data = cls._read(path)
        return None if data is None else cls(out_dir, data)

    @staticmethod
    def _read(path: Path) -> dict[str, Any] | None:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as e:
            raise OutputError.from_oserror(e, path, "cannot read the run manifest") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise OutputError(f"damaged run manifest ({e.msg} at line {e.lineno}); move it away or use "
                              "--overwrite", path) from None
        if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("inputs"), dict):
            raise OutputError("not a dpmesh run manifest; move it away or use --overwrite", path)
        if int(data.get("version", 0)) > VERSION:
            raise OutputError(f"run manifest of a newer dpmesh (version {data.get('version')})", path)
        return data

    @classmethod
    def create(cls, out_dir: str | os.PathLike, inputs: Iterable[str | os.PathLike],
               options: Mapping[str, Any], previous: RunManifest | None = None) -> RunManifest:
        """A new manifest listing ``inputs`` as pending (entries of ``previous`` are carried over for inputs
        this run does not list, and as the starting state of those it does), saved at once."""
        now = _now()
        entries: dict[str, Any] = {}
        if previous is not None:
            entries.update({k: dict(v) for k, v in previous.data["inputs"].items()})
        for p in inputs:
            key = str(p)
            entries.setdefault(key, {"status": "pending", "files": [], "error": None, "error_type": None,
                                     "started": None, "finished": None})
        data = {"format": FORMAT, "version": VERSION, "created": now, "updated": now, "status": "running",
                "versions": versions(), "options": dict(options), "inputs": entries}
        m = cls(out_dir, data)
        m.save()
        return m

    # ------------------------------------------------------------------ queries

    def entry(self, input_path: str | os.PathLike) -> dict[str, Any] | None:
        return self.data["inputs"].get(str(input_path))

    def files_of(self, input_path: str | os.PathLike) -> list[Path]:
        e = self.entry(input_path)
        return [self.out_dir / f for f in (e or {}).get("files", [])]

    def is_complete(self, input_path: str | os.PathLike) -> bool:
        """True when the input's status is ``complete`` and every file it lists still exists."""
        e = self.entry(input_path)
        return bool(e) and e.get("status") == "complete" and all(f.is_file() for f in self.files_of(input_path))

    def all_files(self) -> set[str]:
        return {f for e in self.data["inputs"].values() for f in e.get("files", [])}

    # ------------------------------------------------------------------ updates

    def set_input(self, input_path: str | os.PathLike, status: str, files: Iterable[str | os.PathLike] | None = None,
                  error: str | None = None, error_type: str | None = None, **extra: Any) -> None:
        """Set one input's status (and its files: names or paths inside the folder; error text) and save."""
        if status not in INPUT_STATUSES:
            raise ValueError(f"unknown input status {status!r}")
        key = str(input_path)
        e = dict(self.data["inputs"].get(key) or {"files": [], "started": None, "finished": None})
        e["status"] = status
        if files is not None:
            e["files"] = [Path(f).name if Path(f).is_absolute() else str(f) for f in files]
        e["error"] = error
        e["error_type"] = error_type
        if status == "running":
            e["started"], e["finished"] = _now(), None
        elif status != "pending":
            e["finished"] = _now()
        e.update(extra)
        self.data["inputs"][key] = e
        self.save(only=[key])

    def finish(self, status: str) -> None:
        """Set the run's overall status ("complete", "failed" or "interrupted") and save."""
        self.data["status"] = status
        self.save()

    def save(self, only: Iterable[str] | None = None) -> None:
        """Write the manifest atomically. With ``only``, re-read the file first (under a short lock) and
        replace just those inputs' entries, so concurrent writers of other inputs are not overwritten."""
        import filelock

        self.data["updated"] = _now()
        try:
            with filelock.FileLock(str(self.out_dir / MANIFEST_LOCK_NAME), timeout=30):
                if only is not None:
                    disk = self._read(self.path)
                    if disk is not None:
                        merged = dict(disk["inputs"])
                        for k in only:
                            merged[k] = self.data["inputs"][k]
                        self.data["inputs"] = {**self.data["inputs"], **merged}
                atomic_write_text(self.path, json.dumps(self.data, indent=1, default=str) + "\n")
        except filelock.Timeout:
            raise OutputError("the run manifest stayed locked for 30 s", self.path) from None
        except OSError as e:
            raise OutputError.from_oserror(e, self.path, "cannot write the run manifest") from None
