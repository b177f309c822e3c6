"""Shared fixtures: the real sample (tests/data, and ../shared/data where present), subjects
derived from s0000 at test time (the properties of the larger real subjects), a small phantom
dataset, a private cache."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURE_DATA = REPO / "tests" / "data"  # in git: s0000, the v2 class list, s0000's multilabels
S0000_ROOT = FIXTURE_DATA / "totalseg_sample"
EXTRA = FIXTURE_DATA / "extra"
SHARED_DATA = REPO.parent / "shared" / "data"  # optional: the larger subjects, DICOM, unlabeled CT
SAMPLE_ROOT = SHARED_DATA / "totalseg_sample"
SHARED_EXTRA = SHARED_DATA / "extra"


@pytest.fixture(scope="module")
def small_ct(s0000_root, tmp_path_factory):
    """A block of s0000's CT with a zeroed border (``nnunet_kit.write_small_ct``; nnunetv2)."""
    from nnunet_kit import write_small_ct

    path = tmp_path_factory.mktemp("nnunet_ct") / "ct.nii.gz"
    return write_small_ct(s0000_root / "s0000" / "ct.nii.gz", path)


@pytest.fixture(scope="session")
def s0000_root() -> Path:
    """A dataset root holding the real subject s0000 alone (122 x 101 x 30 at 3 mm, all 117
    mask files) and its meta.csv row (split "train"); always present (tests/data)."""
    assert (S0000_ROOT / "s0000" / "ct.nii.gz").is_file(), f"{S0000_ROOT} is incomplete"
    return S0000_ROOT


@pytest.fixture(scope="session")
def sample_root() -> Path:
    """The real TotalSegmentator sample (4 subjects), skipped when ../shared/data is absent: for
    the tests that pin numbers of those real files (each has a counterpart on derived data)."""
    if not (SAMPLE_ROOT / "meta.csv").is_file():
        pytest.skip("pins numbers of the real ../shared/data/totalseg_sample, not available")
    return SAMPLE_ROOT


@pytest.fixture
def root_of(request):
    """root_of(subject): the data root holding that subject: tests/data for s0000, the derived
    sample (``derived_sample``: s0001 LAS, s0002 LPS partial, s0003 LPS crop) for the others."""

    def root_of(subject: str) -> Path:
        if subject == "s0000":
            return request.getfixturevalue("s0000_root")
        return request.getfixturevalue("derived_sample")

    return root_of


def derived_image(
    img: nib.Nifti1Image,
    codes: str,
    crop: tuple[slice, slice, slice] = np.s_[:, :, :],
    zooms: tuple[float, float, float] | None = None,
) -> nib.Nifti1Image:
    """``img`` cut to ``crop`` (slices of its RAS-canonical voxel array), given the voxel size
    ``zooms`` (mm; default its own) and stored in the orientation ``codes`` ("LAS", "LPS", ...).

    The crop's first voxel keeps its world position; voxel values and dtype are unchanged. The
    header is written as TotalSegmentator writes its sample: sform code 2 (aligned), no qform.
    """
    canon = nib.as_closest_canonical(img)
    data = np.asanyarray(canon.dataobj)[crop]
    start = [s.start or 0 for s in crop]
    affine = np.diag([*(zooms or canon.header.get_zooms()[:3]), 1.0])
    affine[:3, 3] = canon.affine[:3, :3] @ start + canon.affine[:3, 3]
    ras = nib.Nifti1Image(data, affine)
    to = nib.orientations.ornt_transform(
        nib.orientations.axcodes2ornt("RAS"), nib.orientations.axcodes2ornt(tuple(codes))
    )
    out = ras.as_reoriented(to)
    out.set_sform(out.affine, code=2)
    out.set_qform(None, code=0)
    return out


# The derived sample: the properties of the real 4-subject sample in ../shared/data (README
# there), each subject cut from s0000. id: (orientation, crop of s0000's RAS voxels, voxel size
# in mm, the mask files kept: None for all 117).
DERIVED = {
    "s0001": ("LAS", np.s_[:, :, 10:30], (1.5, 2.0, 2.5), None),
    "s0002": ("LPS", np.s_[:, :, :], (2.0, 3.0, 3.0), ["vertebrae_L1"]),
    "s0003": ("LPS", np.s_[10:110, 5:95, 0:24], (3.0, 3.0, 3.0),
              ["aorta", "iliac_artery_left", "iliac_artery_right", "kidney_left", "liver",
               "spleen", "vertebrae_T12"]),
}  # fmt: skip
DERIVED_SPLITS = {"s0000": "train", "s0001": "train", "s0002": "val", "s0003": "test"}


@pytest.fixture(scope="session")
def derived_sample(s0000_root, tmp_path_factory) -> Path:
    """A 4-subject dataset made from s0000 once per session, with the real sample's properties:

    - s0000: a copy of s0000 (RAS, 122 x 101 x 30 at 3 mm, all 117 mask files), split train;
    - s0001: slices 10..29 of it stored LAS (x flipped), voxels called 1.5 x 2.0 x 2.5 mm,
      all 117 mask files (39 non-empty), split train;
    - s0002: all of it stored LPS, voxels called 2.0 x 3.0 x 3.0 mm, partially annotated: only
      vertebrae_L1.nii.gz and a stray pulmonary_artery.nii.gz (not a v2 name), split val;
    - s0003: the crop [10:110, 5:95, 0:24] stored LPS at 3 mm with 7 mask files: aorta,
      kidney_left (not _right), liver, spleen, vertebrae_T12 non-empty; iliac_artery_left and
      _right empty ("absent"), split test.

    All four are crops of one patient, as the real s0002 and s0003 are.
    """
    root = tmp_path_factory.mktemp("derived") / "data"
    src = s0000_root / "s0000"
    shutil.copytree(src, root / "s0000")
    for sid, (codes, crop, zooms, masks) in DERIVED.items():
        (root / sid / "segmentations").mkdir(parents=True)
        names = masks or [p.name[: -len(".nii.gz")] for p in (src / "segmentations").iterdir()]
        files = {"ct.nii.gz": src / "ct.nii.gz"}
        files |= {f"segmentations/{n}.nii.gz": src / "segmentations" / f"{n}.nii.gz" for n in names}
        if sid == "s0002":  # a stray file: TotalSegmentator v2 has no pulmonary_artery
            files["segmentations/pulmonary_artery.nii.gz"] = src / "segmentations" / "aorta.nii.gz"
        for rel, path in files.items():
            nib.save(derived_image(nib.load(path), codes, crop, zooms), str(root / sid / rel))
    rows = [f"{sid};;;;ct;{split}" for sid, split in DERIVED_SPLITS.items()]
    (root / "meta.csv").write_text("image_id;age;gender;institute;study_type;split\n"
                                   + "\n".join(rows) + "\n")  # fmt: skip
    return root


@pytest.fixture(scope="session")
def derived_dicom(derived_sample, tmp_path_factory) -> Path:
    """The derived s0001 (LAS, 122 x 101 x 20, 1.5 x 2.0 x 2.5 mm) as a DICOM series: 20 axial
    slices of 101 rows x 122 columns, LPS positions, HU = stored - 1024 (tests/dicom_kit.py)."""
    from dicom_kit import write_series

    img = nib.load(derived_sample / "s0001" / "ct.nii.gz")
    lps = img.as_reoriented(
        nib.orientations.ornt_transform(
            nib.orientations.io_orientation(img.affine), nib.orientations.axcodes2ornt("LPS")
        )
    )
    hu = np.asanyarray(lps.dataobj)  # columns run to L, rows to P, slices to S
    sx, sy, sz = nib.affines.voxel_sizes(lps.affine)
    to_lps = np.diag([-1.0, -1.0, 1.0])  # NIfTI's world is RAS, DICOM's LPS
    corners = [
        to_lps @ (lps.affine[:3, :3] @ [0, 0, k] + lps.affine[:3, 3]) for k in range(hu.shape[2])
    ]
    folder = tmp_path_factory.mktemp("dicom") / "series"
    write_series(
        folder, [c[2] for c in corners], origin_xy=(corners[0][0], corners[0][1]),
        pixel_spacing=(sy, sx), thickness=sz,
        pixels_of=lambda k: (hu[:, :, k].T.astype(np.int32) + 1024).astype(np.int16),
    )  # fmt: skip
    return folder


@pytest.fixture(scope="session")
def grid512_root(s0000_root, tmp_path_factory) -> Path:
    """s0000 on a scanner's full-resolution grid, made once: 512 x 512 square voxels of
    3 * 122 / 512 = 0.715 mm (a 366 mm field of view; s0000's 366 x 303 mm centred in it, air
    and no label around) x 30 slices of 3 mm, RAS. Each voxel takes the value of the s0000 voxel
    its centre lies in (nearest neighbour). Subject "s0000": the CT and s0000's 41 non-empty
    mask files only (the others: not annotated)."""
    src = s0000_root / "s0000"
    root = tmp_path_factory.mktemp("grid512") / "data"
    (root / "s0000" / "segmentations").mkdir(parents=True)
    ct = nib.load(src / "ct.nii.gz")  # stored RAS at 3 mm
    old = 3.0
    new = old * ct.shape[0] / 512
    index, inside = [], []
    for n in ct.shape[:2]:
        offset = (512 * new - n * old) / 2  # the field of view is centred on s0000's
        position = (np.arange(512) + 0.5) * new - offset  # mm from s0000's grid edge
        index.append(np.clip(np.floor(position / old).astype(int), 0, n - 1))
        inside.append((position >= 0) & (position < n * old))
    within = inside[0][:, None] & inside[1][None, :]
    affine = ct.affine.copy()
    affine[:3, :3] = np.diag([new, new, old])
    for axis, n in enumerate(ct.shape[:2]):  # the first voxel's centre, in s0000's world
        edge = ct.affine[axis, 3] - old / 2
        affine[axis, 3] = edge - (512 * new - n * old) / 2 + new / 2

    def save(path, rel, outside):
        data = np.asanyarray(nib.load(path).dataobj)
        if rel != "ct.nii.gz" and not data.any():
            return
        big = data[index[0]][:, index[1]]
        big[~within] = outside
        image = nib.Nifti1Image(big, affine)
        image.set_sform(affine, code=2)
        image.set_qform(None, code=0)
        nib.save(image, str(root / "s0000" / rel))

    save(src / "ct.nii.gz", "ct.nii.gz", -1024)
    for path in sorted((src / "segmentations").iterdir()):
        save(path, f"segmentations/{path.name}", 0)
    return root


@pytest.fixture(scope="session")
def int32_ct(s0000_root, tmp_path_factory) -> Path:
    """s0000's CT (122 x 101 x 30 at 3 mm, HU) stored as int32 voxels, no labels beside it."""
    img = nib.load(s0000_root / "s0000" / "ct.nii.gz")
    out = nib.Nifti1Image(np.asanyarray(img.dataobj).astype(np.int32), img.affine, img.header)
    out.set_data_dtype(np.int32)
    path = tmp_path_factory.mktemp("int32") / "ct_int32.nii.gz"
    nib.save(out, str(path))
    return path


@pytest.fixture(scope="session")
def extra_dir() -> Path:
    """tests/data/extra: the v2 class list and s0000's reference and --fast multilabel files."""
    assert (EXTRA / "totalsegmentator_v2_classes.json").is_file(), f"{EXTRA} is incomplete"
    return EXTRA


@pytest.fixture(scope="session")
def shared_extra() -> Path:
    """../shared/data/extra (dicom_s0001/, unlabeled_ct_3mm.nii.gz), skipped when absent (for
    the tests that pin numbers of those real files; each has a counterpart on derived data)."""
    if not SHARED_EXTRA.is_dir():
        pytest.skip("pins numbers of the real ../shared/data/extra, not available")
    return SHARED_EXTRA


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory) -> Path:
    """One preprocessing cache for the whole session (subjects are prepared once)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def _private_cache(monkeypatch, session_cache):
    """Never write into the user's real cache or checkpoints from a test."""
    monkeypatch.setenv("CTSEG_CACHE", str(session_cache))


@pytest.fixture
def cache_dir(session_cache) -> Path:
    return session_cache


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory) -> Path:
    """A small phantom dataset: 6 subjects of about 64 x 64 x 24, made once per session."""
    from ctseg_core.data.phantom.dataset import make_phantom_dataset

    root = tmp_path_factory.mktemp("phantom") / "data"
    make_phantom_dataset(root, n_subjects=6, seed=1, shape=(64, 64, 24))
    return root


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test (MONAI's ops oversubscribe the 2-core machine, 5x slower)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
