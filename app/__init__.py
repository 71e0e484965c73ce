"""DPMesh Studio, the desktop app (PySide6) over ``dpmesh_core.api``. See ARCHITECTURE.md for its layout.

Importing the package has no side effects: process-wide settings (``app.main.configure_runtime``) are
applied by the entry point that owns the process.
"""
