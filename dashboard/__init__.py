"""The ctseg Streamlit dashboard (entry: `streamlit run dashboard/Home.py`)."""
