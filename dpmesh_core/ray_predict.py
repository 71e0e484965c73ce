"""``dpmesh predict --ray``: batch prediction on Ray Data (optional extra: ``pip install 'dpmesh-studio[ray]'``).

The inputs (a folder, ``--manifest FILE``, a shard of them) become a Ray dataset of paths; ``map_batches`` runs
them through a pool of stateful actors (``PredictActor``: the detector and the estimator are built once per
actor; a fixed pool of ``--workers`` actors — ``compute=ActorPoolStrategy(size=K)``, what Ray ≥ 2.51 asks for
instead of ``concurrency=K`` —, ``num_gpus`` = ``--ray-gpus`` per actor). Each actor runs
``api.predict`` — the same per-input batch layer as a plain run — on its batches, into its own private folder
under the output folder; the driver (``dpmesh_core.batch.predict_batch``) moves every finished input's
files into the output folder and records it in ``dpmesh-run.json``, so the outputs and the manifest are those
of a plain run. On a cluster the output folder must be on a file system every node sees.
"""

from __future__ import annotations

import dataclasses
import json
import math
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .errors import DPMeshError, InputError


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401 - the Data library is part of the extra
    except ImportError as e:
        raise InputError(f"--ray needs Ray Data: pip install 'dpmesh-studio[ray]' ({e})") from None
    return ray


class PredictActor:
    """A Ray Data actor: models built once, then ``api.predict`` per batch of input paths. Returns one row per
    input with that input's events (JSON); events of the whole call go with the batch's first input."""

    def __init__(self, options: Any, parts_root: str, detect: bool):
        from . import api

        self.opts = options
        self.models = api.build_models(options, detect=detect)
        self.root = Path(parts_root) / f"ray-{uuid.uuid4().hex[:12]}"
        self.calls = 0

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        from .batch import iter_part

        paths = [str(p) for p in batch["path"]]
        part = self.root / f"b{self.calls:06d}"
        self.calls += 1
        rows: dict[str, list[dict[str, Any]]] = {p: [] for p in paths}
        try:
            for ev in iter_part(paths, part, self.opts, models=self.models):
                rows.get(str(ev.get("input")), rows[paths[0]]).append(ev)
        except DPMeshError as e:  # the whole call failed (the output folder...): report, the driver stops
            rows[paths[0]].append({"event": "fatal", "type": type(e).__name__, "message": str(e),
                                   "exit_code": int(getattr(e, "exit_code", 1))})
        return {"path": paths, "events": [json.dumps(rows[p], default=str) for p in paths]}


def runner(address: str | None = None, num_gpus: float = 0.0, batch_size: int = 1,
           init_kwargs: dict[str, Any] | None = None) -> Callable[..., Iterator[dict[str, Any]]]:
    """A ``predict_batch`` runner that runs the parts' inputs on Ray Data (see module docstring).

    ``address``: a Ray cluster (None: the running Ray, else a local one); ``num_gpus``: per actor;
    ``batch_size``: inputs per actor call; ``init_kwargs``: more ``ray.init`` arguments (``num_cpus``...).
    """
    ray = _import_ray()

    def run(groups: list[list[Path]], parts: list[Path], opts: Any, merger: Any) -> Iterator[dict[str, Any]]:
        started = False
        if not ray.is_initialized():
            ray.init(address=address, **(init_kwargs or {}))
            started = True
        try:
            paths = [str(p) for g in groups for p in g]
            actors = max(1, len(groups))
            clean = dataclasses.replace(opts, progress=None)  # shipped to the actors: no local callbacks
            ds = ray.data.from_items([{"path": p} for p in paths])
            ds = ds.map_batches(
                PredictActor, batch_size=max(1, min(batch_size, math.ceil(len(paths) / actors))),
                batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=actors), num_gpus=num_gpus or None,
                fn_constructor_kwargs={"options": clean, "parts_root": str(parts[0]),
                                       "detect": opts.keypoints is None})
            for row in ds.iter_rows():
                for ev in json.loads(row["events"]):
                    if ev.get("event") == "fatal":
                        err = DPMeshError(ev["message"])
                        err.exit_code = int(ev.get("exit_code", 1))
                        raise err
                    out = merger.event(ev)
                    if out is not None:
                        yield out
        finally:
            if started:
                ray.shutdown()

    return run
