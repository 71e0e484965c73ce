"""Batch prediction past one process: shards (``--shard I/N``), local workers (``--workers K``), Ray Data.

All three run ``api.predict`` — the same per-input atomic batch layer, options and outputs as a plain run —
over a part of the inputs, and merge its results into the output folder and its run manifest
(``dpmesh-run.json``, ``io.run_manifest``), so a sharded, multi-worker or Ray run leaves the same files and
manifest entries as a plain run over the same inputs.

How a part runs: each part writes into a private folder ``OUT/.dpmesh-part-<run>-<k>/`` (its own lock,
manifest and staging: parts never contend), and the coordinating process moves an input's files into ``OUT``
and records the input in ``OUT/dpmesh-run.json`` as soon as the part reports the input complete. A killed
run leaves part folders behind; the next run of the same shard removes them and, with ``--resume``, redoes
only the inputs the manifest does not list as complete.

* ``select_shard(inputs, i, n)``: a deterministic split of the sorted inputs (input k goes to shard k mod n;
  a video is one input). Every shard must see the same input list (the same folder, or ``--manifest FILE``).
* Shards of one output folder run at the same time (a Slurm array, an indexed Kubernetes Job): each holds its
  own lock (``.dpmesh-run.shard-I-of-N.lock``) and updates only its inputs' manifest entries (the manifest
  merges per input on save). The run's overall ``status`` is left to a plain run / ``--workers`` run; a
  shard's entries carry ``"shard": "I/N"``.
* ``--workers K``: K processes on this machine, each with its own models, pinned round-robin to ``devices``
  (``cuda:0,cuda:1``) or sharing the CPU threads (torch threads = CPUs / K). The coordinating process holds
  the folder's run lock for all of them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import queue as _queue
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .errors import BatchError, DPMeshError, InputError, OutputError

log = logging.getLogger(__name__)

PART_PREFIX = ".dpmesh-part-"


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` → (I, N) with 0 ≤ I < N (``InputError`` otherwise)."""
    try:
        i, n = (int(x) for x in str(text).split("/"))
    except ValueError:
        raise InputError(f"--shard {text!r}: expected I/N, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise InputError(f"--shard {text!r}: needs 0 <= I < N")
    return i, n


def select_shard(inputs: Sequence[Path], index: int, count: int) -> list[Path]:
    """Shard ``index`` of ``count``: the inputs sorted by path, every ``count``-th from ``index``."""
    return sorted(inputs, key=lambda p: str(p))[index::count]


def read_input_list(path: str | os.PathLike) -> list[Path]:
    """The inputs a list file names: a ``dpmesh-run.json`` manifest (its inputs), or text with one path per
    line (``#`` comments and blank lines skipped; relative paths are relative to the file's folder)."""
    import json

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        from .errors import describe_oserror

        raise InputError(f"cannot read the input list: {describe_oserror(e)}", p) from None
    if p.suffix.lower() == ".json":
        try:
            names = list(json.loads(text)["inputs"])
        except (ValueError, KeyError, TypeError) as e:
            raise InputError(f"not a dpmesh run manifest ({e})", p) from None
    else:
        names = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not names:
        raise InputError("the input list names no input", p)
    return [q if q.is_absolute() else (p.parent / q) for q in map(Path, names)]


def collect_inputs(path: str | os.PathLike | Sequence[str | os.PathLike] | None,
                   input_list: str | os.PathLike | None = None) -> list[Path]:
    """The inputs of a batch: those of ``path`` (a media file, a folder of them, or a list of paths) and of
    an ``input_list`` file (``read_input_list``)."""
    from . import api

    out: list[Path] = []
    if path is not None:
        if isinstance(path, (list, tuple)):
            out += [Path(p) for p in path]
        else:
            out += api.list_inputs(path)
    if input_list is not None:
        out += read_input_list(input_list)
    if not out:
        raise InputError("no input: give a media file, a folder, or --manifest FILE")
    return out


def parse_devices(text: str | None) -> list[str]:
    """``"cuda:0,cuda:1"`` → ["cuda:0", "cuda:1"] (each checked like ``--device``)."""
    from . import api

    devs = [d.strip() for d in (text or "").split(",") if d.strip()]
    for d in devs:
        api.check_device(d)
    return devs


# ---------------------------------------------------------------------------------------------- merging


class _Merger:
    """Moves a part's finished inputs into the output folder and records them in its manifest."""

    def __init__(self, out: Path, manifest: Any, old_files: dict[str, list[str]], extra: dict[str, Any]):
        self.out, self.manifest, self.old_files, self.extra = out, manifest, old_files, extra
        self.moved: dict[str, list[Path]] = {}
        self.failures: dict[str, DPMeshError] = {}
        self.complete = self.files = 0

    def event(self, ev: dict[str, Any]) -> dict[str, Any] | None:
        """Handle one event of a part; returns the event to pass on (paths in the output folder) or None."""
        kind = ev.get("event")
        key = ev.get("input")
        if kind == "start" and key:
            self.manifest.set_input(key, "running", files=[], **self.extra)
        elif kind == "done" and key:
            final = []
            for f in ev.get("files", []):
                dest = self.out / Path(f).name
                os.replace(f, dest)
                final.append(dest)
            for old in self.old_files.get(key, ()):  # an earlier run's files of this input not written again
                if self.out / old not in final:
                    with contextlib.suppress(OSError):
                        (self.out / old).unlink()
            self.moved[key] = final
            self.files += len(final)
            self.complete += 1
            self.manifest.set_input(key, "complete", files=final, **self.extra)
            return {**ev, "files": [str(f) for f in final]}
        elif kind == "error" and key:
            err = DPMeshError(str(ev.get("message", "failed")))
            err.exit_code = int(ev.get("exit_code", 1))
            self.failures[key] = err
            if key in self.moved:  # kept frames of a truncated video: done, then failed
                self.complete -= 1
            self.manifest.set_input(key, "failed", files=self.moved.get(key, []), error=str(ev.get("message")),
                                    error_type=str(ev.get("type")), **self.extra)
        elif kind == "finished":
            return None
        return ev


def _part_options(opts: Any, device: str | None) -> Any:
    kw: dict[str, Any] = {"overwrite": False, "resume": False}
    if device:
        kw["device"] = device
    return dataclasses.replace(opts, **kw)


def iter_part(inputs: Sequence[Path], part_dir: Path, opts: Any, models: tuple | None = None
              ) -> Iterator[dict[str, Any]]:
    """``api.predict`` over ``inputs`` into the private folder ``part_dir`` (with ``models`` from
    ``api.build_models`` when given). Failures of single inputs come as error events (the BatchError /
    single-input error predict raises once it has finished is dropped: the coordinator tallies the error
    events); a failure of the whole part (the output folder...) raises."""
    from . import api

    finished = False
    try:
        for ev in api.predict(list(inputs), part_dir, opts, models=models):
            finished = finished or ev.get("event") == "finished"
            yield ev
    except OutputError:
        raise
    except DPMeshError as e:
        if finished:
            return
        if len(inputs) != 1:
            raise
        # predict raises a lone input's own error before its first event: that input failed, not the run
        yield {"event": "error", "input": str(inputs[0]), "type": type(e).__name__, "message": str(e),
               "exit_code": int(getattr(e, "exit_code", 1))}


def _worker_main(inputs: list[Path], part_dir: Path, opts: Any, threads: int | None, q: Any, wid: int) -> None:
    """Body of a ``--workers`` process (forked): events and the outcome go to ``q``."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the parent stops a worker with SIGTERM: no clean-up to do
    if threads:
        import torch

        torch.set_num_threads(threads)
    try:
        for ev in iter_part(inputs, part_dir, opts):
            q.put(("event", wid, ev))
        q.put(("end", wid, None))
    except DPMeshError as e:
        q.put(("raise", wid, (type(e).__name__, str(e), int(getattr(e, "exit_code", 1)))))
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which stops the run
        q.put(("raise", wid, (type(e).__name__, f"internal error in worker {wid}: {e}", 1)))


def _run_workers(groups: list[list[Path]], parts: list[Path], opts: Any, devices: list[str],
                 merger: _Merger) -> Iterator[dict[str, Any]]:
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    cpu_threads = None if devices else max(1, (os.cpu_count() or 1) // len(groups))
    procs = []
    for w, (group, part) in enumerate(zip(groups, parts)):
        dev = devices[w % len(devices)] if devices else None
        p = ctx.Process(target=_worker_main, args=(group, part, _part_options(opts, dev), cpu_threads, q, w),
                        daemon=True)
        p.start()
        procs.append(p)
    running = set(range(len(procs)))
    ok = False
    try:
        while running:
            try:
                kind, w, payload = q.get(timeout=1.0)
            except _queue.Empty:
                dead = [w for w in running if not procs[w].is_alive() and procs[w].exitcode not in (0, None)]
                if dead:
                    raise DPMeshError(f"worker {dead[0]} died (exit code {procs[dead[0]].exitcode})") from None
                continue
            if kind == "event":
                ev = merger.event(payload)
                if ev is not None:
                    yield {**ev, "worker": w}
            elif kind == "end":
                running.discard(w)
            else:
                name, message, code = payload
                cls = OutputError if name == "OutputError" else DPMeshError
                err = cls(message)
                err.exit_code = code
                raise err
        ok = True
    finally:
        for p in procs:  # workers that reported their end exit by themselves; the others are stopped
            p.join(timeout=60 if ok else 0.5)
            if p.is_alive():
                p.terminate()
                p.join(timeout=30)


# ------------------------------------------------------------------------------------------------- run


def predict_batch(path: str | os.PathLike | Sequence[str | os.PathLike] | None, out_dir: str | os.PathLike,
                  options: Any = None, *, shard: tuple[int, int] | None = None, workers: int = 1,
                  devices: Sequence[str] = (), input_list: str | os.PathLike | None = None,
                  runner: Callable[..., Iterator[dict[str, Any]]] | None = None) -> Iterator[dict[str, Any]]:
    """``api.predict`` over a shard of the inputs, in ``workers`` processes (see module docstring); events as
    ``api.predict`` (a worker's events carry ``"worker"``), ending with one ``finished`` event. Raises
    ``BatchError`` (exit code 2) when inputs failed, ``OutputError`` (4) for the output folder.

    ``runner(groups, parts, options, merger)``: runs the parts instead of local processes (the Ray path).
    """
    from . import api
    from .io.run_manifest import LOCK_NAME, OutputLock, RunManifest, remove_stale_staging

    opts = options or api.PredictOptions()
    opts.validate()
    api.check_device(opts.device)
    devices = list(devices)
    if workers < 1:
        raise InputError(f"--workers must be ≥ 1, got {workers}")
    inputs = collect_inputs(path, input_list)
    tag = "all"
    extra: dict[str, Any] = {}
    if shard is not None:
        i, n = shard
        inputs = select_shard(inputs, i, n)
        tag = f"s{i}of{n}"
        extra = {"shard": f"{i}/{n}"}
    out = api._prepare_output(Path(out_dir))
    if not inputs:
        yield {"event": "finished", "files": 0, "inputs": 0, "complete": 0, "skipped": 0, "failed": []}
        return
    lock_name = LOCK_NAME if shard is None else f".dpmesh-run.shard-{shard[0]}-of-{shard[1]}.lock"
    with OutputLock(out, lock_name=lock_name):
        for stale in out.glob(f"{PART_PREFIX}{tag}-*"):
            shutil.rmtree(stale, ignore_errors=True)
            yield {"event": "warning", "message": f"{out}: removed {stale.name} left by an interrupted run"}
        if shard is None:
            removed = remove_stale_staging(out)
            if removed:
                yield {"event": "warning", "message": f"{out}: removed {len(removed)} staging folder(s) left by "
                                                      "an interrupted run"}
        previous = RunManifest.load(out) if not opts.overwrite else _load_or_none(out)
        old_files = api._earlier_results(out, inputs, previous)
        if old_files and not (opts.overwrite or opts.resume):
            shown = ", ".join(sorted(old_files)[:3]) + (f", ... ({len(old_files)} inputs)" if len(old_files) > 3 else "")
            raise OutputError(f"already holds results of an earlier run ({shown}); use --overwrite to replace them, "
                              "--resume to skip the inputs it finished, or another output folder", out)
        keys = [str(p) for p in inputs]
        if shard is None or previous is None:
            manifest = RunManifest.create(out, keys, api._options_record(opts),
                                          previous=previous if not opts.overwrite else None)
        else:
            manifest = previous
        todo, skipped = [], 0
        for p in inputs:
            if opts.resume and manifest.is_complete(str(p)):
                skipped += 1
                yield {"event": "skipped", "input": str(p), "reason": "complete in the run manifest",
                       "files": [str(f) for f in manifest.files_of(str(p))]}
            else:
                todo.append(p)
                if shard is not None:
                    manifest.set_input(str(p), "pending", files=[], **extra)
        merger = _Merger(out, manifest, old_files, extra)
        k = max(1, min(workers, len(todo)))
        groups = [todo[w::k] for w in range(k)] if todo else []
        parts = [out / f"{PART_PREFIX}{tag}-{w}" for w in range(len(groups))]
        try:
            if not groups:
                pass
            elif runner is not None:
                yield from runner(groups, parts, opts, merger)
            elif len(groups) == 1:
                part_opts = _part_options(opts, devices[0] if devices else None)
                for ev in iter_part(groups[0], parts[0], part_opts):
                    ev2 = merger.event(ev)
                    if ev2 is not None:
                        yield ev2
            else:
                yield from _run_workers(groups, parts, opts, devices, merger)
        except (KeyboardInterrupt, GeneratorExit):
            if shard is None:
                with contextlib.suppress(DPMeshError):
                    manifest.finish("interrupted")
            raise
        finally:
            for p in parts:
                shutil.rmtree(p, ignore_errors=True)
        if shard is None:
            manifest.finish("failed" if merger.failures else "complete")
    yield {"event": "finished", "files": merger.files, "inputs": len(inputs), "complete": merger.complete,
           "skipped": skipped, "failed": [{"input": k, "type": type(e).__name__, "message": str(e)}
                                          for k, e in merger.failures.items()]}
    if merger.failures:
        raise BatchError(merger.failures)


def _load_or_none(out: Path) -> Any:
    from .io.run_manifest import RunManifest

    try:
        return RunManifest.load(out)
    except OutputError:
        return None
