"""Files and folders this user may not read or write: one line naming the file and the fix, the
readable rest kept, found before long work rather than at its end (each was a raw
PermissionError traceback, or a message that pointed at the wrong fix).

The checks run in a child Python that permissions bind (``permissions_kit``: as root, without
the capabilities that read everything), one child per test for its several cases."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from permissions_kit import run_bound_by_permissions

from ctseg_core.labels import PARTS

SHAPE = (16, 12, 8)
READ_FIX = "let the user running ctseg read it (chmod/chown)"


def _subject(root: Path, sid: str) -> Path:
    ct = np.full(SHAPE, -1000, dtype=np.int16)
    ct[4:12, 3:9, 2:6] = 50
    (root / sid / "segmentations").mkdir(parents=True)
    nib.save(nib.Nifti1Image(ct, np.diag([1.5, 1.5, 3.0, 1.0])), str(root / sid / "ct.nii.gz"))
    liver = (ct > 0).astype(np.uint8)
    nib.save(nib.Nifti1Image(liver, np.diag([1.5, 1.5, 3.0, 1.0])),
             str(root / sid / "segmentations" / "liver.nii.gz"))  # fmt: skip
    return root / sid


#: each case: (name, code run in the child that returns what is asserted); errors as text
CHILD = """
import json, sys
from pathlib import Path
out = {}
def case(name, fn):
    try:
        out[name] = fn()
    except Exception as exc:
        out[name] = f"{type(exc).__name__}: {exc}"
%s
print(json.dumps(out))
"""


#: Python 3.14's ``Path.exists``/``is_dir``/``is_file``: ``os.path``'s, which answer False
#: for a path they may not look at, where 3.10-3.13 raise PermissionError
PYTHON_314_PATHS = """
import os, pathlib, stat
def _os_path(test, lstat_test):
    def method(self, *, follow_symlinks=True):
        if follow_symlinks:
            return test(self)
        try:
            return lstat_test(os.lstat(self).st_mode)
        except (OSError, ValueError):
            return False
    return method
pathlib.Path.exists = _os_path(os.path.exists, lambda mode: True)
pathlib.Path.is_dir = _os_path(os.path.isdir, stat.S_ISDIR)
pathlib.Path.is_file = _os_path(os.path.isfile, stat.S_ISREG)
"""

#: run each test's cases with this Python's pathlib and with 3.14's
PATHLIBS = pytest.mark.parametrize("pathlib_of", ["this Python", "Python 3.14"])


def _run(cases: str, *args: str, pathlib_of: str = "this Python") -> dict:
    patch = PYTHON_314_PATHS if pathlib_of == "Python 3.14" else ""
    return json.loads(run_bound_by_permissions(patch + CHILD % cases, *args))


@PATHLIBS
def test_data_that_cannot_be_read_is_said_with_the_file_and_its_fix(
    tmp_path, derived_dicom, pathlib_of
):
    import shutil

    data, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    for sid in ("s0001", "s0002", "s0003", "s0004"):
        _subject(data, sid)
    (data / "s0002").chmod(0o000)  # the subject folder
    (elsewhere / "private").mkdir(parents=True)  # s0003's CT: a link into a closed folder
    (data / "s0003" / "ct.nii.gz").rename(elsewhere / "private" / "ct.nii.gz")
    (data / "s0003" / "ct.nii.gz").symlink_to(elsewhere / "private" / "ct.nii.gz")
    (elsewhere / "private").chmod(0o000)
    (data / "s0004" / "segmentations" / "liver.nii.gz").chmod(0o000)  # a mask
    (data / "s0005").symlink_to("x" * 300)  # a name longer than the filesystem allows
    closed = tmp_path / "closed"  # the dataset folder itself
    _subject(closed, "s0001")
    meta = tmp_path / "with_meta"  # its meta.csv
    _subject(meta, "s0001")
    (meta / "meta.csv").write_text("image_id;split\ns0001;train\n")
    (meta / "meta.csv").chmod(0o000)
    cache = tmp_path / "cache"  # a cache this user may not write into
    cache.mkdir()
    dicom = tmp_path / "dicom"
    shutil.copytree(derived_dicom, dicom)
    slices = sorted(dicom.iterdir())
    slices[3].chmod(0o000)  # one slice: it was "damaged", and then a gap to interpolate
    noted = tmp_path / "noted"  # an export's notes beside the slices: left out as before
    shutil.copytree(derived_dicom, noted)
    (noted / "export_notes.txt").write_text("x")
    (noted / "export_notes.txt").chmod(0o000)
    closed.chmod(0o000)
    cache.chmod(0o555)
    cases = """
from ctseg_core.data import load_ct, open_dataset, prepare_dataset
data, closed, meta, cache, dicom, elsewhere = map(Path, sys.argv[1:7])
index = open_dataset(data)
case("subjects", lambda: index.subjects)
case("problems", lambda: index.problems)
case("closed", lambda: open_dataset(closed))
case("meta", lambda: open_dataset(meta))
case("prepare", lambda: prepare_dataset(data, data.parent / "cache2", workers=1).failed)
case("cache", lambda: prepare_dataset(data, cache, workers=1).failed)
case("ct in a closed folder", lambda: load_ct(elsewhere / "private" / "ct.nii.gz"))
case("dicom", lambda: load_ct(dicom).array.shape)
case("notes beside", lambda: load_ct(dicom.parent / "noted").array.shape)
"""
    try:
        got = _run(
            cases, *map(str, (data, closed, meta, cache, dicom, elsewhere)), pathlib_of=pathlib_of
        )
    finally:
        for path in (data / "s0002", elsewhere / "private", closed, cache):
            path.chmod(0o755)
    assert got["subjects"] == ["s0001", "s0004"]
    assert got["problems"] == [
        f"s0002: skipped, it cannot be read (Permission denied); {READ_FIX} or move it out of "
        "the dataset folder",
        f"s0003: skipped, its ct.nii.gz (a link to {elsewhere / 'private' / 'ct.nii.gz'}) cannot "
        "be read (Permission denied); let the user running ctseg read what it points to "
        "(chmod/chown)",
        f"s0005: skipped, a link to {'x' * 300}, a name too long to follow; restore what it "
        "points to (a disk not mounted?) or remove the link",
    ]
    assert got["closed"] == (  # not "or move it out of the dataset folder": it is that folder
        f"DataError: dataset folder {closed} cannot be read (Permission denied); {READ_FIX}"
    )
    assert got["meta"] == f"DataError: {meta / 'meta.csv'} cannot be read (Permission denied); {READ_FIX}"  # fmt: skip
    mask = data / "s0004" / "segmentations" / "liver.nii.gz"
    assert got["prepare"] == {  # was "cannot be read as NIfTI ...; re-export or re-download"
        "s0004": f"{mask} cannot be read (Permission denied); {READ_FIX}"
    }
    assert got["cache"].startswith(  # once, not once per subject as "cannot be read"
        f"DataError: cache {cache} cannot be used (Permission denied: {cache}/data-"
    )
    assert got["cache"].endswith(
        "); give a folder this user may read and write (--cache, CTSEG_CACHE)"
    )
    assert got["ct in a closed folder"] == (
        f"DataError: {elsewhere / 'private' / 'ct.nii.gz'} cannot be read (Permission denied); "
        + READ_FIX
    )
    assert got["notes beside"] == [122, 101, 20]  # an unreadable note is no slice: not refused
    assert got["dicom"] == (
        f"DataError: {dicom}: {slices[3].name} cannot be read (Permission denied); {READ_FIX}"
    )


@PATHLIBS
def test_runs_checkpoints_and_outputs_that_cannot_be_used_are_said_before_the_work(
    tmp_path, pathlib_of
):
    data = tmp_path / "data"
    for sid in ("s0001", "s0002", "s0003"):
        _subject(data, sid)
    (data / "meta.csv").write_text("image_id;split\ns0001;val\ns0002;val\ns0003;val\n")
    runs = tmp_path / "runs"
    for name in ("mine", "private"):
        (runs / name).mkdir(parents=True)
        (runs / name / "config.json").write_text("{}")
    (runs / "mine" / "best.pth").write_bytes(b"x")
    (runs / "mine" / "best.pth").chmod(0o000)
    (runs / "private").chmod(0o000)  # another user's run in a shared folder
    predictions = tmp_path / "predictions"
    predictions.mkdir()
    for sid in ("s0001", "s0002", "s0003"):
        (predictions / f"{sid}.nii.gz").write_bytes((data / sid / "segmentations" / "liver.nii.gz").read_bytes())  # fmt: skip
    (data / "s0002" / "segmentations").chmod(0o000)
    closed_predictions = tmp_path / "closed_predictions"
    closed_predictions.mkdir()
    shut = tmp_path / "shut"
    shut.mkdir()
    shut.chmod(0o555)
    linked = tmp_path / "linked"  # one prediction a link into a folder this user may not enter
    linked.mkdir()
    for sid in ("s0001", "s0003"):
        (linked / f"{sid}.nii.gz").write_bytes((predictions / f"{sid}.nii.gz").read_bytes())
    (closed_predictions / "p.nii.gz").write_bytes((predictions / "s0002.nii.gz").read_bytes())
    (linked / "s0002.nii.gz").symlink_to(closed_predictions / "p.nii.gz")
    from ctseg_core.inference.label_files import write_label_files

    labelled = tmp_path / "labelled"  # ctseg predict's outputs; one's label file linked away
    labelled.mkdir()
    for sid in ("s0001", "s0002", "s0003"):
        (labelled / f"{sid}.nii.gz").write_bytes((predictions / f"{sid}.nii.gz").read_bytes())
        write_label_files(labelled / sid, [5], learned=True)  # the model learns the liver
    (labelled / "s0003.ctbl").rename(closed_predictions / "s0003.ctbl")
    (labelled / "s0003.ctbl").symlink_to(closed_predictions / "s0003.ctbl")
    shut_predictions = tmp_path / "shut_predictions"  # listed, not entered (chmod -R 644)
    shut_predictions.mkdir()
    (shut_predictions / "s0001.nii.gz").write_bytes(b"x")
    shut_predictions.chmod(0o644)
    (closed_predictions / "runs" / "r1").mkdir(parents=True)
    (closed_predictions / "runs" / "r1" / "config.json").write_text("{}")
    closed_predictions.chmod(0o000)
    cases = """
from ctseg_core.runs.listing import list_runs
from ctseg_core.models.checkpoint import load_checkpoint
from ctseg_core.evaluation.evaluate import evaluate_predictions
from ctseg_core.inference.files import predict_file
data, runs, predictions, closed, shut, shut_predictions, linked_predictions = map(Path, sys.argv[1:8])
import logging
said = []  # the server log's lines
class Kept(logging.Handler):
    def emit(self, record):
        said.append(record.getMessage())
logging.getLogger("ctseg_core.runs.listing").addHandler(Kept())
case("runs", lambda: [r.name for r in list_runs(runs)])
def said_of_private_run():  # once while it stays closed, and again once closed again
    counts = []
    for mode in (None, 0o755, 0o000):
        if mode is not None:
            (runs / "private").chmod(mode)
        list_runs(runs)
        counts.append(sum("private" in line for line in said))
    return counts
case("said of a private run", said_of_private_run)
case("checkpoint", lambda: load_checkpoint(runs / "mine" / "best.pth"))
ev = lambda p, o: evaluate_predictions(data, "val", p, o, report=False, cache_dir=data.parent / "cache")
def scored():
    results = ev(predictions, data.parent / "out")
    return [sorted(set(results["subject"])), results.attrs["skipped"]]
case("evaluate", scored)
case("closed predictions", lambda: ev(closed, data.parent / "out2"))
case("out not writable", lambda: ev(predictions, shut / "out"))
case("out in a closed folder", lambda: ev(predictions, closed / "x" / "out"))
case("predictions not enterable", lambda: ev(shut_predictions, data.parent / "out3"))
from ctseg_core.runs.listing import root_problem
case("runs in a closed folder", lambda: [list_runs(closed / "runs"), root_problem(closed / "runs")])
from ctseg_core.nnunet.export import export_nnunet
case("export into", lambda: export_nnunet(runs / "mine" / "best.pth", shut / "model"))
case("export under", lambda: export_nnunet(runs / "mine" / "best.pth", closed / "x" / "model"))
def linked():
    results = ev(linked_predictions, data.parent / "out4")
    return [sorted(set(results["subject"])), results.attrs["skipped"]]
case("a prediction linked into a closed folder", linked)
def labelled():
    results = ev(data.parent / "labelled", data.parent / "out5")
    return [sorted(set(results["subject"])), results.attrs["skipped"]]
case("a label file linked into a closed folder", labelled)
case("runs not enterable", lambda: [list_runs(shut_predictions), root_problem(shut_predictions)])
case("predict into", lambda: predict_file(data / "s0001" / "ct.nii.gz",
                                          [runs / "mine" / "best.pth"], shut / "s0001.nii.gz"))
"""
    try:
        paths = (data, runs, predictions, closed_predictions, shut, shut_predictions, linked)
        got = _run(cases, *map(str, paths), pathlib_of=pathlib_of)
    finally:
        for path in (runs / "private", data / "s0002" / "segmentations", closed_predictions, shut,
                     shut_predictions):  # fmt: skip
            path.chmod(0o755)
    assert got["runs"] == ["mine"]  # was a PermissionError on every page that lists runs
    assert got["said of a private run"] == [1, 1, 2]  # was never said again in that process
    assert got["checkpoint"] == (  # was "cannot be loaded safely (not a readable PyTorch file)"
        f"UnreadableCheckpoint: checkpoint {runs / 'mine' / 'best.pth'} cannot be read "
        f"(Permission denied); {READ_FIX}"
    )
    segmentations = data / "s0002" / "segmentations"
    assert got["evaluate"] == [  # was the whole evaluation ended by one subject
        ["s0001", "s0003"],
        {"s0002": f"s0002: {segmentations} cannot be read (Permission denied); {READ_FIX}"},
    ]
    assert got["closed predictions"] == (  # was a file in it named, subject by subject
        f"DataError: predictions folder {closed_predictions} cannot be read (Permission denied); "
        + READ_FIX
    )
    assert got["out not writable"] == (  # was a temporary file named, after all the scoring
        f"ConfigError: --out {shut / 'out'}: {shut} cannot be written (Permission denied); "
        "give a folder this user may write to"
    )
    assert got["out in a closed folder"] == (  # was a raw PermissionError
        f"ConfigError: --out {closed_predictions / 'x' / 'out'}: {closed_predictions} cannot be "
        "written (Permission denied); give a folder this user may write to"
    )
    assert got["predict into"] == (  # was a temporary file named, after the prediction
        f"ConfigError: --out {shut / 's0001.nii.gz'}: {shut} cannot be written (Permission "
        "denied); choose another --out"
    )
    assert got["export into"] == (  # was "error: <shut>/.tmp-model.xyz: Permission denied"
        f"ConfigError: {shut / 'model'}: {shut} cannot be written (Permission denied); give a "
        "folder this user may write to"
    )
    assert got["export under"] == (  # was a raw PermissionError naming the model folder
        f"ConfigError: {closed_predictions / 'x' / 'model'}: {closed_predictions} cannot be "
        "written (Permission denied); give a folder this user may write to"
    )
    link = linked / "s0002.nii.gz"
    assert got["a prediction linked into a closed folder"] == [  # not the whole folder blamed
        ["s0001", "s0003"],
        {
            "s0002": f"s0002: {link} (a link to {closed_predictions / 'p.nii.gz'}) cannot be read "
            "(Permission denied); let the user running ctseg read what it points to "
            "(chmod/chown)"
        },
    ]
    ctbl = tmp_path / "labelled" / "s0003.ctbl"
    assert got["a label file linked into a closed folder"] == [  # 3.14: scored without it
        ["s0001"],
        {
            "s0002": f"s0002: {segmentations} cannot be read (Permission denied); {READ_FIX}",
            "s0003": f"s0003: {ctbl} (a link to {closed_predictions / 's0003.ctbl'}) cannot be "
            "read (Permission denied); let the user running ctseg read what it points to "
            "(chmod/chown)",
        },
    ]
    assert got["predictions not enterable"] == (  # was a raw PermissionError naming a file
        f"DataError: predictions folder {shut_predictions} cannot be read (Permission denied); "
        + READ_FIX
    )
    # a checkpoints folder that cannot be read: no runs, and Home says why (was a traceback)
    assert got["runs in a closed folder"] == [
        [],
        f"checkpoints folder {closed_predictions / 'runs'} cannot be read (Permission denied); "
        + READ_FIX,
    ]
    assert got["runs not enterable"] == [  # was "No run folders yet"
        [],
        f"checkpoints folder {shut_predictions} cannot be read (Permission denied); {READ_FIX}",
    ]


@PATHLIBS
def test_shared_folders_with_a_closed_member_list_the_rest_and_say_why(
    tmp_path, derived_dicom, pathlib_of
):
    """Folders behind one that may not be entered: named as unreadable, never as missing (Python
    3.14's pathlib answers "not there" for them), and the readable rest still listed."""
    import shutil

    pytest.importorskip("nnunetv2")
    from nnunet_kit import write_model_folder

    models = tmp_path / "models"  # a shared nnU-Net results folder, one model private
    write_model_folder(models / "Dataset001_Mine", "2d", [5.0, 4.0], [32, 32], [0, 2, 1])
    write_model_folder(models / "Dataset002_Theirs", "2d", [5.0, 4.0], [32, 32], [0, 2, 1])
    split = models / "Dataset003_Split"  # two configurations, one private
    write_model_folder(split, "2d", [5.0, 4.0], [32, 32], [0, 2, 1])
    private = write_model_folder(split, "3d_fullres", [4.5, 5.0, 4.0], [16, 32, 32], [0, 2, 1])
    parts = tmp_path / "totalseg"  # TotalSegmentator's five parts, one private
    for number, (part, names) in zip(range(291, 296), PARTS.items(), strict=True):
        labels = {"background": 0, **{n: i for i, n in enumerate(names, start=1)}}
        write_model_folder(parts / f"Dataset{number}_TotalSegmentator_part_{part}", "2d",
                           [5.0, 4.0], [32, 32], [0, 2, 1], labels=labels)  # fmt: skip
    closed_part = sorted(parts.iterdir())[1]
    runs = tmp_path / "runs"  # a shared checkpoints folder, one run private
    for name in ("mine", "theirs"):
        (runs / name / "evaluation").mkdir(parents=True)
        (runs / name / "config.json").write_text("{}")
        (runs / name / "evaluation" / "evaluation_results_val.csv").write_text("subject\n")
    (runs / "linked").symlink_to(tmp_path / "closed" / "run")  # a run linked into a closed folder
    dicom = tmp_path / "dicom"  # a series after chmod -R 644: listed, not entered
    shutil.copytree(derived_dicom, dicom)
    closed = tmp_path / "closed"
    (closed / "preds").mkdir(parents=True)
    (closed / "mine.csv").write_text("x")
    (closed / "run" / "evaluation").mkdir(parents=True)
    (closed / "run" / "evaluation" / "evaluation_results_val.csv").write_text("subject\n")
    listed_only = tmp_path / "listed_only"  # a predictions folder after chmod 644
    (listed_only / "s0001.nii.gz").parent.mkdir()
    (listed_only / "s0001.nii.gz").write_bytes(b"x")
    (tmp_path / "table.csv").symlink_to(closed / "mine.csv")
    (closed / "model").mkdir()
    masks = tmp_path / "out" / "s0001"  # an earlier --split-masks folder, another user's
    (masks / "segmentations").mkdir(parents=True)
    (closed / "stats.csv").write_text("x")  # the statistics: a link into a closed folder
    (tmp_path / "out" / "s0002_statistics.csv").symlink_to(closed / "stats.csv")
    folds = write_model_folder(tmp_path / "folds", "2d", [5.0, 4.0], [32, 32], [0, 2, 1], 2)
    for path in (models / "Dataset002_Theirs", private, runs / "theirs", closed, closed_part,
                 masks, folds / "fold_1"):  # fmt: skip
        path.chmod(0o000)
    dicom.chmod(0o644)
    listed_only.chmod(0o644)
    cases = """
from ctseg_core.access import check_allowed_folder
from ctseg_core.data import load_ct
from ctseg_core.evaluation.compare import list_evaluations, read_results
from ctseg_core.fileio import check_output
from ctseg_core.nnunet.listing import list_models
from ctseg_core.runs.run_folder import rename_run
models, runs, dicom, closed, tmp, parts = map(Path, sys.argv[1:7])
def listed(root):
    skipped = {}
    return [sorted(str(m.path.relative_to(root)) for m in list_models([root], skipped)), skipped]
case("models", lambda: listed(models))
case("parts", lambda: listed(parts))
case("listed only", lambda: check_allowed_folder(tmp / "listed_only", "give a folder"))
case("evaluations", lambda: [e.label for e in list_evaluations(runs)])
case("dicom", lambda: load_ct(dicom))
case("folder box", lambda: check_allowed_folder(closed / "preds", "give a folder"))
case("output link", lambda: check_output(tmp / "table.csv", overwrite=False))
case("rename", lambda: rename_run(runs / "theirs", "renamed"))
case("compare", lambda: read_results(closed / "preds", "val"))
from ctseg_core.nnunet.model import NnunetPredictor
case("model in a closed folder", lambda: NnunetPredictor(closed / "model"))
from ctseg_core.inference.files import predict_file
case("masks folder", lambda: predict_file(tmp / "ct.nii.gz", [tmp / "x.pth"],
                                          tmp / "out" / "s0001.nii.gz", split_masks=True,
                                          overwrite=True))
case("statistics link", lambda: predict_file(tmp / "ct.nii.gz", [tmp / "x.pth"],
                                             tmp / "out" / "s0002.nii.gz", statistics=True))
case("output behind", lambda: check_output(closed / "a" / "table.csv", overwrite=False))
split_3d = models / "Dataset003_Split" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
case("closed model", lambda: NnunetPredictor(split_3d))
case("closed fold", lambda: NnunetPredictor(tmp / "folds" / "nnUNetTrainer__nnUNetPlans__2d"))
from dashboard.cached_predictions import predicted_labels_zxy
case("explored checkpoint", lambda: predicted_labels_zxy(str(tmp), "s0001", str(closed / "x.pth")))
import os
from ctseg_core import settings
os.environ.pop("CTSEG_MODELS", None)
os.environ["TOTALSEG_HOME_DIR"] = str(closed / "totalseg")  # TotalSegmentator's, behind it
def default_models():
    skipped = {}
    return [list_models(skipped=skipped), skipped]
case("default models", default_models)
"""
    try:
        paths = (models, runs, dicom, closed, tmp_path, parts)
        got = _run(cases, *map(str, paths), pathlib_of=pathlib_of)
    finally:
        for path in (models / "Dataset002_Theirs", private, runs / "theirs", closed, dicom,
                     closed_part, listed_only, masks, folds / "fold_1"):  # fmt: skip
            path.chmod(0o755)
    theirs = models / "Dataset002_Theirs"
    assert got["models"] == [  # was, under 3.14, Theirs left out without a word
        ["Dataset001_Mine/nnUNetTrainer__nnUNetPlans__2d",
         "Dataset003_Split/nnUNetTrainer__nnUNetPlans__2d"],  # not the whole of Split
        {str(theirs): f"{theirs} cannot be read (Permission denied)",
         str(private): f"{private} cannot be read (Permission denied)"},
    ]  # fmt: skip
    # one private part: the others listed on their own (was a PermissionError on Predict)
    assert len(got["parts"][0]) == 4 and closed_part.name not in str(got["parts"][0])
    assert got["parts"][1] == {
        str(closed_part): f"{closed_part} cannot be read (Permission denied)"
    }
    assert got["listed only"] == (  # was accepted, then a raw error on the page
        f"DataError: {tmp_path / 'listed_only'} cannot be opened (Permission denied); give a folder"
    )
    assert got["evaluations"] == ["mine/evaluation"]  # was a PermissionError on the page
    assert got["dicom"] == (  # not "holds no readable DICOM series"
        f"DataError: {dicom} cannot be read (Permission denied); {READ_FIX}"
    )
    assert got["folder box"] == (  # not "is not a folder"
        f"DataError: {closed / 'preds'} cannot be opened (Permission denied); give a folder"
    )
    # the user's link is not replaced as if nothing were there (was a raw PermissionError)
    assert got["output link"] == (
        f"ConfigError: --out {tmp_path / 'table.csv'} (a link to {closed / 'mine.csv'}) cannot "
        "be read (Permission denied); let the user running ctseg read what it points to "
        "(chmod/chown), or choose another --out"
    )
    assert (tmp_path / "table.csv").is_symlink()
    assert got["model in a closed folder"] == (  # was a raw PermissionError (3.14: "missing")
        f"ConfigError: model folder {closed / 'model'} cannot be read (Permission denied); "
        + READ_FIX
    )
    assert got["masks folder"] == (  # was a raw PermissionError, before anything was replaced
        f"ConfigError: --split-masks folder {masks} cannot be read (Permission denied); "
        f"{READ_FIX}, or choose another --out"
    )
    assert masks.is_dir()
    statistics = tmp_path / "out" / "s0002_statistics.csv"
    assert got["statistics link"] == (  # was a raw PermissionError
        f"ConfigError: --out {statistics} (a link to {closed / 'stats.csv'}) cannot be read "
        "(Permission denied); let the user running ctseg read what it points to (chmod/chown), "
        "or choose another --out"
    )
    assert got["output behind"] == (  # an output: not "read it"
        f"ConfigError: --out {closed / 'a' / 'table.csv'} cannot be looked at (Permission "
        "denied); let the user running ctseg enter the folders on its way (chmod/chown), or "
        "choose another --out"
    )
    assert got["closed model"] == (  # was a raw PermissionError naming its dataset.json
        f"ConfigError: model folder {private} cannot be read (Permission denied); {READ_FIX}"
    )
    assert got["explored checkpoint"] == (  # 3.14: "does not exist; pick another"
        f"DataError: checkpoint {closed / 'x.pth'} cannot be read (Permission denied); {READ_FIX}"
    )
    fold = folds / "fold_1" / "checkpoint_final.pth"
    assert got["closed fold"] == (  # was a raw PermissionError
        f"ConfigError: {fold} cannot be read (Permission denied); {READ_FIX}"
    )
    assert got["rename"].startswith("PermissionError:")  # not "is not a run folder"
    assert got["compare"].startswith("PermissionError:")  # not "is not a folder"
    results = closed / "totalseg" / "nnunet" / "results"  # was a PermissionError (3.14: nothing)
    assert got["default models"] == [[], {str(results): f"{results} cannot be read (Permission denied)"}]  # fmt: skip
