"""Prediction layers are cached by a key that changes when the checkpoint or file is rewritten."""

from __future__ import annotations

import os

from dashboard import cached_predictions


def test_a_rewritten_checkpoint_or_prediction_file_gets_a_new_cache_key(tmp_path):
    checkpoint = tmp_path / "run" / "best.pth"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"first")
    first = cached_predictions.prediction_source("root", "s0000", checkpoint=str(checkpoint))
    assert (
        cached_predictions.prediction_source("root", "s0000", checkpoint=str(checkpoint)) == first
    )
    os.utime(checkpoint, ns=(1, checkpoint.stat().st_mtime_ns + 10**9))  # training wrote it again
    assert (
        cached_predictions.prediction_source("root", "s0000", checkpoint=str(checkpoint)) != first
    )
    assert (
        cached_predictions.prediction_source("root", "s0001", checkpoint=str(checkpoint)) != first
    )

    folder = tmp_path / "predictions"
    folder.mkdir()
    (folder / "s0000.nii.gz").write_bytes(b"x")
    before = cached_predictions.prediction_source("root", "s0000", folder=str(folder))
    os.utime(folder / "s0000.nii.gz", ns=(1, (folder / "s0000.nii.gz").stat().st_mtime_ns + 10**9))
    assert cached_predictions.prediction_source("root", "s0000", folder=str(folder)) != before
