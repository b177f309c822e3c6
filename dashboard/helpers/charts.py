"""Altair charts and tables of the dashboard: pure functions from plain data to chart objects."""

from __future__ import annotations

import altair as alt
import pandas as pd

from ctseg_core.labels import GROUP_OF, GROUPS

#: one colour per anatomical group, used by every chart coloured by group
GROUP_COLOURS = {
    "organs": "#e4572e",
    "lungs": "#5fa8d3",
    "heart": "#d7263d",
    "vessels": "#9b5de5",
    "spine": "#f3a712",
    "ribs": "#a8c686",
    "bones": "#8d6e63",
    "muscles": "#4fb3bf",
    "brain": "#f48fb1",
}


def group_scale() -> alt.Scale:
    return alt.Scale(domain=list(GROUPS), range=[GROUP_COLOURS[g] for g in GROUPS])


def coverage_chart(coverage: dict[str, int]) -> alt.Chart | None:
    """Bars: subjects containing each structure (only structures present somewhere), by group."""
    df = pd.DataFrame(
        [(name, n, GROUP_OF[name]) for name, n in coverage.items() if n > 0],
        columns=["structure", "subjects", "group"],
    )
    if df.empty:
        return None
    df = df.sort_values(["subjects", "structure"], ascending=[False, True])
    return (
        alt.Chart(df)
        .mark_bar()
        .encode(
            x=alt.X(
                "structure:N",
                sort=list(df["structure"]),
                title=None,
                axis=alt.Axis(labelAngle=-90, labelLimit=150),
            ),
            y=alt.Y("subjects:Q", title="subjects containing it", axis=alt.Axis(tickMinStep=1)),
            color=alt.Color("group:N", scale=group_scale(), legend=alt.Legend(orient="top")),
            tooltip=["structure", "group", "subjects"],
        )
        # the height holds the names below the bars too (Streamlit fits the whole chart)
        .properties(height=440)
    )


def subjects_table(subjects: list[dict]) -> pd.DataFrame:
    """One row per subject of a dataset summary."""
    return pd.DataFrame(
        [
            {
                "subject": s["id"],
                "split": s["split"],
                "shape (x, y, z)": " x ".join(map(str, s["shape_xyz"])),
                "spacing mm": " x ".join(f"{v:g}" for v in s["spacing_mm"]),
                "orientation": s["orientation"],
                "structures present": s["present"],
                "not annotated": s["not_annotated"],
            }
            for s in subjects
        ]
    )
