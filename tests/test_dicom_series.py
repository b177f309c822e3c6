"""A DICOM series is read as what it is: pydicom-written series of 8 x 8 pixels with one fault each."""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
import pytest
from dicom_kit import slice_pixels, write_multiframe, write_series

from ctseg_core.data.dicom import read_dicom_series
from ctseg_core.data.volume import load_ct
from ctseg_core.errors import DataError

Z_MM = np.arange(10) * 2.0  # ten slices 2 mm apart, at 0..18 mm
HU = slice_pixels(0).T.astype(np.int16) - 1024  # (X, Y) HU of slice 0; slice k adds 100 k


def _hu(k: float) -> np.ndarray:
    return HU + np.int16(round(100 * k))


def _one_line(exc: pytest.ExceptionInfo) -> str:
    assert "\n" not in str(exc.value)
    return str(exc.value)


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_complete_series_gives_its_grid_and_hu_in_ras(tmp_path):
    write_series(tmp_path / "s", Z_MM[::-1])  # files in the reverse order of their positions
    img = read_dicom_series(tmp_path / "s")
    data = np.asarray(img.dataobj)
    assert data.shape == (8, 8, 10) and data.dtype == np.int16
    for k in range(10):  # file k lies at 18 - 2k mm: stacked upward along z
        np.testing.assert_array_equal(data[:, :, 9 - k], _hu(k))
    # LPS origin (-10, -20, 0) and pixel spacing (0.75 mm x, 0.5 mm y) in RAS+
    expected = np.array([[-0.75, 0, 0, 10], [0, -0.5, 0, 20], [0, 0, 2, 0], [0, 0, 0, 1]])
    np.testing.assert_allclose(img.affine, expected)
    assert int(img.header["qform_code"]) == int(img.header["sform_code"]) == 1


def test_a_truncated_file_is_named_and_its_gap_refused_with_the_positions(tmp_path, caplog):
    files = write_series(tmp_path / "s", Z_MM)
    files[4].write_bytes(files[4].read_bytes()[:300])  # the slice at 8 mm
    with pytest.raises(DataError) as exc:
        read_dicom_series(tmp_path / "s")
    message = _one_line(exc)
    assert "a 4 mm gap between the slices at 6 and 10 mm (1 slice missing?)" in message
    assert "the other slices are 2 mm apart" in message and "--resample-uneven" in message
    assert 'series 3 "CT Abdomen 2.0"' in message
    (warning,) = _warnings(caplog)
    assert "left out 1 file that cannot be read as DICOM" in warning and "IM0005.dcm" in warning


def test_a_truncated_end_slice_is_left_out_with_a_warning(tmp_path, caplog):
    files = write_series(tmp_path / "s", Z_MM)
    files[0].write_bytes(files[0].read_bytes()[:-40])  # pixel data cut short
    img = read_dicom_series(tmp_path / "s")
    assert img.shape == (8, 8, 9)
    np.testing.assert_allclose(img.affine[:3, 2:], [[0, 10], [0, 20], [2, 2]])  # from 2 mm up
    np.testing.assert_array_equal(np.asarray(img.dataobj)[:, :, 0], _hu(1))
    (warning,) = _warnings(caplog)
    assert "left out 1 file" in warning and "IM0001.dcm" in warning


def test_missing_slices_are_interpolated_onto_a_uniform_grid_when_asked(tmp_path, caplog):
    files = write_series(tmp_path / "s", Z_MM)
    files[4].unlink()
    ct = load_ct(tmp_path / "s", resample_uneven=True)
    assert ct.array.shape == (8, 8, 10) and ct.spacing_mm == pytest.approx((0.75, 0.5, 2.0))
    for k in (0, 3, 5, 9):
        np.testing.assert_array_equal(ct.array[::-1, ::-1, k], _hu(k))  # RAS flips x and y
    np.testing.assert_array_equal(ct.array[::-1, ::-1, 4], _hu(4))  # halfway between 3 and 5
    (warning,) = _warnings(caplog)
    assert "a 4 mm gap between the slices at 6 and 10 mm" in warning
    assert "resampled, as asked, onto a uniform 2 mm grid of 10 slices" in warning


def test_uneven_spacing_is_refused_or_resampled_to_the_median_step(tmp_path, caplog):
    z = [0, 2, 4, 6, 9, 11, 13, 15, 17, 19]  # one 3 mm step among 2 mm steps
    write_series(tmp_path / "s", z)
    with pytest.raises(DataError) as exc:
        read_dicom_series(tmp_path / "s")
    assert "not evenly spaced: a 3 mm gap between the slices at 6 and 9 mm;" in _one_line(exc)
    img = read_dicom_series(tmp_path / "s", resample_uneven=True)
    data = np.asarray(img.dataobj)
    assert data.shape == (8, 8, 11)  # 0..19 mm in steps of 1.9 mm
    assert img.affine[2, 2] == pytest.approx(1.9) and img.affine[2, 3] == pytest.approx(0)
    # 3.8 mm lies between the slices at 2 and 4 mm: 90 % of the way
    np.testing.assert_array_equal(data[:, :, 2], np.rint(_hu(1) + 0.9 * 100).astype(np.int16))
    assert "grid of 11 slices" in _warnings(caplog)[-1]


def test_gaps_each_within_the_tolerance_that_add_up_to_a_drift_are_refused(tmp_path, caplog):
    """Each gap was checked against the median alone (1 %), so 20 gaps of 2.018 mm then 20 of
    1.982 mm read as an even 2 mm series with its middle slice 0.36 mm from where the volume
    put it, without a word. The slices must lie on one even grid; asked, they are resampled."""
    z = np.r_[0, np.cumsum([2.018] * 20 + [1.982] * 20)].round(4)
    write_series(tmp_path / "s", z)
    with pytest.raises(DataError) as exc:
        read_dicom_series(tmp_path / "s")
    message = _one_line(exc)
    assert "is not evenly spaced: its slices drift off an even grid by up to 0.36 mm" in message
    assert (
        "(the slice at 40.36 mm along the slice normal, where an even 2 mm step puts one at "
        "40.00 mm)" in message
    )
    assert "its gaps are 1.982 to 2.018 mm" in message and "--resample-uneven" in message
    img = read_dicom_series(tmp_path / "s", resample_uneven=True)
    assert img.shape[2] == 41 and img.affine[2, 2] == pytest.approx(2.0)
    # the slice at 40 mm lies 82 % of the way from the stored one at 38.342 to 40.36 mm
    data = np.asarray(img.dataobj)[:, :, 20].astype(float)
    w = (40 - 38.342) / 2.018
    np.testing.assert_allclose(data, np.rint((1 - w) * _hu(19) + w * _hu(20)), atol=1)
    assert "resampled, as asked, onto a uniform 2 mm grid of 41 slices" in _warnings(caplog)[-1]


def test_positions_rounded_or_drifting_by_a_few_hundredths_of_a_mm_read_as_even(tmp_path):
    """0.625 mm steps stored with two decimals (gaps of 0.62 and 0.63 mm, each 0.01 mm off the
    median: the limit itself, which floating point decided either way), and positions drifting
    0.05 mm off the even grid (as a scanner adding 0.7 mm steps up in float32 over 2000 slices)
    are an even series: no more than a tenth of a voxel from where the volume puts them."""
    rounded = (-299.84 + 0.625 * np.arange(12)).round(2)
    write_series(tmp_path / "rounded", rounded)
    img = read_dicom_series(tmp_path / "rounded")
    assert img.shape[2] == 12 and img.affine[2, 2] == pytest.approx(0.625, abs=1e-3)
    k = np.arange(60)
    drifting = (0.7 * k + 0.05 * np.sin(np.pi * k / 59)).round(4)
    write_series(tmp_path / "drift", drifting)
    img = read_dicom_series(tmp_path / "drift")
    assert img.shape[2] == 60 and img.affine[2, 2] == pytest.approx(0.7)


def test_positions_stored_twice_with_the_same_pixels_are_read_once(tmp_path, caplog):
    write_series(tmp_path / "s", Z_MM)
    write_series(tmp_path / "s", Z_MM[:5], start=101)  # new SOPInstanceUIDs, same slices
    img = read_dicom_series(tmp_path / "s")
    assert img.shape == (8, 8, 10) and img.affine[2, 2] == pytest.approx(2.0)
    np.testing.assert_array_equal(np.asarray(img.dataobj)[:, :, 3], _hu(3))
    (warning,) = _warnings(caplog)
    assert "stores 5 slice positions twice with identical pixels; each was read once" in warning


def test_positions_stored_twice_with_different_pixels_are_refused(tmp_path):
    write_series(tmp_path / "s", Z_MM)
    write_series(tmp_path / "s", [8.0], start=101, pixels_of=lambda i: slice_pixels(4) + 7)
    with pytest.raises(DataError) as exc:
        read_dicom_series(tmp_path / "s")
    message = _one_line(exc)
    assert "two different slices at the same position (8 mm: IM0005.dcm and IM0101.dcm)" in message


def test_the_series_chosen_among_several_is_named_by_number_and_description(tmp_path, caplog):
    write_series(tmp_path / "s", Z_MM, description="CT Body", number=3)
    scout = "1.2.826.0.1.3680043.8.498.200"
    write_series(tmp_path / "s", [0, 5, 10], series_uid=scout, start=50, description="Topogram",
                 number=1)  # fmt: skip
    assert read_dicom_series(tmp_path / "s").shape == (8, 8, 10)
    (warning,) = _warnings(caplog)
    assert 'holds 2 series; reading the largest, series 3 "CT Body" (10 files)' in warning
    assert 'others: series 1 "Topogram" (3 files)' in warning


def test_a_sheared_series_is_refused_with_its_tilt(tmp_path):
    for k, z in enumerate(Z_MM):  # each slice 0.5 mm further in y: a gantry tilt of ~14 degrees
        write_series(tmp_path / "s", [z], start=k + 1, origin_xy=(-10.0, -20.0 + 0.5 * k),
                     pixels_of=lambda i, k=k: slice_pixels(k))  # fmt: skip
    with pytest.raises(DataError) as exc:
        read_dicom_series(tmp_path / "s")
    message = _one_line(exc)
    assert "is sheared: its slices shift 4.5 mm in-plane over 18 mm" in message
    assert "gantry tilt of about 14 degrees" in message and "dcm2niix" in message


def test_slices_of_different_sizes_are_refused(tmp_path):
    write_series(tmp_path / "s", Z_MM[:9])
    write_series(tmp_path / "s", [18.0], start=10, pixels_of=lambda i: slice_pixels(9, 16, 16))
    with pytest.raises(DataError) as exc:
        read_dicom_series(tmp_path / "s")
    message = _one_line(exc)
    assert "mixes slices of different size" in message
    assert "9 of 8 x 8 pixels" in message and "1 of 16 x 16 pixels" in message


def test_the_real_series_reads_as_its_nifti_conversion(shared_extra, sample_root):
    """The real scanner series in ../shared (optional, skipped without it)."""
    ct = load_ct(shared_extra / "dicom_s0001")
    nifti = load_ct(sample_root / "s0001" / "ct.nii.gz")
    np.testing.assert_array_equal(ct.array, nifti.array)
    np.testing.assert_allclose(ct.affine, nifti.affine, atol=1e-3)
    assert isinstance(read_dicom_series(shared_extra / "dicom_s0001"), nib.Nifti1Image)


def test_a_series_of_real_ct_slices_reads_as_its_nifti(derived_dicom, derived_sample):
    """s0000's slices 10..29 (stored LAS at 1.5 x 2.0 x 2.5 mm) written as a DICOM series."""
    ct = load_ct(derived_dicom)
    nifti = load_ct(derived_sample / "s0001" / "ct.nii.gz")
    np.testing.assert_array_equal(ct.array, nifti.array)
    np.testing.assert_allclose(ct.affine, nifti.affine, atol=1e-3)
    assert ct.spacing_mm == pytest.approx((1.5, 2.0, 2.5), abs=1e-5)
    assert isinstance(read_dicom_series(derived_dicom), nib.Nifti1Image)


def _checkpoint(path):
    """A tiny untrained U-Net checkpoint: what it predicts does not matter here, the grid does."""
    import torch

    from ctseg_core.config import DataConfig, ModelConfig, RunConfig
    from ctseg_core.models import build_model
    from ctseg_core.models.checkpoint import save_checkpoint

    cfg = RunConfig(data=DataConfig(target_size=(16, 16), structures=["liver"]),
                    model=ModelConfig(features=[4, 8], bottleneck=8))  # fmt: skip
    torch.manual_seed(0)
    save_checkpoint(path, build_model(cfg.model), config=cfg)
    return path


def test_predict_refuses_a_gap_and_resamples_it_on_request_saying_so(tmp_path, capsys):
    from ctseg_core.cli import main

    files = write_series(tmp_path / "s", Z_MM)
    files[4].write_bytes(files[4].read_bytes()[:300])
    ckpt = _checkpoint(tmp_path / "t.pth")
    argv = ["predict", "--ct", str(tmp_path / "s"), "--checkpoint", str(ckpt),
            "--out", str(tmp_path / "p.nii.gz")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "a 4 mm gap between the slices at 6 and 10 mm" in err
    assert not (tmp_path / "p.nii.gz").exists()
    assert main([*argv, "--resample-uneven"]) == 0
    out = capsys.readouterr().out
    assert "note: " in out and "IM0005.dcm" in out and "resampled, as asked" in out
    written = nib.load(str(tmp_path / "p.nii.gz"))
    assert written.shape == (8, 8, 10) and written.affine[2, 2] == pytest.approx(2.0)
    # the labels lie on the resampled grid: `stats` reads the series the same way when asked
    stats = ["stats", "--ct", str(tmp_path / "s"), "--labels", str(tmp_path / "p.nii.gz")]
    assert main(stats) == 2 and "gap" in capsys.readouterr().err
    assert main([*stats, "--resample-uneven", "--json"]) == 0


def test_a_multi_frame_file_is_read_only_where_its_frames_lie_evenly_in_order(tmp_path):
    """An enhanced CT in one file: SimpleITK stacks the frames as stored at one step, so a
    missing, uneven or unsorted frame was put where it is not, without a word. Frames evenly
    spaced (either way along the axis) are read at their own positions; the others are refused
    in one line naming the steps."""
    for zs in ([0, 2, 4, 6, 8], [8, 6, 4, 2, 0]):
        folder = tmp_path / f"even{zs[0]}"
        folder.mkdir()
        write_multiframe(folder / "ct.dcm", zs)
        ct = load_ct(folder)
        z_of_slice = ct.affine[2, 3] + ct.affine[2, 2] * np.arange(ct.array.shape[2])
        hu_at = {z: 10 * k for k, z in enumerate(zs)}  # frame k holds HU 10 k at zs[k]
        assert [hu_at[round(float(z), 3)] for z in z_of_slice] == ct.array[0, 0].tolist()
    for zs, steps in (([0, 2, 6, 8, 10], "2, 4, 2, 2"), ([0, 4, 2, 6, 8], "4, -2, 4, 2")):
        folder = tmp_path / f"bad{zs[2]}"
        folder.mkdir()
        write_multiframe(folder / "ct.dcm", zs)
        with pytest.raises(DataError, match=rf"ct\.dcm's frames are {steps} mm apart in .*evenly"):
            load_ct(folder)


def test_a_multi_frame_file_over_the_voxel_limit_is_refused_before_its_pixels(
    tmp_path, monkeypatch
):
    """One enhanced file skipped the voxel limit a series of files has: a small upload whose
    frames compress well could claim gigabytes and be decoded whole."""
    import SimpleITK as sitk

    write_multiframe(tmp_path / "ct.dcm", [0, 2, 4, 6, 8])
    monkeypatch.setenv("CTSEG_MAX_VOXELS", "100")
    decoded = []
    real = sitk.ReadImage
    monkeypatch.setattr(sitk, "ReadImage", lambda *a, **k: decoded.append(a) or real(*a, **k))
    with pytest.raises(
        DataError, match=r"has 5 frames of \d+ x \d+ pixels, over the limit of 100 "
    ):
        load_ct(tmp_path)
    assert not decoded


@pytest.mark.parametrize("tag", ["ImageOrientationPatient", "PixelSpacing", "ImagePositionPatient"])
def test_a_series_without_a_geometry_tag_is_refused_not_guessed(tmp_path, tag):
    """SimpleITK fills a missing orientation with identity and a missing pixel size with 1 mm:
    a series stored A/P-flipped, or at 0.7 mm, was read otherwise without a word (and a missing
    position was reported as a gantry tilt). Refused, naming the file and the tag."""
    import pydicom

    files = write_series(tmp_path, [0.0, 2.0, 4.0, 6.0])
    ds = pydicom.dcmread(files[1])
    delattr(ds, tag)
    ds.save_as(files[1])
    with pytest.raises(DataError, match=rf"{files[1].name} of .* states no {tag}, so its geometry"):
        read_dicom_series(tmp_path)


def test_enhanced_files_of_one_frame_each_read_and_a_tilted_multi_frame_file_is_refused(
    tmp_path,
):
    """A series of one-frame enhanced CT files keeps its geometry in functional groups, not on
    top (the check for the top-level tags refused it); a multi-frame file whose frames drift
    sideways (a gantry tilt) cannot be a stack and is refused."""
    series = tmp_path / "enhanced"
    series.mkdir()
    for k in range(5):
        write_multiframe(series / f"f{k}.dcm", [2.0 * k], instance=k + 1)
    ct = load_ct(series)
    assert ct.array.shape == (6, 6, 5) and ct.spacing_mm == pytest.approx((0.5, 0.5, 2.0))
    tilted = tmp_path / "tilted"
    tilted.mkdir()
    write_multiframe(tilted / "ct.dcm", [0, 2, 4, 6, 8], drift_mm=0.54)
    with pytest.raises(DataError, match=r"frames move up to 0\.54 mm sideways .*gantry tilt"):
        load_ct(tilted)


def test_an_oblique_series_is_read_with_the_niftis_note(tmp_path):
    """Slices turned 15 degrees about z: read on the nearest axes, unresampled, and said, as
    for a NIfTI (a series said nothing)."""
    import pydicom

    files = write_series(tmp_path / "s", Z_MM)
    assert not load_ct(tmp_path / "s").notes
    turn = np.radians(15)
    for path in files:
        ds = pydicom.dcmread(path)
        ds.ImageOrientationPatient = [np.cos(turn), np.sin(turn), 0, -np.sin(turn), np.cos(turn), 0]
        ds.save_as(path)
    notes = load_ct(tmp_path / "s").notes
    assert any("s is oblique: its voxel axes are turned 15.0 degrees" in n for n in notes), notes


def test_a_monochrome1_series_reads_as_stored_value_times_slope_plus_intercept(tmp_path):
    """MONOCHROME1 says how to display a CT, not what its HU are; GDCM inverted the stored
    values before the rescale, so every voxel read wrong (air as -1025, 1000 HU as -2025),
    without a word. Read as pydicom's stored values x slope + intercept, exactly."""
    import pydicom

    files = write_series(tmp_path / "s", Z_MM[:4], photometric="MONOCHROME1")
    data = np.asarray(read_dicom_series(tmp_path / "s").dataobj)
    for k, path in enumerate(files):
        ds = pydicom.dcmread(path)
        hu = ds.pixel_array.T * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(data[:, :, k], hu)
        np.testing.assert_array_equal(data[:, :, k], _hu(k))
    # a file without the 128-byte preamble and "DICM": its decodable copy is read all the same
    import SimpleITK as sitk

    from ctseg_core.data.dicom_pixels import decodable_copy

    ds = pydicom.dcmread(files[0])
    ds.preamble = None
    del ds.SOPClassUID  # an old ACR-NEMA file may not state it
    bare = tmp_path / "bare.dcm"
    ds.save_as(bare, enforce_file_format=False)
    assert bare.read_bytes()[128:132] != b"DICM"
    (tmp_path / "copy").mkdir()
    copy = sitk.ReadImage(str(decodable_copy(bare, tmp_path / "copy")))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(copy)[0].T, data[:, :, 0])
    folder = tmp_path / "enhanced"
    folder.mkdir()
    write_multiframe(folder / "ct.dcm", [0, 2, 4], photometric="MONOCHROME1")
    assert np.asarray(read_dicom_series(folder).dataobj)[0, 0].tolist() == [0, 10, 20]


def test_a_multi_frame_file_rescales_each_frame_by_its_own_and_refuses_mixed_orientations(
    tmp_path,
):
    """GDCM applied the first frame's rescale to every frame, and SimpleITK the first frame's
    orientation: frames of their own rescale read wrong, a frame turned aside was put where it
    is not, both without a word."""
    zs = [0, 2, 4, 6, 8]
    (tmp_path / "rescale").mkdir()
    write_multiframe(tmp_path / "rescale" / "ct.dcm", zs,
                     rescales=[(1 + k / 2, -1024 - 100 * k) for k in range(5)])  # fmt: skip
    data = np.asarray(read_dicom_series(tmp_path / "rescale").dataobj)
    # frame k stores 1024 + 10 k: HU (1024 + 10 k) x (1 + k / 2) - 1024 - 100 k
    expected = [round((1024 + 10 * k) * (1 + k / 2) - 1024 - 100 * k) for k in range(5)]
    assert data[0, 0].tolist() == expected
    (tmp_path / "turned").mkdir()
    turned = [(1, 0, 0, 0, 1, 0)] * 4 + [(0.966, 0.259, 0, -0.259, 0.966, 0)]
    write_multiframe(tmp_path / "turned" / "ct.dcm", zs, orientations=turned)
    with pytest.raises(DataError) as exc:
        read_dicom_series(tmp_path / "turned")
    assert "ct.dcm's frames differ in orientation (frame 1: 1 0 0 0 1 0; frame 5: 0.966" in (
        _one_line(exc)
    )


@pytest.mark.parametrize(
    ("tag", "value", "said"),
    [
        ("ImageOrientationPatient", [0, 0, 0, 0, 0, 0], "unit vectors at right angles"),
        ("ImageOrientationPatient", [1, 0, 0, 1, 0, 0], "unit vectors at right angles"),
        ("ImageOrientationPatient", [2, 0, 0, 0, 2, 0], "unit vectors at right angles"),
        ("ImageOrientationPatient", [1, 0, 0, 0, 1], "not 6 numbers"),
        ("PixelSpacing", [0, 0], "two pixel sizes over 0 mm"),
        ("PixelSpacing", [0.7], "two pixel sizes over 0 mm"),
    ],
)
def test_an_impossible_orientation_or_pixel_spacing_is_refused_not_defaulted(
    tmp_path, tag, value, said
):
    """SimpleITK replaced a zero or parallel orientation by identity, normalised one that is
    not unit and gave pixels of 0 mm 1 mm: each read as a geometry the file does not state."""
    write_series(tmp_path, Z_MM[:4], tags={tag: value})
    with pytest.raises(DataError) as exc:
        read_dicom_series(tmp_path)
    message = _one_line(exc)
    assert f'IM0001.dcm of series 3 "CT Abdomen 2.0" has an impossible geometry: its {tag}' in (
        message
    )
    assert said in message


@pytest.mark.parametrize("group", ["PixelMeasuresSequence", "PlaneOrientationSequence"])
def test_an_enhanced_ct_without_pixel_measures_or_orientation_is_refused(tmp_path, group):
    """An enhanced file without its pixel measures read at SimpleITK's 1 mm, and one without
    its orientation threw a many-line RuntimeError from the folder's listing."""
    name = {"PixelMeasuresSequence": "pixel spacing", "PlaneOrientationSequence": "orientation"}
    for frames in ([0, 1, 2, 3, 4], [0]):  # one multi-frame file; a series of one-frame files
        folder = tmp_path / f"{group}{len(frames)}"
        folder.mkdir()
        for k in range(1 if len(frames) > 1 else 3):
            write_multiframe(folder / f"f{k}.dcm", [z + 2 * k for z in frames], instance=k + 1,
                             leave_out=(group,))  # fmt: skip
        with pytest.raises(DataError) as exc:
            read_dicom_series(folder)
        assert "f0.dcm" in _one_line(exc) and f"states no {group} ({name[group]})" in str(exc.value)


def test_a_stray_file_gdcm_cannot_list_is_left_out_with_a_note(tmp_path, caplog):
    """One enhanced file without its orientation made GDCM's folder listing throw, and the
    whole folder failed with a many-line RuntimeError (a traceback from `ctseg predict`)."""
    write_series(tmp_path / "s", Z_MM)
    write_multiframe(tmp_path / "s" / "stray.dcm", [0, 2], leave_out=("PlaneOrientationSequence",),
                     series_uid="1.2.826.0.1.77")  # fmt: skip
    img = read_dicom_series(tmp_path / "s")
    assert img.shape == (8, 8, 10)
    np.testing.assert_array_equal(np.asarray(img.dataobj)[:, :, 3], _hu(3))
    (warning,) = _warnings(caplog)
    assert "left out stray.dcm, an enhanced CT file that states no PlaneOrientationSequence" in (
        warning
    )
    (tmp_path / "s2").mkdir()
    (tmp_path / "s" / "stray.dcm").rename(tmp_path / "s2" / "stray.dcm")
    with pytest.raises(DataError) as exc:
        read_dicom_series(tmp_path / "s2")
    assert "s2 holds no readable DICOM series (stray.dcm is an enhanced CT file" in _one_line(exc)


def test_the_series_chosen_counts_frames_and_passes_over_a_localizer(tmp_path, caplog):
    """The series with the most files was read: a 40-frame enhanced CT tied with a one-file
    topogram and the topogram was read, said as '(1 files)'."""
    for uid in ("1.2.826.0.1.5", "1.2.826.0.1.95"):  # sorted before and after the CT's UID
        folder = tmp_path / uid
        folder.mkdir()
        write_multiframe(folder / "ct.dcm", [2.0 * k for k in range(40)])
        write_series(folder, [0.0], series_uid=uid, number=1, description="Topogram",
                     tags={"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]})  # fmt: skip
        assert read_dicom_series(folder).shape == (6, 6, 40)
        assert (
            "holds 2 series; reading the largest, series 9 (40 frames in 1 file); others: "
            'series 1 "Topogram" (1 file, a localizer)' in _warnings(caplog)[-1]
        )
    (tmp_path / "scout").mkdir()
    write_series(tmp_path / "scout", [0.0], tags={"ImageType": ["ORIGINAL", "LOCALIZER"]})
    with pytest.raises(DataError, match=r"is a localizer \(ImageType LOCALIZER"):
        read_dicom_series(tmp_path / "scout")


def test_a_colour_series_is_refused_as_not_a_ct_image(tmp_path):
    """A folder of RGB secondary captures (a dose report's screenshot) crashed with a raw
    ValueError from reshaping its pixels."""
    colour = {"SamplesPerPixel": 3, "PlanarConfiguration": 0, "PhotometricInterpretation": "RGB",
              "BitsAllocated": 8, "BitsStored": 8, "HighBit": 7, "PixelRepresentation": 0,
              "PixelData": np.full((8, 8, 3), 40, np.uint8).tobytes()}  # fmt: skip
    write_series(tmp_path, Z_MM[:3], tags=colour)
    with pytest.raises(DataError) as exc:
        read_dicom_series(tmp_path)
    message = _one_line(exc)
    assert 'series 3 "CT Abdomen 2.0" is not a CT image series: IM0001.dcm holds RGB pixels' in (
        message
    )


def test_a_single_slice_is_noted_with_the_thickness_it_is_given(tmp_path, caplog):
    """One slice without SliceThickness was given 1 mm of depth (and each voxel's volume by
    it) without a word."""
    write_series(tmp_path / "thin", [0.0], tags={"SliceThickness": None})
    assert read_dicom_series(tmp_path / "thin").affine[2, 2] == pytest.approx(1.0)
    note = _warnings(caplog)[-1]
    assert "holds one slice and states no SliceThickness; read as a volume one slice deep" in note
    assert "1 mm thick (a guess" in note
    write_series(tmp_path / "thick", [0.0])
    assert read_dicom_series(tmp_path / "thick").affine[2, 2] == pytest.approx(2.0)
    assert (
        "holds one slice; read as a volume one slice deep, 2 mm thick (its SliceThickness)"
        in (_warnings(caplog)[-1])
    )


def test_a_zip_unpacks_without_its_dicomdir_and_with_names_of_any_length(tmp_path):
    """A CD export's DICOMDIR, renamed on unpacking, was then said to be a damaged slice; a
    member name near 255 bytes overflowed with the number prefix (a bare OSError naming the
    server's path)."""
    import io
    import zipfile

    from ctseg_core.data.zip_series import unpack_zip_flat

    long_name = "y" * 250 + ".dcm"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("CD/DICOMDIR", b"index")
        archive.writestr(f"CD/IMAGES/{long_name}", b"slice")
        archive.writestr("CD/IMAGES/IM1.dcm", b"slice")
    written = unpack_zip_flat(buffer.getvalue(), tmp_path / "out", "cd.zip")
    names = [p.name for p in written]
    assert len(names) == 2 and names[1] == "00002_IM1.dcm"
    assert names[0].startswith("00001_y") and names[0].endswith("y.dcm")
    assert all(len(n.encode()) < 255 and p.read_bytes() == b"slice" for n, p in
               zip(names, written, strict=True))  # fmt: skip


def test_two_acquisitions_of_one_range_are_refused_and_table_positions_read_as_one(tmp_path):
    # a repeated scan of the same range under one series: it would stack at half the step
    write_series(tmp_path / "mixed", Z_MM[::2], tags={"AcquisitionNumber": 1})
    write_series(tmp_path / "mixed", Z_MM[1::2], start=50, tags={"AcquisitionNumber": 2})
    with pytest.raises(DataError) as exc:
        read_dicom_series(tmp_path / "mixed")
    assert _one_line(exc) == (
        f'{tmp_path / "mixed"}: series 3 "CT Abdomen 2.0" holds two acquisitions whose slices '
        "interleave, acquisition 1 and acquisition 2 (2 to 16 mm along the slice normal), e.g. a "
        "repeat or another phase; put each acquisition's files in its own folder"
    )
    # a repeat over part of the range (--resample-uneven would blend the two there), and an
    # interleaved pair beside a third acquisition that reaches further than both
    write_series(tmp_path / "part", np.arange(0, 101, 2.0), tags={"AcquisitionNumber": 1})
    write_series(tmp_path / "part", np.arange(55, 200, 2.0), start=100,
                 pixels_of=lambda i: slice_pixels(i) + 5, tags={"AcquisitionNumber": 2})  # fmt: skip
    with pytest.raises(DataError, match=r"acquisition 1 and acquisition 2 \(55 to 100 mm"):
        read_dicom_series(tmp_path / "part", resample_uneven=True)
    write_series(tmp_path / "three", np.arange(0, 21, 2.0), tags={"AcquisitionNumber": 1})
    write_series(tmp_path / "three", [0.0, *np.arange(21, 41.0)], start=20,
                 pixels_of=lambda i: slice_pixels(0 if i == 0 else 11 + i),
                 tags={"AcquisitionNumber": 2})  # fmt: skip
    write_series(tmp_path / "three", np.arange(1, 20, 2.0), start=50,
                 pixels_of=lambda i: slice_pixels(i) + 7, tags={"AcquisitionNumber": 3})  # fmt: skip
    with pytest.raises(DataError, match="acquisition 1 and acquisition 3"):
        read_dicom_series(tmp_path / "three")
    # so are slices without the tag among numbered ones
    write_series(tmp_path / "untagged", Z_MM[::2], tags={"AcquisitionNumber": 1})
    write_series(tmp_path / "untagged", Z_MM[1::2], start=50)
    with pytest.raises(DataError, match="acquisition 1 and the slices without AcquisitionNumber"):
        read_dicom_series(tmp_path / "untagged")
    # one acquisition's number written "01", "+1", " 001" or "1" (IS values) is one acquisition
    write_series(tmp_path / "whole", Z_MM, pixels_of=lambda i: slice_pixels(i))
    whole = read_dicom_series(tmp_path / "whole")
    for k, other in enumerate(("01", "+1", " 001")):
        folder = tmp_path / f"written{k}"
        write_series(folder, Z_MM[::2], pixels_of=lambda i: slice_pixels(2 * i),
                     tags={"AcquisitionNumber": other})  # fmt: skip
        write_series(folder, Z_MM[1::2], start=50, pixels_of=lambda i: slice_pixels(2 * i + 1),
                     tags={"AcquisitionNumber": "1"})  # fmt: skip
        same = read_dicom_series(folder)
        np.testing.assert_array_equal(np.asarray(same.dataobj), np.asarray(whole.dataobj))
    # table positions of a step-and-shoot scan: one volume, as if it were one acquisition,
    # also where they share a boundary slice with the same pixels
    write_series(tmp_path / "steps", Z_MM[:6], tags={"AcquisitionNumber": 1})
    write_series(tmp_path / "steps", Z_MM[5:], start=6, pixels_of=lambda i: slice_pixels(5 + i),
                 tags={"AcquisitionNumber": 2})  # fmt: skip
    steps = read_dicom_series(tmp_path / "steps")
    np.testing.assert_array_equal(np.asarray(steps.dataobj), np.asarray(whole.dataobj))
    np.testing.assert_array_equal(steps.affine, whole.affine)
    # positions overlapping at the edges by an off-grid slice each: uneven spacing, as without
    # the tags (refused, or resampled on request), not two scans of one range
    write_series(tmp_path / "edges", [0, 2, 4, 6, 8, 10], tags={"AcquisitionNumber": 1})
    write_series(tmp_path / "edges", [9, 11, 13, 15], start=7, tags={"AcquisitionNumber": 2})
    with pytest.raises(DataError, match=r"uneven|gap|spacing") as exc:
        read_dicom_series(tmp_path / "edges")
    assert "two scans" not in str(exc.value)
    assert read_dicom_series(tmp_path / "edges", resample_uneven=True).shape[2] >= 8
