"""Beside the slice viewer: a table of the shown structures' volumes and mean HU, and their 3D
surfaces, per layer (reference, prediction)."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import streamlit as st

from ctseg_core.labels import group_of
from dashboard import cached, state
from dashboard.helpers.layer_names import Layer, learned_values_for, name_of, visible_mask

#: structure pickers: "liv" finds liver, not every name with l, i, v in order, and Enter picks
#: the first match rather than "Select 4 matches"
NAME_SEARCH = {"filter_mode": "contains", "select_all": False}


def stats_table(ct_zxy, layers: list[Layer], structures: list[str], spacing_mm) -> pd.DataFrame:
    """Volume (ml) and mean HU of each shown structure, per layer (a merge in a reference: its
    members together; a structure a layer's merge holds, or its model does not learn: empty
    for that layer, not 0 ml)."""
    rows = {s: {"structure": s, "group": group_of(s)} for s in structures}
    for layer in layers:
        stats = cached.volume_stats(layer.source, layer.labels_zxy, ct_zxy, spacing_mm)
        for s in structures:
            values = learned_values_for(layer, s) or []
            ml = np.asarray(stats.volume_ml)[values]
            means = np.asarray(stats.mean_hu)[values]
            found = ml > 0
            volume = round(float(ml.sum()), 2) if values else None
            mean = (
                float((ml[found] * means[found]).sum() / ml[found].sum()) if found.any() else None
            )
            rows[s][f"{layer.name} ml"] = volume
            rows[s][f"{layer.name} mean HU"] = None if mean is None else round(mean, 1)
    return pd.DataFrame(list(rows.values()))


def unlearned_note(layers: list[Layer], structures: list[str]) -> str | None:
    """A caption naming the shown structures a prediction's model does not learn, or None."""
    notes = []
    for layer in layers:
        unlearned = [s for s in structures if learned_values_for(layer, s) is None]
        if unlearned:
            shown = ", ".join(unlearned[:6]) + (" ..." if len(unlearned) > 6 else "")
            notes.append(
                f"Blank in {layer.name}: {len(unlearned)} shown structures its model does not "
                f"learn ({shown})."
            )
    return " ".join(notes) or None


def mesh_view(keys: state.WidgetKeys, layers: list[Layer], structures, spacing_mm, affine) -> None:
    """A plotly 3D view of chosen structures (decimated meshes, reference and prediction)."""
    from ctseg_core.viz.mesh import meshes_figure

    if not st.toggle("3D view", key=keys.show3d):
        return
    default = structures[:6]
    before = st.session_state.get(keys.mesh_structures)
    kept = [s for s in before or [] if s in structures]
    # the choice survives a subject that has its structures; one with none of them (or a
    # first view) starts from the default rather than from an empty 3D view; a choice the
    # user emptied stays empty
    st.session_state[keys.mesh_structures] = (
        default if before is None or (before and not kept) else kept
    )
    chosen = st.multiselect("Structures in 3D", structures, key=keys.mesh_structures, **NAME_SEARCH)
    if not chosen:
        st.caption("Pick structures to see their surfaces.")
        return
    started = time.perf_counter()
    items = []
    with st.spinner("Building surfaces …"):
        for layer in layers:
            kind = "prediction" if layer.name == "prediction" else "reference"
            values = np.flatnonzero(visible_mask(layer.names, chosen))
            built = cached.meshes_cached(
                layer.source, layer.labels_zxy, values, spacing_mm, affine, kind
            )  # named by value; a merged value by its merge
            items += [{**i, "name": name_of(layer.names, i["value"])} for i in built]
    fig = meshes_figure(items)
    fig.update_layout(height=560, margin={"l": 0, "r": 0, "t": 30, "b": 0})
    st.plotly_chart(fig, key=f"{keys.prefix}_mesh_chart")
    faces = sum(len(i["faces"]) for i in items)
    st.caption(
        f"{len(items)} surfaces, {faces} triangles, built in {time.perf_counter() - started:.2f} s"
    )
