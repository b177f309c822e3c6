"""Evaluation on real files: Dice equal to an independent computation, grids resampled by affine,
not-annotated structures excluded, bad predictions refused, outputs written whole."""

from __future__ import annotations

import json
import re
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from ctseg_core.cli import main
from ctseg_core.config import DataConfig, ModelConfig, RunConfig
from ctseg_core.errors import ConfigError, DataError
from ctseg_core.evaluation.evaluate import evaluate_predictions
from ctseg_core.labels import LABEL_OF, STRUCTURES
from ctseg_core.metrics.stats import volume_statistics
from ctseg_core.models import build_model, register
from ctseg_core.models.checkpoint import save_checkpoint

torch.set_num_threads(1)


class BoneRule(nn.Module):
    """Not a learned model: its one structure wherever the centre slice is above 150.5 HU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centre = x[:, x.shape[1] // 2 : x.shape[1] // 2 + 1]
        return torch.cat([torch.zeros_like(centre), (centre - 0.1505) * 50], dim=1)


register("test_eval_bone_rule")(lambda cfg: BoneRule())


def rule_checkpoint(path, structures, target=(64, 64)):
    cfg = RunConfig(
        data=DataConfig(target_size=target, structures=list(structures)),
        model=ModelConfig(name="test_eval_bone_rule"),
    )
    save_checkpoint(path, build_model(cfg.model), config=cfg)
    return path


def independent_dice(reference_mask: np.ndarray, predicted_mask: np.ndarray) -> float:
    a, b = reference_mask.astype(bool), predicted_mask.astype(bool)
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def one_prediction(folder, subject, source):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{subject}.nii.gz").write_bytes(source.read_bytes())
    return folder


def train_pair(s0000_root, root):
    """A train split of two real subjects: s0000 and a copy of it named s0001."""
    for sid in ("s0000", "s0001"):
        shutil.copytree(s0000_root / "s0000", root / sid)
    (root / "meta.csv").write_text("image_id;split\ns0000;train\ns0001;train\n")
    return root


def test_totalsegmentator_fast_prediction_dice_equals_independent_computation(
    tmp_path, s0000_root, extra_dir
):
    pred_file = extra_dir / "s0000_totalsegmentator_fast_multilabel.nii.gz"
    folder = one_prediction(tmp_path / "pred", "s0000", pred_file)
    results = evaluate_predictions(
        s0000_root, "train", folder, tmp_path / "out", subjects=["s0000"]
    )
    assert len(results) == 117  # every structure annotated in s0000, one row each
    predicted = np.asarray(nib.load(str(pred_file)).dataobj)
    checked = 0
    for name in STRUCTURES:
        mask = np.asarray(
            nib.load(str(s0000_root / "s0000" / "segmentations" / f"{name}.nii.gz")).dataobj
        )
        row = results.loc[results["structure"] == name].iloc[0]
        if not mask.any():
            assert np.isnan(row["dice"])
            continue
        expected = independent_dice(mask, predicted == LABEL_OF[name])
        assert row["dice"] == pytest.approx(expected, abs=1e-12), name
        assert row["ref_volume_ml"] == pytest.approx(np.count_nonzero(mask) * 0.027)
        checked += 1
    assert checked == 41
    scored = results.dropna(subset=["dice"])
    assert 0.85 < scored["dice"].mean() < 0.95  # a real second opinion, not a copy
    missed = results.loc[results["status"] == "missed", "structure"].tolist()
    assert missed == ["lung_middle_lobe_right"]
    assert np.isinf(results.set_index("structure").loc["lung_middle_lobe_right", "hd95_mm"])


def test_outputs_are_written_and_consistent(tmp_path, s0000_root, extra_dir):
    folder = one_prediction(
        tmp_path / "pred", "s0000", extra_dir / "s0000_totalsegmentator_fast_multilabel.nii.gz"
    )
    out = tmp_path / "out"
    results = evaluate_predictions(s0000_root, "train", folder, out, subjects=["s0000"])
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([
        "evaluation_results_train.csv", "summary_train.csv", "detection_train.csv",
        "metrics_distribution_train.png", "structure_ranking_train.png",
        "segmentation_visualization_train.png", "3d_s0000.html", "plotly.min.js",
        "source_train.json", "skipped_train.csv",
    ])  # fmt: skip
    assert (out / "skipped_train.csv").read_text() == "subject,reason\n"  # every subject scored
    assert results.attrs["skipped"] == {}
    table = pd.read_csv(out / "evaluation_results_train.csv")
    assert list(table.columns) == [
        "subject", "structure", "group", "dice", "iou", "hd95_mm", "surface_dice",
        "ref_volume_ml", "pred_volume_ml", "status",
    ]  # fmt: skip
    np.testing.assert_allclose(table["dice"], results["dice"], equal_nan=True)
    summary = pd.read_csv(out / "summary_train.csv").set_index("structure")
    assert summary.loc["liver", "dice_mean"] == pytest.approx(
        results.set_index("structure").loc["liver", "dice"]
    )
    assert summary.loc["pancreas", "success_dice_0.7"] == 1.0
    assert summary.loc["pancreas", "success_dice_0.9"] == 0.0
    assert summary.loc["lung_middle_lobe_right", "missed"] == 1
    detection = pd.read_csv(out / "detection_train.csv")
    assert (
        detection.loc[0, "n_detected"] == 40
        and detection.loc[0, "missed"] == "lung_middle_lobe_right"
    )
    html = (out / "3d_s0000.html").read_text()
    assert html.count('"type":"mesh3d"') >= 70  # ~40 structures, reference and prediction
    assert (out / "3d_s0000.html").stat().st_size < 2_000_000
    # the page opens offline: plotly.js sits beside it, no CDN
    assert '<script charset="utf-8" src="plotly.min.js">' in html and "cdn.plot.ly" not in html
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_exact_copy_scores_one_and_another_orientation_scores_one(tmp_path, s0000_root, extra_dir):
    exact = extra_dir / "s0000_totalsegmentator_multilabel.nii.gz"
    img = nib.load(str(exact))
    lps = img.as_reoriented(nib.orientations.axcodes2ornt(("L", "P", "S")))
    assert nib.aff2axcodes(lps.affine) == ("L", "P", "S")
    folder = tmp_path / "lps"
    folder.mkdir()
    nib.save(lps, str(folder / "s0000.nii.gz"))
    for source in (one_prediction(tmp_path / "copy", "s0000", exact), folder):
        results = evaluate_predictions(
            s0000_root, "train", source, tmp_path / "o", subjects=["s0000"], report=False
        )
        present = results.dropna(subset=["dice"])
        assert len(present) == 41
        assert (present["dice"] == 1.0).all() and (present["surface_dice"] == 1.0).all()
        assert (present["hd95_mm"] == 0.0).all()
        assert set(results["status"]) == {"detected", "true_negative"}


def test_prediction_on_a_larger_grid_is_resampled_by_affine(tmp_path, s0000_root, extra_dir):
    img = nib.load(str(extra_dir / "s0000_totalsegmentator_multilabel.nii.gz"))
    data = np.asarray(img.dataobj)
    padded = np.pad(data, ((3, 5), (0, 2), (4, 1)))
    affine = img.affine.copy()
    affine[:3, 3] -= img.affine[:3, :3] @ np.array([3, 0, 4])  # the same world positions
    folder = tmp_path / "pad"
    folder.mkdir()
    nib.save(nib.Nifti1Image(padded, affine), str(folder / "s0000.nii.gz"))
    results = evaluate_predictions(
        s0000_root, "train", folder, tmp_path / "o", subjects=["s0000"], report=False
    )
    assert (results.dropna(subset=["dice"])["dice"] == 1.0).all()
    assert results.attrs["notes"] == []  # it covers all of the reference


def test_a_prediction_a_hair_off_its_grid_or_cropped_keeps_its_edge_slabs(
    tmp_path, s0000_root, extra_dir
):
    """The reference's own labels moved by 0.002 mm either way (over the same-grid tolerance,
    so resampled), or stored on a crop of the grid whose origin carries float round-off: every
    reference voxel still lies within half a voxel of a prediction voxel, so Dice 1 everywhere.
    The edge slabs once went to 0 (Dice 0.94 mean, a lobe missed)."""
    img = nib.load(str(extra_dir / "s0000_totalsegmentator_multilabel.nii.gz"))
    data = np.asarray(img.dataobj)
    cases = {}
    for shift in (0.002, -0.002):
        affine = img.affine.copy()
        affine[:3, 3] += shift
        cases[f"shift{shift}"] = nib.Nifti1Image(data, affine)
    crop = (slice(5, None), slice(0, -4), slice(2, None))
    affine = img.affine.copy()
    affine[:3, 3] += img.affine[:3, :3] @ np.array([5, 0, 2]) * (1 + 1e-12)
    cases["crop"] = nib.Nifti1Image(data[crop], affine)
    for name, pred in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        nib.save(pred, str(folder / "s0000.nii.gz"))
        results = evaluate_predictions(
            s0000_root, "train", folder, tmp_path / f"o_{name}", subjects=["s0000"], report=False
        )
        scored = results.dropna(subset=["dice"])
        if name == "crop":  # what the crop cut off is missed; what it kept is exact
            cut = np.zeros(data.shape, bool)
            cut[crop] = True
            inside = set(np.unique(data[cut])) - set(np.unique(data[~cut]))
            assert len(inside) > 10
            kept = scored[[LABEL_OF[n] in inside for n in scored["structure"]]]
            assert (kept["dice"] == 1.0).all(), kept[["structure", "dice"]]
            # the voxels it cut off are scored as background: said (they were not)
            share = 100 * (1 - cut.sum() / cut.size)
            assert results.attrs["notes"] == [
                f"s0000.nii.gz covers only part of its reference: {share:.1f} % of the "
                "reference's voxels lie outside its field of view and are scored as background"
            ]
        else:
            assert len(scored) == 41 and (scored["dice"] == 1.0).all(), name
            assert results.attrs["notes"] == [], name


def test_a_split_without_any_annotated_structure_is_refused_in_one_line(
    tmp_path, s0000_root, extra_dir, capsys
):
    """A subject whose segmentations/ folder is empty: every structure is not annotated, so
    nothing can be scored; one line, exit 2, no tables (it wrote them, then crashed plotting)."""
    import shutil

    root = tmp_path / "root"
    (root / "s0000" / "segmentations").mkdir(parents=True)
    shutil.copy(s0000_root / "s0000" / "ct.nii.gz", root / "s0000" / "ct.nii.gz")
    (root / "meta.csv").write_text("image_id;split\ns0000;test\n")
    folder = tmp_path / "pred"
    folder.mkdir()
    shutil.copy(extra_dir / "s0000_totalsegmentator_multilabel.nii.gz", folder / "s0000.nii.gz")
    out = tmp_path / "out"
    assert main(["evaluate", "--data", str(root), "--split", "test", "--predictions",
                 str(folder), "--out", str(out), "--cache", str(tmp_path / "cache")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "no structure is annotated in the scored subjects of split 'test'" in err
    assert "Traceback" not in err and not list(out.glob("*.csv"))


def test_not_annotated_structures_are_excluded_entirely(tmp_path, derived_sample):
    # s0002 has a mask for vertebrae_L1 only (plus an unknown name): liver is not annotated
    # there, though s0000, which it is cut from, has a liver.
    root = derived_sample
    bone_img = nib.load(str(root / "s0002" / "segmentations" / "vertebrae_L1.nii.gz"))
    bone = np.asarray(bone_img.dataobj) > 0
    labels = np.where(bone, LABEL_OF["vertebrae_L1"], 0).astype(np.uint8)
    labels[:10, :10, :10] = LABEL_OF["liver"]
    folder = tmp_path / "pred"
    folder.mkdir()
    nib.save(nib.Nifti1Image(labels, bone_img.affine), str(folder / "s0002.nii.gz"))
    results = evaluate_predictions(root, "val", folder, tmp_path / "o", report=False)
    assert results["structure"].tolist() == ["vertebrae_L1"]
    assert results.loc[0, "dice"] == 1.0


def test_bad_predictions_are_refused_with_one_line(tmp_path, s0000_root, extra_dir):
    ref = nib.load(str(extra_dir / "s0000_totalsegmentator_multilabel.nii.gz"))
    cases = {}
    high = np.asarray(ref.dataobj).astype(np.int16)
    high[0, 0, 0] = 200
    cases["label values 0..200"] = nib.Nifti1Image(high, ref.affine)
    no_affine = nib.Nifti1Image(np.zeros((50, 50, 20), np.uint8), None)
    no_affine.header.set_sform(None, code=0)
    no_affine.header.set_qform(None, code=0)
    cases["no usable affine"] = no_affine
    for message, image in cases.items():
        folder = tmp_path / message.replace(" ", "_")
        folder.mkdir()
        nib.save(image, str(folder / "s0000.nii.gz"))
        with pytest.raises(DataError, match=message):
            evaluate_predictions(s0000_root, "train", folder, tmp_path / "o", subjects=["s0000"])
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "s0000.nii.gz").write_bytes(b"")
    with pytest.raises(DataError, match="cannot be read"):
        evaluate_predictions(s0000_root, "train", empty, tmp_path / "o", subjects=["s0000"])
    pair = train_pair(s0000_root, tmp_path / "pair")
    with pytest.raises(DataError) as exc:
        evaluate_predictions(pair, "train", empty, tmp_path / "o", subjects=None)
    message = str(exc.value)
    assert "\n" not in message and "split 'train'" in message and "(2 tried)" in message
    assert re.search(r"s0000: \S*empty/s0000\.nii\.gz cannot be read", message)
    assert f"s0001: no prediction s0001.nii.gz in {empty}" in message
    assert not (tmp_path / "o").exists()
    masks = empty / "s0001"  # TotalSegmentator without --ml: a folder of masks per subject
    masks.mkdir()
    shutil.copyfile(s0000_root / "s0000" / "segmentations" / "liver.nii.gz", masks / "liver.nii.gz")
    with pytest.raises(DataError) as exc:
        evaluate_predictions(pair, "train", empty, tmp_path / "o", subjects=None)
    assert (f"s0001: no prediction s0001.nii.gz in {empty} (s0001/ holds one mask per "
            "structure: write one multilabel file per subject, e.g. TotalSegmentator --ml)"
            ) in str(exc.value)  # fmt: skip


def test_prediction_without_affine_on_the_reference_shape_is_taken_as_on_its_grid(
    tmp_path, s0000_root, extra_dir
):
    data = np.asarray(nib.load(str(extra_dir / "s0000_totalsegmentator_multilabel.nii.gz")).dataobj)
    image = nib.Nifti1Image(data, None)
    image.header.set_sform(None, code=0)
    image.header.set_qform(None, code=0)
    folder = tmp_path / "raw"
    folder.mkdir()
    nib.save(image, str(folder / "s0000.nii.gz"))
    results = evaluate_predictions(
        s0000_root, "train", folder, tmp_path / "o", subjects=["s0000"], report=False
    )
    assert (results.dropna(subset=["dice"])["dice"] == 1.0).all()
    assert results.attrs["notes"] == [  # it was a log line only
        "s0000.nii.gz has no affine; assumed to lie on the reference's grid"
    ]


def test_failed_run_leaves_the_previous_results_whole(tmp_path, s0000_root, extra_dir):
    folder = one_prediction(
        tmp_path / "pred", "s0000", extra_dir / "s0000_totalsegmentator_multilabel.nii.gz"
    )
    out, pair = tmp_path / "out", train_pair(s0000_root, tmp_path / "pair")
    evaluate_predictions(pair, "train", folder, out, subjects=["s0000"], mesh_subjects=1)
    before = (out / "evaluation_results_train.csv").read_bytes()
    page = (out / "3d_s0000.html").read_bytes()
    # another prediction of s0000 (another page would be drawn), then Ctrl-C after s0000
    one_prediction(folder, "s0000", extra_dir / "s0000_totalsegmentator_fast_multilabel.nii.gz")

    def interrupt(done, total, subject):
        if subject == "s0000":  # scored, and its 3D page staged
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evaluate_predictions(pair, "train", folder, out, progress=interrupt, mesh_subjects=1)
    assert (out / "evaluation_results_train.csv").read_bytes() == before
    assert (out / "3d_s0000.html").read_bytes() == page
    assert not [p for p in out.iterdir() if p.name.startswith((".tmp", ".staged"))]
    assert (out / "plotly.min.js").is_file()  # the earlier page still needs it
    # a first evaluation into a new folder that fails leaves nothing behind (it left plotly.js)
    fresh = tmp_path / "fresh"
    with pytest.raises(KeyboardInterrupt):
        evaluate_predictions(pair, "train", folder, fresh, progress=interrupt, mesh_subjects=1)
    assert not list(fresh.iterdir())


def test_figures_that_fail_to_draw_leave_the_tables_and_say_so(
    tmp_path, s0000_root, extra_dir, monkeypatch
):
    """A figure that cannot be drawn (a full disk, a font) costs the figures, not the scores:
    the tables are written, the staged pages, plotly.js and the other figures are removed
    (they were left), and the evaluation's notes say why. A 3D page likewise (it was the
    whole evaluation)."""
    from ctseg_core.evaluation import report

    folder = one_prediction(
        tmp_path / "pred", "s0000", extra_dir / "s0000_totalsegmentator_multilabel.nii.gz"
    )
    pair = train_pair(s0000_root, tmp_path / "pair")

    def broken(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(report, "plot_structure_ranking", broken)
    out = tmp_path / "out"
    results = evaluate_predictions(pair, "train", folder, out, subjects=["s0000"], mesh_subjects=1)
    assert (results.dropna(subset=["dice"])["dice"] > 0.5).any()
    assert sorted(p.name for p in out.iterdir()) == [
        "detection_train.csv", "evaluation_results_train.csv", "skipped_train.csv",
        "source_train.json", "summary_train.csv",
    ]  # fmt: skip
    note = "the report's figures could not be drawn (OSError: No space left on device)"
    assert any(n.startswith(note) for n in results.attrs["notes"])
    assert note in (out / "source_train.json").read_text()
    # a 3D page that fails (they are the largest files) costs the pages, not the evaluation
    monkeypatch.undo()
    monkeypatch.setattr(report, "write_mesh_html", broken)
    out = tmp_path / "pages"
    results = evaluate_predictions(pair, "train", folder, out, subjects=["s0000"], mesh_subjects=1)
    assert (out / "evaluation_results_train.csv").is_file()
    assert (out / "structure_ranking_train.png").is_file() and not list(out.glob("*.html"))
    note = "the 3D page of s0000 could not be written (OSError: No space left on device)"
    assert any(n.startswith(note) for n in results.attrs["notes"]), results.attrs["notes"]


def test_unreadable_prediction_is_skipped_and_listed_the_others_scored(
    tmp_path, s0000_root, extra_dir, capsys
):
    """One bad file of a folder costs its subject, not the evaluation; the result says so
    (skipped_<split>.csv, source_<split>.json, exit 1)."""
    folder = one_prediction(
        tmp_path / "pred", "s0000", extra_dir / "s0000_totalsegmentator_multilabel.nii.gz"
    )
    (folder / "s0001.nii.gz").write_bytes(b"\x1f\x8b" + b"\0" * 300)  # a truncated download
    out, pair = tmp_path / "out", train_pair(s0000_root, tmp_path / "pair")
    results = evaluate_predictions(pair, "train", folder, out, mesh_subjects=1)
    assert set(results["subject"]) == {"s0000"}
    assert (results.dropna(subset=["dice"])["dice"] == 1.0).all()  # the reference's own labels
    assert list(results.attrs["skipped"]) == ["s0001"]
    assert "s0001.nii.gz cannot be read as NIfTI" in results.attrs["skipped"]["s0001"]
    skipped = pd.read_csv(out / "skipped_train.csv")
    assert skipped["subject"].tolist() == ["s0001"]
    assert skipped.loc[0, "reason"] == results.attrs["skipped"]["s0001"]
    source = json.loads((out / "source_train.json").read_text())
    assert source["subjects"] == ["s0000"]
    assert source["skipped"] == [{"subject": "s0001", "reason": skipped.loc[0, "reason"]}]
    assert (out / "3d_s0000.html").is_file()

    argv = ["evaluate", "--data", str(pair), "--split", "train", "--predictions",
            str(folder), "--out", str(tmp_path / "cli"), "--no-report"]  # fmt: skip
    capsys.readouterr()
    assert main(argv) == 1  # an unfinished result, its tables written
    captured = capsys.readouterr()
    assert "evaluated 1 subjects" in captured.out
    assert f"not scored: 1 subject (listed in {tmp_path / 'cli' / 'skipped_train.csv'})" in (
        captured.err
    )
    assert "  - s0001: " in captured.err and "s0001.nii.gz cannot be read" in captured.err
    cli_table = pd.read_csv(tmp_path / "cli" / "evaluation_results_train.csv")
    assert set(cli_table["subject"]) == {"s0000"} and len(cli_table) == len(results)
    assert main([*argv, "--json"]) == 1
    assert json.loads(capsys.readouterr().out)[0]["structure"] == "spleen"
    # only the subject it has: finished, exit 0, nothing listed
    assert main([*argv, "--subjects", "s0000"]) == 0
    assert pd.read_csv(tmp_path / "cli" / "skipped_train.csv").empty
    # a subject with both a .nii.gz and a .nii: which is its prediction cannot be told
    (folder / "s0001.nii.gz").write_bytes((folder / "s0000.nii.gz").read_bytes())
    (folder / "s0001.nii").write_bytes(b"")
    results = evaluate_predictions(pair, "train", folder, tmp_path / "two", report=False)
    assert set(results["subject"]) == {"s0000"}
    assert results.attrs["skipped"]["s0001"] == (
        f"{folder} holds both s0001.nii.gz and s0001.nii for s0001; remove the one that is not "
        "its prediction"
    )


def test_checkpoint_scores_the_split_without_a_subject_whose_ct_cannot_be_read(
    tmp_path, s0000_root, capsys
):
    """As training does, the subject whose CT is unreadable is left out and named; the others
    are predicted and scored."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(s0000_root / "s0000", data / "s0000")
    shutil.copytree(s0000_root / "s0000", data / "s0001")
    blob = (data / "s0001" / "ct.nii.gz").read_bytes()
    (data / "s0001" / "ct.nii.gz").write_bytes(blob[: len(blob) // 2])
    (data / "meta.csv").write_text("image_id;split\ns0000;train\ns0001;train\n")
    ckpt = rule_checkpoint(tmp_path / "run" / "best.pth", ["vertebrae_L1"], target=(122, 101))
    argv = ["evaluate", "--data", str(data), "--split", "train", "--checkpoint", str(ckpt),
            "--no-report", "--cache", str(tmp_path / "cache")]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "  - s0001: " in err and "s0001/ct.nii.gz cannot be read as NIfTI" in err
    table = pd.read_csv(tmp_path / "run" / "evaluation" / "evaluation_results_train.csv")
    assert table["subject"].tolist() == ["s0000"] and table["structure"].tolist() == [
        "vertebrae_L1"
    ]
    seg = data / "s0000" / "segmentations" / "vertebrae_L1.nii.gz"
    hu = np.asarray(nib.load(str(data / "s0000" / "ct.nii.gz")).dataobj)
    expected = independent_dice(np.asarray(nib.load(str(seg)).dataobj), hu > 150.5)
    assert table.loc[0, "dice"] == pytest.approx(expected, abs=1e-12)
    skipped = pd.read_csv(tmp_path / "run" / "evaluation" / "skipped_train.csv")
    assert skipped["subject"].tolist() == ["s0001"]
    # when no subject can be read, nothing is scored: bad input, exit 2
    assert main([*argv[:4], "val", *argv[5:]]) == 2
    assert "holds no subjects" in capsys.readouterr().err
    shutil.rmtree(data / "s0000")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "no subject of split 'train'" in err and "(1 tried): s0001:" in err


def test_checkpoint_whose_structures_are_not_annotated_is_refused(tmp_path, derived_sample):
    ckpt = rule_checkpoint(tmp_path / "m.pth", ["liver", "spleen"])  # s0002: vertebrae_L1 only
    with pytest.raises(
        ConfigError,
        match=r"predicts 2 structures \(liver, spleen\), none of them annotated in split 'val'",
    ):
        evaluate_predictions(derived_sample, "val", [ckpt], tmp_path / "o")


def test_a_subject_with_nothing_to_score_is_said(tmp_path, derived_sample):
    """s0002 annotates vertebrae_L1 only: a liver model scores nothing of it, so it has no row;
    it is counted among the scored subjects all the same, and said."""
    ckpt = rule_checkpoint(tmp_path / "m.pth", ["liver"])
    results = evaluate_predictions(derived_sample, "all", [ckpt], tmp_path / "o", report=False)
    assert "s0002" not in set(results["subject"]) and "s0002" not in results.attrs["skipped"]
    assert (
        "s0002: none of the structures scored here is annotated in it (no mask file): it has no "
        "row in the tables"
    ) in results.attrs["notes"]


def test_checkpoint_predictions_are_scored_on_the_model_structures(tmp_path, s0000_root):
    ckpt = rule_checkpoint(tmp_path / "m.pth", ["vertebrae_L1"], target=(122, 101))
    results = evaluate_predictions(
        s0000_root, "train", [ckpt], tmp_path / "o", subjects=["s0000"], report=False
    )
    assert results["structure"].tolist() == ["vertebrae_L1"]
    seg = s0000_root / "s0000" / "segmentations" / "vertebrae_L1.nii.gz"
    hu = np.asarray(nib.load(str(s0000_root / "s0000" / "ct.nii.gz")).dataobj)
    expected = independent_dice(np.asarray(nib.load(str(seg)).dataobj), hu > 150.5)
    assert results.loc[0, "dice"] == pytest.approx(expected, abs=1e-12)
    assert 0 < expected < 0.5


def test_a_folder_of_ctseg_predictions_is_scored_on_what_its_model_learns(tmp_path, s0000_root):
    """`ctseg predict`'s label files list what its model learns: the folder is scored on that,
    as the checkpoint is (every other annotated structure counted as missed before); label
    files of what was found (`ctseg export`) restrict nothing."""
    from ctseg_core.inference.files import predict_file

    ckpt = rule_checkpoint(tmp_path / "m.pth", ["vertebrae_L1"], target=(122, 101))
    folder = tmp_path / "preds"
    predict_file(s0000_root / "s0000" / "ct.nii.gz", [ckpt], folder / "s0000.nii.gz")
    by_folder = evaluate_predictions(s0000_root, "train", folder, tmp_path / "f", report=False,
                                     subjects=["s0000"])  # fmt: skip
    by_checkpoint = evaluate_predictions(s0000_root, "train", [ckpt], tmp_path / "c",
                                         report=False, subjects=["s0000"])  # fmt: skip
    assert by_folder["structure"].tolist() == ["vertebrae_L1"]
    assert by_folder.loc[0, "dice"] == pytest.approx(by_checkpoint.loc[0, "dice"], abs=1e-12)
    for label_file in folder.glob("s0000[._]*[!z]"):
        label_file.unlink()  # the .ctbl and ITK-SNAP files; then as `ctseg export` writes them
    assert main(["export", "--labels", str(folder / "s0000.nii.gz"), "--out", str(folder)]) == 0
    found = evaluate_predictions(s0000_root, "train", folder, tmp_path / "e", report=False,
                                 subjects=["s0000"])  # fmt: skip
    annotated = len(list((s0000_root / "s0000" / "segmentations").glob("*.nii.gz")))
    assert len(found) == annotated > 1


def test_a_phantom_checkpoint_scored_on_real_cts_says_so_once_per_few_subjects(
    tmp_path, s0000_root
):
    """Evaluate warns as predict does: the phantom's model on real CTs scores poorly for a
    reason; five subjects: three named, the others counted."""
    root = tmp_path / "data"
    ids = [f"s{k:04d}" for k in range(5)]
    for sid in ids:
        shutil.copytree(s0000_root / "s0000", root / sid)
    (root / "meta.csv").write_text("image_id;split\n" + "".join(f"{s};test\n" for s in ids))
    cfg = RunConfig(data=DataConfig(target_size=(122, 101), structures=["vertebrae_L1"]),
                    model=ModelConfig(name="test_eval_bone_rule"))  # fmt: skip
    phantom = {"version": 1, "source": "phantom", "data_root": "/elsewhere/phantom"}
    ckpt = save_checkpoint(tmp_path / "run" / "best.pth", BoneRule(), config=cfg,
                           training_data=phantom)  # fmt: skip
    results = evaluate_predictions(root, "test", [ckpt], tmp_path / "o", report=False)
    notes = results.attrs["notes"]
    assert len(notes) == 4, notes
    for sid, note in zip(ids, notes[:3], strict=False):
        assert note.startswith(f"run/best.pth was trained on the synthetic phantom only, not on "
                               f"real CTs: its labels on {sid} do not follow")  # fmt: skip
    assert notes[3].startswith("5 of the 5 scored subjects lie outside what the checkpoint was "
                               "trained on (2 more than those named above)")  # fmt: skip
    source = json.loads((tmp_path / "o" / "source_test.json").read_text())
    assert source["notes"] == notes
    dataset = {"version": 1, "source": "dataset", "data_root": str(root)}
    save_checkpoint(ckpt, BoneRule(), config=cfg, training_data=dataset)
    results = evaluate_predictions(root, "test", [ckpt], tmp_path / "o", report=False)
    assert results.attrs["notes"] == []


def test_a_checkpoint_is_stamped_as_it_was_loaded(tmp_path, s0000_root):
    """A run that rewrites best.pth while its evaluation scores: the stamp is the loaded
    file's, so compare says the tables describe an older model (it stamped the new file)."""
    import json

    from ctseg_core.evaluation.paths import changed_checkpoints

    ckpt = rule_checkpoint(tmp_path / "m.pth", ["vertebrae_L1"], target=(122, 101))

    def rewritten(done, total, subject):  # a resumed run saving best.pth meanwhile
        ckpt.write_bytes(ckpt.read_bytes() + b"\0" * 16)

    evaluate_predictions(
        s0000_root, "train", [ckpt], tmp_path / "o", subjects=["s0000"], report=False,
        progress=rewritten,
    )  # fmt: skip
    source = json.loads((tmp_path / "o" / "source_train.json").read_text())
    (note,) = changed_checkpoints(source, "A")
    assert "has changed since it was evaluated" in note


def test_volume_statistics_match_numpy(s0000_root, extra_dir):
    labels = np.asarray(
        nib.load(str(extra_dir / "s0000_totalsegmentator_multilabel.nii.gz")).dataobj
    )
    hu = np.asarray(nib.load(str(s0000_root / "s0000" / "ct.nii.gz")).dataobj)
    table = volume_statistics(labels, hu, (3.0, 3.0, 3.0)).set_index("structure")
    assert len(table) == 41
    liver = hu[labels == LABEL_OF["liver"]].astype(float)
    assert table.loc["liver", "volume_ml"] == pytest.approx(liver.size * 0.027)
    assert table.loc["liver", "mean_hu"] == pytest.approx(liver.mean())
    assert table.loc["liver", "std_hu"] == pytest.approx(liver.std())


def test_cli_evaluate_json_and_one_line_errors(tmp_path, s0000_root, extra_dir, capsys):
    folder = one_prediction(
        tmp_path / "pred", "s0000", extra_dir / "s0000_totalsegmentator_multilabel.nii.gz"
    )
    argv = ["evaluate", "--data", str(s0000_root), "--split", "train", "--subjects", "s0000",
            "--predictions", str(folder), "--out", str(tmp_path / "o"), "--no-report", "--json"]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    liver = next(r for r in summary if r["structure"] == "liver")
    assert liver["dice_mean"] == 1.0 and liver["hd95_mm_mean"] == 0.0
    absent = next(r for r in summary if r["structure"] == "brain")
    assert absent["dice_mean"] is None
    root = train_pair(s0000_root, tmp_path / "pair")  # s0001 has no prediction
    shutil.copytree(s0000_root / "s0000", root / "s0002")  # a validation subject, no prediction
    (root / "meta.csv").write_text("image_id;split\ns0000;train\ns0001;train\ns0002;val\n")
    assert main(["evaluate", "--data", str(root), "--split", "train", "--predictions",
                 str(folder), "--out", str(tmp_path / "o"), "--no-report"]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert f"  - s0001: no prediction s0001.nii.gz in {folder}" in err
    assert main(["evaluate", "--data", str(root), "--split", "val", "--predictions",
                 str(folder), "--out", str(tmp_path / "o")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert err.startswith("error: no subject of split 'val'") and err.count("\n") == 1
    assert "s0002: no prediction s0002.nii.gz" in err
    # --split all: the subjects of every split (here the one the folder has)
    assert main(["evaluate", "--data", str(root), "--split", "all", "--subjects", "s0000",
                 "--predictions", str(folder), "--out", str(tmp_path / "o"), "--no-report"]) == 0  # fmt: skip
    assert set(pd.read_csv(tmp_path / "o" / "evaluation_results_all.csv")["subject"]) == {"s0000"}
    assert json.loads((tmp_path / "o" / "source_all.json").read_text())["split"] == "all"
    # another predictions folder into the same --out: refused unless --overwrite
    other = one_prediction(
        tmp_path / "other", "s0000", extra_dir / "s0000_totalsegmentator_multilabel.nii.gz"
    )
    again = ["evaluate", "--data", str(root), "--split", "all", "--subjects", "s0000",
             "--predictions", str(other), "--out", str(tmp_path / "o"), "--no-report"]  # fmt: skip
    before = (tmp_path / "o" / "summary_all.csv").read_bytes()
    assert main(again) == 2
    err = capsys.readouterr().err
    assert f"--out {tmp_path / 'o'} holds the all split's evaluation of {folder}; give" in err
    assert (tmp_path / "o" / "summary_all.csv").read_bytes() == before
    assert main([*again, "--overwrite"]) == 0
    source = json.loads((tmp_path / "o" / "source_all.json").read_text())
    assert source["predictions_folder"] == str(other.resolve())


def test_cli_stats_and_export(tmp_path, s0000_root, extra_dir, capsys):
    labels = extra_dir / "s0000_totalsegmentator_multilabel.nii.gz"
    assert main(["stats", "--ct", str(s0000_root / "s0000" / "ct.nii.gz"), "--labels",
                 str(labels), "--json", "--out", str(tmp_path / "stats.csv")]) == 0  # fmt: skip
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 41 and pd.read_csv(tmp_path / "stats.csv").shape[0] == 41
    assert main(["export", "--labels", str(labels), "--out", str(tmp_path / "x"), "--json"]) == 0
    written = json.loads(capsys.readouterr().out)
    # its header's label table lists the 117 structures TotalSegmentator's model labels: the
    # label files list them all, as what its model learns (as ctseg predict's do)
    assert len(written["labels"]) == 117
    assert (tmp_path / "x" / "s0000_totalsegmentator_multilabel.ctbl").is_file()
    plain = tmp_path / "plain.nii.gz"  # the same values without the table: those found
    nib.save(nib.Nifti1Image(np.asarray(nib.load(labels).dataobj), nib.load(labels).affine), plain)
    assert main(["export", "--labels", str(plain), "--out", str(tmp_path / "y"), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["labels"]) == 41


def test_cli_evaluate_checkpoint_writes_into_the_run_folder(tmp_path, derived_sample, capsys):
    root = derived_sample  # split val: s0002, vertebrae_L1 annotated only
    run = tmp_path / "run"
    run.mkdir()
    ckpt = rule_checkpoint(run / "best.pth", ["vertebrae_L1"])
    argv = ["evaluate", "--data", str(root), "--split", "val", "--checkpoint", str(ckpt),
            "--meshes", "0"]  # fmt: skip
    assert main(argv) == 0
    assert "evaluated 1 subjects, 1 structures present" in capsys.readouterr().out
    table = pd.read_csv(run / "evaluation" / "evaluation_results_val.csv")
    assert table["structure"].tolist() == ["vertebrae_L1"]
    assert table["subject"].tolist() == ["s0002"]
    hu = np.asarray(nib.load(str(root / "s0002" / "ct.nii.gz")).dataobj)
    bone = np.asarray(
        nib.load(str(root / "s0002" / "segmentations" / "vertebrae_L1.nii.gz")).dataobj
    )
    # 64 x 64 model input resized back to 122 x 101: close to, not equal to, the plain threshold.
    assert table.loc[0, "dice"] == pytest.approx(independent_dice(bone, hu > 150.5), abs=0.03)
    assert not list((run / "evaluation").glob("3d_*.html"))
    assert main(["evaluate", "--data", str(root), "--predictions", str(tmp_path)]) == 2
    assert "--out is required" in capsys.readouterr().err

    # another checkpoint of the run gets its own folder: best's tables stay as they were
    other = rule_checkpoint(run / "checkpoint_epoch3.pth", ["vertebrae_L1"], target=(32, 32))
    assert main([*argv[:-4], "--checkpoint", str(other), "--meshes", "0"]) == 0
    mine = pd.read_csv(run / "evaluation_checkpoint_epoch3" / "evaluation_results_val.csv")
    assert mine.loc[0, "dice"] != pytest.approx(table.loc[0, "dice"], abs=1e-6)
    again = pd.read_csv(run / "evaluation" / "evaluation_results_val.csv")
    assert again.loc[0, "dice"] == table.loc[0, "dice"]
    for folder, checkpoint in (("evaluation", ckpt), ("evaluation_checkpoint_epoch3", other)):
        source = json.loads((run / folder / "source_val.json").read_text())
        assert source["checkpoints"] == [str(checkpoint.resolve())]
        assert source["split"] == "val" and source["subjects"] == ["s0002"]


def test_each_predictions_folder_and_ensemble_gets_its_own_evaluation_folder(tmp_path):
    from ctseg_core.evaluation.paths import checkpoint_evaluation_dir, folder_evaluation_dir

    root = tmp_path / "evaluations"
    a, b = tmp_path / "alice" / "preds", tmp_path / "bob" / "preds"
    assert folder_evaluation_dir(root, a).parent == root
    assert folder_evaluation_dir(root, a).name.startswith("preds-")
    assert folder_evaluation_dir(root, a) != folder_evaluation_dir(root, b)
    assert folder_evaluation_dir(root, a) == folder_evaluation_dir(
        root, tmp_path / "bob/../alice/preds"
    )
    run = tmp_path / "run"
    assert checkpoint_evaluation_dir([run / "best.pth"]) == run / "evaluation"
    assert checkpoint_evaluation_dir([run / "last.pth"]) == run / "evaluation_last"
    pair = checkpoint_evaluation_dir([run / "best.pth", tmp_path / "r2" / "best.pth"])
    assert pair.parent == run and pair.name.startswith("evaluation_ensemble_")
    swapped = checkpoint_evaluation_dir([tmp_path / "r2" / "best.pth", run / "best.pth"])
    assert swapped.name == pair.name and swapped.parent == tmp_path / "r2"


def test_a_new_evaluation_leaves_no_figures_of_the_previous_one(tmp_path, s0000_root, extra_dir):
    """Tables rewritten without figures (the dashboard's default) must not sit beside the
    figures and 3D pages of an earlier evaluation of another source."""
    folder = one_prediction(
        tmp_path / "pred", "s0000", extra_dir / "s0000_totalsegmentator_fast_multilabel.nii.gz"
    )
    out = tmp_path / "out"
    evaluate_predictions(s0000_root, "train", folder, out, subjects=["s0000"], mesh_subjects=1)
    first = json.loads((out / "source_train.json").read_text())["report_files"]
    assert sorted(first) == ["3d_s0000.html", "metrics_distribution_train.png",
                             "segmentation_visualization_train.png", "structure_ranking_train.png"]  # fmt: skip
    (out / "notes.txt").write_text("mine")  # not the report's: never touched
    evaluate_predictions(s0000_root, "train", folder, out, subjects=["s0000"], report=False)
    assert sorted(p.name for p in out.iterdir()) == [
        "detection_train.csv", "evaluation_results_train.csv", "notes.txt", "plotly.min.js",
        "skipped_train.csv", "source_train.json", "summary_train.csv",
    ]  # fmt: skip
    assert json.loads((out / "source_train.json").read_text())["report_files"] == []


def test_summary_reports_the_sample_standard_deviation():
    from ctseg_core.evaluation.tables import RESULT_COLUMNS, summarize_results

    def row(subject, structure, dice, status="detected"):
        return {"subject": subject, "structure": structure, "group": "organs", "dice": dice,
                "iou": dice / (2 - dice), "hd95_mm": 2.0, "surface_dice": dice,
                "ref_volume_ml": 1.0, "pred_volume_ml": 1.0, "status": status}  # fmt: skip

    results = pd.DataFrame(
        [row("a", "spleen", 1.0), row("b", "spleen", 0.8), row("a", "liver", 0.9)],
        columns=list(RESULT_COLUMNS),
    )
    summary = summarize_results(results).set_index("structure")
    # n - 1, as pandas and papers: sqrt(0.02) = 0.1414, not the population 0.1
    assert summary.loc["spleen", "dice_std"] == pytest.approx(0.141421356, abs=1e-9)
    assert summary.loc["spleen", "dice_std"] == pytest.approx(results["dice"][:2].std())
    assert np.isnan(summary.loc["liver", "dice_std"])  # one subject: no spread to report


def test_the_worst_slice_shows_the_reference_when_there_is_one():
    from ctseg_core.evaluation.report import worst_slice

    reference = np.zeros((8, 8, 12), np.uint8)
    reference[2:4, 2:4, 2:5] = 5  # 4 voxels on each of z = 2, 3, 4
    prediction = np.zeros_like(reference)
    prediction[:, :, 8] = 5  # a misplaced prediction: 64 wrong voxels on z = 8
    prediction[2:4, 2:3, 3] = 5  # half of z = 3 found
    assert worst_slice(reference, prediction, 5) in (2, 4)  # all 4 missed there, not z = 8
    prediction[2:4, 2:4, 2:5] = 5  # right on every reference slice: the false positives remain
    assert worst_slice(reference, prediction, 5) == 8
    assert worst_slice(reference, reference, 5) == 2  # no disagreement: the largest reference


def test_slice_figure_zooms_on_the_structure_in_question():
    from ctseg_core.evaluation.report import SliceCase, zoom_window

    reference = np.zeros((512, 400), np.uint8)
    reference[500:505, 10:14] = LABEL_OF["adrenal_gland_left"]  # small, near an edge
    case = SliceCase("s", "adrenal_gland_left", 0.0, 3, np.zeros((512, 400), np.int16),
                     reference, np.zeros_like(reference), 1.0)  # fmt: skip
    wx, wy = zoom_window(case)
    assert wx.start <= 500 and wx.stop >= 505 and wy.start <= 10 and wy.stop >= 14
    assert wx.stop - wx.start >= 0.4 * 512 - 1 and wy.stop - wy.start >= 0.4 * 400 - 1
    assert wx.stop <= 512 and wy.start >= 0


@pytest.mark.parametrize("tolerance", [-1.0, float("nan")])
def test_a_bad_tolerance_is_refused_before_any_subject_is_scored(
    tmp_path, s0000_root, extra_dir, tolerance
):
    """A setting wrong for every subject is the caller's error (exit 2, one line), not a reason
    to skip each subject after reading and predicting it."""
    folder = one_prediction(
        tmp_path / "pred", "s0000", extra_dir / "s0000_totalsegmentator_multilabel.nii.gz"
    )
    pair = train_pair(s0000_root, tmp_path / "pair")
    with pytest.raises(ConfigError, match=r"^tolerance_mm must be a finite number >= 0, got"):
        evaluate_predictions(pair, "train", folder, tmp_path / "out", tolerance)
    assert not (tmp_path / "out").exists()


def test_members_of_a_merge_the_label_file_names_are_scored_as_part_of_it(
    tmp_path, s0000_root, extra_dir
):
    """A per-lobe prediction beside a label file naming value 10 "lungs" (one left from a
    merged run's prediction in the same folder): lungs was scored on value 10 alone (Dice
    0.11) and the other lobes nowhere, without a word (reviewer). The lobes now count as
    lungs, as in the reference, and it is said."""
    source = extra_dir / "s0000_totalsegmentator_multilabel.nii.gz"
    folder = one_prediction(tmp_path / "pred", "s0000", source)
    (folder / "s0000.ctbl").write_text("10 lungs 0 0 0 255\n")
    rows = evaluate_predictions(
        s0000_root, "train", folder, tmp_path / "o", subjects=["s0000"], report=False
    )
    (note,) = rows.attrs["notes"]
    assert note == (
        "s0000.nii.gz: values 11, 13, 14 are members of lungs, which s0000.ctbl names: "
        "scored as part of it"
    )
    lungs = rows.set_index("structure").loc["lungs"]
    # the same prediction with its lobes written as 10 scores alike
    image = nib.load(source)
    data = np.asarray(image.dataobj)
    data = np.where((data >= 10) & (data <= 14), 10, data).astype(data.dtype)
    merged = tmp_path / "merged"
    merged.mkdir()
    nib.save(nib.Nifti1Image(data, image.affine, image.header), merged / "s0000.nii.gz")
    (merged / "s0000.ctbl").write_text("10 lungs 0 0 0 255\n")
    expected = evaluate_predictions(
        s0000_root, "train", merged, tmp_path / "o2", subjects=["s0000"], report=False
    )
    assert expected.attrs["notes"] == []
    assert lungs["dice"] == expected.set_index("structure").loc["lungs", "dice"] > 0.9


def test_masks_claiming_the_same_voxels_are_said_in_the_evaluation(tmp_path, s0000_root, extra_dir):
    """Two masks of one voxel set: the higher label value keeps it, so the lower structure is
    scored against less than its mask file (here nothing: a false positive). ``ctseg info``
    said it; the evaluation did not (found by a review)."""
    from ctseg_core.labels import LABEL_OF

    root = tmp_path / "data"
    shutil.copytree(s0000_root / "s0000", root / "s0000")
    (root / "meta.csv").write_text("image_id;split\ns0000;test\n")
    seg = root / "s0000" / "segmentations"
    shutil.copyfile(seg / "kidney_left.nii.gz", seg / "kidney_cyst_left.nii.gz")
    assert LABEL_OF["kidney_cyst_left"] > LABEL_OF["kidney_left"]
    folder = one_prediction(
        tmp_path / "pred", "s0000", extra_dir / "s0000_totalsegmentator_multilabel.nii.gz"
    )
    results = evaluate_predictions(
        root, "test", folder, tmp_path / "out", report=False, cache_dir=tmp_path / "cache"
    )
    kidney = results.set_index("structure").loc["kidney_left"]
    assert kidney["status"] == "false_positive" and kidney["ref_volume_ml"] == 0
    notes = json.loads((tmp_path / "out" / "source_test.json").read_text())["notes"]
    voxels = int((nib.load(seg / "kidney_left.nii.gz").get_fdata() > 0).sum())
    assert notes == [
        f"s0000: {voxels} voxels belong to more than one mask (kidney_left / kidney_cyst_left "
        f"{voxels}); the higher label value was kept, in the references scored here too"
    ]
