"""The synthetic phantom: TotalSegmentator layout, reproducibility, realistic HU, correct sides."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ctseg_core.data.phantom.dataset import MARKER, make_phantom_dataset
from ctseg_core.errors import ConfigError, DataError
from ctseg_core.labels import STRUCTURES

SHAPE = (96, 96, 40)


def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(str(path))
    return np.asarray(img.dataobj), img.affine


def _world_centroid(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Mean world position (RAS+ mm: x toward the patient's right) of a mask's voxels."""
    index = np.argwhere(mask).mean(axis=0)
    return affine[:3, :3] @ index + affine[:3, 3]


class Subject:
    """One written subject: CT and every mask, as stored on disk."""

    def __init__(self, folder: Path):
        self.id, self.folder = folder.name, folder
        self.ct, self.affine = _load(folder / "ct.nii.gz")
        self.masks = {}
        for name in STRUCTURES:
            data, affine = _load(folder / "segmentations" / f"{name}.nii.gz")
            assert data.shape == self.ct.shape and np.allclose(affine, self.affine), name
            self.masks[name] = data

    def present(self, name: str) -> bool:
        return bool(self.masks[name].any())

    def centroid(self, name: str) -> np.ndarray:
        return _world_centroid(self.masks[name] > 0, self.affine)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, list[Subject]]:
    root = tmp_path_factory.mktemp("phantom") / "demo"
    ids = make_phantom_dataset(root, n_subjects=3, seed=0, shape=SHAPE, workers=1)
    assert ids == ["s0000", "s0001", "s0002"]
    return root, [Subject(root / sid) for sid in ids]


def test_layout_is_totalsegmentator_with_all_117_masks_and_meta_csv(dataset):
    root, subjects = dataset
    for s in subjects:
        files = sorted(p.name for p in (root / s.id / "segmentations").iterdir())
        assert files == sorted(f"{n}.nii.gz" for n in STRUCTURES)
        assert s.ct.dtype == np.int16
        for name, mask in s.masks.items():
            assert mask.dtype == np.uint8, name
            assert set(np.unique(mask)) <= {0, 1}, name
    with open(root / "meta.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter=";"))
    assert list(rows[0]) == ["image_id", "age", "gender", "institute", "study_type", "split"]
    assert [r["image_id"] for r in rows] == [s.id for s in subjects]
    assert sorted(r["split"] for r in rows) == ["test", "train", "val"]
    assert all(18 <= int(r["age"]) < 90 and r["gender"] in ("m", "f") for r in rows)
    assert not list(root.glob(".tmp-*"))
    # the data layer reads it as a dataset with splits from meta.csv and no problem
    from ctseg_core.data.dataset_root import open_dataset

    index = open_dataset(root)
    assert index.subjects == [s.id for s in subjects]
    assert index.split_source == "meta.csv" and index.problems == []


def test_masks_never_overlap_and_cover_at_least_25_structures(dataset):
    _, subjects = dataset
    found = set()
    for s in subjects:
        total = sum(m.astype(np.uint16) for m in s.masks.values())
        assert total.max() == 1, s.id
        present = {n for n in STRUCTURES if s.present(n)}
        assert len(present) >= 15, (s.id, sorted(present))
        found |= present
    assert len(found) >= 25, sorted(found)
    for pair in ("kidney", "femur", "hip", "autochthon", "iliopsoas", "lung_lower_lobe"):
        assert {f"{pair}_left", f"{pair}_right"} <= found, pair
    vertebrae = {n for n in found if n.startswith("vertebrae_")}
    assert len(vertebrae) >= 6, sorted(vertebrae)
    for name in ("liver", "spleen", "stomach", "aorta", "inferior_vena_cava", "heart"):
        assert name in found, name
    # coverage differs: some structure is present in one subject and absent in another
    assert any(0 < sum(s.present(n) for s in subjects) < len(subjects) for n in found)


def test_hounsfield_units_are_realistic_per_tissue(dataset):
    _, subjects = dataset
    ranges = {  # mean HU of the mask: native to contrast-enhanced
        "liver": (40, 130),
        "spleen": (20, 140),
        "kidney_left": (15, 220),
        "aorta": (20, 350),
        "heart": (20, 320),
        "urinary_bladder": (-10, 40),
        "autochthon_left": (15, 90),
        "iliopsoas_right": (15, 90),  # bone nearby: partial volume
    }
    checked = 0
    for s in subjects:
        for name, (lo, hi) in ranges.items():
            if s.masks[name].sum() > 200:
                mean = s.ct[s.masks[name] > 0].mean()
                assert lo <= mean <= hi, (s.id, name, mean)
                checked += 1
        for name in STRUCTURES:
            if s.present(name) and name.startswith("lung_") and s.masks[name].sum() > 200:
                assert s.ct[s.masks[name] > 0].mean() < -700, (s.id, name)
            if s.present(name) and name.startswith(("vertebrae_", "femur_", "hip_")):
                assert s.ct[s.masks[name] > 0].mean() > 200, (s.id, name)
        # air and noise: the front corners of the image (no body, no table) read -1000 +- 10-20
        canonical = np.asarray(nib.as_closest_canonical(nib.load(s.folder / "ct.nii.gz")).dataobj)
        corner = canonical[:8, -8:, :].astype(float)
        assert -1030 < corner.mean() < -970 and 5 < corner.std() < 25, s.id
    assert checked >= 5


def test_left_and_right_organs_lie_on_the_patients_sides_in_world_coordinates(dataset):
    _, subjects = dataset
    codes = {"".join(nib.aff2axcodes(s.affine)) for s in subjects}
    assert len(codes) == 3, codes  # stored RAS, LAS and LPS: the sides must hold in all of them
    compared = 0
    for s in subjects:
        pairs = [
            (f"{p}_right", f"{p}_left")
            for p in (
                "kidney",
                "femur",
                "hip",
                "autochthon",
                "iliopsoas",
                "lung_lower_lobe",
                "iliac_artery",
            )
        ]
        pairs += [("liver", "spleen"), ("inferior_vena_cava", "aorta")]
        for right, left in pairs:
            if s.masks[right].sum() > 50 and s.masks[left].sum() > 50:
                # RAS+ world: x grows toward the patient's right
                assert s.centroid(right)[0] > s.centroid(left)[0] + 5, (s.id, right, left)
                compared += 1
        if s.present("heart") and s.present("vertebrae_T8"):  # heart anterior to the spine
            assert s.centroid("heart")[1] > s.centroid("vertebrae_T8")[1] + 15
        if s.present("liver") and s.present("urinary_bladder"):  # liver superior to bladder
            assert s.centroid("liver")[2] > s.centroid("urinary_bladder")[2] + 50
        spine = sorted(
            (n for n in STRUCTURES if n.startswith("vertebrae_") and s.present(n)),
            key=STRUCTURES.index,
        )
        heights = [s.centroid(n)[2] for n in spine]  # label order runs from L5 up to T1
        assert heights == sorted(heights), (s.id, spine)
    assert compared >= 6


def test_real_totalsegmentator_data_has_the_liver_at_positive_world_x(sample_root):
    """The convention the side test relies on, checked on the real s0001 (stored LAS)."""
    _liver_at_positive_world_x(sample_root / "s0001")


def test_real_ct_stored_las_has_the_liver_at_positive_world_x(derived_sample):
    """The same on real data stored LAS from tests/data: s0000 with its x axis flipped."""
    assert nib.aff2axcodes(nib.load(derived_sample / "s0001" / "ct.nii.gz").affine)[0] == "L"
    _liver_at_positive_world_x(derived_sample / "s0001")


def _liver_at_positive_world_x(folder: Path) -> None:
    liver, affine = _load(folder / "segmentations" / "liver.nii.gz")
    spleen, _ = _load(folder / "segmentations" / "spleen.nii.gz")
    assert _world_centroid(liver > 0, affine)[0] > _world_centroid(spleen > 0, affine)[0] + 50


def test_subjects_differ_in_grid_spacing_and_orientation(dataset):
    _, subjects = dataset
    shapes = {s.ct.shape for s in subjects}
    spacings = {tuple(np.round(nib.affines.voxel_sizes(s.affine), 3)) for s in subjects}
    assert len(shapes) == 3 and len(spacings) == 3
    for s in subjects:
        sx, sy, sz = nib.affines.voxel_sizes(s.affine)
        assert 0.8 <= sx <= 3.0 and sx == pytest.approx(sy) and 1.5 <= sz <= 5.0
        assert 0.8 * SHAPE[0] <= s.ct.shape[0] <= 1.2 * SHAPE[0]


def test_same_seed_gives_identical_files_and_another_seed_differs(dataset, tmp_path):
    root, subjects = dataset
    again = make_phantom_dataset(tmp_path / "again", n_subjects=2, seed=0, shape=SHAPE, workers=2)
    for sid in again:  # subject i does not depend on the dataset size or the worker count
        for rel in ["ct.nii.gz", "segmentations/liver.nii.gz", "segmentations/aorta.nii.gz"]:
            assert (tmp_path / "again" / sid / rel).read_bytes() == (root / sid / rel).read_bytes()
    make_phantom_dataset(tmp_path / "other", n_subjects=1, seed=1, shape=SHAPE, workers=1)
    other, _ = _load(tmp_path / "other" / "s0000" / "ct.nii.gz")
    assert other.shape != subjects[0].ct.shape or not np.array_equal(other, subjects[0].ct)


def test_refuses_a_folder_that_is_not_a_phantom_and_keeps_its_files(tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("precious")
    with pytest.raises(DataError, match="not a ctseg phantom"):
        make_phantom_dataset(user, n_subjects=1, shape=SHAPE)
    assert [p.name for p in user.iterdir()] == ["notes.txt"]
    assert (user / "notes.txt").read_text() == "precious"
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError):
        make_phantom_dataset(tmp_path / "file", n_subjects=1, shape=SHAPE)
    with pytest.raises(ConfigError):
        make_phantom_dataset(tmp_path / "new", n_subjects=0, shape=SHAPE)
    with pytest.raises(ConfigError, match="seed >= 0"):
        make_phantom_dataset(tmp_path / "new", n_subjects=1, seed=-1, shape=SHAPE)
    with pytest.raises(ConfigError, match="512 x 512 x 512"):  # refused before any memory is taken
        make_phantom_dataset(tmp_path / "new", n_subjects=1, shape=(2000, 2000, 2000))
    assert not (tmp_path / "new").exists()


def test_cli_reports_what_the_machine_refuses_in_one_line(tmp_path, capsys):
    from ctseg_core.cli import main

    (tmp_path / "file").write_text("x")
    assert main(["demo-data", "--out", str(tmp_path / "file" / "sub"), "--subjects", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and len(err.splitlines()) == 1


def test_interrupted_run_leaves_whole_subjects_and_a_rerun_completes(tmp_path):
    root = tmp_path / "demo"
    calls = []

    def stop_after_first(done: int, total: int) -> None:
        calls.append((done, total))
        if done == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        make_phantom_dataset(root, n_subjects=2, shape=SHAPE, workers=1, progress=stop_after_first)
    assert calls == [(0, 2), (1, 2)]
    assert not (root / "meta.csv").exists()  # no meta.csv: the dataset is known incomplete
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == ["s0000"]
    assert len(list((root / "s0000" / "segmentations").iterdir())) == len(STRUCTURES)
    # the folder is recognised as our own phantom: a rerun (with fewer subjects) replaces it
    assert make_phantom_dataset(root, n_subjects=1, shape=SHAPE, workers=1) == ["s0000"]
    assert (root / "meta.csv").read_text().count("\n") == 2
    assert (root / MARKER).is_file() and not list(root.glob(".tmp-*"))
    # ... but a subject folder the phantom did not write is never replaced
    (root / "s0001").mkdir()
    (root / "s0001" / "ct.nii.gz").write_bytes(b"user data")
    with pytest.raises(DataError, match="s0001 was not written by the phantom"):
        make_phantom_dataset(root, n_subjects=2, shape=SHAPE, workers=1)
    assert (root / "s0001" / "ct.nii.gz").read_bytes() == b"user data"


def test_cli_regenerates_the_same_phantom_but_another_only_with_replace(tmp_path, capsys):
    """`demo-data` over an earlier phantom with another seed silently replaced its CTs (runs
    and evaluations made on it then described other data; reviewer): refused without
    --replace. The same subjects are written again as before."""
    from ctseg_core.cli import main

    out = tmp_path / "ph"
    small = ["--subjects", "2", "--size", "24", "24", "12"]
    assert main(["demo-data", "--out", str(out), *small]) == 0
    ct = (out / "s0000" / "ct.nii.gz").read_bytes()
    assert main(["demo-data", "--out", str(out), *small]) == 0  # the same plan again
    capsys.readouterr()
    assert main(["demo-data", "--out", str(out), *small, "--seed", "5"]) == 2
    err = capsys.readouterr().err
    assert "holds a phantom of other subjects" in err and "--replace" in err
    assert (out / "s0000" / "ct.nii.gz").read_bytes() == ct
    assert main(["demo-data", "--out", str(out), *small, "--seed", "5", "--replace"]) == 0
    assert (out / "s0000" / "ct.nii.gz").read_bytes() != ct
