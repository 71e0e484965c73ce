"""YOLO11n-pose through onnxruntime: our own torch network (:mod:`.yolo_net`), exported once with
``torch.onnx.export`` into the user's cache, then run by onnxruntime's CPU provider.

Why: on this project's 2-core CPUs our torch module (BN folded, channels-last, conv+SiLU as one oneDNN call)
is about as fast as onnxruntime with 1 thread but gains little from a second thread, where onnxruntime runs
the same network about twice as fast (issue 16: 62.5 vs 32.1 ms). ``tests/bench/bench_detect.py --profile``
shows where torch's time goes: about three quarters in oneDNN's fused convolutions, the rest mostly in
separate memory-bound passes between them (channels-last ``cat`` ~10 %, ``copy_``/``contiguous``, ``add``,
up-sampling, the un-fused head convolutions), each a dispatch and a parallel region of its own, which
onnxruntime fuses or runs inside its blocked-layout kernels. The exported graph is the same module and the
same weights, so outputs agree with the torch path to float rounding (``tests/core/test_detect_yolo_parity.py``
holds both to the reference).

* The file: ``cache_dir("detect") / yolo11n-pose-<digest>-<imgsz>.onnx``; the digest covers the weights
  file, this network's source, the torch version and the opset, so any change re-exports. Written
  atomically; a file onnxruntime cannot load is exported again once.
* The graph is exported for one 1 x 3 x imgsz x imgsz image, static shapes (a dynamic batch axis made
  onnxruntime about 15 % slower with 2 threads here); a batch runs image by image (on the CPU batching
  gains nothing).
* Threads follow torch's setting (``torch.get_num_threads()`` when a call is made): one session per count,
  created on first use and cached per process.
* Anything missing or failing (the ``onnx`` / ``onnxruntime`` packages, the export) -> :func:`make_runner`
  returns None with the reason logged, and the detector runs the torch network.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

OPSET = 17
_lock = threading.RLock()


def _digest() -> str:
    import torch

    from . import yolo_net
    from .yolo_weights import find_yolo_pose_weights

    h = hashlib.sha256()
    h.update(Path(find_yolo_pose_weights()).read_bytes())
    h.update(Path(yolo_net.__file__).read_bytes())
    h.update(f"torch {torch.__version__} opset {OPSET} static-batch-1".encode())
    return h.hexdigest()[:16]


def onnx_path(imgsz: int = 640) -> Path:
    """Where the exported network for ``imgsz`` lives (the file may not exist yet)."""
    from ..paths import cache_dir

    return cache_dir("detect") / f"yolo11n-pose-{_digest()}-{int(imgsz)}.onnx"


def export_onnx(path: Path, imgsz: int = 640) -> Path:
    """Export our fused torch network (fp32, NCHW, plain ops) to ``path`` atomically. Returns ``path``."""
    import torch

    from .yolo_net import build_from_checkpoint
    from .yolo_weights import read_yolo_checkpoint

    net = build_from_checkpoint(read_yolo_checkpoint()).fuse().eval()
    x = torch.zeros(1, 3, imgsz, imgsz)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (x,), str(tmp), dynamo=False, opset_version=OPSET, input_names=["images"],
                              output_names=["output0"])
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


class OrtYoloRunner:
    """Callable: (B, 3, S, S) float32 RGB in [0, 1] -> (B, 56, A) float32, like ``YoloPoseNet.forward``."""

    def __init__(self, path: Path):
        import onnxruntime as ort

        self.path = Path(path)
        self._ort = ort
        self._sessions: dict[int, Any] = {}
        self.session(1)  # load now, so a broken file is found here

    def session(self, threads: int) -> Any:
        """The onnxruntime session with ``threads`` intra-op threads (created once; thread-safe)."""
        s = self._sessions.get(threads)
        if s is None:
            with _lock:
                s = self._sessions.get(threads)
                if s is None:
                    so = self._ort.SessionOptions()
                    so.intra_op_num_threads = int(threads)
                    s = self._ort.InferenceSession(str(self.path), so, providers=["CPUExecutionProvider"])
                    self._sessions[threads] = s
        return s

    def __call__(self, x: np.ndarray) -> np.ndarray:
        import torch

        s = self.session(max(1, torch.get_num_threads()))
        if x.shape[0] == 1:
            return s.run(None, {"images": x})[0]
        return np.concatenate([s.run(None, {"images": x[i : i + 1]})[0] for i in range(x.shape[0])], 0)


@functools.lru_cache(maxsize=4)
def _runner(imgsz: int) -> OrtYoloRunner:
    with _lock:
        path = onnx_path(imgsz)
        if path.exists():
            try:
                return OrtYoloRunner(path)
            except Exception as e:  # noqa: BLE001 - a damaged cache file: export again
                log.warning("cannot load %s (%s); exporting it again", path, e)
        return OrtYoloRunner(export_onnx(path, imgsz))


def make_runner(imgsz: int = 640) -> OrtYoloRunner | None:
    """The onnxruntime runner for ``imgsz`` (exporting the network on first use), or None (reason logged)."""
    try:
        import onnx  # noqa: F401 - torch.onnx.export needs it
        import onnxruntime  # noqa: F401
    except ImportError as e:
        log.info("YOLO11n-pose runs in torch: %s (pip install 'dpmesh-studio[onnx]' for onnxruntime)", e)
        return None
    try:
        return _runner(int(imgsz))
    except Exception as e:  # noqa: BLE001 - the torch path is always there
        log.warning("YOLO11n-pose runs in torch: the onnxruntime export failed (%s: %s)", type(e).__name__, e)
        return None
