"""Views of CT and labels: windowed slices with overlays (``slices``), 3D meshes (``mesh``)."""

from .mesh import (
    bounding_boxes,
    mesh_area,
    meshes_figure,
    structure_mesh,
    structure_meshes,
    taubin_smooth,
)
from .slices import (
    PLANES,
    WINDOW_PRESETS,
    extract_plane,
    label_borders,
    num_planes,
    overlay_rgb,
    plane_aspect,
    render_slice,
    side_by_side,
    stretch_to_aspect,
    to_png_bytes,
    window_to_uint8,
)

__all__ = [
    "PLANES",
    "WINDOW_PRESETS",
    "bounding_boxes",
    "extract_plane",
    "label_borders",
    "mesh_area",
    "meshes_figure",
    "num_planes",
    "overlay_rgb",
    "plane_aspect",
    "render_slice",
    "side_by_side",
    "stretch_to_aspect",
    "structure_mesh",
    "structure_meshes",
    "taubin_smooth",
    "to_png_bytes",
    "window_to_uint8",
]
