"""The interactive viewer of Explore: NiiVue (WebGL, in the browser) as a Streamlit component.

Axial, coronal and sagittal side by side, linked by a crosshair; the CT and each label layer
reach the browser once as NIfTI files served by Streamlit's media file manager (the same store
as st.image's), so scrolling, clicking, zooming and windowing run in the browser and cost the
server nothing. NiiVue itself is vendored in dashboard/components/niivue (see its NOTICE).
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st
import streamlit.components.v1 as components

from ctseg_core.viz.browser_volume import browser_stride, label_lut
from ctseg_core.viz.slices import PLANES, WINDOW_PRESETS
from dashboard import cached, state
from dashboard.helpers.layer_names import all_names, present_names

COMPONENT_DIR = Path(__file__).resolve().parents[1] / "components" / "niivue"
_component = components.declare_component("ctseg_niivue", path=str(COMPONENT_DIR))
VIEW_HEIGHT_PX = 420
LABEL_OPACITY = 0.45


def _media_url(data: bytes, coordinates: str) -> str:
    """A /media/... URL of ``data`` for this session (dropped with the session's other media
    when a rerun no longer asks for it; identical bytes are stored once for all sessions)."""
    from streamlit.runtime import get_instance

    manager = get_instance().media_file_mgr
    return manager.add(data, "application/octet-stream", coordinates)


def start_voxel_xyz(keys: state.WidgetKeys, shape_zxy) -> list[int]:
    """The voxel (x, y, z) where the crosshair opens: the server view's slice in each plane
    (its sliders count from 1), or the middle of the volume where a plane was not visited."""
    nz, nx, ny = (int(n) for n in shape_zxy[:3])
    axis_of = {"sagittal": 0, "coronal": 1, "axial": 2}
    voxel = [nx // 2, ny // 2, nz // 2]
    for plane in PLANES:
        number = st.session_state.get(state.slice_key(keys, plane))
        if isinstance(number, int) and number >= 1:
            axis = axis_of[plane]
            voxel[axis] = min(number - 1, (nx, ny, nz)[axis] - 1)
    return voxel


def niivue_viewer(keys: state.WidgetKeys, ct_zxy, layers, affine, volume_id: str) -> None:
    """Show the linked-planes viewer of a (Z, X, Y) CT and its label ``layers``
    (dashboard.helpers.viewer.Layer: reference, prediction) at the server view's slices."""
    nz, nx, ny = ct_zxy.shape[:3]
    stride = browser_stride((nx, ny, nz))
    with st.spinner("Preparing the volumes for the browser …"):
        ct_url = _media_url(
            cached.browser_nifti(f"ct:{volume_id}", ct_zxy, affine, stride, "int16"),
            f"{keys.prefix}.niivue.ct",
        )
        label_urls = [
            _media_url(
                cached.browser_nifti(layer.source, layer.labels_zxy, affine, stride, "uint8"),
                f"{keys.prefix}.niivue.{layer.name}",
            )
            for layer in layers
        ]
    start = start_voxel_xyz(keys, ct_zxy.shape)
    sx, sy, sz = stride
    note = ""
    if stride != (1, 1, 1):
        shape = f"{-(-nx // sx)} x {-(-ny // sy)} x {-(-nz // sz)}"
        note = f"shown every {sx}/{sy}/{sz} voxels ({shape}); the slice view is full resolution"
    presets = {name: list(pair) for name, pair in WINDOW_PRESETS.items()}
    level, width = WINDOW_PRESETS.get(st.session_state.get(keys.preset), (40.0, 400.0))
    lut = label_lut()
    lut.pop("labels")  # each layer names its values: a merged run's value by its merge
    _component(
        ct_url=ct_url,
        label_urls=label_urls,
        layers=[layer.name for layer in layers],
        names=[all_names(layer.names) for layer in layers],
        lut=lut,
        presets=presets,
        window=[float(level), float(width)],
        opacity=LABEL_OPACITY,
        start_vox=[s // t for s, t in zip(start, stride, strict=True)],
        stride=list(stride),
        note=note,
        height=VIEW_HEIGHT_PX,
        volume_key=f"{volume_id}|{'|'.join(layer.source for layer in layers)}|{ct_url}",
        key=f"{keys.prefix}_niivue",
        default=None,
    )
    st.caption(
        "Linked planes (NiiVue, in the browser): click to move the crosshair in all three "
        "planes; the readout names the structure under it in each layer; the sliders above "
        "set each layer's opacity."
    )
    legend(layers)


def legend(layers) -> None:
    """The colours of the structures the layers hold (every label the viewer draws; a merged
    run's value by its merge), in label order; nothing when they hold none."""
    from dashboard.helpers.viewer import legend as chips

    chips(present_names(layers))


def viewer_choice(key: str) -> str:
    """The Explore view: the server-rendered slice view (default) or the linked planes."""
    options = ["slices", "linked planes"]
    return st.segmented_control(
        "Viewer",
        options,
        default=state.widget_default(key, options[0]),
        key=key,
        required=True,
        help="slices: rendered on the server, full resolution, fill or contours; linked "
        "planes: axial, coronal and sagittal in the browser (WebGL), crosshair, zoom, "
        "window by dragging",
    )
