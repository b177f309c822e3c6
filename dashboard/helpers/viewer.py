"""The slice viewer shared by Explore and Predict: controls, a slice fragment, legend, stats, 3D.

Volumes are (Z, X, Y) arrays as the cache stores them (memmaps are fine: only the shown plane is
read). Moving the slice slider reruns only the fragment, not the page.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import streamlit as st

from ctseg_core.labels import GROUPS, LABEL_OF, group_of
from ctseg_core.viz.slices import (
    PLANES,
    SCREEN_SIDES,
    WINDOW_PRESETS,
    extract_plane,
    num_planes,
    overlay_rgb,
    plane_aspect,
    plane_position_mm,
    render_slice,
    side_by_side,
    stretch_to_aspect,
    to_png_bytes,
    zoom_window,
)
from dashboard import state
from dashboard.helpers.layer_names import Layer, colour_of, present_names, visible_mask
from dashboard.helpers.structure_views import (
    NAME_SEARCH,
    mesh_view,
    stats_table,
    unlearned_note,
)

CUSTOM = "custom"
MIN_DISPLAY_PX = 480  # small volumes are upscaled (nearest neighbour) to at least this size
MAX_VIEW_HEIGHT_PX = 720  # the tallest a slice is shown
DEFAULT_ALPHA = 0.45  # the overlays' opacity until the user moves its slider


@dataclass
class ViewSettings:
    plane: str
    level: float
    width: float
    style: str  # "fill" or "contour"
    layout: str  # "side by side" or "combined"
    alpha: float
    visible: np.ndarray  # (118,) bool
    zoom_box_zxy: tuple | None = None  # ((z0, z1), (x0, x1), (y0, y1)) to crop to, or None
    # (118,) bool per layer where a layer's values mean other structures (a merge), else None
    visible_by_layer: tuple | None = None

    def visible_of(self, i: int) -> np.ndarray:
        """The values shown of the ``i``-th layer."""
        return self.visible if self.visible_by_layer is None else self.visible_by_layer[i]


def _controls(
    keys: state.WidgetKeys, two_layers: bool
) -> tuple[str, float, float, str, str, float]:
    plane = st.segmented_control(
        "Plane",
        PLANES,
        default=state.widget_default(keys.plane, "axial"),
        key=keys.plane,
        required=True,
    )
    presets = [*WINDOW_PRESETS, CUSTOM]
    if keys.preset not in st.session_state:
        st.session_state[keys.preset] = presets[0]
    preset = st.selectbox("Window", presets, key=keys.preset)
    if preset == CUSTOM:
        cols = st.columns(2)
        st.session_state.setdefault(keys.level, 40)
        st.session_state.setdefault(keys.width, 400)
        level = cols[0].number_input("Level (HU)", -1500, 3000, step=10, key=keys.level)
        width = cols[1].number_input("Width (HU)", 1, 5000, step=10, key=keys.width)
    else:
        level, width = WINDOW_PRESETS[preset]
    style = st.segmented_control(
        "Overlay",
        ["fill", "contour"],
        default=state.widget_default(keys.style, "fill"),
        key=keys.style,
        required=True,
    )
    layout = "combined"
    if two_layers:
        layout = st.segmented_control(
            "Reference and prediction",
            ["side by side", "combined"],
            default=state.widget_default(keys.layout, "side by side"),
            key=keys.layout,
            required=True,
            help="combined: the reference as chosen, the prediction as contours on top",
        )
    st.session_state.setdefault(keys.alpha, DEFAULT_ALPHA)  # set once: kept across pages (state.py)
    alpha = st.slider("Opacity", 0.0, 1.0, step=0.05, key=keys.alpha)
    return plane, float(level), float(width), style, layout, alpha


def sticky_choices(key: str, options: list[str], default: list[str]) -> None:
    """Before a multi-choice widget: keep its choices across option lists.

    The widget can only hold choices among its options, so a subject without ribs drops the
    ribs group; the choices are kept aside (``<key>__wanted``, with the options last shown) and
    come back with a subject that has them. A choice the user clears while it is shown is
    forgotten. ``default``: the choices before the user makes any.
    """
    wanted_key, shown_key = f"{key}__wanted", f"{key}__shown"
    wanted = list(st.session_state.get(wanted_key, default))
    if key in st.session_state and shown_key in st.session_state:
        shown, chosen = set(st.session_state[shown_key]), st.session_state[key] or []
        kept = [w for w in wanted if w not in shown]
        wanted = kept + [c for c in chosen if c not in kept]
    st.session_state[wanted_key] = wanted
    st.session_state[shown_key] = list(options)
    st.session_state[key] = [o for o in options if o in wanted]


def choose_structures(key: str, structures: list[str]) -> None:
    """Preset the structure picker of ``key`` (e.g. from another page): exactly these."""
    st.session_state[key] = list(structures)
    st.session_state[f"{key}__wanted"] = list(structures)
    st.session_state.pop(f"{key}__shown", None)


def structure_picker(keys: state.WidgetKeys, present: list[str]) -> list[str]:
    """Groups (pills) and a searchable structure list; returns the structures to show.

    Choices survive subjects that lack them (``sticky_choices``).
    """
    groups_present = [g for g in GROUPS if any(group_of(s) == g for s in present)]
    sticky_choices(keys.groups, groups_present, default=list(GROUPS))
    groups = st.pills(
        "Groups", groups_present, selection_mode="multi", key=keys.groups, width="stretch",
        wrap=True,
    )  # fmt: skip
    in_groups = [s for s in present if group_of(s) in (groups or [])]
    sticky_choices(keys.structures, present, default=[])
    picked = st.multiselect(
        "Structures (type to search; empty = every structure of the chosen groups)",
        present,
        key=keys.structures,
        **NAME_SEARCH,
    )
    return picked or in_groups


def legend(structures: list[str]) -> None:
    """A colour chip and name per structure (a merge: in its first member's colour)."""
    chips = []
    for name in structures:
        r, g, b = colour_of(name)
        chips.append(
            f'<span style="display:inline-block;margin:2px 8px 2px 0;white-space:nowrap">'
            f'<span style="display:inline-block;width:0.9em;height:0.9em;border-radius:2px;'
            f'background:rgb({r},{g},{b});vertical-align:middle;margin-right:4px"></span>'
            f"{name}</span>"
        )
    if chips:
        st.html('<div style="font-size:0.85em;line-height:1.6">' + "".join(chips) + "</div>")


def _upscale(rgb: np.ndarray) -> np.ndarray:
    factor = max(1, int(np.ceil(MIN_DISPLAY_PX / max(rgb.shape[:2]))))
    if factor == 1:
        return rgb
    return np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1)


def compose_slice(
    ct_zxy: np.ndarray, layers: list[Layer], index: int, view: ViewSettings, spacing_mm
) -> np.ndarray:
    """The displayed (H, W, 3) uint8 image of one slice: CT plus layers as the settings say."""
    common = dict(level=view.level, width=view.width, alpha=view.alpha)
    rows, cols = slice(None), slice(None)
    if view.zoom_box_zxy is not None:  # the zoomed window only (a small structure, enlarged)
        rows, cols = zoom_window(view.zoom_box_zxy, ct_zxy.shape, view.plane)
    if not layers:  # unstretched, cropped, then stretched once (as below)
        image = render_slice(ct_zxy, view.plane, index, visible=view.visible, **common)
        return stretch_to_aspect(image[rows, cols], plane_aspect(spacing_mm, view.plane))
    first = render_slice(
        ct_zxy, view.plane, index, labels_zxy=layers[0].labels_zxy, mode=view.style,
        visible=view.visible_of(0), **common,
    )[rows, cols]  # fmt: skip
    if len(layers) > 1:
        if view.layout == "side by side":
            second = render_slice(
                ct_zxy,
                view.plane,
                index,
                labels_zxy=layers[1].labels_zxy,
                mode=view.style,
                visible=view.visible_of(1),
                **common,
            )[rows, cols]
            first = side_by_side(first, second)
        else:
            pred = extract_plane(layers[1].labels_zxy, view.plane, index)[rows, cols]
            first = overlay_rgb(first, pred, None, 1.0, view.visible_of(1), "contour")
    return stretch_to_aspect(first, plane_aspect(spacing_mm, view.plane))


@st.fragment
def slice_fragment(
    keys: state.WidgetKeys, ct_zxy, layers: list[Layer], view: ViewSettings, spacing_mm, affine
) -> None:
    """The slice slider and image: moving the slider reruns only this function."""
    count = num_planes(ct_zxy.shape, view.plane)
    slice_key = state.slice_key(keys, view.plane)
    if slice_key not in st.session_state or not 1 <= st.session_state[slice_key] <= count:
        st.session_state[slice_key] = count // 2 + 1
    # numbered from 1, as the caption and other viewers count slices; a plane of one slice (a
    # one-slice series, axially) has no slider: Streamlit refuses a range of one value
    if count > 1:
        index = st.slider(f"{view.plane.capitalize()} slice", 1, count, key=slice_key) - 1
    else:
        index = 0
    started = time.perf_counter()
    rgb = _upscale(compose_slice(ct_zxy, layers, index, view, spacing_mm))
    png = to_png_bytes(rgb)
    elapsed_ms = (time.perf_counter() - started) * 1000
    if len(layers) > 1 and view.layout == "side by side":
        names = " | ".join(layer.name for layer in layers)
    elif len(layers) > 1:
        names = f"{layers[0].name} ({view.style}), {layers[1].name} (contours)"
    else:
        names = ", ".join(layer.name for layer in layers) or "CT"
    height, width = rgb.shape[:2]
    st.image(
        png,
        # a tall view (a coronal plane of a long scan) fits the screen beside its slider
        width="stretch" if height <= width else max(240, int(MAX_VIEW_HEIGHT_PX * width / height)),
        output_format="PNG",
        caption=f"{names} · slice {index + 1} of {count} "
        f"({plane_position_mm(affine, ct_zxy.shape, view.plane, index)}) · "
        f"{SCREEN_SIDES[view.plane]} · rendered in {elapsed_ms:.0f} ms",
    )


def show_volume_at(
    keys: state.WidgetKeys, volume_id: str, plane: str, number: int, zoom: dict | None = None
) -> None:
    """Make the next ``volume_viewer`` of ``volume_id`` open at slice ``number`` (from 1).

    ``zoom``: {"structure": name, "box_zxy": ((z0, z1), (x0, x1), (y0, y1))} to open zoomed to
    that box (a "Zoom to" toggle undoes it); None opens the whole slice.
    """
    st.session_state[state.volume_key(keys)] = volume_id
    st.session_state[state.slice_key(keys, plane)] = number
    if zoom is None:
        st.session_state.pop(state.zoom_key(keys), None)
    else:
        st.session_state[state.zoom_key(keys)] = {**zoom, "volume": volume_id}
        st.session_state[keys.zoom_on] = True


def _zoom_choice(keys: state.WidgetKeys, volume_id: str) -> tuple | None:
    """The box to crop to when this volume was opened zoomed and the toggle is on."""
    zoom = st.session_state.get(state.zoom_key(keys))
    if not zoom or zoom.get("volume") != volume_id:
        return None
    on = st.toggle(f"Zoom to {zoom['structure']}", key=keys.zoom_on,
                   help="The slices cropped to the structure's bounding box with a margin.")  # fmt: skip
    return tuple(tuple(r) for r in zoom["box_zxy"]) if on else None


def annotation_note(annotated: np.ndarray | None, unused: list[str] = ()) -> None:
    """Name the structures a subject's reference does not annotate (blank there is no evidence
    of absence). ``annotated``: (118,) bool by label value, or None when unknown; ``unused``:
    the line of its masks left out, on another grid than the CT (``CachedSubject``)."""
    for line in unused:
        st.warning(state.plain(line), icon=":material/warning:")
    if annotated is None:
        return
    missing = [name for name, k in LABEL_OF.items() if not annotated[k]]
    if not missing:
        return
    st.caption(
        f"Not annotated for this subject: {len(missing)} of {len(LABEL_OF)} structures (no mask "
        "file: their blank reference means unknown, not absent)."
    )
    with st.expander(f"The {len(missing)} structures not annotated"):
        st.text(", ".join(missing))


def volume_viewer(
    keys: state.WidgetKeys, ct_zxy, layers: list[Layer], spacing_mm, affine, volume_id: str
) -> None:
    """Everything of a volume view: controls, slice fragment, legend, stats and the 3D view.

    ``volume_id`` names the volume (a subject of a dataset, a prediction): another one opens
    at its middle slices, not at the previous volume's numbers (other anatomy, or an edge).
    """
    if st.session_state.get(state.volume_key(keys)) != volume_id:
        for name in PLANES:
            st.session_state.pop(state.slice_key(keys, name), None)
        st.session_state[state.volume_key(keys)] = volume_id
        st.session_state.pop(state.zoom_key(keys), None)
    present = present_names(layers)
    image_col, control_col = st.columns([3, 1])
    with control_col:
        plane, level, width, style, layout, alpha = _controls(keys, len(layers) > 1)
        shown = structure_picker(keys, present) if present else []
        box = _zoom_choice(keys, volume_id)
    by_layer = tuple(visible_mask(layer.names, shown) for layer in layers)
    visible = np.logical_or.reduce(by_layer) if by_layer else visible_mask(None, shown)
    merged = any(layer.names for layer in layers)
    view = ViewSettings(plane, level, width, style, layout, alpha, visible, box,
                        by_layer if merged else None)  # fmt: skip
    with image_col:
        slice_fragment(keys, ct_zxy, layers, view, spacing_mm, affine)
        legend(shown)
    if not present:
        st.caption("No labelled structure in this volume.")
        return
    with st.expander("Volumes and mean HU of the shown structures", expanded=False):
        st.dataframe(stats_table(ct_zxy, layers, shown, spacing_mm), hide_index=True)
        if note := unlearned_note(layers, shown):
            st.caption(state.plain(note))
    mesh_view(keys, layers, shown, spacing_mm, affine)
