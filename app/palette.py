"""Per-person colours shared by the skeletons, the mesh overlay and the mesh view (RGB 0..255)."""

from __future__ import annotations

PALETTE = [
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 190), (0, 128, 128),
]


def person_rgb(uid: int) -> tuple[int, int, int]:
    """Colour of the person with document uid ``uid`` (grey for none)."""
    return PALETTE[(uid - 1) % len(PALETTE)] if uid > 0 else (200, 200, 200)


def person_rgb01(uid: int) -> tuple[float, float, float]:
    r, g, b = person_rgb(uid)
    return r / 255.0, g / 255.0, b / 255.0
