"""dpmesh_core.io: images, video frames, key-point files, mesh export, the project file and rendering.

Everything raises ``dpmesh_core.errors`` types naming the file; every write is atomic.
"""

from .atomic import atomic_path, atomic_write, atomic_write_bytes, atomic_write_text
from .images import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, image_size, read_image, write_image
from .keypoints import (
    BODY25_TO_OPENPOSE18,
    KEYPOINT_FORMATS,
    detect_keypoint_format,
    read_keypoints,
    write_coco_keypoints,
    write_openpose,
)
from .media import Media, is_media_file, open_media
from .mesh_export import (
    MESH_FORMATS,
    export_mesh,
    export_meshes,
    export_params_npz,
    load_params_npz,
    mesh_filename,
)
from .project import (
    PROJECT_FORMAT_VERSION,
    PROJECT_SUFFIX,
    ProjectData,
    autosave_path_for,
    find_recovery_files,
    load_project,
    results_summary,
    save_project,
    summary_to_params,
)
from .render import PERSON_COLORS, MeshRenderer, person_color, rasterize, render_overlay
from .video import VideoReader, write_video

__all__ = [
    "atomic_path", "atomic_write", "atomic_write_bytes", "atomic_write_text",
    "IMAGE_EXTENSIONS", "VIDEO_EXTENSIONS", "image_size", "read_image", "write_image",
    "BODY25_TO_OPENPOSE18", "KEYPOINT_FORMATS", "detect_keypoint_format", "read_keypoints",
    "write_coco_keypoints", "write_openpose",
    "Media", "is_media_file", "open_media",
    "MESH_FORMATS", "export_mesh", "export_meshes", "export_params_npz", "load_params_npz", "mesh_filename",
    "PROJECT_FORMAT_VERSION", "PROJECT_SUFFIX", "ProjectData", "autosave_path_for", "find_recovery_files",
    "load_project", "results_summary", "save_project", "summary_to_params",
    "PERSON_COLORS", "MeshRenderer", "person_color", "rasterize", "render_overlay",
    "VideoReader", "write_video",
]
