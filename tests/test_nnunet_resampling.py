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


def test_an_unknown_resampling_function_is_named(tmp_path):
    from nnunet_kit import plans_dict

    plans = plans_dict("3d_fullres", [3.0, 3.0, 3.0], [16, 16, 16], [0, 1, 2])
    plans["configurations"]["3d_fullres"]["resampling_fn_data"] = "my_resampler"
    with pytest.raises(ConfigError, match="resampling_fn_data 'my_resampler' is not supported"):
        read_configuration(plans, "3d_fullres")
