"""Evaluation: subject x structure tables, summaries, detection, reports and their folders.

``evaluate`` scores predictions against references; ``prediction_files`` finds a folder's
prediction of a subject and reads it onto its reference's grid; ``tables`` summarises;
``report`` draws the figures and 3D pages; ``paths`` names the output folder of each source;
``compare`` puts two evaluations side by side, structure by structure.
"""

from .evaluate import evaluate_predictions

__all__ = ["evaluate_predictions"]
