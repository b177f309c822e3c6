"""ctseg_core: train, evaluate and explore multi-organ CT segmentation (TotalSegmentator layout).

The library never imports streamlit; the dashboard and the CLI are thin layers over it.
"""

__version__ = "0.1.0"
