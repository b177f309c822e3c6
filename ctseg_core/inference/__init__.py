"""Inference: one predictor for checkpoints and ensembles, files in and files out.

``predictor`` labels a canonical CT; ``files`` reads a CT file and writes labels on its own grid;
``label_files`` writes the 3D Slicer / ITK-SNAP colour tables.
"""

from .files import predict_file
from .predictor import Predictor, predict_volume

__all__ = ["Predictor", "predict_file", "predict_volume"]
