"""Named starting configurations (the dashboard's presets and the benchmarks use the same ones).

- ``phantom_demo``: the laptop demo on the synthetic phantom (12 subjects): 128 x 128 slices,
  features [16, 32, 64, 128] with a 512 bottleneck, instance norm and deep supervision at 1/2,
  1/4 and 1/8 resolution, Dice + CE, batch 4, Adam 5e-3 with a cosine decay, HU window
  (-400, 600), random intensity curves and new vessel intensities on half the samples each.
  It trains for a time budget of 10 minutes (``TrainConfig.minutes``; at most 200 epochs) and
  its cosine decay spans the epochs that fit, estimated from the first ones (training.budget):
  on 2 quiet cores, 42 epochs of ~13.5 s on a Xeon with AMX, and about 26 (600 s / 23 s) on an
  AMD EPYC without AMX. Tuned with benchmarks/phantom_quality.py when it was a fixed 42-epoch
  cosine, on the Xeon: best mean validation Dice within 10 minutes 0.831 (seed 0); 0.801,
  0.808, 0.801, 0.822, 0.810 with seeds 1-5 (mean 0.812; seeds 0-3 without the vessel
  intensities 0.814, 0.800, 0.780, 0.823; before deep supervision, seeds 0-2: 0.754, 0.736,
  0.714). On the EPYC that fixed schedule fitted 16 epochs in 10 minutes (best Dice 0.755, the
  lr barely decayed). With the budget's schedule, on a Xeon with AMX whose epochs took 20.6 s
  (2026-12-05, benchmarks/phantom_quality.py --preset both): 28 epochs, best Dice 0.801 (seed 0).
- ``phantom_3d``: the laptop's volumetric model on the phantom: nnU-Net's PlainConvUNet
  (``plain_unet3d``) at 4 mm, patches of 48 x 48 x 32 voxels (192 x 192 x 128 mm; a phantom
  at 4 mm is ~60 x 60 x 30-100), stage widths [16, 32, 64, 128, 256] ([32, 64, 128, 256, 320] where
  the CPU has AMX, below) with one convolution per stage in the encoder and the decoder,
  instance norm, deep supervision at 1/2 and 1/4, batch 1 (100 steps an epoch) with half the
  patches centred on a structure, light deformations, Adam 3e-3 with a cosine decay over the
  same 10-minute budget as ``phantom_demo``; validation on whole validation volumes. Its 3D
  model is limited by its steps, so the preset buys steps: measured with
  ``benchmarks/phantom_quality.py`` (best mean validation Dice in 10 minutes, then ``ctseg
  evaluate`` of best.pth on the CTs' grids). The preset before (3 mm, 64 x 64 x 48, nnU-Net's
  two convolutions per stage) on a Xeon with AMX (bf16; 2026-12-06): 20 epochs of 27 s, 0.815 /
  0.795 (20 minutes: 0.843 / 0.824), the 2D demo 0.803 / 0.799 in the same run; on an AMD EPYC
  with AVX2 only (float32, 0.8 s a step): 6 epochs, 0.547 / 0.528, the 2D demo 0.745 / 0.730.
  This preset on that EPYC (2026-12-06, a step 0.25 s, 3.7x the steps): 22 epochs, 0.778 / 0.763
  (seed 1: 0.763 / 0.730, the 2D demo 0.743 / 0.723); with two convolutions in the deeper stages
  (0.29 s a step) 0.775 / 0.741; widths halved ([8, ..., 128], 0.15 s a step) learnt slower per
  minute (0.675 against 0.70 at 6 minutes, stopped there). With one-sample convolutions split
  for oneDNN (models.cpu_convs) and the instance norms' gradients right (models.nnunet;
  2026-12-07, the same EPYC): 27 epochs of 21 s, 0.783 / 0.763 (seed 1: 0.769 / 0.748). On a
  Xeon with AMX (bf16; 2026-12-07, 2 quiet cores) these widths took epochs of 9 s and stopped
  gaining after ~45 of their 62 (0.817 / 0.790; seed 1 0.811 / 0.793; the 2D demo 0.795 / 0.783
  there), so on such a CPU the preset widens them to [32, ..., 320]: epochs of 17.5 s, 32 of
  them, 0.831 / 0.808 (seed 1 0.825 / 0.806; the preset itself, seed 2, 0.835 / 0.818). Tried
  there, not kept: 3 mm with 64 x 64 x 48 patches (epochs of 25 s, 0.751 at 7.4 minutes against
  0.815); DataConfig's stronger deformations (rotation 15 degrees, scale 0.85-1.15, half the
  samples) 0.824 / 0.799 narrow, 0.829 / 0.803 wide; lr 2e-3 or 4.5e-3, 3.5 x 3.5 x 4 mm or
  4 x 4 x 3 mm, 16 channels at full resolution below the wide stages (0.814-0.823 against the
  preset's 0.826 that day; benchmarks/phantom_quality.py).
  Earlier tuning at 3 mm (Xeon with AMX):
  patches 96 x 96 x 64 reached 0.029 in 160 steps; 48^3 0.654, 64^3 0.757, 80 x 80 x 48 0.706
  against 64 x 64 x 48's 0.765 in 10 minutes; batch 1 against batch 2 at equal steps 0.785
  against 0.745; lr 5e-3 0.783 and deep supervision to 1/8 0.803 against 0.815: not kept.
- ``gpu_3d``: nnU-Net's 3d_fullres recipe for the full dataset on a GPU: 1.5 mm, patches of
  128^3, widths [32, 64, 128, 256, 320, 320], deep supervision at 1/2, 1/4 and 1/8, batch 2,
  SGD (momentum 0.99, nesterov) 1e-2 with poly decay and weight decay 3e-5, 250 steps per epoch,
  mirroring with left/right label swapping.

Both 3D presets pad as nnU-Net (``data.padding`` "normalised_zero": a CT smaller than a patch,
and a rotation's corners, hold the mid-window intensity the network sees as 0), so a run
exported with ``ctseg export-nnunet`` labels such CTs in nnU-Net's predictor as in ctseg. A
config without the setting (every run before it) pads with air (-1024 HU), as it was trained.
- ``cpu``: the seed model at 128 x 128 for real data on a CPU.
- ``gpu``: the seed model at 256 x 256, batch 16, for real data on a GPU.

Every preset keeps checkpoint_epoch<N>.pth every 10 epochs (best.pth and last.pth every epoch):
a checkpoint of the seed model with its Adam state is ~93 MB, so the gpu preset's 100 epochs
would otherwise fill 9 GB.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..config import DataConfig, ModelConfig, RunConfig, TrainConfig
from ..errors import ConfigError


def phantom_demo(data_root: str = "") -> RunConfig:
    return RunConfig(
        DataConfig(
            data_root=str(data_root),
            target_size=(128, 128),
            hu_window=(-400.0, 600.0),  # soft-tissue contrast: learned ~1.5x faster than +-1000
            batch_size=4,  # twice the updates per slice: ~1.8x the Dice after the same slices
            foreground_fraction=0.5,
            val_slices_per_subject=32,
            curve_prob=0.5,  # contrast phases differ between the few subjects
            # a monotone curve keeps an enhanced artery brighter than muscle; the validation
            # scans are native-phase, 4 of the 8 training scans angiographies: over four seeds
            # iliac arteries 0.56/0.36 -> 0.61/0.52, duodenum (predicted on them) 0.62 -> 0.70
            vessel_contrast_prob=0.5,
        ),
        # instance norm: best Dice 0.70 -> 0.75 at equal time (8 training subjects in three
        # contrast phases; the batch statistics of 4 slices generalised worse)
        # deep supervision at 1/2, 1/4 and 1/8 resolution: the coarse heads must tell which
        # structure is where (vertebra level, artery or vein) from the deep features; with it
        # and the 512 bottleneck the best Dice in 10 minutes went 0.754 -> 0.802 (seed 0)
        ModelConfig(
            features=[16, 32, 64, 128], bottleneck=512, norm="instance", deep_supervision=3
        ),
        # 10 minutes of training on any CPU (epochs: an upper bound); checkpoint_epoch<N>.pth
        # every 10 epochs: one per epoch would fill ~2 GB in 42 epochs
        TrainConfig(
            epochs=200,
            minutes=10.0,
            lr=5e-3,
            scheduler="cosine",
            early_stopping_patience=0,
            checkpoint_every=10,
        ),
    )


def phantom_3d(data_root: str = "") -> RunConfig:
    from ..device import cpu_has_amx  # late: the presets are read without torch (--help)

    # wider stages where the CPU has AMX: 1.9x the step time there, and in 10 minutes
    # 0.831 / 0.825 against 0.817 / 0.811 (seeds 0, 1); without AMX the narrow network's step
    # alone is 2.3x slower (the AVX2 EPYC in float32), so its steps limit it (module doc)
    wide = cpu_has_amx()
    return RunConfig(
        DataConfig(
            data_root=str(data_root),
            hu_window=(-400.0, 600.0),  # phantom_demo's soft-tissue window
            # one patch per step: twice the updates for the same patches (instance norm needs no
            # batch); 18 epochs at equal steps, best Dice 0.745 -> 0.785
            batch_size=1,
            foreground_fraction=0.5,  # rare structures seen sooner in a 10-minute budget
            samples_per_epoch=100,  # 100 steps
            rotation_deg=7.5,  # light deformations: a short budget learns faster without them
            scale_range=(0.93, 1.07),
            spatial_prob=0.3,
            curve_prob=0.5,
            vessel_contrast_prob=0.5,
            # 192 x 192 x 128 mm (64 x 64 x 48 at 3 mm: 192 x 192 x 144) in 0.38x the voxels:
            # steps, not resolution, limit the model in 10 minutes (module doc)
            patch_size=(48, 48, 32),
            spacing_mm=(4.0, 4.0, 4.0),
            padding="normalised_zero",  # as nnU-Net: its export labels small CTs alike
        ),
        ModelConfig(
            name="plain_unet3d",
            features=[32, 64, 128, 256, 320] if wide else [16, 32, 64, 128, 256],
            # one convolution per stage, not nnU-Net's two: 1.7x the steps (a step of 64 x 64
            # x 48 at float32 on the AVX2 EPYC 0.56 s instead of 0.93 s)
            convs_per_stage=[1, 1, 1, 1, 1],
            decoder_convs_per_stage=[1, 1, 1, 1],
            norm="instance",
            deep_supervision=2,
        ),
        TrainConfig(
            epochs=200,
            minutes=10.0,
            lr=3e-3,
            scheduler="cosine",
            checkpoint_every=10,
        ),
    )


def gpu_3d(data_root: str = "") -> RunConfig:
    return RunConfig(
        DataConfig(
            data_root=str(data_root),
            batch_size=2,
            foreground_fraction=1 / 3,
            samples_per_epoch=500,  # 250 steps of 2, nnU-Net's epoch
            mirror=True,
            patch_size=(128, 128, 128),
            spacing_mm=(1.5, 1.5, 1.5),
            padding="normalised_zero",
        ),
        ModelConfig(
            name="plain_unet3d",
            features=[32, 64, 128, 256, 320, 320],
            norm="instance",
            deep_supervision=3,
        ),
        TrainConfig(
            epochs=1000,
            lr=1e-2,
            optimizer="sgd",
            momentum=0.99,
            weight_decay=3e-5,
            scheduler="poly",
            early_stopping_patience=0,
            checkpoint_every=50,
        ),
    )


def cpu(data_root: str = "") -> RunConfig:
    return RunConfig(
        DataConfig(data_root=str(data_root), target_size=(128, 128), val_slices_per_subject=64),
        ModelConfig(),
        TrainConfig(epochs=50, early_stopping_patience=10, checkpoint_every=10),
    )


def gpu(data_root: str = "") -> RunConfig:
    return RunConfig(
        DataConfig(data_root=str(data_root), target_size=(256, 256), batch_size=16),
        ModelConfig(),
        TrainConfig(epochs=100, early_stopping_patience=15, scheduler="poly", checkpoint_every=10),
    )


PRESETS: dict[str, Callable[[str], RunConfig]] = {
    "phantom_demo": phantom_demo,
    "phantom_3d": phantom_3d,
    "cpu": cpu,
    "gpu": gpu,
    "gpu_3d": gpu_3d,
}


def preset(name: str, data_root: str = "") -> RunConfig:
    """A fresh RunConfig of the named preset."""
    try:
        return PRESETS[name](data_root)
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}") from None


def user_config(
    base: RunConfig | Mapping[str, Any],
    changes: Mapping[tuple[str, str], Any] = (),
    run_name: str | None = None,
) -> RunConfig:
    """``base`` with a user's changes: the one way the CLI's flags and the Train page's form
    make a run configuration.

    base: a RunConfig, or a dict in ``to_dict()`` form (a config.json, possibly partial).
    changes: ``(section, field) -> value``, e.g. ``("train", "lr"): 3e-4``; ``("data",
    "merge")``: names of ``labels.MERGES`` put in place of their members among the structures
    (after the other changes, so a structure list and a merge combine). The channel counts
    are derived again from the (possibly new) data settings, and the model's output follows the
    loss (``training.losses.LOSSES``). Another model than the base's drops the base's
    convolutions per stage (the new network's defaults, unless the changes give them). New
    ``features`` with another number of stages stretch the per-stage lists the changes do not
    give that hold one value for every stage (phantom_3d's one convolution per stage) to the
    new count; other lists are left for ``models.nnunet`` to name. Raises ConfigError for an
    unknown section or field; an unknown loss is named by ``training.checks.check_run_config``
    with the other problems.
    """
    d = base.to_dict() if isinstance(base, RunConfig) else dict(base)
    d = {k: dict(d.get(k) or {}) for k in ("data", "model", "train")} | {
        "run_name": d.get("run_name", "")
    }
    base_model = d["model"].get("name")  # None: a partial config that names no model
    changes = dict(changes)
    merges = ()
    for (section, name), value in changes.items():
        if section not in ("data", "model", "train"):
            raise ConfigError(f"unknown configuration section {section!r}")
        if (section, name) == ("data", "merge"):
            merges = value or ()
            continue
        d[section][name] = value
    if base_model is not None and d["model"].get("name", base_model) != base_model:
        # the base's convolutions per stage were chosen for its network: another one (the
        # residual encoder counts blocks of two) takes its own defaults unless given
        for name in ("convs_per_stage", "decoder_convs_per_stage"):
            if ("model", name) not in changes:
                d["model"].pop(name, None)
    if ("model", "features") in changes:
        _stretch_stage_lists(d["model"], changes)
    if merges:
        from ..labels import STRUCTURES, merge_structures

        d["data"]["structures"] = merge_structures(
            d["data"].get("structures") or STRUCTURES, merges
        )
    d["model"].pop("in_channels", None)
    d["model"].pop("out_channels", None)
    from .losses import LOSSES  # late: the presets are read without torch (the CLI's --help)

    # an unknown loss is left to check_run_config, which names every problem at once
    if spec := LOSSES.get(d["train"].get("loss", "dice_ce")):
        d["model"]["output"] = spec.output_mode
    if run_name is not None:
        d["run_name"] = run_name
    return RunConfig.from_dict(d)


#: per-stage lists of a volumetric model -> their entries less the stages (the decoder has one
#: stage fewer than the encoder)
_STAGE_LISTS = {
    "convs_per_stage": 0,
    "decoder_convs_per_stage": -1,
    "kernel_sizes": 0,
    "strides": 0,
}


def _stretch_stage_lists(model: dict, changes: Mapping[tuple[str, str], Any]) -> None:
    """Give each per-stage list of ``model`` (a ``to_dict()`` section) that the user did not
    set and that holds one value for every stage one entry per stage of the new features."""
    stages = len(model.get("features") or ())
    for name, offset in _STAGE_LISTS.items():
        values = model.get(name)
        if ("model", name) in changes or not values or not stages:
            continue
        if len(values) != stages + offset and all(v == values[0] for v in values):
            model[name] = [values[0]] * max(0, stages + offset)
