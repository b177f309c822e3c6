"""Strings from files, folders, headers and users are shown as plain text on every page.

Anyone who can write into an allowed folder names subjects, structure files, run folders and
meta.csv values; Streamlit renders page text as Markdown, so such a name could become a live
(phishing) link, coloured text or a ``javascript:`` link for the whole team.
Typed paths no filesystem can hold end in the ordinary one-line refusal, not a traceback.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from markdown_kit import as_shown, assert_plain

from ctseg_core.data.dataset_root import open_dataset

pytestmark = pytest.mark.timeout(300)

LINK = "[session expired - log in here](https://evil.example/login)"
RED = ":red[**pwned**]"
JS = "[a](javascript:alert(1))"
STRUCTURE = "[liver](javascript:void(0)).nii.gz"
FOLDER = ":blue[preds](javascript:alert(3))"
BARE = "www.evil.example x@evil.example"  # remark-gfm links these in the parsed text
ICON = ":material/warning:"  # Streamlit draws it as an icon


@pytest.fixture(scope="module")
def hostile_root(tmp_path_factory, phantom_root):
    """A dataset with a subject named RED (test split, with a STRUCTURE file among its masks),
    s0001 (train) and folders named JS and BARE without a CT (listed problems)."""
    root = tmp_path_factory.mktemp("hostile") / "data"
    root.mkdir()
    first, second = open_dataset(phantom_root).subjects[:2]
    shutil.copytree(phantom_root / first, root / RED)
    shutil.copytree(phantom_root / second, root / "s0001")
    segmentations = root / RED / "segmentations"
    shutil.copy(segmentations / "liver.nii.gz", segmentations / STRUCTURE)
    (root / JS / "segmentations").mkdir(parents=True)
    (root / BARE / "segmentations").mkdir(parents=True)
    (root / "meta.csv").write_text(f"image_id;split\n{RED};test\ns0001;train\n")
    return root


@pytest.fixture
def hostile_env(app_env, monkeypatch, hostile_root):
    monkeypatch.setenv("CTSEG_DATA", str(hostile_root))
    return {**app_env, "data": hostile_root}


def _open_on_home(new_app, typed: str):
    at = new_app()
    at.run()
    at.text_input(key="home_dataset_path").set_value(typed)
    at.button[0].click()  # the form's Open button
    at.run()
    return at


def test_home_shows_a_split_value_from_meta_csv_as_text_not_a_link(
    app_env, phantom_root, tmp_path, new_app
):
    bad = tmp_path / "bad"
    shutil.copytree(phantom_root / open_dataset(phantom_root).subjects[0], bad / "s0000")
    (bad / "meta.csv").write_text(f"image_id;split\ns0000;{LINK}\n")
    at = _open_on_home(new_app, str(bad))
    assert not at.exception
    assert len(at.error) == 1
    assert "has split '[session expired" in as_shown(at.error[0].value)
    assert_plain(at, LINK)


def test_home_lists_hostile_subject_and_structure_names_as_text(hostile_env, new_app):
    at = new_app()
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    problems = [as_shown(m.value) for m in at.markdown if m.value.startswith("- ")]
    assert any(p.startswith(f"- {JS}: no ct.nii.gz") for p in problems), problems
    assert any(f"{RED}/segmentations: 1 file ignored" in p and STRUCTURE in p for p in problems)
    assert any(p.startswith(f"- {BARE}: no ct.nii.gz") for p in problems), problems
    assert_plain(at, JS, RED, STRUCTURE, BARE)


def test_explore_shows_a_hostile_subject_and_folder_as_text(hostile_env, tmp_path, new_app):
    folder = tmp_path / FOLDER
    folder.mkdir()  # holds no prediction of the subject: an error naming the folder
    at = new_app("explore")
    at.session_state["ctseg_explore_folders"] = [str(folder)]
    at.session_state["ctseg_explore_subject"] = RED
    at.session_state["ctseg_explore_checkpoint"] = f"folder: {folder}"
    at.run()
    assert not at.exception
    assert at.selectbox(key="ctseg_explore_subject").value == RED
    captions = [as_shown(c.value) for c in at.caption]
    assert any(c.startswith(f"{RED}: ") and " voxels, spacing " in c for c in captions), captions
    assert [as_shown(e.value) for e in at.error] == [
        f"prediction from {folder}: {folder} holds no {RED}.nii.gz; pick another subject or source"
    ]
    assert_plain(at, RED, FOLDER)


def test_evaluate_shows_hostile_folders_and_subjects_as_text(hostile_env, tmp_path, choose_folder):
    import nibabel as nib

    from ctseg_core.data.cache import open_cached

    missing = tmp_path / "missing" / FOLDER
    at = choose_folder(missing)
    assert [as_shown(e.value) for e in at.error] == [
        f"evaluation: {missing} is not a folder; give the folder holding <id>.nii.gz files"
    ]
    assert_plain(at, FOLDER)
    folder = tmp_path / FOLDER  # the reference as the prediction of RED, the test split
    folder.mkdir()
    entry = open_cached(hostile_env["data"], RED, hostile_env["cache"])
    nib.save(
        nib.Nifti1Image(np.asarray(entry.labels_xyz()), entry.affine), folder / f"{RED}.nii.gz"
    )
    at.text_input(key="ctseg_eval_folder").set_value(str(folder))
    at.run()
    at.selectbox(key="ctseg_eval_split").set_value("test")
    at.button(key="ctseg_eval_go").click()
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any(as_shown(c.value).startswith(f"Worst: {RED} (Dice 1.000)") for c in at.caption)
    assert_plain(at, RED, FOLDER)


def test_train_shows_a_hostile_run_name_and_error_as_text(
    app_env, tiny_run, monkeypatch, tmp_path, new_app
):
    from ctseg_core.runs.run_folder import read_status, write_status

    monkeypatch.setenv("CTSEG_CHECKPOINTS", str(tmp_path))
    name = "[run](javascript:alert(1))"
    shutil.copytree(tiny_run, tmp_path / name)
    error = f"{LINK} {ICON} {BARE}"
    write_status(tmp_path / name, {**read_status(tiny_run), "state": "failed", "error": error})
    at = new_app("train")
    at.session_state["ctseg_train_run"] = name
    at.run()
    assert not at.exception
    assert [as_shown(e.value) for e in at.error] == [f"{name}: {error}"]
    at.selectbox(key="ctseg_train_resume_pick").set_value(name)
    at.run()
    assert any(as_shown(c.value).startswith(f"Resume trains {name} further") for c in at.caption)
    assert_plain(at, name, error)


def test_predict_shows_the_upload_and_checkpoint_names_as_text(app_env, new_app):
    """Upload names keep letters, digits, '.', '_' and '-' only; '__x__' is still bold."""
    from ctseg_core.labels import LABEL_OF
    from dashboard.helpers.uploads import result_stem

    labels = np.zeros((4, 8, 8), np.uint8)
    labels[1:3, 2:6, 2:6] = LABEL_OF["liver"]
    stem = result_stem("__pwned__.nii.gz")
    at = new_app("predict")
    at.session_state["ctseg_predict_result"] = {
        "name": stem, "ct_zxy": np.zeros((4, 8, 8), np.int16), "labels_zxy": labels,
        "spacing_mm": (1.0, 1.0, 1.0), "affine": np.eye(4), "nifti": b"",
        "checkpoint": "__best__.pth", "warnings": [f"{stem}.nii.gz: {LINK}"],
    }  # fmt: skip
    at.run()
    assert not at.exception
    assert [as_shown(s.value) for s in at.subheader] == [
        "__pwned__: 1 structures found (__best__.pth)"
    ]
    assert [as_shown(w.value) for w in at.warning] == [f"__pwned__.nii.gz: {LINK}"]
    assert_plain(at, "__pwned__", "__best__", LINK)


@pytest.mark.parametrize(
    ("typed", "said"),
    [("/data/a\0b", "holds a NUL byte"), ("/data/" + "n" * 300, "over this system's limit")],
    ids=["nul", "long-name"],
)
def test_typed_paths_no_filesystem_holds_are_one_line_refusals(app_env, new_app, typed, said):
    at = _open_on_home(new_app, typed)
    errors = [as_shown(e.value) for e in at.error]
    assert len(errors) == 1 and said in errors[0] and "unexpected" not in errors[0], errors
    assert at.session_state["ctseg_dataset_root"] == str(app_env["data"])  # unchanged
    at = new_app("evaluate")
    at.run()
    at.segmented_control(key="ctseg_eval_kind").set_value("a predictions folder (<id>.nii.gz)")
    at.run()
    at.text_input(key="ctseg_eval_folder").set_value(typed)
    at.run()
    errors = [as_shown(e.value) for e in at.error]
    assert len(errors) == 1 and said in errors[0] and "unexpected" not in errors[0], errors


def test_plain_text_makes_no_markdown_block():
    """A name holding line breaks (a quoted meta.csv field, a folder name) made a setext
    heading ("===" under a line) or an indented code block (reviewer): one line now, '='
    escaped, the text as it reads."""
    from dashboard.state import plain

    hostile = "x\n\nSESSION EXPIRED\n===\n\n    sign in at evil"
    shown = plain(hostile)
    assert "\n" not in shown and "\r" not in plain("a\r\nb")
    assert "\\=\\=\\=" in shown and "=" not in shown.replace("\\=", "")
    assert as_shown(shown) == "x SESSION EXPIRED === sign in at evil"
