"""nnunet.listing: the model folders under $CTSEG_MODELS (TotalSegmentator's five parts as one
entry, broken folders left out with their reason, the allowed data roots obeyed), and the
default root, TotalSegmentator's ~/.totalsegmentator/nnunet/results."""

from __future__ import annotations

import json

import pytest

from ctseg_core import settings
from ctseg_core.evaluation.paths import model_evaluation_dir
from ctseg_core.labels import LABEL_OF, NUM_STRUCTURES, PARTS
from ctseg_core.nnunet.listing import TOTALSEG_NAME, list_models, model_labels

pytest.importorskip("nnunetv2")
from nnunet_kit import write_model_folder


def _tiny_2d(root, labels, seed=0):
    return write_model_folder(root, "2d", [5.0, 4.0], [32, 32], [0, 2, 1], labels=labels,
                              seed=seed)  # fmt: skip


def _totalseg_parts(root):
    for number, (part, names) in zip(range(291, 296), PARTS.items(), strict=True):
        # TotalSegmentator's own dataset.json names are v2 names; one part with generic ones
        labels = {"background": 0, **{
            (f"class_{i}" if part == "cardiac" else n): i for i, n in enumerate(names, start=1)
        }}  # fmt: skip
        _tiny_2d(root / f"Dataset{number}_TotalSegmentator_part_{part}", labels, seed=number)


def test_models_under_the_roots_are_listed_with_their_labels(tmp_path, monkeypatch):
    results, ts = tmp_path / "nnUNet_results", tmp_path / "totalseg" / "results"
    tiny = write_model_folder(results / "Dataset999_Tiny", "3d_fullres", [4.5, 5.0, 4.0],
                              [16, 32, 32], [0, 2, 1], folds=2)  # fmt: skip
    broken = results / "Dataset500_Broken" / "nnUNetTrainer__nnUNetPlans__2d"
    broken.mkdir(parents=True)
    (broken / "plans.json").write_text(json.dumps({"configurations": {"2d": {}}}))
    _totalseg_parts(ts)
    monkeypatch.setenv("CTSEG_MODELS", f"{results}:{ts}:{tmp_path / 'gone'}")
    monkeypatch.delenv("CTSEG_DATA_ROOTS", raising=False)

    skipped: dict[str, str] = {}
    models = list_models(skipped=skipped)
    assert [m.label for m in models] == [
        f"nnU-Net 2d: {TOTALSEG_NAME} (folds 0)",
        "nnU-Net 3d_fullres: Dataset999_Tiny (folds 0,1)",
    ]
    total, small = models
    assert total.path == ts and small.path == tiny
    assert total.structures == tuple(sorted(LABEL_OF, key=LABEL_OF.get))
    assert len(total.structures) == NUM_STRUCTURES
    assert small.structures == ("spleen", "liver", "aorta")  # ctseg's value order
    assert small.other_labels == ("my_tumour",) and small.folds == ("0", "1")
    assert set(skipped) == {str(broken), str(tmp_path / "gone")}
    assert "dataset.json is missing" in skipped[str(broken)]
    assert "cannot be read" in skipped[str(tmp_path / "gone")]
    assert list(model_labels(models)) == [m.label for m in models]

    # the allowed data roots: the TotalSegmentator root lies outside them
    monkeypatch.setenv("CTSEG_DATA_ROOTS", str(results))
    skipped = {}
    assert [m.path for m in list_models(skipped=skipped)] == [tiny]
    assert "outside the allowed data roots" in skipped[str(ts)]

    # one model folder given as the root itself; the same model twice gets its path shown
    monkeypatch.delenv("CTSEG_DATA_ROOTS")
    twice = list_models([tiny, results])
    assert [m.path for m in twice] == [tiny]  # listed once
    copy = write_model_folder(tmp_path / "copy", "3d_fullres", [4.5, 5.0, 4.0], [16, 32, 32],
                              [0, 2, 1], folds=2)  # fmt: skip
    labels = list(model_labels(list_models([tiny, copy])))
    assert labels == [f"{small.label} · {copy}", f"{small.label} · {tiny}"]


def test_model_roots_default_to_totalsegmentators_results_when_present(tmp_path, monkeypatch):
    monkeypatch.delenv("CTSEG_MODELS", raising=False)
    monkeypatch.delenv("TOTALSEG_HOME_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert settings.model_roots() == []
    results = tmp_path / ".totalsegmentator" / "nnunet" / "results"
    results.mkdir(parents=True)
    assert settings.model_roots() == [results]
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "ts_home"))  # TotalSegmentator's own
    assert settings.model_roots() == []
    (tmp_path / "ts_home" / "nnunet" / "results").mkdir(parents=True)
    assert settings.model_roots() == [tmp_path / "ts_home" / "nnunet" / "results"]
    monkeypatch.setenv("CTSEG_MODELS", f" ~/a :{tmp_path / 'b'}: ")
    assert settings.model_roots() == [tmp_path / "a", tmp_path / "b"]


def test_a_models_evaluation_folder_has_a_plain_name(tmp_path):
    out = model_evaluation_dir(tmp_path / "evaluations", tmp_path / "results", TOTALSEG_NAME)
    assert out.parent == tmp_path / "evaluations"
    name, digest = out.name.rsplit("-", 1)
    assert name == "nnunet_TotalSegmentator_total_5_parts" and len(digest) == 8
    other = model_evaluation_dir(tmp_path / "evaluations", tmp_path / "other", TOTALSEG_NAME)
    assert other != out  # two models of one name do not share a folder
