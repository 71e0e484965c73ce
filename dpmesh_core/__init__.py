"""DPMesh Studio core: headless mesh recovery of occluded and crowded people.

Importing this package is cheap: no torch, no model files. Heavy modules load on first use.
"""

__version__ = "0.1.0"
