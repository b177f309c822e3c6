"""CT slice views: HU windowing, plane extraction in display orientation, label overlays.

Inputs are the preprocessing cache's slice-major arrays, shape (Z, X, Y) of the canonical RAS+
volume (``CachedSubject.ct`` int16 HU, ``CachedSubject.labels`` uint8). Only the requested plane is
indexed, so a memmap reads one plane, never the whole volume.

Display convention (radiological, as PACS viewers show CT):
- axial: rows run anterior (top) -> posterior (bottom); columns run from the patient's RIGHT on
  the image's LEFT to the patient's left on the image's right (viewed from the feet);
- coronal: rows run superior (top) -> inferior; columns as axial (patient's right on image left);
- sagittal: rows run superior (top) -> inferior; columns run anterior (left) -> posterior (right).
Pixels are not square when spacing is anisotropic: ``plane_aspect`` gives height/width of one
pixel in mm, and ``stretch_to_aspect`` resamples rows so the image looks right in a plain viewer.
"""

from __future__ import annotations

import io

import numpy as np

from ..errors import ConfigError
from ..labels import NUM_LABELS, colour_lut

#: (level, width) in HU
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "soft tissue": (40.0, 400.0),
    "abdomen": (60.0, 400.0),
    "liver": (80.0, 150.0),
    "mediastinum": (50.0, 350.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "full range": (200.0, 2400.0),
}

PLANES: tuple[str, ...] = ("axial", "coronal", "sagittal")


def _check_plane(plane: str) -> None:
    if plane not in PLANES:
        raise ConfigError(f"unknown plane {plane!r}: use one of {', '.join(PLANES)}")


def window_to_uint8(ct_hu: np.ndarray, level: float, width: float) -> np.ndarray:
    """Map HU to gray 0..255: ``level - width/2`` -> 0, ``level + width/2`` -> 255, linear between.

    Any shape in, same shape uint8 out; values outside the window clip. ``width`` must be > 0.
    """
    if not width > 0:
        raise ConfigError(f"window width {width} HU must be positive (e.g. 400 for soft tissue)")
    low = level - width / 2.0
    scale = np.float32(255.0 / width)
    gray = (np.asarray(ct_hu, dtype=np.float32) - np.float32(low)) * scale
    np.clip(gray, 0.0, 255.0, out=gray)
    return np.rint(gray, out=gray).astype(np.uint8)


def num_planes(shape_zxy: tuple[int, ...], plane: str) -> int:
    """How many slices a (Z, X, Y) volume has in ``plane`` (axial: Z, coronal: Y, sagittal: X)."""
    _check_plane(plane)
    z, x, y = shape_zxy[:3]
    return {"axial": z, "coronal": y, "sagittal": x}[plane]


def extract_plane(volume_zxy: np.ndarray, plane: str, index: int) -> np.ndarray:
    """One plane of a (Z, X, Y) RAS+ volume as a 2D array in display orientation (module doc).

    axial index = z, coronal index = y (posterior 0 -> anterior), sagittal index = x (patient's
    left 0 -> right). Returns a (H, W) copy of the same dtype: axial (Y, X), coronal (Z, X),
    sagittal (Z, Y). An index outside the volume raises ConfigError.
    """
    _check_plane(plane)
    count = num_planes(volume_zxy.shape, plane)
    if not 0 <= index < count:
        raise ConfigError(f"{plane} index {index} is outside 0..{count - 1} for this volume")
    if plane == "axial":
        # slice (X, Y) -> rows y (anterior = high y at the top), columns x (right = high x at left)
        return np.ascontiguousarray(volume_zxy[index].T[::-1, ::-1])
    if plane == "coronal":
        return np.ascontiguousarray(volume_zxy[::-1, ::-1, index])
    return np.ascontiguousarray(volume_zxy[::-1, index, ::-1])


#: what the screen's edges show, per plane (``extract_plane``'s radiological convention)
SCREEN_SIDES = {
    "axial": "patient's right on the left, anterior up",
    "coronal": "patient's right on the left, superior up",
    "sagittal": "anterior on the left, superior up",
}


def plane_position_mm(affine: np.ndarray, shape_zxy, plane: str, index: int) -> str:
    """Where a plane lies in world space, as 3D Slicer names it: "S -45.0 mm" for an axial
    plane (RAS+ z of its centre), "A ..." for a coronal one (y), "R ..." for a sagittal one (x).

    ``affine``: (4, 4) of the canonical (X, Y, Z) array; ``shape_zxy``: the (Z, X, Y) volume's
    shape; ``index``: 0-based, as ``extract_plane`` counts. File voxel indices differ for
    flipped files; millimetres do not, so the same plane can be found in any viewer.
    """
    _check_plane(plane)
    nz, nx, ny = shape_zxy[:3]
    voxel = np.array([(nx - 1) / 2, (ny - 1) / 2, (nz - 1) / 2, 1.0])
    axis = {"axial": 2, "coronal": 1, "sagittal": 0}[plane]
    voxel[axis] = index
    world = np.asarray(affine, dtype=float) @ voxel
    return f"{'RAS'[axis]} {world[axis]:.1f} mm"


def plane_aspect(spacing_mm: tuple[float, float, float], plane: str) -> float:
    """Height / width of one display pixel in mm for ``plane``; ``spacing_mm`` is (x, y, z)."""
    _check_plane(plane)
    sx, sy, sz = (float(s) for s in spacing_mm)
    return {"axial": sy / sx, "coronal": sz / sx, "sagittal": sz / sy}[plane]


def stretch_to_aspect(image: np.ndarray, aspect: float) -> np.ndarray:
    """Repeat/skip rows (nearest neighbour) so pixels become square: (H, W, ...) -> (H', W, ...).

    ``H' = round(H * aspect)``; labels stay crisp. aspect within 1% of 1 returns the input.
    """
    if abs(aspect - 1.0) < 0.01:
        return image
    height = image.shape[0]
    new_height = max(1, round(height * aspect))
    rows = np.minimum((np.arange(new_height) + 0.5) / aspect, height - 1).astype(np.intp)
    return image[rows]


def _blend_lut(colours: np.ndarray, alpha: float, visible: np.ndarray | None) -> np.ndarray:
    """(118 * 256, 3) uint8: row ``label * 256 + gray`` holds the blended RGB of that pair."""
    colours = np.asarray(colours, dtype=np.float32)
    if colours.shape != (NUM_LABELS, 3):
        raise ConfigError(f"colours must have shape ({NUM_LABELS}, 3), got {colours.shape}")
    weight = np.full(NUM_LABELS, float(alpha), dtype=np.float32)
    weight[0] = 0.0
    if visible is not None:
        weight[~_visible_mask(visible)] = 0.0
    gray = np.arange(256, dtype=np.float32)
    blended = (
        gray[None, :, None] * (1.0 - weight[:, None, None])
        + colours[:, None, :] * weight[:, None, None]
    )
    return np.rint(blended).astype(np.uint8).reshape(NUM_LABELS * 256, 3)


def _visible_mask(visible: np.ndarray) -> np.ndarray:
    visible = np.asarray(visible, dtype=bool)
    if visible.shape != (NUM_LABELS,):
        raise ConfigError(f"visible must have shape ({NUM_LABELS},), got {visible.shape}")
    return visible


def label_borders(labels: np.ndarray) -> np.ndarray:
    """(H, W) bool: labelled pixels with a 4-neighbour of a different label (inner contour).

    Pixels on the image edge count as bordering the outside, so structures cut by the frame close.
    """
    padded = np.pad(labels, 1, mode="constant", constant_values=0)
    centre = padded[1:-1, 1:-1]
    border = (
        (centre != padded[:-2, 1:-1])
        | (centre != padded[2:, 1:-1])
        | (centre != padded[1:-1, :-2])
        | (centre != padded[1:-1, 2:])
    )
    return border & (centre != 0)


def overlay_rgb(
    gray: np.ndarray,
    labels: np.ndarray,
    colours: np.ndarray | None = None,
    alpha: float = 0.5,
    visible: np.ndarray | None = None,
    mode: str = "fill",
) -> np.ndarray:
    """Blend label colours over an image: out = round(base * (1 - alpha) + colour * alpha).

    gray: (H, W) uint8 (or an (H, W, 3) uint8 RGB image, e.g. one overlay on another);
    labels: (H, W) uint8 values 0..117; colours: (118, 3) uint8, default ``colour_lut()``;
    visible: (118,) bool, labels set False are treated as background (None = all shown);
    mode "fill" colours every labelled pixel, "contour" only pixels on a 4-neighbour label change
    (invisible labels do not draw borders; a visible structure next to one does).
    Background (0) pixels keep the base value. Returns (H, W, 3) uint8.
    """
    if mode not in ("fill", "contour"):
        raise ConfigError(f"overlay mode {mode!r} must be 'fill' or 'contour'")
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"overlay alpha {alpha} must lie in 0..1")
    gray = np.asarray(gray)
    labels = np.asarray(labels)
    if labels.shape != gray.shape[:2]:
        raise ConfigError(f"labels shape {labels.shape} does not match image shape {gray.shape}")
    colours = colour_lut() if colours is None else np.asarray(colours)
    if mode == "contour":
        if visible is not None:
            keep = np.where(_visible_mask(visible), np.arange(NUM_LABELS), 0).astype(np.uint8)
            labels = keep[labels]
            visible = None
        labels = np.where(label_borders(labels), labels, 0).astype(np.uint8)
    if gray.ndim == 2:
        # one gather through a (label, gray) -> RGB table: no per-label passes over the image
        index = labels.astype(np.intp) * 256 + gray
        return _blend_lut(colours, alpha, visible)[index]
    weight = np.full(NUM_LABELS, float(alpha), dtype=np.float32)
    weight[0] = 0.0
    if visible is not None:
        weight[~_visible_mask(visible)] = 0.0
    pixel_weight = weight[labels][..., None]
    colour = np.asarray(colours, dtype=np.float32)[labels]
    out = gray.astype(np.float32) * (1.0 - pixel_weight) + colour * pixel_weight
    return np.rint(out).astype(np.uint8)


def render_slice(
    ct_zxy: np.ndarray,
    plane: str,
    index: int,
    level: float = 40.0,
    width: float = 400.0,
    labels_zxy: np.ndarray | None = None,
    colours: np.ndarray | None = None,
    alpha: float = 0.5,
    visible: np.ndarray | None = None,
    mode: str = "fill",
    spacing_mm: tuple[float, float, float] | None = None,
) -> np.ndarray:
    """CT plane -> window -> optional label overlay -> (H, W, 3) uint8 RGB in display orientation.

    With ``spacing_mm`` (x, y, z) the rows are stretched so pixels are square in mm.
    """
    gray = window_to_uint8(extract_plane(ct_zxy, plane, index), level, width)
    if labels_zxy is None:
        rgb = np.repeat(gray[..., None], 3, axis=2)
    else:
        if labels_zxy.shape != ct_zxy.shape:
            raise ConfigError(
                f"labels shape {labels_zxy.shape} does not match CT shape {ct_zxy.shape}"
            )
        labels = extract_plane(labels_zxy, plane, index)
        rgb = overlay_rgb(gray, labels, colours, alpha, visible, mode)
    if spacing_mm is not None:
        rgb = stretch_to_aspect(rgb, plane_aspect(spacing_mm, plane))
    return rgb


def side_by_side(left_rgb: np.ndarray, right_rgb: np.ndarray, gap_px: int = 4) -> np.ndarray:
    """Two (H, W, 3) uint8 images next to each other with a black gap; heights must match."""
    if left_rgb.shape[0] != right_rgb.shape[0]:
        raise ConfigError(f"image heights differ: {left_rgb.shape[0]} vs {right_rgb.shape[0]}")
    gap = np.zeros((left_rgb.shape[0], gap_px, 3), dtype=np.uint8)
    return np.concatenate([left_rgb, gap, right_rgb], axis=1)


def to_png_bytes(rgb: np.ndarray, compress_level: int = 1) -> bytes:
    """Encode an (H, W, 3) or (H, W) uint8 image as PNG; level 1 is ~5x faster than the default 6."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(
        buffer, format="PNG", compress_level=compress_level
    )
    return buffer.getvalue()


def render_comparison(
    ct_zxy: np.ndarray,
    reference_zxy: np.ndarray,
    prediction_zxy: np.ndarray,
    plane: str,
    index: int,
    level: float = 40.0,
    width: float = 400.0,
    **overlay,
) -> np.ndarray:
    """Reference overlay (left) and prediction overlay (right) of one plane, side by side.

    ``overlay`` takes ``render_slice``'s keywords (colours, alpha, visible, mode, spacing_mm).
    Returns (H, 2 * W + 4, 3) uint8.
    """
    left = render_slice(ct_zxy, plane, index, level, width, reference_zxy, **overlay)
    right = render_slice(ct_zxy, plane, index, level, width, prediction_zxy, **overlay)
    return side_by_side(left, right)


def largest_section(
    labels_zxy: np.ndarray, value: int, plane: str = "axial", box: tuple | None = None
) -> int | None:
    """Index of the ``plane`` slice where structure ``value`` covers the most pixels (None if absent).

    ``box``: the structure's (Z, X, Y) bounding box from ``viz.mesh.bounding_boxes``, so only the
    box is read; without it the whole volume is scanned once.
    """
    _check_plane(plane)
    if box is None:
        from scipy import ndimage

        found = ndimage.find_objects((np.asarray(labels_zxy) == value).view(np.uint8))
        if not found:
            return None
        box = found[0]
    start = [s.start or 0 for s in box]
    mask = np.asarray(labels_zxy[box]) == value
    if not mask.any():
        return None
    axis, sum_axes = {"axial": (0, (1, 2)), "coronal": (2, (0, 1)), "sagittal": (1, (0, 2))}[plane]
    return int(start[axis] + np.argmax(mask.sum(axis=sum_axes)))


def worst_slices(
    reference_zxy: np.ndarray, prediction_zxy: np.ndarray, count: int = 3
) -> list[int]:
    """Axial indices with the most voxels where reference and prediction differ, worst first.

    Slices with no disagreement are left out, so a perfect prediction gives []. (Z, X, Y) inputs.
    """
    if reference_zxy.shape != prediction_zxy.shape:
        raise ConfigError(
            f"prediction shape {prediction_zxy.shape} does not match reference shape "
            f"{reference_zxy.shape}; resample the prediction onto the reference grid first"
        )
    wrong = np.array(
        [np.count_nonzero(reference_zxy[z] != prediction_zxy[z]) for z in range(len(reference_zxy))]
    )
    order = np.argsort(-wrong, kind="stable")[:count]
    return [int(z) for z in order if wrong[z] > 0]


def zoom_window(
    box_zxy: tuple[tuple[int, int], ...],
    shape_zxy: tuple[int, int, int],
    plane: str,
    margin_voxels: int = 10,
) -> tuple[slice, slice]:
    """Rows and columns of ``extract_plane``'s (H, W) image that hold a 3D box, with a margin.

    ``box_zxy``: half-open (start, stop) voxel ranges along Z, X, Y (a structure's bounding
    box). The margin is the larger of ``margin_voxels`` and half the box's extent per axis
    (a one-voxel structure still shows its surroundings); clipped to the volume.
    """
    _check_plane(plane)
    z_axis, x_axis, y_axis = (0, 1, 2)
    rows_cols = {"axial": (y_axis, x_axis), "coronal": (z_axis, x_axis),
                 "sagittal": (z_axis, y_axis)}[plane]  # fmt: skip
    window = []
    for axis in rows_cols:
        start, stop = box_zxy[axis]
        n = shape_zxy[axis]
        margin = max(margin_voxels, (stop - start) // 2)
        lo, hi = max(0, start - margin), min(n, stop + margin)
        window.append(slice(n - hi, n - lo))  # every display axis runs high index first
    return window[0], window[1]
