"""nnU-Net model folders in ctseg: bad folders get one line, checkpoints load with
weights_only, labels map to TotalSegmentator v2 names, TotalSegmentator's five parts combine,
and ``ctseg predict --model`` / ``ctseg evaluate --model`` run them."""

from __future__ import annotations

import json
import pathlib

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from ctseg_core.cli import main
from ctseg_core.data.volume import load_ct
from ctseg_core.errors import ConfigError
from ctseg_core.labels import LABEL_OF, PARTS
from ctseg_core.nnunet.folder import load_weights, read_model_folder
from ctseg_core.nnunet.model import NnunetPredictor

pytest.importorskip("nnunetv2")
from nnunet_kit import write_model_folder

TS_LABELS = {"background": 0, "spleen": 1, "liver": 2, "aorta": 3}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model_2d(root, labels=TS_LABELS, mirror_axes=(0, 1), **kwargs):
    return write_model_folder(root, "2d", [5.0, 4.0], [32, 32], [0, 2, 1], labels=labels,
                              mirror_axes=mirror_axes, **kwargs)  # fmt: skip


def test_broken_folders_name_the_missing_or_wrong_file(tmp_path):
    folder = _model_2d(tmp_path)
    ckpt = folder / "fold_0" / "checkpoint_final.pth"
    (folder / "plans.json").rename(folder / "plans.bak")
    with pytest.raises(ConfigError, match=r"plans\.json is missing"):
        read_model_folder(folder)
    (folder / "plans.bak").rename(folder / "plans.json")
    with pytest.raises(ConfigError, match=r"fold_3/checkpoint_final\.pth is missing"):
        read_model_folder(folder, folds=[3])
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match=r"checkpoint_final\.pth is not a loadable"):
        NnunetPredictor(folder, device="cpu")
    (folder / "dataset.json").write_text("{")
    assert main(["predict", "--model", str(folder), "--ct", "x.nii.gz", "--out",
                 str(tmp_path / "o.nii.gz")]) == 2  # fmt: skip


def test_checkpoint_loads_weights_only_and_refuses_other_objects(tmp_path):
    folder = _model_2d(tmp_path)
    ckpt = folder / "fold_0" / "checkpoint_final.pth"
    state, axes = load_weights(ckpt)  # numpy scalars and torch.device inside: allowed
    assert axes == (0, 1) and state["decoder.seg_layers.1.weight"].shape[0] == 4
    content = torch.load(ckpt, weights_only=False)
    content["init_args"]["path"] = pathlib.PurePosixPath("/x")  # any other class is refused
    torch.save(content, ckpt)
    with pytest.raises(ConfigError, match="not a loadable nnU-Net checkpoint"):
        load_weights(ckpt)


def test_folds_are_chosen_as_nnunets_predictor_chooses_them(tmp_path):
    """Every numbered fold with checkpoint_final.pth: not fold_all beside them, not an
    unfinished fold holding only checkpoint_best.pth (both were averaged in, 7 % of voxels
    off nnU-Net's labels); fold_all when it is the only one; checkpoint_best.pth in every fold
    of a folder without a final one."""
    import shutil

    folder = write_model_folder(tmp_path, "2d", [5.0, 4.0], [32, 32], [0, 2, 1], folds=3,
                                labels=TS_LABELS, mirror_axes=(0, 1))  # fmt: skip
    shutil.copytree(folder / "fold_0", folder / "fold_all")
    (folder / "fold_2" / "checkpoint_final.pth").rename(folder / "fold_2" / "checkpoint_best.pth")
    picked = read_model_folder(folder).checkpoints
    assert [p.relative_to(folder).as_posix() for p in picked] == [
        "fold_0/checkpoint_final.pth", "fold_1/checkpoint_final.pth",
    ]  # fmt: skip
    with pytest.raises(ConfigError, match=r"fold_2/checkpoint_final\.pth is missing"):
        read_model_folder(folder, folds=[2])
    best = read_model_folder(folder, folds=[2], checkpoint="checkpoint_best.pth").checkpoints
    assert best == [folder / "fold_2" / "checkpoint_best.pth"]
    for fold in ("fold_0", "fold_1", "fold_2"):
        shutil.rmtree(folder / fold)
    assert read_model_folder(folder).checkpoints == [folder / "fold_all" / "checkpoint_final.pth"]
    (folder / "fold_all" / "checkpoint_final.pth").rename(
        folder / "fold_all" / "checkpoint_best.pth"
    )
    assert read_model_folder(folder).checkpoints == [folder / "fold_all" / "checkpoint_best.pth"]


def test_a_checkpoint_pickled_under_numpy_1_loads(tmp_path):
    """numpy 1.x names its scalars ``numpy.core.multiarray.scalar`` in a pickle (every nnU-Net
    and TotalSegmentator checkpoint saved before numpy 2); they were refused as unsafe."""
    import zipfile

    folder = _model_2d(tmp_path)
    ckpt = folder / "fold_0" / "checkpoint_final.pth"
    old = tmp_path / "numpy1.pth"
    renamed = 0
    with zipfile.ZipFile(ckpt) as src, zipfile.ZipFile(old, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("data.pkl"):
                renamed = data.count(b"numpy._core.multiarray\nscalar")
                data = data.replace(
                    b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar"
                )
            dst.writestr(info, data)
    assert renamed >= 1
    state, axes = load_weights(old)
    expected, _ = load_weights(ckpt)
    assert axes == (0, 1) and state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in state)


def test_labels_map_to_v2_names_and_others_keep_their_own(tmp_path, small_ct):
    folder = _model_2d(tmp_path, labels={**TS_LABELS, "my_tumour": 4}, mirror_axes=None)
    predictor = NnunetPredictor(folder, device="cpu")
    assert predictor.structures == ["spleen", "liver", "aorta"]
    assert predictor.other_labels == {4: "my_tumour"}
    ct = load_ct(small_ct)
    own = predictor.predict(ct, own_values=True)
    ours = predictor.predict(ct)
    assert set(np.unique(own)) == {0, 1, 2, 3, 4}
    lut = np.array([0, LABEL_OF["spleen"], LABEL_OF["liver"], LABEL_OF["aorta"], 0])
    np.testing.assert_array_equal(ours, lut[own])


def test_a_model_with_its_own_labels_replaces_the_earlier_label_files(tmp_path, small_ct):
    """A model with labels outside TotalSegmentator's writes OUT_labels.json: a file of the
    user's of that name is refused without --overwrite, as OUT.nii.gz is; over an earlier
    prediction with --overwrite, its .ctbl / ITK-SNAP files, which name the values otherwise
    (3D Slicer, ctseg stats and evaluate read them), are removed and the summary says so."""
    from ctseg_core.inference.files import predict_file

    own = _model_2d(tmp_path / "own", labels={**TS_LABELS, "my_tumour": 4}, mirror_axes=None)
    ours = _model_2d(tmp_path / "ours", mirror_axes=None)
    folder = tmp_path / "pred"
    folder.mkdir()
    out = folder / "s0000.nii.gz"
    (folder / "s0000_labels.json").write_text('{"my": "notes"}\n')
    with pytest.raises(ConfigError, match=r"s0000_labels\.json exists; pass --overwrite"):
        predict_file(small_ct, [], out, model=own, device="cpu")
    assert (folder / "s0000_labels.json").read_text() == '{"my": "notes"}\n'
    assert sorted(p.name for p in folder.iterdir()) == ["s0000_labels.json"]

    (folder / "s0000_labels.json").unlink()
    predict_file(small_ct, [], out, model=ours, device="cpu")
    assert sorted(p.name for p in folder.iterdir()) == [
        "s0000.ctbl", "s0000.nii.gz", "s0000_itksnap_labels.txt"]  # fmt: skip
    summary = predict_file(small_ct, [], out, model=own, device="cpu", overwrite=True)
    assert sorted(p.name for p in folder.iterdir()) == ["s0000.nii.gz", "s0000_labels.json"]
    assert json.loads((folder / "s0000_labels.json").read_text())["4"] == "my_tumour"
    assert any("removed s0000.ctbl, s0000_itksnap_labels.txt" in w for w in summary["warnings"])


def test_totalsegmentator_parts_combine_into_117_structures(tmp_path, small_ct):
    results = tmp_path / "results"
    parts = {}
    for number, (group, names) in zip(range(291, 296), PARTS.items(), strict=True):
        # the organs part with generic names: its dataset id names its structures
        labels = {"background": 0, **{
            (f"class_{i}" if group == "organs" else n): i for i, n in enumerate(names, start=1)
        }}  # fmt: skip
        parts[group] = _model_2d(results / f"Dataset{number}_TotalSegmentator_part_{group}",
                                 labels=labels, mirror_axes=None, seed=number)  # fmt: skip
    predictor = NnunetPredictor(results, device="cpu", tta=False)
    assert predictor.structures == sorted(LABEL_OF, key=LABEL_OF.get)
    ct = load_ct(small_ct)
    combined = predictor.predict(ct)
    expected = np.zeros_like(combined)
    for group, folder in parts.items():
        alone = NnunetPredictor(folder, device="cpu", tta=False).predict(ct, own_values=True)
        first = LABEL_OF[PARTS[group][0]]
        expected[alone > 0] = alone[alone > 0] + first - 1  # later parts win shared voxels
    np.testing.assert_array_equal(combined, expected)
    found = np.unique(combined)
    assert len(found) > 10 and found[1] < LABEL_OF[PARTS["ribs"][0]] <= found[-1]  # two parts
    (results / "Dataset293_TotalSegmentator_part_cardiac").rename(results / "moved")
    with pytest.raises(ConfigError, match="not Dataset293"):
        NnunetPredictor(results, device="cpu")


def test_cli_predict_and_evaluate_with_a_model_folder(tmp_path, small_ct, s0000_root, capsys):
    folder = _model_2d(tmp_path / "model")
    out = tmp_path / "pred" / "s0000.nii.gz"
    assert main(["predict", "--model", str(folder), "--ct", str(small_ct), "--out", str(out),
                 "--device", "cpu", "--json"]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    written = np.asarray(nib.load(out).dataobj)
    expected = NnunetPredictor(folder, device="cpu").predict(load_ct(small_ct))
    np.testing.assert_array_equal(written, expected)  # RAS file: canonical == on disk
    assert set(summary["structures_found"]) <= {"spleen", "liver", "aorta"}
    assert summary["model"] == str(folder) and summary["tta"] is True  # axes (0, 1) allowed
    # a folder that allows mirroring on no axis (as ctseg's export writes) is not mirrored,
    # and the CLI says so (it said "mirroring on")
    ckpt = folder / "fold_0" / "checkpoint_final.pth"
    content = torch.load(ckpt, weights_only=False)
    content["inference_allowed_mirroring_axes"] = None
    torch.save(content, ckpt)
    again = tmp_path / "pred" / "again.nii.gz"
    assert main(["predict", "--model", str(folder), "--ct", str(small_ct), "--out", str(again),
                 "--device", "cpu"]) == 0  # fmt: skip
    assert "(nnU-Net, mirroring off: the model allows it on no axis)" in capsys.readouterr().out

    assert main(["evaluate", "--model", str(folder), "--data", str(s0000_root), "--split",
                 "all", "--out", str(tmp_path / "eval"), "--no-report", "--device", "cpu",
                 "--no-mirroring"]) == 0  # fmt: skip
    table = pd.read_csv(tmp_path / "eval" / "evaluation_results_all.csv")
    # scored: the structures both the model and the references have
    assert set(table["structure"]) == {"spleen", "liver", "aorta"}
    assert table["dice"].between(0, 1).all()


def test_string_label_values_and_a_patch_of_the_wrong_rank_are_named_in_one_line(tmp_path):
    folder = _model_2d(tmp_path)
    dataset = json.loads((folder / "dataset.json").read_text())
    dataset["labels"]["liver"] = "2"
    (folder / "dataset.json").write_text(json.dumps(dataset))
    with pytest.raises(ConfigError, match="label 'liver' has value '2'; nnU-Net's label values"):
        read_model_folder(folder)
    dataset["labels"]["liver"] = 2
    (folder / "dataset.json").write_text(json.dumps(dataset))
    plans = json.loads((folder / "plans.json").read_text())
    plans["configurations"]["2d"]["patch_size"] = [32, 32, 32]  # a 3D patch for a 2D network
    (folder / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(ConfigError, match=r"configuration '2d' has patch_size \[32, 32, 32\]"):
        read_model_folder(folder)


def test_the_configuration_is_the_one_the_checkpoint_was_trained_as(tmp_path):
    """As nnU-Net's predictor: ``init_args["configuration"]`` of the first fold decides, not the
    folder's name (a folder named for 3d_fullres whose plans also held 2d ran 3d_fullres)."""
    folder = _model_2d(tmp_path)
    plans = json.loads((folder / "plans.json").read_text())
    # another patch under the other name (the network stays 2D: only the name differs)
    plans["configurations"]["3d_fullres"] = {
        **plans["configurations"]["2d"],
        "patch_size": [16, 16],
    }
    (folder / "plans.json").write_text(json.dumps(plans))
    renamed = folder.rename(folder.with_name("nnUNetTrainer__nnUNetPlans__3d_fullres"))
    read = read_model_folder(renamed)
    assert read.config.name == "2d" and read.config.patch_size == (32, 32)
    with pytest.raises(ConfigError, match=r"checkpoint_final\.pth was trained as '2d', not '3d_"):
        read_model_folder(renamed, configuration="3d_fullres")
    del plans["configurations"]["2d"]
    (renamed / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(ConfigError, match=r"trained as '2d', which .*plans\.json does not hold"):
        read_model_folder(renamed)
    # a checkpoint that does not say: the folder's name, and a name the plans lack is refused
    ckpt = renamed / "fold_0" / "checkpoint_final.pth"
    content = torch.load(ckpt, weights_only=False)
    del content["init_args"]
    torch.save(content, ckpt)
    assert read_model_folder(renamed).config.name == "3d_fullres"
    content["init_args"] = {"configuration": "2d"}  # a legacy (not zip) file says so too
    plans["configurations"]["2d"] = plans["configurations"]["3d_fullres"]
    (renamed / "plans.json").write_text(json.dumps(plans))
    torch.save(content, ckpt, _use_new_zipfile_serialization=False)
    assert read_model_folder(renamed).config.name == "2d"
    del plans["configurations"]["2d"], content["init_args"]
    torch.save(content, ckpt)
    plans["configurations"] = {"3d_lowres": plans["configurations"]["3d_fullres"]}
    (renamed / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(
        ConfigError, match=r"named for '3d_fullres', which .* not hold .*: rename the folder"
    ):
        read_model_folder(renamed)
