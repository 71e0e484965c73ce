"""Where the app's file dialogs start: never the media's own folder or the working directory.

Exports (meshes, key-points) start in the folder last exported to (remembered in the app's settings),
else in the platform's documents folder (``platformdirs.user_documents_dir()``: e.g. ``~/Documents`` on
Linux/macOS, ``%USERPROFILE%\\Documents`` on Windows).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

EXPORT_KEY = "last_export_dir"


def documents_folder() -> Path:
    import platformdirs

    return Path(platformdirs.user_documents_dir())


def export_folder(settings: Any | None) -> Path:
    """The last export folder if it still exists, else the documents folder."""
    last = settings.value(EXPORT_KEY, "") if settings is not None else ""
    if last and Path(str(last)).is_dir():
        return Path(str(last))
    return documents_folder()


def remember_export_folder(settings: Any | None, path: str | os.PathLike) -> None:
    """Remember ``path`` (a folder) as where the next export dialog starts."""
    if settings is not None:
        settings.setValue(EXPORT_KEY, str(Path(path)))
