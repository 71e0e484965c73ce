"""The app's back end without widgets: ``Session`` (the composition root, ``root.py``) and one controller
per concern: ``media`` (opening, detection), ``estimation``, ``overlay``, ``video``, ``projects``
(projects, autosave, exports), ``frames`` (the video's frames decoded off the GUI thread)."""

from dpmesh_core.errors import MediaError

from .projects import PROJECT_EXT
from .root import Session

__all__ = ["Session", "PROJECT_EXT", "MediaError"]
