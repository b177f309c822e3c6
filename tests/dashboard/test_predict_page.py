"""Predict page: a result belongs to its upload; the upload limit the box shows is the README's."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from markdown_kit import as_shown

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(300)


def _result_heading(at) -> list[str]:
    return [as_shown(h.value) for h in at.subheader if "structures found" in h.value]


def _predicted(new_app, name: str, data: bytes):
    """The Predict page after uploading ``data`` as ``name`` and predicting it with the tiny
    run's best.pth."""
    at = new_app("predict")
    at.run()
    at.get("file_uploader")[0].set_value((name, data, "application/gzip"))
    at.selectbox(key="ctseg_predict_checkpoint").set_value("tiny / best.pth")
    at.run()
    at.button(key="ctseg_predict_go").click()
    at.run()
    return at


def _with_checkpoint_upload(new_app, app_env, name: str, data: bytes):
    """The Predict page with a CT uploaded and ``data`` uploaded as the checkpoint ``name``."""
    at = new_app("predict")
    at.run()
    ct = (app_env["data"] / "s0003" / "ct.nii.gz").read_bytes()
    at.get("file_uploader")[0].set_value(("ct.nii.gz", ct, "application/gzip"))
    at.selectbox(key="ctseg_predict_checkpoint").set_value("(upload a checkpoint)")
    at.run()
    at.get("file_uploader")[1].set_value((name, data, "x"))
    at.run()
    return at


def test_a_new_upload_clears_the_previous_result_and_its_downloads(
    app_env, tiny_run, new_app, no_problems
):
    ct = (app_env["data"] / "s0003" / "ct.nii.gz").read_bytes()
    at = _predicted(new_app, "first.nii.gz", ct)
    no_problems(at)
    (heading,) = _result_heading(at)
    # the run and its kind, as the picker shows them (every run has a best.pth)
    assert heading.startswith("first: ") and heading.endswith("(tiny (2D) / best.pth)")
    assert len(at.get("download_button")) == 3
    at.run()  # the same upload: its result stays
    assert _result_heading(at) == [heading] and len(at.get("download_button")) == 3
    mask = (app_env["data"] / "s0003" / "segmentations" / "liver.nii.gz").read_bytes()
    at.get("file_uploader")[0].set_value(("second.nii.gz", mask, "application/gzip"))
    at.run()
    no_problems(at)
    # not "first"'s labels under "second", nor downloads of them: nothing until Predict
    assert _result_heading(at) == [] and not at.get("download_button")
    assert not at.button(key="ctseg_predict_go").disabled


def test_a_ct_of_one_slice_is_labelled_and_shown(app_env, tiny_run, new_app, no_problems, tmp_path):
    """The reader takes a one-slice series (with a note); the viewer's slice slider then had a
    range of one value, which Streamlit refuses: the page failed after labelling it."""
    import nibabel as nib
    import numpy as np

    image = nib.load(app_env["data"] / "s0003" / "ct.nii.gz")
    one = nib.Nifti1Image(np.asarray(image.dataobj)[:, :, 10:11], image.affine)
    nib.save(one, tmp_path / "one.nii.gz")
    at = _predicted(new_app, "one.nii.gz", (tmp_path / "one.nii.gz").read_bytes())
    no_problems(at)
    assert _result_heading(at) and at.get("image")
    assert "slice 1 of 1" in at.get("image")[0].proto.imgs[0].caption


def upload_box_limit(limit_mib: int) -> str:
    """The limit Streamlit's upload box shows (frontend getSizeDisplay, not on Windows): the
    size in units of 1000, moved up a unit while above half of it, rounded to an integer."""
    size, units = float(limit_mib), ["MB", "GB"]
    while len(units) > 1 and size > 500:
        size, units = size / 1000, units[1:]
    return f"{size:.0f}{units[0]}"


def test_the_upload_box_shows_the_limit_the_readme_states():
    config = (REPO / "dashboard" / ".streamlit" / "config.toml").read_text()
    (limit,) = [int(v) for v in re.findall(r"^maxUploadSize\s*=\s*(\d+)\s*$", config, re.M)]
    readme = (REPO / "dashboard" / "README.md").read_text()
    stated = re.search(r"upload limit \(`server\.maxUploadSize`\) is (\d+) MB", readme)
    assert stated and int(stated.group(1)) == limit
    assert upload_box_limit(limit) == f"{limit}MB"  # 512 would show as "1GB"
    assert upload_box_limit(512) == "1GB"
    assert limit * 2**20 > 300e6  # a 300 MB CT and the form's overhead still fit


PHANTOM_ONLY = "was trained on the synthetic phantom only, not on real CTs"


def _warnings(at) -> list[str]:
    return [w.value.replace("\\", "") for w in at.warning]  # shown as plain text: unescaped


def test_predict_warns_when_the_phantoms_model_labels_a_real_ct(
    app_env, tiny_run, s0000_root, new_app, no_problems
):
    at = new_app("predict")
    at.run()
    at.selectbox(key="ctseg_predict_checkpoint").set_value("tiny / best.pth")
    real = (s0000_root / "s0000" / "ct.nii.gz").read_bytes()  # a real CT
    at.get("file_uploader")[0].set_value(("patient.nii.gz", real, "application/gzip"))
    at.run()
    at.button(key="ctseg_predict_go").click()
    at.run()
    no_problems(at)
    assert _result_heading(at)[0].startswith("patient: ")
    found = [w for w in _warnings(at) if PHANTOM_ONLY in w]
    assert found == [
        f"tiny/best.pth {PHANTOM_ONLY}: its labels on patient.nii.gz do not follow the anatomy; "
        "use a checkpoint trained on real CTs"
    ]
    # a CT of the phantom itself, uploaded (known by its header): no such warning
    phantom = (app_env["data"] / "s0003" / "ct.nii.gz").read_bytes()
    at.get("file_uploader")[0].set_value(("phantom.nii.gz", phantom, "application/gzip"))
    at.run()
    at.button(key="ctseg_predict_go").click()
    at.run()
    no_problems(at)
    assert _result_heading(at)[0].startswith("phantom: ")
    assert _warnings(at) == []


def test_a_3d_models_box_around_the_body_is_said(
    app_env, s0000_root, tmp_path, monkeypatch, new_app, no_problems
):
    """A 3D run labels a CT with air around the body: the page says which box it labelled,
    the box ``Predictor`` finds for the same file."""
    import nibabel as nib
    import numpy as np
    import torch

    from ctseg_core.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from ctseg_core.data.volume import load_ct
    from ctseg_core.inference.predictor import Predictor
    from ctseg_core.training.trainer import Trainer

    torch.set_num_threads(1)
    config = RunConfig(
        DataConfig(data_root=str(app_env["data"]), cache_dir=str(app_env["cache"]),
                   structures=["liver", "spleen", "aorta"], batch_size=2,
                   patch_size=(32, 32, 16), spacing_mm=(6.0, 6.0, 6.0)),
        ModelConfig(name="plain_unet3d", features=[8, 16, 32], norm="instance"),
        TrainConfig(epochs=1, steps_per_epoch=1, amp="off", sample_figure=False),
        run_name="vol",
    ).validate()  # fmt: skip
    root = tmp_path / "checkpoints"
    assert Trainer(config, checkpoints_root=root).run() == "finished"
    monkeypatch.setenv("CTSEG_CHECKPOINTS", str(root))
    img = nib.load(s0000_root / "s0000" / "ct.nii.gz")
    wide = np.pad(np.asarray(img.dataobj), ((60, 60), (60, 60), (0, 0)), constant_values=-1024)
    path = tmp_path / "wide.nii.gz"
    nib.save(nib.Nifti1Image(wide.astype(np.int16), img.affine), path)
    predictor = Predictor([root / "vol" / "best.pth"], device="cpu")
    predictor.predict(load_ct(path))
    assert predictor.last_box is not None
    at = new_app("predict")
    at.run()
    at.selectbox(key="ctseg_predict_checkpoint").set_value("vol / best.pth")
    at.get("file_uploader")[0].set_value(("wide.nii.gz", path.read_bytes(), "application/gzip"))
    at.run()
    at.button(key="ctseg_predict_go").click()
    at.run()
    no_problems(at)
    spans = ", ".join(
        f"{a} {s.start}-{s.stop - 1}" for a, s in zip("xyz", predictor.last_box, strict=True)
    )
    said = [c.value for c in at.caption if "box around the body" in c.value]
    assert said == [
        f"The 3D model labelled the box around the body (RAS voxel indices {spans}, "
        "inclusive); the rest is background."
    ]


def test_refusals_name_the_uploads_once_with_their_advice_once(app_env, tiny_run, new_app):
    """The page rewrites a refusal to name the uploads, not its temporary copies: it rebuilt the
    error through its class, which added a checkpoint's advice twice (found by a review) and
    would fail for an error class taking more than the text (a 2D CT's)."""
    import gzip

    import nibabel as nib
    import numpy as np

    flat = nib.Nifti1Image(np.zeros((16, 12), np.int16), np.eye(4))
    at = _predicted(new_app, "flat.nii.gz", gzip.compress(flat.to_bytes()))
    assert not at.exception
    (error,) = [as_shown(e.value) for e in at.error]
    assert error.startswith("prediction: flat.nii.gz has shape (16, 12) (2D); a 3D volume is")
    at = _with_checkpoint_upload(new_app, app_env, "junk.pth", b"not a checkpoint")
    at.button(key="ctseg_predict_go").click()
    at.run()
    assert not at.exception
    (error,) = [as_shown(e.value) for e in at.error]
    assert "junk.pth" in error and error.count("use best.pth/last.pth of a ctseg run") == 1


def test_a_file_that_is_no_checkpoint_keeps_the_form(app_env, tiny_run, new_app):
    """An upload named x.ckpt was refused in one line, and the resample box and the Predict
    button vanished with it until another file was chosen (found by a review)."""
    at = _with_checkpoint_upload(new_app, app_env, "x.ckpt", b"weights")
    assert not at.exception
    assert [as_shown(e.value) for e in at.error] == [
        "x.ckpt is not a checkpoint; upload a .pth file written by ctseg"
    ]
    assert at.button(key="ctseg_predict_go").disabled
    assert at.checkbox(key="ctseg_predict_resample_uneven") is not None
