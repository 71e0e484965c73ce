"""Per-person colours shared by the skeletons, the mesh overlay and the mesh view (RGB 0..255): the core's one
palette (``api.PERSON_PALETTE``, also what the CLI's overlays and ``--views`` use). Colour key k (track t has
key t + 1, see ``Document.color_key``) is ``PALETTE[k - 1]``, the CLI's ``api.person_color(t)``."""

from __future__ import annotations

from dpmesh_core import api

PALETTE = list(api.PERSON_PALETTE)  # 20 distinct colours, so tracks #0-#19 all differ


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
