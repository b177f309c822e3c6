"""Prediction layers are cached by a key that changes when the checkpoint or file is rewritten,
or the subject's CT."""

from __future__ import annotations

import os
import shutil

from dashboard import cached_predictions


def _later(path) -> None:
    os.utime(path, ns=(1, path.stat().st_mtime_ns + 10**9))


def test_a_rewritten_checkpoint_prediction_file_or_ct_gets_a_new_cache_key(app_env, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(app_env["data"], root)
    source = cached_predictions.prediction_source
    checkpoint = tmp_path / "run" / "best.pth"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"first")
    first = source(root, "s0000", checkpoint=str(checkpoint))
    assert source(root, "s0000", checkpoint=str(checkpoint)) == first
    _later(checkpoint)  # training wrote it again
    second = source(root, "s0000", checkpoint=str(checkpoint))
    assert second != first
    assert source(root, "s0001", checkpoint=str(checkpoint)) != second
    _later(root / "s0000" / "ct.nii.gz")  # the CT replaced on disk
    assert source(root, "s0000", checkpoint=str(checkpoint)) != second

    folder = tmp_path / "predictions"
    folder.mkdir()
    (folder / "s0000.nii.gz").write_bytes(b"x")
    before = source(root, "s0000", folder=str(folder))
    _later(folder / "s0000.nii.gz")
    assert source(root, "s0000", folder=str(folder)) != before
