"""The dashboard's pages: built once per run by the router; links and switches use PAGE_FILES."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

_DIR = Path(__file__).resolve().parent / "app_pages"

#: page name -> script path relative to the entry file (what st.page_link/st.switch_page accept)
PAGE_FILES = {
    name: f"app_pages/{name}.py" for name in ("home", "train", "evaluate", "explore", "predict")
}

_META = {
    "home": ("Home", ":material/home:"),
    "train": ("Train", ":material/model_training:"),
    "evaluate": ("Evaluate", ":material/leaderboard:"),
    "explore": ("Explore", ":material/view_in_ar:"),
    "predict": ("Predict", ":material/online_prediction:"),
}


def build_pages() -> list[st.Page]:
    """The st.Page objects in menu order (Home is the default page)."""
    return [
        st.Page(_DIR / f"{name}.py", title=title, icon=icon, default=name == "home")
        for name, (title, icon) in _META.items()
    ]
