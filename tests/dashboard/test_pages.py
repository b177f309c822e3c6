"""Every dashboard page in Streamlit's AppTest on a small phantom: real values, no tracebacks."""

from __future__ import annotations

import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from markdown_kit import as_shown

from ctseg_core.data.cache import open_cached
from ctseg_core.data.dataset_root import open_dataset
from ctseg_core.labels import GROUP_OF, LABEL_OF, NAME_OF

pytestmark = pytest.mark.timeout(300)


def charts(at, kind="vega_lite_chart"):
    return at.get(kind)


def image_url(at) -> str:
    images = at.get("image")
    assert images, "no image on the page"
    return images[0].proto.imgs[0].url


def test_home_shows_the_subject_counts_coverage_and_runs(app_env, tiny_run, new_app, no_problems):
    at = new_app()
    at.run()
    no_problems(at)
    index = open_dataset(app_env["data"])
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Subjects"] == str(len(index.subjects)) == "6"
    for split in ("train", "val", "test"):
        assert metrics[split.capitalize()] == str(len(index.subjects_in(split)))
    slices = sum(open_cached(index.root, s, app_env["cache"]).num_slices for s in index.subjects)
    assert metrics["Axial slices"] == str(slices)
    spec = json.loads(charts(at)[0].proto.spec)
    assert spec["encoding"]["color"]["field"] == "group"
    present = set()
    for sid in index.subjects:
        present |= set(open_cached(index.root, sid, app_env["cache"]).present)
    assert set(spec["encoding"]["x"]["sort"]) == present  # one bar per structure found
    runs = at.dataframe[-1].value
    row = runs[runs["run"] == "tiny"].iloc[0]
    assert row["state"] == "finished" and row["epoch"] == "1 / 1"
    assert at.session_state["ctseg_dataset_root"] == str(app_env["data"])


def test_home_sees_files_change_in_the_dataset(
    app_env, new_app, no_problems, monkeypatch, tmp_path
):
    """meta.csv edited in place, a stray mask file added: Home showed the first reading until
    the server restarted; a mask rewritten in place is seen after "Read the dataset again"."""
    import shutil

    root = tmp_path / "data"
    shutil.copytree(app_env["data"], root)
    monkeypatch.setenv("CTSEG_DATA", str(root))
    at = new_app()
    at.run()
    no_problems(at)
    assert {m.label: m.value for m in at.metric}["Test"] != "6"
    ids = open_dataset(root).subjects
    (root / "meta.csv").write_text("image_id;split\n" + "".join(f"{s};test\n" for s in ids))
    (root / ids[0] / "segmentations" / "Liver_corrected.nii.gz").write_bytes(b"x")
    at.run()
    no_problems(at)
    metrics = {m.label: m.value for m in at.metric}
    assert (metrics["Train"], metrics["Test"]) == ("0", "6")
    assert [e for e in at.expander if "problem(s) found" in e.label]
    from dashboard import cached

    def coverage() -> dict:  # the summary Home shows (kept server-wide), the newest
        return [v for k, v in cached._summaries().items() if k[0] == str(root)][-1]["coverage"]

    name = open_cached(root, ids[1], app_env["cache"]).present[0]
    before = coverage()[name]
    mask = root / ids[1] / "segmentations" / f"{name}.nii.gz"
    image = nib.load(mask)
    nib.save(nib.Nifti1Image(np.zeros(image.shape, np.uint8), image.affine), mask)  # in place
    at.button(key="ctseg_home_reread").click()
    at.run()
    no_problems(at)
    assert coverage()[name] == before - 1


def test_home_generates_the_demo_phantom_on_first_start(monkeypatch, tmp_path, new_app):
    monkeypatch.delenv("CTSEG_DATA", raising=False)
    monkeypatch.delenv("CTSEG_DATA_ROOTS", raising=False)
    monkeypatch.setenv("CTSEG_DEMO_DIR", str(tmp_path / "demo"))
    monkeypatch.setenv("CTSEG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CTSEG_CHECKPOINTS", str(tmp_path / "checkpoints"))
    at = new_app()
    at.run(timeout=120)
    assert not at.exception and not at.error
    index = open_dataset(tmp_path / "demo")
    assert len(index.subjects) == 12
    assert {m.label: m.value for m in at.metric}["Subjects"] == "12"
    note = at.info[0].value
    assert "synthetic phantom" in note and "CTSEG_DATA" in note
    assert at.session_state["ctseg_dataset_root"] == str(tmp_path / "demo")


def test_home_refuses_a_dataset_outside_the_data_roots(app_env, monkeypatch, tmp_path, new_app):
    monkeypatch.setenv("CTSEG_DATA_ROOTS", str(app_env["data"].parent))
    at = new_app()
    at.run()
    at.text_input(key="home_dataset_path").set_value(str(tmp_path))
    at.button[0].click()  # the form's Open button
    at.run()
    errors = [as_shown(e.value) for e in at.error]  # shown as plain text (escaped Markdown)
    assert len(errors) == 1 and "outside the allowed data roots" in errors[0]
    assert str(tmp_path) in errors[0] and str(app_env["data"].parent) in errors[0]
    assert at.session_state["ctseg_dataset_root"] == str(app_env["data"])  # unchanged
    assert {m.label: m.value for m in at.metric}["Subjects"] == "6"  # the page keeps working


def test_home_explains_a_folder_that_is_not_a_dataset(app_env, tmp_path, new_app):
    at = new_app()
    at.run()
    at.text_input(key="home_dataset_path").set_value(str(tmp_path / "missing"))
    at.button[0].click()
    at.run()
    assert "is not a folder" in at.error[0].value
    assert not at.exception
    # the summary below is still the dataset that was open, and the page says so
    assert any(f"still the dataset {app_env['data']}" in as_shown(c.value) for c in at.caption)


def test_explore_renders_the_subject_and_the_slider_changes_the_slice(
    app_env, new_app, no_problems
):
    at = new_app("explore")
    at.run()
    no_problems(at)
    index = open_dataset(app_env["data"])
    assert at.selectbox(key="ctseg_explore_subject").options == [
        f"{s} ({index.splits[s]})" for s in index.subjects
    ]
    at.selectbox(key="ctseg_explore_subject").set_value("s0002")
    at.run()
    entry = open_cached(app_env["data"], "s0002", app_env["cache"])
    slider = at.slider(key="ctseg_explore_slice_axial")
    assert (slider.min, slider.max) == (1, entry.num_slices)  # numbered as the caption
    caption = at.get("image")[0].proto.imgs[0].caption
    assert f"of {entry.num_slices}" in caption
    before = image_url(at)
    slider.set_value(3)
    at.run()
    assert image_url(at) != before
    caption = at.get("image")[0].proto.imgs[0].caption
    assert f"slice 3 of {entry.num_slices} (S " in caption  # and where it lies, in mm
    assert "patient's right on the left, anterior up" in caption
    # another subject opens at its own middle slice, not at slice 3 of the previous one
    at.selectbox(key="ctseg_explore_subject").set_value("s0003")
    at.run()
    other = open_cached(app_env["data"], "s0003", app_env["cache"])
    assert at.slider(key="ctseg_explore_slice_axial").value == other.num_slices // 2 + 1
    at.selectbox(key="ctseg_explore_subject").set_value("s0002")
    at.run()
    slider = at.slider(key="ctseg_explore_slice_axial")
    assert slider.value == entry.num_slices // 2 + 1
    slider.set_value(3)
    at.run()
    # volumes shown are the cache's voxel counts times the voxel volume
    table = at.dataframe[0].value.set_index("structure")
    voxel_ml = float(np.prod(entry.spacing_mm)) / 1000
    for name in table.index:
        expected = entry.voxel_counts[LABEL_OF[name]] * voxel_ml
        assert table.loc[name, "reference ml"] == pytest.approx(expected, abs=0.01)
    assert set(table.index) == set(entry.present)
    at.segmented_control(key="ctseg_explore_plane").set_value("coronal")
    at.run()
    no_problems(at)
    assert at.slider(key="ctseg_explore_slice_coronal").max == entry.shape_xyz[1]


def test_explore_shows_a_subject_as_its_files_are_now(
    app_env, new_app, no_problems, monkeypatch, tmp_path
):
    """A mask emptied on disk while the dashboard runs: the table shows the new mask (it kept
    the first opening of the subject, whose cache folder was gone)."""
    import shutil

    import nibabel as nib

    root = tmp_path / "data"
    shutil.copytree(app_env["data"], root)
    monkeypatch.setenv("CTSEG_DATA", str(root))
    at = new_app("explore")
    at.run()
    at.selectbox(key="ctseg_explore_subject").set_value("s0002")
    at.run()
    no_problems(at)
    first = at.dataframe[0].value.set_index("structure")
    name = first["reference ml"].idxmax()
    assert first.loc[name, "reference ml"] > 0
    mask = root / "s0002" / "segmentations" / f"{name}.nii.gz"
    image = nib.load(mask)
    empty = nib.Nifti1Image(np.zeros(image.shape, dtype=np.uint8), image.affine, image.header)
    nib.save(empty, mask)
    at.run()
    no_problems(at)
    table = at.dataframe[0].value.set_index("structure")
    assert name not in table.index  # absent now: no longer among the shown structures
    assert set(table.index) == set(open_cached(root, "s0002", app_env["cache"]).present)


def test_explore_keeps_groups_and_picks_across_subjects_that_lack_them(
    app_env, new_app, no_problems
):
    index = open_dataset(app_env["data"])
    groups = {
        s: {GROUP_OF[n] for n in open_cached(app_env["data"], s, app_env["cache"]).present}
        for s in index.subjects
    }
    no_ribs = next(s for s in index.subjects if "ribs" not in groups[s])
    ribs = next(s for s in index.subjects if "ribs" in groups[s])
    at = new_app("explore")
    at.run()
    at.selectbox(key="ctseg_explore_subject").set_value(no_ribs)
    at.run()
    assert "ribs" not in at.pills(key="ctseg_explore_groups").options
    at.pills(key="ctseg_explore_groups").set_value(
        [g for g in at.pills(key="ctseg_explore_groups").value if g != "muscles"]
    )
    at.run()
    at.selectbox(key="ctseg_explore_subject").set_value(ribs)
    at.run()
    no_problems(at)
    chosen = at.pills(key="ctseg_explore_groups").value
    assert "ribs" in chosen and "muscles" not in chosen  # kept aside, and the user's own choice
    rib = next(n for n in open_cached(app_env["data"], ribs, app_env["cache"]).present
               if GROUP_OF[n] == "ribs")  # fmt: skip
    at.multiselect(key="ctseg_explore_structures").set_value([rib])
    at.run()
    at.selectbox(key="ctseg_explore_subject").set_value(no_ribs)
    at.run()
    assert at.multiselect(key="ctseg_explore_structures").value == []
    at.selectbox(key="ctseg_explore_subject").set_value(ribs)
    at.run()
    no_problems(at)
    assert at.multiselect(key="ctseg_explore_structures").value == [rib]


def test_explore_shows_a_checkpoints_prediction_and_the_3d_view(
    app_env, tiny_run, new_app, no_problems
):
    at = new_app("explore")
    at.run()
    at.selectbox(key="ctseg_explore_checkpoint").set_value("tiny / best.pth")
    at.run()
    no_problems(at)
    assert at.get("image")[0].proto.imgs[0].caption.startswith("reference | prediction")
    at.toggle(key="ctseg_explore_show3d").set_value(True)
    at.run()
    no_problems(at)
    figure = json.loads(at.get("plotly_chart")[0].proto.spec)
    traces = figure["data"]
    assert traces and all(t["type"] == "mesh3d" for t in traces)
    chosen = at.multiselect(key="ctseg_explore_mesh_structures").value
    reference = [t for t in traces if t.get("scene", "scene") == "scene"]  # the left one
    assert {t["name"] for t in reference} == set(chosen)
    assert all("(reference)" in t["hovertemplate"] for t in reference)
    # a subject without any of the chosen structures shows its own first ones, not nothing
    index = open_dataset(app_env["data"])
    present = {s: set(open_cached(app_env["data"], s, app_env["cache"]).present)
               for s in index.subjects}  # fmt: skip
    shown = at.selectbox(key="ctseg_explore_subject").value.split()[0]
    only_here = sorted(present[shown] - set.intersection(*present.values()))
    other = next(s for s in index.subjects if only_here[0] not in present[s])
    at.multiselect(key="ctseg_explore_mesh_structures").set_value([only_here[0]])
    at.run()
    at.selectbox(key="ctseg_explore_subject").set_value(other)
    at.run()
    no_problems(at)
    assert at.multiselect(key="ctseg_explore_mesh_structures").value
    assert at.get("plotly_chart")
    at.multiselect(key="ctseg_explore_mesh_structures").set_value([])  # emptied by the user
    at.run()
    assert at.multiselect(key="ctseg_explore_mesh_structures").value == []
    assert any(c.value == "Pick structures to see their surfaces." for c in at.caption)


def _write_reference_predictions(dirs, folder, subjects):
    folder.mkdir(parents=True, exist_ok=True)
    for sid in subjects:
        entry = open_cached(dirs["data"], sid, dirs["cache"])
        image = nib.Nifti1Image(np.asarray(entry.labels_xyz()), entry.affine)
        nib.save(image, folder / f"{sid}.nii.gz")


def test_evaluate_offers_the_report_figures_it_wrote(
    app_env, tmp_path, evaluate_folder, no_problems
):
    """A served dashboard's user cannot open the evaluation folder: the figures come to them."""
    index = open_dataset(app_env["data"])
    _write_reference_predictions(app_env, tmp_path / "preds", index.subjects_in("test"))
    at = evaluate_folder(tmp_path / "preds", report=True)
    no_problems(at)
    out = Path(at.session_state["ctseg_eval_result"]["out_dir"])
    figures = at.session_state["ctseg_eval_result"]["figures"]
    assert sorted(figures) == [
        "metrics_distribution_test.png", "segmentation_visualization_test.png",
        "structure_ranking_test.png",
    ]  # fmt: skip
    assert all(figures[n] == (out / n).read_bytes() for n in figures)
    assert len(at.get("download_button")) == 3 + 3  # the tables and the figures


def test_evaluate_ranks_the_structures_of_the_split_and_opens_the_worst_case(
    app_env, tmp_path, evaluate_folder, no_problems
):
    index = open_dataset(app_env["data"])
    test_ids = index.subjects_in("test")
    _write_reference_predictions(app_env, tmp_path / "preds", test_ids)
    expected = set()
    for sid in test_ids:
        entry = open_cached(app_env["data"], sid, app_env["cache"])
        expected |= {NAME_OF[k] for k in np.flatnonzero(entry.voxel_counts[1:]) + 1}
    at = evaluate_folder(tmp_path / "preds")
    no_problems(at)
    ranking = json.loads(charts(at)[0].proto.spec)
    results = at.session_state["ctseg_eval_result"]["results"]
    scored = set(results.loc[results["dice"].notna(), "structure"])
    assert scored == expected
    assert np.allclose(results["dice"].dropna(), 1.0)
    groups = at.dataframe[0].value
    scored_groups = groups["mean Dice"].dropna()  # a group with no scored pair shows None
    assert len(scored_groups) and (scored_groups == 1.0).all() and groups["missed"].sum() == 0
    assert ranking["encoding"]["color"]["field"] == "group"
    assert set(ranking["encoding"]["y"]["sort"]) == expected  # the ranking holds the split's
    assert len(at.get("download_button")) == 3
    assert not [i for i in at.info if "the last results" in i.value]
    other = next(s for s in at.selectbox(key="ctseg_eval_split").options if s != "test")
    at.selectbox(key="ctseg_eval_split").set_value(other)
    at.run()
    assert [i for i in at.info if "on the test split; press Evaluate" in i.value]
    at.selectbox(key="ctseg_eval_split").set_value("test")
    at.run()
    # worst case of a structure -> Explore at that subject, with only that structure shown
    structure = at.selectbox(key="ctseg_eval_worst").value
    at.button(key="ctseg_eval_open").click()
    at.run()
    no_problems(at)
    subject = at.session_state["ctseg_explore_subject"]
    assert subject in test_ids
    assert at.multiselect(key="ctseg_explore_structures").value == [structure]
    # beside the reference, the folder's own prediction of the subject (here: the same labels)
    assert at.selectbox(key="ctseg_explore_checkpoint").value.startswith("folder: ")
    assert at.get("image")[0].proto.imgs[0].caption.startswith("reference | prediction")
    table = at.dataframe[0].value.set_index("structure")
    assert (table["prediction ml"] == table["reference ml"]).all()
    entry = open_cached(app_env["data"], subject, app_env["cache"])
    z = at.slider(key="ctseg_explore_slice_axial").value - 1  # slices are numbered from 1
    per_slice = (np.asarray(entry.labels) == LABEL_OF[structure]).sum(axis=(1, 2))
    assert per_slice[z] == per_slice.max() > 0  # the slice with the most of it
    # zoomed to the structure: its bounding box, a toggle to see the whole slice again
    zxy = np.argwhere(np.asarray(entry.labels) == LABEL_OF[structure])
    box = tuple(zip(zxy.min(axis=0).tolist(), (zxy.max(axis=0) + 1).tolist(), strict=True))
    assert at.session_state["ctseg_explore_zoom"]["box_zxy"] == box
    assert at.toggle(key="ctseg_explore_zoom_on").value is True
    assert at.toggle(key="ctseg_explore_zoom_on").label == f"Zoom to {structure}"


def test_evaluate_scores_the_subjects_a_folder_has_on_a_split_or_all(
    app_env, tmp_path, choose_folder, no_problems
):
    """A folder with predictions of some subjects (TotalSegmentator run on one CT, say) is
    scored on those, of one split or of all; no dead end."""
    index = open_dataset(app_env["data"])
    train = index.subjects_in("train")
    have = train[:2]
    _write_reference_predictions(app_env, tmp_path / "preds", have)
    at = choose_folder(tmp_path / "preds")
    assert at.selectbox(key="ctseg_eval_split").options[-1] == "all"
    at.selectbox(key="ctseg_eval_split").set_value("test")
    at.run()
    no_problems(at)
    assert "its predictions are of train (2): choose that split, or all" in at.info[0].value
    assert at.button(key="ctseg_eval_go").disabled
    at.selectbox(key="ctseg_eval_split").set_value("train")
    at.run()
    assert at.multiselect(key="ctseg_eval_subjects").options == have
    assert at.multiselect(key="ctseg_eval_subjects").value == have  # all it has, by default
    label = at.multiselect(key="ctseg_eval_subjects").label
    assert label == f"Subjects (the folder has predictions of 2 of the {len(train)})"
    at.button(key="ctseg_eval_go").click()
    at.run()
    no_problems(at)
    info = at.session_state["ctseg_eval_result"]
    assert sorted(info["results"]["subject"].unique()) == have
    assert np.allclose(info["results"]["dice"].dropna(), 1.0)
    assert info["skipped"] == {} and not at.warning
    assert at.subheader[0].value == "Results on the train split (2 subjects)"
    # all splits, one subject chosen
    at.selectbox(key="ctseg_eval_split").set_value("all")
    at.run()
    assert at.multiselect(key="ctseg_eval_subjects").value == have
    at.multiselect(key="ctseg_eval_subjects").set_value([have[1]])
    at.button(key="ctseg_eval_go").click()
    at.run()
    no_problems(at)
    info = at.session_state["ctseg_eval_result"]
    assert info["results"]["subject"].unique().tolist() == [have[1]]
    assert at.subheader[0].value == "Results on all splits (1 subjects)"
    written = Path(info["out_dir"]) / "evaluation_results_all.csv"
    assert written.is_file() and json.loads(
        (Path(info["out_dir"]) / "source_all.json").read_text()
    )["subjects"] == [have[1]]
    at.switch_page("app_pages/home.py")
    at.run()
    at.switch_page("app_pages/evaluate.py")
    at.run()
    assert at.multiselect(key="ctseg_eval_subjects").value == [have[1]]  # kept across pages
    assert not [i for i in at.info if "the last results" in i.value]


def test_evaluate_lists_the_subjects_it_could_not_score(
    app_env, tmp_path, choose_folder, no_problems
):
    index = open_dataset(app_env["data"])
    train = index.subjects_in("train")
    folder = tmp_path / "preds"
    _write_reference_predictions(app_env, folder, train[:2])
    (folder / f"{train[2]}.nii.gz").write_bytes(b"\x1f\x8b" + b"\0" * 100)  # cut short
    at = choose_folder(folder)
    at.selectbox(key="ctseg_eval_split").set_value("train")
    at.run()
    assert at.multiselect(key="ctseg_eval_subjects").value == train[:3]
    at.button(key="ctseg_eval_go").click()
    at.run()
    no_problems(at)
    info = at.session_state["ctseg_eval_result"]
    assert sorted(info["results"]["subject"].unique()) == train[:2]
    warning = at.warning[0].value
    assert warning.startswith("Not scored: 1 of the 3 subjects") and warning.endswith(train[2])
    listed = at.dataframe[0].value
    assert listed["subject"].tolist() == [train[2]]
    assert f"{train[2]}.nii.gz cannot be read as NIfTI" in listed.loc[0, "reason"]
    on_disk = pd.read_csv(Path(info["out_dir"]) / "skipped_train.csv")
    assert on_disk.equals(listed)
    assert at.subheader[0].value == "Results on the train split (2 subjects)"


def test_evaluate_refuses_a_predictions_folder_outside_the_roots(
    app_env, monkeypatch, tmp_path, new_app
):
    monkeypatch.setenv("CTSEG_DATA_ROOTS", str(app_env["data"]))
    at = new_app("evaluate")
    at.run()
    at.segmented_control(key="ctseg_eval_kind").set_value("a predictions folder (<id>.nii.gz)")
    at.run()
    at.text_input(key="ctseg_eval_folder").set_value(str(tmp_path))
    at.run()
    assert "outside the allowed data roots" in at.error[0].value
    assert not at.exception


def test_train_starts_refuses_a_second_start_and_stops(
    app_env, monkeypatch, tmp_path, new_app, no_problems
):
    from ctseg_core.runs.run_folder import read_status
    from ctseg_core.training.job import get_job

    checkpoints = tmp_path / "checkpoints"  # only this test's runs
    monkeypatch.setenv("CTSEG_CHECKPOINTS", str(checkpoints))
    at = new_app("train")
    at.run()
    no_problems(at)
    at.slider(key="ctseg_train_epochs").set_value(30)
    at.select_slider(key="ctseg_train_size").set_value(64)
    at.selectbox(key="ctseg_train_width").set_value("tiny (8)")
    at.number_input(key="ctseg_train_steps").set_value(2)
    at.number_input(key="ctseg_train_val").set_value(2)
    at.number_input(key="ctseg_train_checkpoint_every").set_value(0)
    at.text_input(key="ctseg_train_run_name").set_value("from-page")
    at.button(key="FormSubmitter:train_form-Start").click()
    at.run()
    no_problems(at)
    job = get_job()
    run_dir = checkpoints / "from-page"
    assert job.snapshot().run_dir == run_dir and (run_dir / "config.json").is_file()
    config = json.loads((run_dir / "config.json").read_text())
    assert config["train"]["epochs"] == 30 and config["data"]["target_size"] == [64, 64]
    assert config["model"]["features"] == [8, 16, 32, 64]
    assert config["train"]["checkpoint_every"] == 0  # only best.pth and last.pth
    # this server's own run is stopped by the Stop above, not through its folder
    assert not [b for b in at.button if b.key == "ctseg_train_stop_elsewhere"]
    # a second Start while it runs is refused with one line
    at.text_input(key="ctseg_train_run_name").set_value("second")
    at.button(key="FormSubmitter:train_form-Start").click()
    at.run()
    assert "already running" in at.error[0].value
    assert not (checkpoints / "second").exists()
    deadline = time.time() + 60  # one finished epoch, so last.pth exists to resume from
    while not (run_dir / "last.pth").is_file() and time.time() < deadline:
        time.sleep(0.2)
    at.button(key=f"ctseg_train_stop_{job.snapshot().launch}").click()  # this tab's start
    at.run()
    assert job.wait(60)
    at.run()
    assert read_status(run_dir)["state"] == "stopped", read_status(run_dir)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["State"] == "stopped"
    stopped_at = int(metrics["Epoch"].split(" / ")[0])
    assert stopped_at < 30
    assert not list(run_dir.glob("checkpoint_epoch*.pth"))  # checkpoint every 0 epochs
    # Resume continues the same run folder from its last.pth
    at.selectbox(key="ctseg_train_resume_pick").set_value("from-page")
    at.run()
    until = at.number_input(key="ctseg_train_resume_epochs_from-page")
    assert until.value == 30 and until.min == stopped_at + 1  # the run's own plan
    at.button(key="ctseg_train_resume").click()
    at.run()
    no_problems(at)
    assert job.snapshot().run_dir == run_dir, job.snapshot()
    assert job.snapshot().state in ("queued", "running", "stopping", "stopped"), job.snapshot()
    at.button(key=f"ctseg_train_stop_{job.snapshot().launch}").click()  # this tab's resume
    at.run()
    assert job.wait(60)
    assert read_status(run_dir)["state"] == "stopped", read_status(run_dir)
    assert read_status(run_dir)["epoch"] >= stopped_at


def test_train_presets_fill_the_form_and_carry_their_hidden_settings(
    app_env, monkeypatch, tmp_path, new_app, no_problems
):
    from ctseg_core.training.job import get_job
    from ctseg_core.training.presets import preset

    monkeypatch.setenv("CTSEG_CHECKPOINTS", str(tmp_path))
    at = new_app("train")
    at.run()
    no_problems(at)
    # a phantom dataset (it holds the phantom marker) starts from the phantom demo
    assert at.selectbox(key="ctseg_train_preset").value == "phantom_demo"
    at.selectbox(key="ctseg_train_preset").set_value("cpu")
    at.run()
    assert at.slider(key="ctseg_train_epochs").value == preset("cpu").train.epochs
    assert at.selectbox(key="ctseg_train_width").value == "base (32)"
    at.selectbox(key="ctseg_train_preset").set_value("phantom_demo")
    at.run()
    demo = preset("phantom_demo")
    assert at.slider(key="ctseg_train_epochs").value == demo.train.epochs
    assert at.select_slider(key="ctseg_train_lr").value == demo.train.lr
    assert at.select_slider(key="ctseg_train_size").value == demo.data.target_size[0]
    assert at.selectbox(key="ctseg_train_width").value == "small (16)"
    assert at.selectbox(key="ctseg_train_scheduler").value == demo.train.scheduler
    assert at.number_input(key="ctseg_train_checkpoint_every").value == 10
    at.slider(key="ctseg_train_epochs").set_value(1)
    at.number_input(key="ctseg_train_steps").set_value(1)
    at.number_input(key="ctseg_train_val").set_value(1)
    at.select_slider(key="ctseg_train_size").set_value(64)
    at.text_input(key="ctseg_train_run_name").set_value("preset-run")
    at.button(key="FormSubmitter:train_form-Start").click()
    at.run()
    no_problems(at)
    assert get_job().wait(120)
    config = json.loads((tmp_path / "preset-run" / "config.json").read_text())
    assert config["data"]["hu_window"] == list(demo.data.hu_window)  # not on the form
    assert config["train"]["lr"] == demo.train.lr and config["train"]["epochs"] == 1
    assert config["model"]["features"] == demo.model.features
    assert config["model"]["bottleneck"] == demo.model.bottleneck  # its own ratio to the width
    assert config["model"]["deep_supervision"] == demo.model.deep_supervision > 0
    assert config["model"]["norm"] == "instance" and config["data"]["curve_prob"] > 0


def test_train_form_and_explore_view_survive_a_visit_to_another_page(app_env, new_app, capfd):
    from ctseg_core.training.presets import preset

    at = new_app("train")
    at.run()
    assert at.selectbox(key="ctseg_train_preset").value == "phantom_demo"
    at.selectbox(key="ctseg_train_preset").set_value("cpu")  # outside the form: kept at once
    at.run()
    at.switch_page("app_pages/explore.py")
    at.run()
    at.segmented_control(key="ctseg_explore_plane").set_value("sagittal")
    at.run()
    at.switch_page("app_pages/home.py")
    at.run()
    at.switch_page("app_pages/train.py")
    at.run()
    # (values typed into the form count once submitted: st.form keeps them in the browser)
    assert at.selectbox(key="ctseg_train_preset").value == "cpu"
    assert at.slider(key="ctseg_train_epochs").value == preset("cpu").train.epochs
    at.switch_page("app_pages/explore.py")
    at.run()
    assert at.segmented_control(key="ctseg_explore_plane").value == "sagittal"
    for page in ("evaluate", "predict", "train", "explore"):
        at.switch_page(f"app_pages/{page}.py")
        at.run()
    # kept widgets get no default too (Streamlit warns about a widget given both)
    assert "created with a default value" not in capfd.readouterr().err


def test_train_shows_a_failed_run_from_the_cli_with_its_error(
    app_env, tiny_run, monkeypatch, tmp_path, new_app, no_problems
):
    """A run folder written by another process (CLI, torchrun) is read like one started here."""
    import shutil

    from ctseg_core.runs.run_folder import read_status, write_status

    monkeypatch.setenv("CTSEG_CHECKPOINTS", str(tmp_path))
    shutil.copytree(tiny_run, tmp_path / "tiny")
    run_dir = tmp_path / "cli-failed"
    shutil.copytree(tiny_run, run_dir)
    error = "CUDA out of memory on rank 1; lower the batch size or the target size"
    write_status(run_dir, {**read_status(tiny_run), "state": "failed", "error": error})
    at = new_app("train")
    at.session_state["ctseg_train_run"] = "cli-failed"
    at.run()
    assert not at.exception
    assert [as_shown(e.value) for e in at.error] == [f"cli-failed: {error}"]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["State"] == "failed" and metrics["Epoch"] == "1 / 1"
    last_loss = read_status(tiny_run).get("loss")  # the latest step's loss, else the epoch's
    if last_loss is None:
        history = (tiny_run / "history.jsonl").read_text().splitlines()
        last_loss = json.loads(history[-1])["train_loss"]
    assert metrics["Loss"] == f"{last_loss:.4f}"
    assert len(charts(at)) >= 2  # loss curves and validation Dice
    assert at.selectbox(key="ctseg_train_run_pick").value == "cli-failed"


def test_train_stops_a_run_started_elsewhere_through_its_folder(
    app_env, make_tiny_config, monkeypatch, tmp_path, new_app, no_problems
):
    """A run this server did not start (here a Trainer in a plain thread, as the CLI runs it)
    gets its own Stop, which asks through the run folder."""
    import threading

    from ctseg_core.runs.run_folder import read_status
    from ctseg_core.training.trainer import Trainer

    monkeypatch.setenv("CTSEG_CHECKPOINTS", str(tmp_path))
    config = make_tiny_config(app_env, "elsewhere", epochs=50, steps=500)
    trainer = Trainer(config.validate(), checkpoints_root=tmp_path, started_by="alice (CLI)")
    run_dir = trainer.open_run()
    outcome = []
    thread = threading.Thread(target=lambda: outcome.append(trainer.run()), daemon=True)
    thread.start()
    deadline = time.time() + 60
    while read_status(run_dir).get("step", 0) < 1 and time.time() < deadline:
        time.sleep(0.1)
    at = new_app("train")
    at.session_state["ctseg_train_run"] = "elsewhere"
    at.run()
    no_problems(at)
    assert {m.label: m.value for m in at.metric}["State"] == "running"
    # the Stop asks first, saying whose run it is
    assert any(r"was started by alice \(CLI\)" in m.value for m in at.markdown)
    at.button(key="ctseg_train_stop_elsewhere").click()
    at.run()
    no_problems(at)
    thread.join(60)
    assert outcome == ["stopped"] and read_status(run_dir)["state"] == "stopped"
    assert read_status(run_dir)["epoch"] == 0  # within the first of 50 epochs
    assert "stopped by request of a dashboard user on " in read_status(run_dir)["message"]


def test_stopping_the_servers_run_from_another_session_says_whose_it_is(
    app_env, make_tiny_config, monkeypatch, tmp_path, new_app, no_problems
):
    """Two users of one server: the run bob started is stopped by another session only
    through a confirmation naming bob, and its status says who stopped it."""
    from ctseg_core.runs.run_folder import read_status
    from ctseg_core.training.job import get_job

    monkeypatch.setenv("CTSEG_CHECKPOINTS", str(tmp_path))
    job = get_job()
    config = make_tiny_config(app_env, "bobs-run", epochs=50, steps=500).validate()
    # a label from a header or a login: shown as text, never as a link
    bob = "[bob](https://evil.example) (dashboard)"
    run_dir = job.start(config, tmp_path, started_by=bob)
    try:
        at = new_app("train")
        at.run()
        no_problems(at)
        # escaped, and a zero-width space keeps the frontend from linking the bare URL
        shown = r"\[bob\]\(https\:" + "\u200b" + r"//evil\.example\) \(dashboard\)"
        assert any(f"**bobs\\-run** was started by {shown}," in m.value for m in at.markdown)
        assert any(f"Started by {shown} on " in c.value for c in at.caption)
        launch = job.snapshot().launch
        assert not [b for b in at.button if b.key == f"ctseg_train_stop_{launch}"]
        job.stop(by="a stale page", run_dir=tmp_path / "another-run")  # meant another run
        time.sleep(0.5)
        assert job.is_running and read_status(run_dir)["state"] == "running"
        at.button(key=f"ctseg_train_stop_ok_{launch}").click()  # the popover's confirmation
        at.run()
        no_problems(at)
        assert job.wait(60)
    finally:
        job.stop()
        job.wait(60)
    status = read_status(run_dir)
    assert status["state"] == "stopped" and status["started_by"] == bob
    assert status["message"].startswith("stopped by request of a dashboard user during epoch")


def test_a_tab_stops_at_once_only_its_own_start_not_a_later_one_under_the_same_name(
    app_env, monkeypatch, tmp_path, new_app, no_problems
):
    """Tab A starts run x and stops it before its first epoch; tab B starts x again (in the
    same folder). A's Stop must ask, naming B's start, as any other tab's does (found by a
    review: A kept the direct Stop, keyed by the name, and one click stopped B's run)."""
    from ctseg_core.runs.run_folder import read_status
    from ctseg_core.training.job import get_job

    checkpoints = tmp_path / "checkpoints"
    monkeypatch.setenv("CTSEG_CHECKPOINTS", str(checkpoints))
    job = get_job()

    def start_x(at):
        at.run()
        at.slider(key="ctseg_train_epochs").set_value(2)
        at.select_slider(key="ctseg_train_size").set_value(64)
        at.selectbox(key="ctseg_train_width").set_value("tiny (8)")
        at.number_input(key="ctseg_train_steps").set_value(5000)
        at.number_input(key="ctseg_train_val").set_value(1)
        at.text_input(key="ctseg_train_run_name").set_value("x")
        at.button(key="FormSubmitter:train_form-Start").click()
        at.run()
        no_problems(at)
        return job.snapshot().launch

    tab_a, tab_b = new_app("train"), new_app("train")
    try:
        launch_a = start_x(tab_a)
        tab_a.button(key=f"ctseg_train_stop_{launch_a}").click()
        tab_a.run()
        assert job.wait(60) and read_status(checkpoints / "x")["epoch"] == 0
        launch_b = start_x(tab_b)
        assert launch_b != launch_a and job.snapshot().run_dir == checkpoints / "x"
        tab_a.run()
        no_problems(tab_a)
        stops = [b.key for b in tab_a.button if b.key.startswith("ctseg_train_stop_")]
        assert stops == [f"ctseg_train_stop_ok_{launch_b}"]  # the confirmation, naming x
        job.stop(by="tab A's stale page", run_dir=checkpoints / "x", launch=launch_a)
        time.sleep(0.5)
        assert job.is_running and read_status(checkpoints / "x")["state"] == "running"
    finally:
        job.stop()
        job.wait(60)


def test_predict_page_lists_checkpoints_and_waits_for_an_upload(
    app_env, tiny_run, new_app, no_problems
):
    at = new_app("predict")
    at.run()
    no_problems(at)
    options = at.selectbox(key="ctseg_predict_checkpoint").options
    assert "tiny (2D) / best.pth" in options and options[-1] == "(upload a checkpoint)"
    assert at.button(key="ctseg_predict_go").disabled


def test_checkpoint_lists_put_the_best_scoring_run_first(monkeypatch, tmp_path):
    from ctseg_core.runs.run_folder import write_history, write_status
    from dashboard import cached

    for name, dice in (("good", 0.8), ("fresh", 0.05), ("scoreless", None)):  # newest last
        run = tmp_path / name
        run.mkdir()
        (run / "config.json").write_text("{}")
        (run / "best.pth").write_bytes(b"")
        write_history(run, [{"epoch": 1, "val_dice_mean": dice}])
        write_status(run, {"state": "finished"})
    monkeypatch.setenv("CTSEG_CHECKPOINTS", str(tmp_path))
    assert list(cached.all_checkpoints()) == [
        "good / best.pth",
        "fresh / best.pth",
        "scoreless / best.pth",
    ]


def test_train_offers_to_continue_a_finished_run_for_more_epochs(
    app_env, tiny_run, new_app, no_problems
):
    at = new_app("train")
    at.run()
    assert "tiny (2D)" in at.selectbox(key="ctseg_train_resume_pick").options
    at.selectbox(key="ctseg_train_resume_pick").set_value("tiny")
    at.run()
    no_problems(at)
    until = at.number_input(key="ctseg_train_resume_epochs_tiny")
    assert until.value == 11 and until.min == 2  # trained 1 of 1: ten more by default


def test_resume_says_it_trains_the_chosen_run_in_its_own_folder(
    app_env, tiny_run, new_app, no_problems
):
    at = new_app("train")
    at.run()
    at.selectbox(key="ctseg_train_resume_pick").set_value(tiny_run.name)
    at.run()
    no_problems(at)
    note = [c.value for c in at.caption if c.value.startswith("Resume trains")]
    assert note == [f"Resume trains {tiny_run.name} further in its own folder: its last.pth, "
                    "best.pth (when validation improves), history and status are updated as it "
                    "trains."]  # fmt: skip


def test_explore_names_the_structures_a_subject_does_not_annotate(
    monkeypatch, tmp_path, new_app, no_problems
):
    import shutil

    root = tmp_path / "partial"
    fixture = Path(__file__).resolve().parents[1] / "data" / "totalseg_sample" / "s0000"
    shutil.copytree(fixture, root / "s0000")
    kept = {"liver.nii.gz", "spleen.nii.gz"}
    for mask in (root / "s0000" / "segmentations").iterdir():
        if mask.name not in kept:
            mask.unlink()  # a missing file: not annotated
    monkeypatch.setenv("CTSEG_DATA", str(root))
    monkeypatch.setenv("CTSEG_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CTSEG_DATA_ROOTS", raising=False)
    at = new_app("explore")
    at.run()
    no_problems(at)
    notes = [c.value for c in at.caption if c.value.startswith("Not annotated")]
    assert notes and "115 of 117 structures" in notes[0]
    listed = at.text[0].value.split(", ")
    assert len(listed) == 115 and "liver" not in listed and "heart" in listed
    # the spleen's mask on another grid: left out, and said why (not "no mask file")
    import nibabel as nib
    import numpy as np

    spleen = root / "s0000" / "segmentations" / "spleen.nii.gz"
    img = nib.load(spleen)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[::2], img.affine), spleen)
    at = new_app("explore")
    at.run()
    no_problems(at)
    (warning,) = [w.value.replace("\\", "") for w in at.warning]
    assert warning.startswith("s0000: mask shape") and "(spleen counts as not annotated" in warning
    notes = [c.value for c in at.caption if c.value.startswith("Not annotated")]
    assert "116 of 117 structures" in notes[0]
