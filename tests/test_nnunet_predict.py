"""ctseg runs nnU-Net v2 model folders as nnU-Net's own nnUNetPredictor does, voxel for voxel.

The folders are built with nnU-Net's code (``tests/nnunet_kit.py``: its plans layout, network
builder and checkpoint keys; tiny random networks) and predicted on a block of the real CT
s0000 with a zeroed border (so nnU-Net's crop to the nonzero box matters). Both sides run
with one torch thread. ctseg repeats nnU-Net's arithmetic (float16 accumulation included), so
the labels are equal; a voxel where two classes' logits tie within float error may still go
either way, and the share of such voxels allowed is ``MAX_TIE_SHARE``.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from ctseg_core.data.volume import load_ct
from ctseg_core.nnunet.model import NnunetPredictor

pytest.importorskip("nnunetv2")
from nnunet_kit import nnunet_reference, nnunet_reference_file, write_model_folder

#: voxels whose label may differ from nnUNetPredictor's (argmax ties within float error);
#: measured: 0 in every case below
MAX_TIE_SHARE = 1e-4

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _compare(folder, ct_path, folds):
    reference = nnunet_reference(folder, ct_path, folds).transpose(2, 1, 0)  # (k,j,i) -> RAS
    ours = NnunetPredictor(folder, device="cpu").predict(load_ct(ct_path), own_values=True)
    assert ours.shape == reference.shape == nib.load(ct_path).shape
    present = np.bincount(reference.ravel(), minlength=5)
    # a real comparison: several labels, two of them on over 1 % of the voxels
    assert (present > 0).sum() >= 3 and (present > 0.01 * reference.size).sum() >= 2, present
    share = float((ours != reference).mean())
    assert share <= MAX_TIE_SHARE, f"{share:.2e} of voxels differ"
    return share


@pytest.mark.parametrize("folds", [1, 2])
def test_3d_fullres_labels_equal_nnunet_predictor(tmp_path, small_ct, folds):
    folder = write_model_folder(tmp_path, "3d_fullres", [4.5, 5.0, 4.0], [16, 32, 32],
                                [0, 2, 1], folds=folds)  # fmt: skip
    assert _compare(folder, small_ct, folds) == 0.0


def test_3d_residual_anisotropic_labels_equal_nnunet_predictor(tmp_path, small_ct):
    """Residual encoder; 9.5 mm on the first axis (over 3x the others: resampled on its own);
    mirroring allowed on two axes only."""
    folder = write_model_folder(tmp_path, "3d_fullres", [9.5, 3.5, 3.0], [8, 32, 32],
                                [0, 1, 2], folds=2, residual=True, mirror_axes=(1, 2))  # fmt: skip
    assert _compare(folder, small_ct, 2) == 0.0


def test_3d_lowres_inheriting_from_3d_fullres_labels_equal_nnunet_predictor(tmp_path, small_ct):
    """A 3d_lowres configuration as nnU-Net plans it beside 3d_fullres: everything inherited
    (``inherits_from``) but its own coarser spacing and patch, which both sides must take."""
    folder = write_model_folder(tmp_path, "3d_lowres", [7.0, 6.0, 5.0], [16, 16, 16], [0, 2, 1])
    plans = json.loads((folder / "plans.json").read_text())
    lowres = plans["configurations"]["3d_lowres"]
    plans["configurations"] = {
        "3d_fullres": {**lowres, "spacing": [3.0, 3.0, 3.0], "patch_size": [32, 48, 48],
                       "data_identifier": "nnUNetPlans_3d_fullres"},
        "3d_lowres": {"inherits_from": "3d_fullres", "spacing": lowres["spacing"],
                      "patch_size": lowres["patch_size"],
                      "data_identifier": "nnUNetPlans_3d_lowres"},
    }  # fmt: skip
    (folder / "plans.json").write_text(json.dumps(plans, indent=4))
    config = NnunetPredictor(folder, device="cpu").models[0][0].folder.config
    assert config.spacing_mm == (7.0, 6.0, 5.0) and config.patch_size == (16, 16, 16)
    assert _compare(folder, small_ct, 1) == 0.0


def test_a_model_with_an_ignore_label_equals_nnunet_predictor_and_a_cascade_is_refused(
    tmp_path, small_ct
):
    """dataset.json's "ignore" label is no output (nnU-Net builds no head for it; ctseg built
    one, and the checkpoint did not fit); a cascade's second stage needs the first stage's
    prediction as input: refused in one line naming it."""
    from nnunet_kit import LABELS

    from ctseg_core.errors import ConfigError

    labels = {**LABELS, "ignore": max(LABELS.values()) + 1}
    folder = write_model_folder(tmp_path / "ignore", "3d_fullres", [4.5, 5.0, 4.0], [16, 32, 32],
                                [0, 2, 1], labels=labels)  # fmt: skip
    assert _compare(folder, small_ct, 1) == 0.0
    folder = write_model_folder(tmp_path / "cascade", "3d_fullres", [4.5, 5.0, 4.0],
                                [16, 32, 32], [0, 2, 1])  # fmt: skip
    plans = json.loads((folder / "plans.json").read_text())
    plans["configurations"]["3d_lowres"] = {"inherits_from": "3d_fullres",
                                            "spacing": [9.0, 10.0, 8.0]}  # fmt: skip
    plans["configurations"]["3d_cascade_fullres"] = {"inherits_from": "3d_fullres",
                                                     "previous_stage": "3d_lowres"}  # fmt: skip
    cascade = folder.with_name("nnUNetTrainer__nnUNetPlans__3d_cascade_fullres")
    folder.rename(cascade)
    (cascade / "plans.json").write_text(json.dumps(plans))
    ckpt = cascade / "fold_0" / "checkpoint_final.pth"
    content = torch.load(ckpt, weights_only=False)  # trained as the cascade's stage, as named
    content["init_args"]["configuration"] = "3d_cascade_fullres"
    torch.save(content, ckpt)
    with pytest.raises(ConfigError, match="3d_cascade_fullres is a cascade's second stage"):
        NnunetPredictor(cascade, device="cpu")


@pytest.mark.parametrize("folds", [1, 2])
def test_2d_labels_equal_nnunet_predictor(tmp_path, small_ct, folds):
    folder = write_model_folder(tmp_path, "2d", [5.0, 4.0], [32, 32], [0, 2, 1], folds=folds,
                                mirror_axes=(0, 1))  # fmt: skip
    assert _compare(folder, small_ct, folds) == 0.0


def _reoriented_copy(source, path, axcodes):
    """The CT of ``source`` stored with voxel axes ``axcodes`` (same world, other array)."""
    img = nib.load(source)
    ornt = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(img.affine), nib.orientations.axcodes2ornt(axcodes)
    )
    nib.save(img.as_reoriented(ornt), path)
    return path


@pytest.mark.parametrize("reader", ["SimpleITKIO", "NibabelIO", "NibabelIOWithReorient"])
@pytest.mark.parametrize("axcodes", [("L", "P", "S"), ("S", "L", "P")])
def test_every_reader_on_a_non_ras_file_equals_nnunet_predictor(
    tmp_path, small_ct, reader, axcodes
):
    """Each reader hands the network the voxel axes reversed (the file's, or RAS+'s for
    NibabelIOWithReorient); nnU-Net's labels, written by its own writer and read back into RAS+
    by nibabel, are ctseg's."""
    ct_path = _reoriented_copy(small_ct, tmp_path / "ct.nii.gz", axcodes)
    folder = write_model_folder(tmp_path / "model", "3d_fullres", [4.5, 5.0, 4.0], [16, 32, 32],
                                [0, 2, 1], reader=reader)  # fmt: skip
    written = nnunet_reference_file(folder, ct_path, 1, tmp_path / "nnunet.nii.gz")
    reference = np.asarray(nib.as_closest_canonical(nib.load(written)).dataobj)
    ours = NnunetPredictor(folder, device="cpu").predict(load_ct(ct_path), own_values=True)
    assert ours.shape == reference.shape
    present = np.bincount(reference.ravel(), minlength=5)
    assert (present > 0.01 * reference.size).sum() >= 2, present
    assert float((ours != reference).mean()) <= MAX_TIE_SHARE


def test_a_totalsegmentator_model_gets_the_ct_in_ras_as_totalsegmentator_gives_it(
    tmp_path, small_ct
):
    """TotalSegmentator reorients every CT with ``as_closest_canonical`` before its nnU-Net models
    see it. ctseg does the same for a model folder of TotalSegmentator's (here by its dataset
    name; SimpleITKIO plans, as its models have): the labels of an LPS file are nnU-Net's labels
    of the file reoriented to RAS+, and differ widely from those of the LPS voxel order."""
    ct_path = _reoriented_copy(small_ct, tmp_path / "ct.nii.gz", ("L", "P", "S"))
    canonical = nib.as_closest_canonical(nib.load(ct_path))
    nib.save(canonical, tmp_path / "canonical.nii.gz")
    root = tmp_path / "Dataset297_TotalSegmentator_total_3mm_1559subj"
    # no mirroring, as TotalSegmentator's NoMirroring trainers (mirroring would average the
    # flips the test must tell apart)
    folder = write_model_folder(root, "3d_fullres", [4.5, 5.0, 4.0], [16, 32, 32], [0, 1, 2],
                                mirror_axes=None)  # fmt: skip
    written = nnunet_reference_file(
        folder, tmp_path / "canonical.nii.gz", 1, tmp_path / "ts.nii.gz"
    )
    reference = np.asarray(nib.load(written).dataobj)  # RAS+, as the file it labels
    ct = load_ct(ct_path)
    ours = NnunetPredictor(folder, device="cpu").predict(ct, own_values=True)
    assert ours.shape == reference.shape
    assert (np.bincount(reference.ravel()) > 0.01 * reference.size).sum() >= 2
    assert float((ours != reference).mean()) <= MAX_TIE_SHARE
    as_file = NnunetPredictor(folder, device="cpu", orientation="file").predict(ct, own_values=True)
    assert float((as_file != reference).mean()) > 0.05  # the file's voxel order: mirrored anatomy


def test_totalsegmentator_folders_are_recognised(tmp_path, monkeypatch):
    from ctseg_core.labels import PARTS
    from ctseg_core.nnunet.labels import is_totalsegmentator, value_names

    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "ts_home"))
    trainer = "nnUNetTrainer_4000epochs_NoMirroring__nnUNetPlans__3d_fullres"
    assert is_totalsegmentator(
        tmp_path / "Dataset291_TotalSegmentator_part1_organs_1559subj" / trainer
    )
    # an id alone is the user's choice: a Dataset292 of one's own keeps its names and its
    # orientation (it was read as TotalSegmentator's vertebrae part, labels renamed)
    assert not is_totalsegmentator(tmp_path / "Dataset298_x" / trainer)
    mine = tmp_path / "Dataset292_Tumours" / trainer
    assert not is_totalsegmentator(mine)
    assert value_names({0: "background", 1: "tumour", 2: "cyst"}, mine) == {1: "tumour", 2: "cyst"}
    part = tmp_path / "Dataset292_TotalSegmentator_part2_vertebrae_1532subj" / trainer
    assert value_names({0: "background", 1: "a", 2: "b"}, part) == {
        1: PARTS["vertebrae"][0], 2: PARTS["vertebrae"][1],
    }  # fmt: skip
    assert is_totalsegmentator(
        tmp_path / "ts_home" / "nnunet" / "results" / "Dataset258_lung" / trainer
    )
    assert not is_totalsegmentator(tmp_path / "Dataset123_Mine" / trainer)
