"""One palette (issue 17): the app's persons, tracks and 3-D view use the core's colours, the same ones the
CLI's overlays and --views draw, so a track has one colour everywhere."""

from __future__ import annotations

import numpy as np

from app.palette import PALETTE, person_rgb, person_rgb01
from dpmesh_core import api
from dpmesh_core.body.synthetic import synthetic_smpl_arrays
from dpmesh_core.io import scene3d
from dpmesh_core.types import BodyParams, Camera, MeshResult


def test_app_and_core_share_one_palette_of_20_distinct_colours():
    assert PALETTE == list(api.PERSON_PALETTE)
    assert len(set(PALETTE)) == 20
    for track in range(45):  # the app's colour key of track t is t + 1 (Document.color_key)
        assert person_rgb(track + 1) == api.PERSON_PALETTE[track % 20]
        np.testing.assert_allclose(person_rgb01(track + 1), api.person_color(track))


def _tracked(track: int, cam: Camera) -> MeshResult:
    a = synthetic_smpl_arrays()
    v = (np.asarray(a["v_template"]) * np.array([1.0, -1.0, -1.0]) + [0.0, 0.0, 3.0]).astype(np.float32)
    z3 = np.zeros(3, np.float32)
    return MeshResult(v, np.asarray(a["f"], np.int32), v[:24], np.zeros((24, 2), np.float32), "smpl24",
                      BodyParams("smpl", z3, np.zeros(69, np.float32), np.zeros(10, np.float32), z3), cam,
                      track_id=track)


def _hue(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb, np.float64)
    return rgb / np.linalg.norm(rgb)


def test_cli_overlay_and_views_draw_a_track_in_the_apps_colour():
    cam = Camera.default_for(320, 240)
    for track in (3, 17):
        r = _tracked(track, cam)
        want = _hue(person_rgb(track + 1))
        # the CLI's overlay (alpha 1: the mesh's own shaded colour where it covers the picture)
        img = np.zeros((240, 320, 3), np.uint8)
        out = api.render_overlay(img, [r], alpha=1.0, backend="numpy")
        covered = out.any(axis=2)
        assert covered.sum() > 1000
        assert np.abs(_hue(out[covered].astype(np.float64).mean(0)) - want).max() < 0.03
        # --views: the scene's person carries the same colour
        writer = scene3d.ViewsWriter(("camera",), 320, 240, renderer=api.MeshRenderer(320, 240, backend="numpy"))
        scene = writer.scene(img, [r])
        np.testing.assert_allclose(np.asarray(scene.persons[0].color) * 255, person_rgb(track + 1), atol=1e-6)
        writer.close()
