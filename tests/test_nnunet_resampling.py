"""ctseg's two nnU-Net resamplers give nnU-Net's own numbers (its functions called on the same
data): isotropic and anisotropic grids (the coarse axis resampled on its own), both directions."""

from __future__ import annotations

import numpy as np
import pytest

from ctseg_core.errors import ConfigError
from ctseg_core.nnunet.plans import RESAMPLERS, read_configuration

resampling = pytest.importorskip("nnunetv2.preprocessing.resampling.resample_torch")
default = pytest.importorskip("nnunetv2.preprocessing.resampling.default_resampling")

CASES = [  # (shape, current spacing mm, target spacing mm)
    ((2, 20, 24, 18), (1.5, 1.5, 2.0), (3.0, 3.0, 3.0)),  # isotropic enough: all axes at once
    ((2, 8, 30, 26), (6.0, 0.8, 0.8), (3.0, 1.5, 1.5)),  # first axis 7.5x coarser: on its own
    ((2, 12, 10, 9), (3.0, 3.0, 3.0), (4.5, 1.2, 1.2)),  # the target anisotropic, upsampling
]


@pytest.mark.parametrize(("shape", "current", "target"), CASES)
def test_torch_resampler_is_nnunets(shape, current, target):
    data = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    new = [round(n * c / t) for n, c, t in zip(shape[1:], current, target, strict=True)]
    theirs = resampling.resample_torch_fornnunet(data, new, current, target, is_seg=False)
    ours = RESAMPLERS["resample_torch_fornnunet"](data, new, current, target, is_seg=False)
    assert ours.shape == theirs.shape == (shape[0], *new)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("shape", "current", "target"), CASES)
def test_default_resampler_is_nnunets(shape, current, target):
    data = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    new = [round(n * c / t) for n, c, t in zip(shape[1:], current, target, strict=True)]
    kwargs = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    theirs = default.resample_data_or_seg_to_shape(data, new, current, target, **kwargs)
    ours = RESAMPLERS["resample_data_or_seg_to_shape"](data, new, current, target, **kwargs)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("name", "kwargs", "current"),
    [  # plans kwargs nnU-Net's planners leave out or never write (reviewer)
        ("resample_data_or_seg_to_shape", {"order": 3, "order_z": 0}, (9.5, 3.5, 3.0)),
        ("resample_data_or_seg_to_shape",
         {"order": 3, "order_z": 0, "force_separate_z": None,
          "separate_z_anisotropy_threshold": 2.0}, (6.5, 3.5, 3.0)),
        ("resample_torch_fornnunet", {"force_separate_z": None, "mode": "nearest"},
         (4.0, 3.5, 3.0)),
    ],
)  # fmt: skip
def test_plans_kwargs_are_taken_as_nnunet_takes_them(name, kwargs, current):
    """No force_separate_z (nnU-Net's default False: ctseg took None and resampled the coarse
    axis apart), a separate_z_anisotropy_threshold (ctseg dropped it), a mode where nnU-Net
    interpolates trilinearly regardless."""
    data = np.random.default_rng(0).normal(size=(1, 10, 30, 26)).astype(np.float32)
    target = (3.0, 3.0, 3.0)
    new = [round(c / t * n) for n, c, t in zip(data.shape[1:], current, target, strict=True)]
    theirs_fn = (
        default.resample_data_or_seg_to_shape
        if name == "resample_data_or_seg_to_shape"
        else resampling.resample_torch_fornnunet
    )
    theirs = theirs_fn(data, new, current, target, is_seg=False, **kwargs)
    ours = RESAMPLERS[name](data, new, current, target, is_seg=False, **kwargs)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)


def test_an_unknown_resampling_function_is_named(tmp_path):
    from nnunet_kit import plans_dict

    plans = plans_dict("3d_fullres", [3.0, 3.0, 3.0], [16, 16, 16], [0, 1, 2])
    plans["configurations"]["3d_fullres"]["resampling_fn_data"] = "my_resampler"
    with pytest.raises(ConfigError, match="resampling_fn_data 'my_resampler' is not supported"):
        read_configuration(plans, "3d_fullres")
