"""3D Slicer and ITK-SNAP label files: written atomically, parsed back to the same names/colours."""

from __future__ import annotations

import pytest

from ctseg_core.errors import DataError
from ctseg_core.inference.label_files import (
    label_file_paths,
    read_itksnap_labels,
    read_slicer_ctbl,
    write_label_files,
)
from ctseg_core.labels import COLOURS, LABEL_OF, STRUCTURES


def test_label_files_parse_back_to_the_same_names_and_colours(tmp_path):
    slicer, itk = write_label_files(tmp_path / "pred.nii.gz")
    assert slicer.name == "pred.ctbl" and itk.name == "pred_itksnap_labels.txt"
    for entries in (read_slicer_ctbl(slicer), read_itksnap_labels(itk)):
        assert len(entries) == 118
        assert entries[0].value == 0 and entries[0].name == "background"
        assert entries[0].opacity == 0.0
        by_value = {e.value: e for e in entries[1:]}
        assert sorted(by_value) == list(range(1, 118))
        for name in STRUCTURES:
            entry = by_value[LABEL_OF[name]]
            assert entry.name == name
            assert entry.rgb == tuple(COLOURS[name])
            assert entry.opacity == 1.0 and entry.visible


def test_slicer_lines_have_index_name_rgba_and_itksnap_lines_quote_the_label(tmp_path):
    slicer, itk = write_label_files(tmp_path / "x", values=[5, 2])
    lines = [line for line in slicer.read_text().splitlines() if not line.startswith("#")]
    r, g, b = COLOURS["liver"]
    assert lines == [
        "0 background 0 0 0 0",
        f"2 kidney_right {' '.join(map(str, COLOURS['kidney_right']))} 255",
        f"5 liver {r} {g} {b} 255",
    ]
    itk_lines = [line for line in itk.read_text().splitlines() if not line.startswith("#")]
    assert itk_lines[0].split() == ["0", "0", "0", "0", "0.00", "0", "0", '"Clear', 'Label"']
    assert itk_lines[2].split() == ["5", str(r), str(g), str(b), "1.00", "1", "1", '"liver"']


def test_malformed_label_file_names_the_line(tmp_path):
    bad = tmp_path / "bad.ctbl"
    bad.write_text("# header\n1 spleen 10 20\n")
    with pytest.raises(DataError, match="line 2"):
        read_slicer_ctbl(bad)
    bad_itk = tmp_path / "bad.txt"
    bad_itk.write_text("1 2 3 4 1 1 1 no-quotes\n")
    with pytest.raises(DataError, match="line 1"):
        read_itksnap_labels(bad_itk)


def test_unknown_label_value_is_refused(tmp_path):
    with pytest.raises(DataError, match="118"):
        write_label_files(tmp_path / "x", values=[118])
    assert not any(tmp_path.iterdir())


def test_label_file_paths_drop_nifti_suffixes(tmp_path):
    assert label_file_paths(tmp_path / "a.nii")[0] == tmp_path / "a.ctbl"
    assert label_file_paths(tmp_path / "b")[1] == tmp_path / "b_itksnap_labels.txt"
