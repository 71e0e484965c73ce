"""Run by tests/blender/test_rigged_blender.py in a Python that has Blender's ``bpy`` (not the project's venv):

    python blender_check.py GLB_OR_BVH OUT_DIR FPS FRAME...

Imports the file into an empty Blender scene and writes OUT_DIR/report.json (armature bone names, scene fps)
plus, per frame, OUT_DIR/verts_FRAME.npy (the evaluated, skinned mesh in world coordinates, Blender's Z-up
frame; GLB only) and OUT_DIR/heads_FRAME.json (each pose bone's head in world coordinates).
"""

import json
import sys
from pathlib import Path

import bpy
import numpy as np


def main(path: str, out: str, fps: int, frames: list[int]) -> None:
    out_dir = Path(out)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.context.scene.render.fps = fps  # the glTF importer turns seconds into frames at the scene's rate
    if path.endswith(".glb"):
        bpy.ops.import_scene.gltf(filepath=path)
    else:
        bpy.ops.import_anim.bvh(filepath=path, global_scale=1.0, frame_start=1, use_fps_scale=False,
                                update_scene_fps=False, update_scene_duration=True, rotate_mode="NATIVE",
                                axis_forward="-Z", axis_up="Y")
    scene = bpy.context.scene
    arm = next(o for o in scene.objects if o.type == "ARMATURE")
    mesh = next((o for o in scene.objects if o.type == "MESH"), None)
    report = {"bones": [b.name for b in arm.data.bones], "fps": scene.render.fps,
              "frame_start": scene.frame_start, "frame_end": scene.frame_end,
              "actions": [a.name for a in bpy.data.actions]}
    for f in frames:
        scene.frame_set(f)
        dg = bpy.context.evaluated_depsgraph_get()
        if mesh is not None:
            ev = mesh.evaluated_get(dg)
            me = ev.to_mesh()
            M = np.array(ev.matrix_world)
            co = np.array([v.co[:] for v in me.vertices])
            np.save(out_dir / f"verts_{f}.npy", co @ M[:3, :3].T + M[:3, 3])
            ev.to_mesh_clear()
        A = np.array(arm.evaluated_get(dg).matrix_world)
        heads = {pb.name: list(A[:3, :3] @ np.array(pb.head[:]) + A[:3, 3]) for pb in arm.evaluated_get(dg).pose.bones}
        (out_dir / f"heads_{f}.json").write_text(json.dumps(heads))
    (out_dir / "report.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), [int(x) for x in sys.argv[4:]])
