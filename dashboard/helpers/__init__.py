"""Rendering helpers shared by the dashboard pages (no st.cache_* and no session keys here)."""
