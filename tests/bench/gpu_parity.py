"""DPMesh release parity on a CUDA device, in fp32 / bf16 / fp16 and under the release's fp16 autocast.

Loads ``shared/reference/dpmesh_parity`` (computed by the release's code, fp32 CPU), runs the predictor end to
end on the reference photo and key-points on ``--device`` and prints the max relative error of the release's
outputs per precision. fp32 must stay ≤ 1e-4 (exit 1 otherwise); half precisions are reported.

    .venv/bin/python tests/bench/gpu_parity.py [--device cuda] [--shared ../shared]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--shared", default=os.environ.get("DPMESH_SHARED", str(Path(__file__).resolve().parents[3] / "shared")))
    a = ap.parse_args()
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: nothing to check (run this on the GPU machine)")
        return 2
    ref_dir = Path(a.shared) / "reference" / "dpmesh_parity"
    ref = torch.load(ref_dir / "dpmesh_e2e_tiny.pt", map_location="cpu", weights_only=False)
    exp, inp = ref["outputs"], ref["inputs"]
    tmp = Path(tempfile.mkdtemp(prefix="dpmesh-gpu-"))
    ckpt = tmp / "tiny_best_ckpt.pth.tar"
    torch.save({k: (v.float() if v.is_floating_point() else v) for k, v in ref["state_dict"].items()}, ckpt)
    np.save(tmp / "J_regressor_extra.npy", inp["j_regressor_extra"].numpy())
    os.environ["DPMESH_J_REGRESSOR_EXTRA"] = str(tmp / "J_regressor_extra.npy")

    from dpmesh_core.model.predictor import DPMeshPredictor
    from dpmesh_core.types import Person

    img = inp["image_rgb_uint8"].numpy()
    persons = [Person(box=np.array([10.0 * i, 0, 10.0 * i + 5, 5]), keypoints=k.numpy().astype(np.float32))
               for i, k in enumerate(inp["keypoints_coco17"])]
    keys = {"smpl_pose": "smpl_pose", "smpl_shape": "shape_param", "cam_trans_crop": "cam_trans",
            "joint_cam": "joint_cam"}
    print(f"device {a.device} ({torch.cuda.get_device_name(0) if a.device.startswith('cuda') else 'cpu'}), "
          f"torch {torch.__version__}")
    ok = True
    for label, kw in (("fp32", {"dtype": "fp32"}), ("bf16", {"dtype": "bf16"}), ("fp16", {"dtype": "fp16"}),
                      ("fp16 autocast (release)", {"autocast": True})):
        if kw.get("autocast") and not a.device.startswith("cuda"):
            continue
        pred = DPMeshPredictor(str(ckpt), device=a.device, ldm_config=str(ref_dir / "dpmesh_e2e_tiny.json"), **kw)
        res = pred.estimate(img, persons)
        worst = {}
        for b, r in enumerate(res):
            e = r.params.extra
            for ours, theirs in keys.items():
                x, y = np.asarray(e[ours], np.float64), exp[theirs][b].double().numpy()
                worst[ours] = max(worst.get(ours, 0.0), float(np.abs(x - y).max() / max(np.abs(y).max(), 1e-12)))
            for side, name in (("8", "attn16"), ("16", "attn32")):
                x, y = r.attention[side].astype(np.float64), exp[name][b].double().numpy()
                worst[f"attention_{side}"] = max(worst.get(f"attention_{side}", 0.0),
                                                 float(np.abs(x - y).max() / np.abs(y).max()))
            mesh = r.vertices - r.joints3d[0]
            y = exp["smpl_mesh_cam"][b].double().numpy()
            worst["smpl_mesh_cam"] = max(worst.get("smpl_mesh_cam", 0.0), float(np.abs(mesh - y).max() / np.abs(y).max()))
        top = max(worst.values())
        verdict = ("ok" if top <= 1e-4 else "FAIL") if label == "fp32" else "reported"
        ok &= verdict != "FAIL"
        print(f"{label:24s} max rel error {top:.2e} [{verdict}]  " +
              "  ".join(f"{k} {v:.1e}" for k, v in worst.items()))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
