"""Slice views: windowing numbers, display orientation (synthetic marker and real anatomy),
pixel aspect, overlay colours and blending, contours."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from ctseg_core.errors import ConfigError
from ctseg_core.labels import LABEL_OF, colour_lut
from ctseg_core.viz.slices import (
    WINDOW_PRESETS,
    extract_plane,
    label_borders,
    largest_section,
    num_planes,
    overlay_rgb,
    plane_aspect,
    render_comparison,
    render_slice,
    side_by_side,
    stretch_to_aspect,
    to_png_bytes,
    window_to_uint8,
    worst_slices,
)


def test_window_maps_level_minus_half_width_to_0_and_plus_half_width_to_255():
    level, width = 40.0, 400.0
    hu = np.array([-1000, -160, -60, 40, 140, 240, 3000], dtype=np.int16)
    gray = window_to_uint8(hu, level, width)
    assert gray.dtype == np.uint8 and gray.shape == hu.shape
    assert gray.tolist() == [0, 0, 64, 128, 191, 255, 255]  # 63.75 -> 64, 127.5 -> 128, 191.25
    lung = window_to_uint8(np.array([[-1350.0, -600.0, 150.0]]), *WINDOW_PRESETS["lung"])
    assert lung.shape == (1, 3) and lung.tolist() == [[0, 128, 255]]


def test_window_rejects_non_positive_width():
    with pytest.raises(ConfigError, match="width"):
        window_to_uint8(np.zeros(3), 40, 0)


def test_presets_hold_the_usual_windows():
    assert WINDOW_PRESETS["soft tissue"] == (40, 400)
    assert WINDOW_PRESETS["lung"] == (-600, 1500)
    assert WINDOW_PRESETS["bone"] == (400, 1800)
    assert WINDOW_PRESETS["brain"] == (40, 80)


def _marker_volume():
    """(Z, X, Y) = (7, 9, 11) RAS+ volume with one voxel at the patient's left-anterior-superior."""
    volume = np.zeros((7, 9, 11), dtype=np.int16)
    # x low = patient's left (RAS: x grows to the right); y high = anterior; z high = superior
    volume[5, 1, 9] = 1
    return volume


def test_axial_view_shows_left_anterior_voxel_at_image_top_right():
    image = extract_plane(_marker_volume(), "axial", 5)
    assert image.shape == (11, 9)  # rows along y, columns along x
    row, col = np.argwhere(image == 1)[0]
    assert (row, col) == (11 - 1 - 9, 9 - 1 - 1)  # (1, 7): top rows, right columns
    assert extract_plane(_marker_volume(), "axial", 4).max() == 0


def test_coronal_view_has_superior_at_top_and_patient_left_at_image_right():
    image = extract_plane(_marker_volume(), "coronal", 9)
    assert image.shape == (7, 9)  # rows along z, columns along x
    row, col = np.argwhere(image == 1)[0]
    assert (row, col) == (7 - 1 - 5, 9 - 1 - 1)


def test_sagittal_view_has_superior_at_top_and_anterior_at_image_left():
    image = extract_plane(_marker_volume(), "sagittal", 1)
    assert image.shape == (7, 11)  # rows along z, columns along y
    row, col = np.argwhere(image == 1)[0]
    assert (row, col) == (7 - 1 - 5, 11 - 1 - 9)


def test_num_planes_and_bad_plane_or_index():
    shape = (7, 9, 11)
    assert [num_planes(shape, p) for p in ("axial", "coronal", "sagittal")] == [7, 11, 9]
    with pytest.raises(ConfigError, match="plane"):
        extract_plane(_marker_volume(), "oblique", 0)
    with pytest.raises(ConfigError, match=r"0\.\.6"):
        extract_plane(_marker_volume(), "axial", 7)


def test_extract_plane_reads_a_memmap_without_loading_it(tmp_path):
    path = tmp_path / "v.npy"
    np.save(path, _marker_volume())
    volume = np.load(path, mmap_mode="r")
    assert extract_plane(volume, "sagittal", 1)[1, 1] == 1


def test_plane_aspect_with_anisotropic_spacing():
    spacing = (0.8, 1.0, 2.5)  # x, y, z mm
    assert plane_aspect(spacing, "axial") == pytest.approx(1.0 / 0.8)
    assert plane_aspect(spacing, "coronal") == pytest.approx(2.5 / 0.8)
    assert plane_aspect(spacing, "sagittal") == pytest.approx(2.5 / 1.0)
    image = np.arange(4 * 3).reshape(4, 3)
    stretched = stretch_to_aspect(image, 2.5)
    assert stretched.shape == (10, 3)
    assert sorted(np.unique(stretched[:, 0], return_counts=True)[1]) == [2, 2, 3, 3]
    assert stretch_to_aspect(image, 2.0)[:, 0].tolist() == [0, 0, 3, 3, 6, 6, 9, 9]
    assert stretch_to_aspect(image, 0.5)[:, 0].tolist() == [3, 9]  # rows 1 and 3 of 4
    assert stretch_to_aspect(image, 1.005) is image


def _custom_colours():
    colours = np.zeros((118, 3), dtype=np.uint8)
    colours[1] = (200, 0, 50)
    colours[2] = (10, 250, 90)
    return colours


def test_overlay_full_alpha_shows_lut_colours_and_gray_elsewhere():
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (32, 40), dtype=np.uint8)
    labels = rng.integers(0, 118, (32, 40), dtype=np.uint8)
    labels[:5] = 0
    lut = colour_lut()
    rgb = overlay_rgb(gray, labels, lut, alpha=1.0)
    assert rgb.shape == (32, 40, 3) and rgb.dtype == np.uint8
    labelled = labels > 0
    assert np.array_equal(rgb[labelled], lut[labels[labelled]])
    assert np.array_equal(rgb[~labelled], np.repeat(gray[~labelled, None], 3, axis=1))


def test_overlay_alpha_blend_numbers_and_visibility():
    gray = np.full((2, 2), 100, dtype=np.uint8)
    labels = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    rgb = overlay_rgb(gray, labels, _custom_colours(), alpha=0.5)
    assert rgb[0, 0].tolist() == [100, 100, 100]
    assert rgb[0, 1].tolist() == [150, 50, 75]  # (100 + 200) / 2, (100 + 0) / 2, (100 + 50) / 2
    assert rgb[1, 0].tolist() == [55, 175, 95]
    rgb = overlay_rgb(gray, labels, _custom_colours(), alpha=0.25)
    assert rgb[0, 1].tolist() == [125, 75, 88]  # 0.75 * 100 + 0.25 * (200, 0, 50); 87.5 -> 88
    visible = np.ones(118, dtype=bool)
    visible[2] = False
    rgb = overlay_rgb(gray, labels, _custom_colours(), alpha=0.5, visible=visible)
    assert rgb[1, 0].tolist() == [100, 100, 100]
    assert rgb[0, 1].tolist() == [150, 50, 75]


def test_overlay_on_rgb_base_matches_gray_path():
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    labels = rng.integers(0, 5, (16, 16), dtype=np.uint8)
    base = np.repeat(gray[..., None], 3, axis=2)
    for mode in ("fill", "contour"):
        expected = overlay_rgb(gray, labels, alpha=0.4, mode=mode)
        assert np.array_equal(overlay_rgb(base, labels, alpha=0.4, mode=mode), expected)


def test_contour_mode_colours_only_structure_borders():
    gray = np.zeros((9, 9), dtype=np.uint8)
    labels = np.zeros((9, 9), dtype=np.uint8)
    labels[2:7, 2:7] = 1  # a 5 x 5 square: 16 border pixels, 9 inside
    rgb = overlay_rgb(gray, labels, _custom_colours(), alpha=1.0, mode="contour")
    coloured = rgb.any(axis=2)
    expected = np.zeros((9, 9), dtype=bool)
    expected[2:7, 2:7] = True
    expected[3:6, 3:6] = False
    assert np.array_equal(coloured, expected)
    assert rgb[2, 2].tolist() == [200, 0, 50]


def test_contour_between_neighbours_and_hidden_neighbour():
    labels = np.zeros((6, 8), dtype=np.uint8)
    labels[:, :4] = 1
    labels[:, 4:] = 2
    border = label_borders(labels)
    # the shared edge (columns 3 and 4) and the frame are borders, the inner columns are not
    assert border[2, 3] and border[2, 4] and border[0, 1] and not border[2, 1]
    visible = np.ones(118, dtype=bool)
    visible[2] = False
    rgb = overlay_rgb(
        np.zeros((6, 8), np.uint8), labels, _custom_colours(), 1.0, visible, "contour"
    )
    assert rgb[2, 3].tolist() == [200, 0, 50]  # structure 1 still outlined against the hidden 2
    assert not rgb[:, 4:].any()


def test_overlay_rejects_bad_arguments():
    gray = np.zeros((4, 4), np.uint8)
    with pytest.raises(ConfigError, match="mode"):
        overlay_rgb(gray, gray, mode="outline")
    with pytest.raises(ConfigError, match="shape"):
        overlay_rgb(gray, np.zeros((4, 5), np.uint8))
    with pytest.raises(ConfigError, match="alpha"):
        overlay_rgb(gray, gray, alpha=1.5)


def test_render_slice_chains_window_overlay_and_aspect():
    ct = np.full((4, 6, 5), 40, dtype=np.int16)
    labels = np.zeros((4, 6, 5), dtype=np.uint8)
    labels[2, 0, 0] = 1  # patient's right-most x is high x: x=0 is the image's right column
    rgb = render_slice(ct, "axial", 2, 40, 400, labels, _custom_colours(), alpha=1.0)
    assert rgb.shape == (5, 6, 3)
    assert rgb[4, 5].tolist() == [200, 0, 50] and rgb[0, 0].tolist() == [128, 128, 128]
    coronal = render_slice(ct, "coronal", 0, spacing_mm=(1.0, 1.0, 2.5))
    assert coronal.shape == (10, 6, 3)
    both = side_by_side(rgb, rgb)
    assert both.shape == (5, 16, 3) and not both[:, 6:10].any()
    assert to_png_bytes(rgb)[:8] == b"\x89PNG\r\n\x1a\n"


def test_comparison_largest_section_and_worst_slices():
    ct = np.full((6, 8, 10), -1000, dtype=np.int16)  # black in the soft-tissue window
    reference = np.zeros((6, 8, 10), dtype=np.uint8)
    reference[1:5, 2:6, 3:7] = 1
    reference[3, 1:7, 2:9] = 1  # slice 3 holds the largest axial section
    prediction = reference.copy()
    prediction[4] = 0  # 16 voxels missed on slice 4
    prediction[1, 0, 0] = 2  # 1 false positive on slice 1
    assert largest_section(reference, 1, "axial") == 3
    assert largest_section(reference, 1, "coronal") == 3  # y 3..6 tie at 18 pixels: first wins
    assert largest_section(reference, 1, "sagittal") == 2  # x 2..5 tie at 19 pixels
    box = (slice(1, 5), slice(1, 7), slice(2, 9))
    assert largest_section(reference, 1, "axial", box) == 3
    assert largest_section(reference, 9) is None
    assert worst_slices(reference, prediction, count=3) == [4, 1]
    assert worst_slices(reference, reference) == []
    with pytest.raises(ConfigError, match="resample"):
        worst_slices(reference, prediction[:5])
    both = render_comparison(ct, reference, prediction, "axial", 4, alpha=1.0)
    assert both.shape == (10, 2 * 8 + 4, 3)
    assert both[:, :8].any(axis=2).sum() == 16 and not both[:, 12:].any()


def _liver_on_image_left_and_aorta_before_spine(subject, z: int) -> None:
    axial = extract_plane(subject.labels, "axial", z)
    nx, ny = subject.labels.shape[1:]
    assert axial.shape == (ny, nx)  # rows run posterior-wards, columns to the patient's left
    liver_col = ndimage.center_of_mass(axial == LABEL_OF["liver"])[1]
    spleen_col = ndimage.center_of_mass(axial == LABEL_OF["spleen"])[1]
    assert liver_col < nx / 2 < spleen_col  # patient's right (liver) on the image's left
    aorta_row = ndimage.center_of_mass(axial == LABEL_OF["aorta"])[0]
    cord_row = ndimage.center_of_mass(axial == LABEL_OF["spinal_cord"])[0]
    assert aorta_row < cord_row  # anterior at the top

    x_cord = round(np.argwhere(subject.labels[z] == LABEL_OF["spinal_cord"])[:, 0].mean())
    sagittal = extract_plane(subject.labels, "sagittal", x_cord)
    t11 = ndimage.center_of_mass(sagittal == LABEL_OF["vertebrae_T11"])
    t12 = ndimage.center_of_mass(sagittal == LABEL_OF["vertebrae_T12"])
    assert t11[0] < t12[0]  # superior at the top
    cord_col = ndimage.center_of_mass(sagittal == LABEL_OF["spinal_cord"])[1]
    assert t12[1] < cord_col  # the vertebral body lies anterior (left) of the cord


def test_real_subject_displays_liver_on_image_left_and_aorta_before_spine(derived_sample, tmp_path):
    """The derived s0001 is s0000 stored LAS: after canonicalisation the radiological view must
    still be right (its slices are 10..29 of s0000, the sagittal plane shows T11 and T12)."""
    from ctseg_core.data.cache import open_cached

    _liver_on_image_left_and_aorta_before_spine(open_cached(derived_sample, "s0001", tmp_path), 7)


def test_the_real_512_las_subject_displays_liver_on_image_left(sample_root, cache_dir):
    """The real s0001 of ../shared, 512 x 512 stored LAS (optional, skipped without it)."""
    from ctseg_core.data.cache import open_cached

    subject = open_cached(sample_root, "s0001", cache_dir)
    assert subject.labels.shape[1:] == (512, 512)
    _liver_on_image_left_and_aorta_before_spine(subject, 10)


@pytest.mark.parametrize("subject", ["s0000", "s0001", "s0003"])  # RAS, LAS, LPS files
def test_plane_positions_are_the_files_world_coordinates(root_of, tmp_path, subject):
    import nibabel as nib

    from ctseg_core.data.cache import open_cached
    from ctseg_core.viz.slices import plane_position_mm

    entry = open_cached(root_of(subject), subject, tmp_path)
    img = nib.load(root_of(subject) / subject / "ct.nii.gz")
    codes = nib.aff2axcodes(img.affine)  # the file's own axes, read independently
    nz, nx, ny = entry.ct.shape
    for plane, axis, letter, count in (("sagittal", 0, "R", nx), ("coronal", 1, "A", ny),
                                       ("axial", 2, "S", nz)):  # fmt: skip
        for index in (0, count - 1):
            # the canonical index counts towards R/A/S; in a file whose axis runs the other
            # way (L, P, I) the same plane is at the mirrored voxel index
            file_axis = next(i for i, c in enumerate(codes) if c in (letter, "LPI"[axis]))
            flipped = codes[file_axis] != letter
            voxel = (np.asarray(img.shape, dtype=float) - 1) / 2
            voxel[file_axis] = count - 1 - index if flipped else index
            world = img.affine[:3, :3] @ voxel + img.affine[:3, 3]
            shown = plane_position_mm(entry.affine, entry.ct.shape, plane, index)
            assert shown == f"{letter} {world[axis]:.1f} mm", (plane, index)


def test_zoom_window_crops_each_plane_to_the_box_with_its_margin():
    from ctseg_core.viz.slices import zoom_window

    volume = np.zeros((30, 40, 50), np.uint8)  # (Z, X, Y)
    volume[10:12, 5:8, 20:23] = 1  # a 2 x 3 x 3 voxel structure
    box = ((10, 12), (5, 8), (20, 23))
    for plane, index, shape in (("axial", 10, (7, 7)), ("coronal", 21, (6, 7)),
                                ("sagittal", 6, (6, 7))):  # fmt: skip
        image = extract_plane(volume, plane, index)
        rows, cols = zoom_window(box, volume.shape, plane, margin_voxels=2)
        assert image[rows, cols].shape == shape  # box + 2 voxels each side
        assert image[rows, cols].sum() == image.sum() > 0  # all of the structure inside
    rows, cols = zoom_window(((0, 1), (0, 1), (0, 1)), volume.shape, "axial", margin_voxels=10)
    assert (rows, cols) == (slice(39, 50), slice(29, 40))  # clipped at the volume's edge
