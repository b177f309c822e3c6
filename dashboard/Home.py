"""Entry of the ctseg dashboard: `streamlit run dashboard/Home.py` from the repository root.

This file is the router (st.navigation); each page lives in dashboard/app_pages/.
"""

from __future__ import annotations

import sys
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(_REPO))

import streamlit as st  # noqa: E402

from dashboard.pages_index import build_pages  # noqa: E402

st.set_page_config(page_title="ctseg", page_icon=":material/body_system:", layout="wide")
from dashboard import state  # noqa: E402

state.keep_widget_state()
st.navigation(build_pages(), position="sidebar").run()
