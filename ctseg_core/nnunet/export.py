"""A ctseg 3D run written as an nnU-Net v2 model folder that ``nnUNetPredictor`` runs.

The folder holds ``dataset.json``, ``plans.json`` (one configuration, ``3d_fullres``) and
``fold_0/checkpoint_final.pth`` (nnU-Net's checkpoint dict: ``network_weights``, ``init_args``,
``trainer_name`` "nnUNetTrainer", ``inference_allowed_mirroring_axes``; plain types only, so it
also loads with ``torch.load(weights_only=True)``; no optimizer state: it is for inference).

How ctseg's prediction maps onto nnU-Net's, step by step:

- **Axes.** ctseg works on RAS+ canonical arrays (x, y, z). The plans name nnU-Net's
  ``NibabelIOWithReorient`` reader, which reorients to RAS+ as ctseg does (``io_orientation``,
  the same axis permutation and flips as ``as_closest_canonical``) and hands over (z, y, x), as
  SimpleITK would; ``transpose_forward`` = ``transpose_backward`` = [2, 1, 0] bring that back to
  (x, y, z), so the network sees ctseg's axes. SimpleITK's reader could not do this: it keeps
  the file's voxel order, and a transpose cannot undo the flips of a file stored as LPS or LAS.
  The plans' spacing, patch size, kernels and strides are ctseg's (x, y, z) values.
- **Intensities.** ctseg clips HU to ``hu_window`` (low, high) and scales to [-1, 1]:
  (hu - (low + high) / 2) * 2 / (high - low). The plans' ``CTNormalization`` clips to
  percentile_00_5 = low and percentile_99_5 = high, subtracts ``mean`` = (low + high) / 2 and
  divides by ``std`` = (high - low) / 2: the same map, up to one float32 rounding (a division
  instead of a multiplication). A run with ``hu_mean_std`` (fine-tuned from an nnU-Net model)
  writes its own mean and std, the map its network's input hook applies.
- **Spacing.** Both resample linearly (``resample_torch_fornnunet`` without the separate-z
  path is ``F.interpolate(mode="trilinear", align_corners=False)``, the interpolation of
  ``data.resample``) to ``data.spacing_mm``, to the same shape (round(n * spacing / target)).
  nnU-Net normalises before resampling and ctseg after, so voxels that interpolate between a
  value inside the HU window and one outside it differ; both bring the averaged logits back
  (nnU-Net resampling them whole, ctseg a slab at a time with ``inference.to_grid``).
- **Sliding window.** Both place windows alike (nnU-Net's steps, overlap 0.5 = its default
  tile_step_size) and weight them with a Gaussian of sigma patch / 8; both average logits,
  nnU-Net in float16 with its Gaussian centred on voxel patch // 2, ctseg in float32 centred on
  (patch - 1) / 2: voxels covered by several windows can differ near ties.
- **Labels.** nnU-Net's label is its output channel index, so the exported network has one
  channel per label value 0..max (ctseg's values, ``labels.LABEL_OF``) and dataset.json names
  them all: the run's structures by name, the other values ``ctseg_unused_<value>``
  (``nnunet.labels.UNUSED_PREFIX``; with their structure names, ``--model`` listed and scored
  structures the run never learned, Dice 0). A value the run does not predict gets the background's weights with its bias 50
  lower: 50 below the background everywhere, after any averaging and linear resampling, so it
  never wins.
- **Not mapped.** Mirroring: nnU-Net averages mirrored passes without swapping left and right
  labels, so the export allows none (``inference_allowed_mirroring_axes`` None); ctseg's TTA has
  no nnU-Net counterpart. Cropping: nnU-Net first crops to the bounding box of non-zero voxels,
  which a CT loses only where whole border slabs are exactly 0 HU.
- **Padding.** nnU-Net pads a CT smaller than a patch on the model's grid (centred, the odd voxel
  at the high end, as ctseg) with 0 after normalisation: the middle of the HU window, or the
  mean of a run with ``hu_mean_std``. A run with ``data.padding`` "normalised_zero" (the 3D
  presets, fine-tunes from nnU-Net models) pads with that value in training, validation and
  ctseg's sliding window, so nnU-Net labels such CTs as ctseg does (without resampling: the
  same labels, ``tests/test_nnunet_export.py``). A run with "air" (the field's default, so every
  run from before it) was trained with -1024 HU there: nnU-Net labels such CTs worse
  (``padding_caveat``, printed by ``ctseg export-nnunet`` for those runs only; measured with
  ``benchmarks/nnunet_export_agreement.py``). Mapping nnU-Net's 0 to air instead (plans' mean =
  the window's low end, the first bias compensated) fixes those but moves the first
  convolution's own zero padding to air, which changed 16-65 % of the labels of the tests' small
  networks: not done. The plans record the run's padding (``ctseg_padding``, a key nnU-Net does
  not read).

Refused with one line: 2D runs, sigmoid outputs (nnU-Net's regions are not an argmax), runs
without ``data.spacing_mm`` (nnU-Net resamples every CT to one spacing), inputs of more than
one channel, networks other than nnU-Net's two U-Nets.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

from ..config import RunConfig
from ..errors import ConfigError
from ..fileio import FILE_MODE, is_dir, is_file, not_writable
from ..labels import names_of
from ..models import model_spec
from ..models.checkpoint import config_of, load_checkpoint
from ..models.head import channel_label_values
from ..models.nnunet import network_classes, package_arguments
from .labels import UNUSED_PREFIX

log = logging.getLogger(__name__)

#: the one configuration an exported folder holds
CONFIGURATION = "3d_fullres"
#: how far below the background a label value the run does not predict stays (logits)
FILLER_MARGIN = 50.0
#: nnU-Net's arguments that are classes, written as dotted names (``pydoc.locate`` reads them)
_CLASS_ARGUMENTS = ("conv_op", "norm_op", "dropout_op", "nonlin")
_SEG_LAYER = re.compile(r"decoder\.seg_layers\.\d+\.(weight|bias)")
_RESIDUAL = {"plain_unet3d": False, "resenc_unet3d": True}


def source_checkpoint(run_or_checkpoint: str | Path) -> Path:
    """The checkpoint a path names: a file as given; a run folder's best.pth, else last.pth."""
    path = Path(run_or_checkpoint)
    if not is_dir(path):
        return path
    for name in ("best.pth", "last.pth"):
        if is_file(path / name):
            return path / name
    raise ConfigError(f"{path} holds no best.pth or last.pth; give a run folder or a .pth file")


def check_exportable(config: RunConfig, where: str | Path) -> None:
    """ConfigError, one line, when the run ``config`` (read from ``where``) has no nnU-Net form."""
    m, d = config.model, config.data
    spec = model_spec(m.name)
    if spec.spatial_dims != 3:
        raise ConfigError(
            f"{where} is a 2D run (model {m.name}); export-nnunet writes 3D runs only "
            "(plain_unet3d or resenc_unet3d)"
        )
    if m.name not in _RESIDUAL:
        raise ConfigError(
            f"{where} uses model {m.name}; export-nnunet writes nnU-Net's own networks only "
            f"({', '.join(_RESIDUAL)})"
        )
    if config.output_mode != "softmax":
        raise ConfigError(
            f"{where} has {config.output_mode} outputs; nnU-Net's labels are a softmax argmax, "
            "so export-nnunet takes softmax runs only"
        )
    if d.spacing_mm is None:
        raise ConfigError(
            f"{where} was trained at each CT's own spacing (data.spacing_mm unset); nnU-Net "
            "resamples every CT to one spacing, so the run has no nnU-Net form"
        )
    if int(m.in_channels or 1) != 1:
        raise ConfigError(f"{where} takes {m.in_channels} input channels; nnU-Net's CT takes 1")


def _dotted(cls) -> str | None:
    return None if cls is None else f"{cls.__module__}.{cls.__qualname__}"


def architecture_entry(config: RunConfig) -> dict:
    """The plans' ``architecture``: the package's class and its JSON arguments (classes as
    dotted names; input and output channels are nnU-Net's to add)."""
    residual = _RESIDUAL[config.model.name]
    args = package_arguments(config.model, residual)
    for key in ("input_channels", "num_classes", "deep_supervision"):
        args.pop(key)
    for key in _CLASS_ARGUMENTS:
        args[key] = _dotted(args[key])
    base = network_classes()[1 if residual else 0].__mro__[2]  # after the ctseg mix-in
    return {
        "network_class_name": _dotted(base),
        "arch_kwargs": args,
        "_kw_requires_import": list(_CLASS_ARGUMENTS),
    }


def label_values(config: RunConfig) -> list[int]:
    """(K,) the ctseg label value of each of the run's output channels (0: background)."""
    return [int(v) for v in channel_label_values(config).tolist()]


def dataset_json(config: RunConfig, dataset_name: str) -> dict:
    """nnU-Net's dataset.json: one CT channel, and every label value 0..max: the run's
    structures by their ctseg names, the values it does not predict as placeholders (nnU-Net's
    label is its channel index, so none may be missing)."""
    learned = set(label_values(config))
    top = max(learned)
    names = names_of(config.data.structures)  # a merge's value named by the merge
    names = {v: names[v] if v in learned else f"{UNUSED_PREFIX}{v}" for v in range(top + 1)}
    return {
        "name": dataset_name,
        "description": "exported from a ctseg run; labels are ctseg's (TotalSegmentator v2) values",
        "channel_names": {"0": "CT"},
        "labels": {name: v for v, name in names.items()},
        "numTraining": 0,
        "file_ending": ".nii.gz",
        "overwrite_image_reader_writer": "NibabelIOWithReorient",
    }


def plans_json(config: RunConfig, dataset_name: str) -> dict:
    """nnU-Net's plans.json for the run: one ``3d_fullres`` configuration (see the module doc)."""
    d = config.data
    low, high = (float(v) for v in d.hu_window)
    mean, std = d.hu_mean_std or ((low + high) / 2, (high - low) / 2)
    spacing = [float(s) for s in d.spacing_mm]
    patch = [int(p) for p in d.patch_size]
    linear = {"is_seg": False, "force_separate_z": False}
    return {
        "dataset_name": dataset_name,
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": spacing,
        "original_median_shape_after_transp": patch,
        "image_reader_writer": "NibabelIOWithReorient",
        "transpose_forward": [2, 1, 0],
        "transpose_backward": [2, 1, 0],
        "configurations": {
            CONFIGURATION: {
                "data_identifier": f"nnUNetPlans_{CONFIGURATION}",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": int(d.batch_size),
                "patch_size": patch,
                "median_image_size_in_voxels": patch,
                "spacing": spacing,
                "normalization_schemes": ["CTNormalization"],
                "use_mask_for_norm": [False],
                "resampling_fn_data": "resample_torch_fornnunet",
                "resampling_fn_data_kwargs": linear,
                "resampling_fn_seg": "resample_torch_fornnunet",
                "resampling_fn_seg_kwargs": {"is_seg": True, "force_separate_z": False},
                "resampling_fn_probabilities": "resample_torch_fornnunet",
                "resampling_fn_probabilities_kwargs": linear,
                "architecture": architecture_entry(config),
                "batch_dice": False,
            }
        },
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "ctseg_padding": d.padding,  # for padding_caveat; nnU-Net reads no such key
        "foreground_intensity_properties_per_channel": {
            "0": {
                "max": high,
                "min": low,
                "mean": float(mean),
                "median": float(mean),
                "std": float(std),
                "percentile_00_5": low,
                "percentile_99_5": high,
            }
        },
    }


def network_weights(state: dict[str, torch.Tensor], config: RunConfig) -> dict[str, torch.Tensor]:
    """The run's state dict with every output layer (``decoder.seg_layers.*``) widened from its
    K channels to one per label value 0..max: channel v reads the run's channel of value v, or
    the background's with its bias ``FILLER_MARGIN`` lower."""
    values = label_values(config)
    channel_of = {v: c for c, v in enumerate(values)}
    source = torch.tensor([channel_of.get(v, 0) for v in range(max(values) + 1)])
    filler = torch.tensor([v not in channel_of for v in range(max(values) + 1)])
    out = {}
    for key, tensor in state.items():
        if _SEG_LAYER.fullmatch(key):
            tensor = tensor.index_select(0, source).clone()
            if key.endswith("bias"):
                tensor[filler] -= FILLER_MARGIN
        out[key] = tensor.detach().cpu().contiguous()
    return out


def nnunet_checkpoint(ckpt: dict, config: RunConfig, plans: dict, dataset: dict) -> dict:
    """nnU-Net's checkpoint dict (as ``nnUNetTrainer.save_checkpoint`` writes it, for
    inference: no optimizer or logging state) holding the run's weights."""
    return {
        "network_weights": network_weights(ckpt["model"], config),
        "optimizer_state": None,
        "grad_scaler_state": None,
        "current_epoch": int(ckpt.get("epoch", 0)),
        "init_args": {
            "plans": plans,
            "configuration": CONFIGURATION,
            "fold": 0,
            "dataset_json": dataset,
        },
        "trainer_name": "nnUNetTrainer",
        "inference_allowed_mirroring_axes": None,
    }


def padding_caveat(model_dir: str | Path) -> str | None:
    """One line on the CTs nnU-Net pads differently from ctseg (smaller than one patch), from
    the exported folder's plans.json (its patch and spacing are ctseg's x, y, z); None for a
    run that pads as nnU-Net (``ctseg_padding`` "normalised_zero"). A folder without the key
    was exported before the setting existed, from a run that padded with air."""
    plans = json.loads((Path(model_dir) / "plans.json").read_text(encoding="utf-8"))
    if plans.get("ctseg_padding", "air") != "air":
        return None
    config = plans["configurations"][CONFIGURATION]
    extent = " x ".join(
        f"{p * s:g}" for p, s in zip(config["patch_size"], config["spacing"], strict=True)
    )
    return (
        f"nnU-Net pads a CT smaller than one patch ({extent} mm, x y z) with the intensity it "
        "normalises to 0 where ctseg pads with air, as this run was trained: nnU-Net labels such CTs "
        "worse (a phantom run: 9 % of the voxels differed, mean Dice 0.89 -> 0.63); predict "
        "them with ctseg (--model works on this folder too)"
    )


def _check_out_dir(out_dir: Path) -> None:
    # os.path's checks: Path's raise where a folder on the way may not be entered
    if why := not_writable(out_dir.parent):  # it is written beside, then renamed into place
        raise ConfigError(f"{out_dir}: {why}; give a folder this user may write to")
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
        raise ConfigError(f"{out_dir} is a file; give a folder for the nnU-Net model")
    if os.path.isdir(out_dir) and any(out_dir.iterdir()):
        raise ConfigError(f"{out_dir} exists and is not empty; give a new or empty folder")


def export_nnunet(
    run_or_checkpoint: str | Path, out_dir: str | Path, dataset_name: str | None = None
) -> Path:
    """Write the run (its best.pth, else last.pth) or checkpoint as an nnU-Net v2 model folder
    ``out_dir`` (dataset.json, plans.json, fold_0/checkpoint_final.pth); returns ``out_dir``.

    ``dataset_name``: nnU-Net's dataset name (default "Dataset999_<run folder name>"). The folder
    is written beside ``out_dir`` and renamed into place, so it appears whole or not at all;
    ConfigError when ``out_dir`` exists and is not empty, or the run has no nnU-Net form.
    """
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    path = source_checkpoint(run_or_checkpoint)
    ckpt = load_checkpoint(path)
    config = config_of(ckpt)
    check_exportable(config, path)
    name = dataset_name or f"Dataset999_{path.parent.name or 'ctseg'}"
    dataset, plans = dataset_json(config, name), plans_json(config, name)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out_dir.name}.", dir=out_dir.parent))
    try:
        for file_name, content in (("dataset.json", dataset), ("plans.json", plans)):
            (tmp / file_name).write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
        (tmp / "fold_0").mkdir()
        torch.save(
            nnunet_checkpoint(ckpt, config, plans, dataset), tmp / "fold_0" / "checkpoint_final.pth"
        )
        os.chmod(tmp, FILE_MODE | (FILE_MODE & 0o444) >> 2)  # mkdtemp's 0700: as mkdir's
        _check_out_dir(out_dir)  # again: something may have written there meanwhile
        os.replace(tmp, out_dir)  # an empty folder is replaced; a non-empty one refuses
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("exported %s as nnU-Net model folder %s", path, out_dir)
    return out_dir
