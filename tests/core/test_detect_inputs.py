"""The default detector on awkward inputs: no people, tiny, huge, grey, RGBA, float; detect_in_box."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from dpmesh_core.detect import Detector, as_rgb_uint8, get_detector
from dpmesh_core.errors import InputError
from dpmesh_core.geometry import box_iou


@pytest.fixture(scope="module")
def det():
    return get_detector("yolo")


@pytest.fixture(scope="module")
def base_dets(det, photo):
    return det.detect(photo[0])


@pytest.fixture(scope="module")
def photo(shared_dir):
    """An image with one clear person (COCO 294) and its reference detection."""
    sh = shared_dir
    name = "COCO_val2014_000000000294.jpg"
    ref = json.loads((sh / "reference" / "yolo11n_pose_detections.json").read_text())["images"][name]
    img = np.ascontiguousarray(cv2.imread(str(sh / "media" / name))[:, :, ::-1])
    return img, ref["people"][0]


def test_protocol(det):
    assert isinstance(det, Detector) and det.name == "yolo"


def test_no_people_gives_empty_list(det):
    rng = np.random.default_rng(0)
    assert det.detect(np.full((480, 640, 3), 114, np.uint8)) == []
    smooth = cv2.GaussianBlur(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8), (31, 31), 0)
    assert det.detect(smooth) == []


def test_tiny_images(det):
    for shape in [(1, 1, 3), (17, 5)]:
        out = det.detect(np.full(shape, 200, np.uint8))
        assert out == []


def test_huge_image_maps_back_to_original_pixels(det, photo):
    img, ref = photo
    big = cv2.resize(img, None, fx=5, fy=5, interpolation=cv2.INTER_LINEAR)  # 3200 x 2135
    out = det.detect(big)
    assert len(out) == 1
    ref_box = np.array(ref["box_xyxy"]) * 5
    assert box_iou(out[0].box[None], ref_box[None])[0, 0] > 0.9
    assert out[0].box[2] <= big.shape[1] and out[0].box[3] <= big.shape[0]


def test_grey_rgba_float_inputs(det, photo, base_dets):
    img, ref = photo
    base = base_dets
    assert len(base) == 1
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    rgba = np.dstack([img, np.full(img.shape[:2], 255, np.uint8)])
    # conversions alone (no network pass)
    np.testing.assert_array_equal(as_rgb_uint8(grey[:, :, None]), np.dstack([grey] * 3))
    np.testing.assert_array_equal(as_rgb_uint8(img.copy(order="F")), img)
    np.testing.assert_array_equal(as_rgb_uint8(img.astype(np.float64)), img)  # 0..255 floats
    for variant in (grey, rgba, img.astype(np.float32) / 255.0):
        out = det.detect(variant)
        assert len(out) == 1
        assert box_iou(out[0].box[None], base[0].box[None])[0, 0] > 0.85
    # RGBA with full alpha is exactly the RGB image; with zero alpha it is white (no person)
    np.testing.assert_array_equal(as_rgb_uint8(rgba), img)
    clear = rgba.copy()
    clear[:, :, 3] = 0
    assert det.detect(clear) == []


def test_bad_arrays_are_input_errors(det):
    for bad in (np.zeros((0, 10, 3), np.uint8), np.zeros((10, 10, 2), np.uint8), np.zeros(5, np.uint8),
                np.full((8, 8, 3), np.nan, np.float32), np.zeros((4, 4, 3), complex)):
        with pytest.raises(InputError):
            det.detect(bad)


def test_detect_in_box(det, photo):
    img, ref = photo
    box = np.array(ref["box_xyxy"], np.float32)
    p = det.detect_in_box(img, box)
    assert p is not None and p.joint_set == "coco17" and p.source == "detector"
    np.testing.assert_allclose(p.box, box)
    rk = np.array(ref["keypoints"])
    ok = rk[:, 2] > 0.5
    err = np.linalg.norm(p.keypoints[ok, :2] - rk[ok, :2], axis=1)
    side = float(max(box[2:] - box[:2]))
    # the crop is seen at another scale, so not the same numbers, but the same joints
    assert np.median(err) < 0.05 * side and err.max() < 0.12 * side
    # corners given in any order, partly outside the image
    p2 = det.detect_in_box(img, [box[2], box[3] + 5000, box[0], box[1]])
    assert p2 is not None
    # an empty region of the image (top-left corner, no one there) gives None
    h, w = img.shape[:2]
    assert det.detect_in_box(np.full_like(img, 114), [0, 0, w // 3, h // 3]) is None
    with pytest.raises(InputError):
        det.detect_in_box(img, [w + 10, h + 10, w + 50, h + 50])
    with pytest.raises(InputError):
        det.detect_in_box(img, [0, 0, np.nan, 5])


def test_occluded_person_found_in_box(det, shared_dir):
    """A person the full-image pass misses when a big grey occluder hides most of them."""
    sh = shared_dir
    name = "COCO_val2014_000000000192.jpg"
    ref = json.loads((sh / "reference" / "yolo11n_pose_detections.json").read_text())["images"][name]
    img = np.ascontiguousarray(cv2.imread(str(sh / "media" / name))[:, :, ::-1])
    box = np.array(ref["people"][0]["box_xyxy"])
    x0, y0, x1, y1 = box.astype(int)
    occl = img.copy()
    occl[(y0 + y1) // 2 : y1, x0:x1] = 114  # hide the lower half
    p = det.detect_in_box(occl, box)
    assert p is not None
    rk = np.array(ref["people"][0]["keypoints"])
    upper = [0, 5, 6, 7, 8]  # nose, shoulders, elbows: still in view
    err = np.linalg.norm(p.keypoints[upper, :2] - rk[upper, :2], axis=1)
    assert np.median(err) < 10.0


def test_detect_many_matches_detect(det, photo, base_dets):
    img, _ = photo
    half = np.ascontiguousarray(img[::2, ::2])
    batch = det.detect_many([img, half])
    assert det.detect_many([]) == []
    for single, batched in zip((base_dets, det.detect(half)), batch):
        assert len(single) == len(batched) >= 1
        for a, b in zip(single, batched):
            np.testing.assert_allclose(a.box, b.box, atol=0.05)
            np.testing.assert_allclose(a.keypoints, b.keypoints, atol=0.05)
