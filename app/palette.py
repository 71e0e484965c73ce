"""Per-person colours shared by the skeletons, the mesh overlay and the mesh view (RGB 0..255)."""

from __future__ import annotations

PALETTE = [  # 20 distinct colours (the first ten as before), so tracks #0-#19 all differ
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 190), (0, 128, 128),
    (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0),
    (255, 215, 180), (0, 0, 128), (230, 190, 255), (255, 225, 25), (128, 128, 128),
]


def person_rgb(uid: int) -> tuple[int, int, int]:
    """Colour of the person with document uid ``uid`` (grey for none)."""
    return PALETTE[(uid - 1) % len(PALETTE)] if uid > 0 else (200, 200, 200)


def person_rgb01(uid: int) -> tuple[float, float, float]:
    r, g, b = person_rgb(uid)
    return r / 255.0, g / 255.0, b / 255.0


def faint(rgb01: tuple[float, float, float], amount: float = 0.65) -> tuple[float, float, float]:
    """A colour washed out towards grey: how a low-confidence person's mesh is drawn (a guess, not a fit
    the key-points support)."""
    return tuple(float((1 - amount) * c + amount * 0.55) for c in rgb01)  # type: ignore[return-value]


def mesh_rgb01(doc, uid: int) -> tuple[float, float, float]:
    """The colour of person ``uid``'s mesh in the overlay and the 3-D view: its track's (else its own),
    washed out when its mesh is flagged low-confidence."""
    rgb = person_rgb01(doc.color_key(uid))
    return faint(rgb) if doc.low_confidence(uid) else rgb
