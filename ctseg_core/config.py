"""One dataclass configuration for a training run, saved in every checkpoint and run folder.

``RunConfig(data, model, train, run_name)`` round-trips through JSON (``to_dict`` /
``from_dict``) and is checked by ``validate()`` before anything starts.

Output convention (``ModelConfig.output``, also ``RunConfig.output_mode``):

- ``"softmax"`` (the default, for mutually exclusive labels; loss ``dice_ce``):
  ``out_channels = 1 + len(structures)``, channel 0 = background, channel i = ``structures[i-1]``;
- ``"sigmoid"`` (one sigmoid per structure, as the seed notebooks trained; losses ``bce``,
  ``dice``, ``focal``): ``out_channels = len(structures)``, channel i = ``structures[i]``.
  Each registered loss names the output it trains (``training.losses.LOSSES``);
  ``training.presets.user_config`` sets the output from the loss.

``ModelConfig.in_channels`` / ``out_channels`` left as None are filled from the data settings
(``context_slices`` and ``structures``), so a config made from defaults is always consistent.

This module holds plain dataclasses and the checks that need nothing else. The names of models,
losses, optimizers and schedulers live in their registries, and the checks that need them (or
the dataset) are ``training.checks.check_run_config``.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError
from .json_types import type_problem
from .labels import MERGES, STRUCTURES, is_structure

OUTPUTS = ("softmax", "sigmoid")
#: what a 3D volume smaller than a patch is padded with (``DataConfig.padding``)
PADDINGS = ("air", "normalised_zero")
#: the largest time budget, about two years: a larger one is a typo, or an overflow to come
#: (minutes * 60 / an epoch's seconds past the largest float); no budget is unset (None)
MAX_MINUTES = 1_000_000.0


@dataclass
class DataConfig:
    """Where the slices come from and how they are prepared and augmented.

    Intensities: CT HU clipped to ``hu_window`` and scaled linearly to [-1, 1]
    (see ``ctseg_core.data.slices.normalize_hu``); with ``hu_mean_std`` = (mean, std) HU the
    network sees (clipped HU - mean) / std instead, nnU-Net's CTNormalization (a run fine-tuned
    from an nnU-Net model keeps the model's): the data and augmentation still work on [-1, 1],
    and the model's input map (``models.registry.build_model``) turns it into that. ``target_size`` is (H, W) = (X, Y) of the
    canonical axial slice after resizing. ``context_slices`` > 1 (odd) feeds the neighbouring
    slices as channels (2.5D). ``foreground_fraction`` of the training samples are drawn by first
    picking a structure uniformly among those present, then a slice holding it (rare structures
    are seen); the rest are uniform over all slices.
    """

    data_root: str = ""
    cache_dir: str | None = None
    target_size: tuple[int, int] = (128, 128)
    hu_window: tuple[float, float] = (-1000.0, 1000.0)
    context_slices: int = 1
    # TotalSegmentator v2 names, or merge names (labels.MERGES: "ribs" is one output trained
    # on the union of the 24 ribs, written with rib_left_1's value) in place of their members
    structures: list[str] = field(default_factory=lambda: list(STRUCTURES))
    batch_size: int = 8
    foreground_fraction: float = 0.5
    samples_per_epoch: int | None = None  # None: one pass worth of training slices
    val_slices_per_subject: int | None = None  # None: every slice of each validation subject
    train_split: str = "train"
    val_split: str = "val"
    augment: bool = True
    mirror: bool = False  # left/right flip with label swap; off by default (anatomy is lateral)
    rotation_deg: float = 15.0
    scale_range: tuple[float, float] = (0.85, 1.15)
    elastic_alpha_px: float = 4.0  # peak displacement of the elastic field, 0 = off
    elastic_prob: float = 0.2
    spatial_prob: float = 0.5
    intensity_prob: float = 0.5
    # a random monotone intensity curve per sample: tissues change contrast against each other
    # as between contrast phases (an enhanced artery at 290 HU, a native one at 40 HU)
    curve_prob: float = 0.0
    # per sample, every vessel (labels.VESSELS) gets its own random mean intensity in
    # augment.VESSEL_HU: a native-phase aorta learned from contrast-enhanced scans and back
    vessel_contrast_prob: float = 0.0
    # volumetric augmentation only (data.augment3d): x -> x ** gamma on the window rescaled to
    # [0, 1], per sample (nnU-Net's gamma transform)
    gamma_prob: float = 0.3
    gamma_range: tuple[float, float] = (0.7, 1.5)
    noise_std: float = 0.03
    seed: int = 0
    # loader processes; None: hardware.loader_workers picks (0 on a CPU, up to 8 on a GPU)
    num_workers: int | None = None
    # volumetric models only (ModelSpec.spatial_dims 3), in the canonical axis order (x, y, z):
    # the patch the network sees (voxels) and the voxel spacing (mm) CTs are resampled to
    # (None: the CT's own grid); None for a slice model
    patch_size: tuple[int, int, int] | None = None
    spacing_mm: tuple[float, float, float] | None = None
    hu_mean_std: tuple[float, float] | None = None  # None: the window scaled to [-1, 1]
    # volumetric models: what a volume smaller than a patch (training patches, validation
    # tiles, the sliding window) and the 3D augmentation's rotated-in corners hold.
    # "normalised_zero": the intensity the network sees as 0 (the HU window's middle; the mean
    # with hu_mean_std), as nnU-Net pads after normalising: the 3D presets and fine-tunes from
    # nnU-Net models. "air": -1024 HU, the default, so a config.json written before this field
    # existed loads as what its checkpoints were trained with (data.patches.pad_value)
    padding: str = "air"


@dataclass
class ModelConfig:
    """The network: a name in the model registry and its widths (see ctseg_core.models)."""

    name: str = "unet"
    in_channels: int | None = None  # None: DataConfig.context_slices
    out_channels: int | None = None  # None: from the loss and the structures (see module doc)
    features: list[int] = field(default_factory=lambda: [32, 64, 128, 256])
    bottleneck: int = 512
    attention: bool = False  # attention gates on the skips (also implied by "attention_unet")
    norm: str = "batch"  # "batch" or "instance"
    dropout: float = 0.0
    deep_supervision: int = 0  # extra output heads at 1/2, 1/4, .. resolution while training
    output: str = "softmax"  # "softmax" (channel 0 background) or "sigmoid"; follows the loss
    # volumetric models (nnU-Net's, models.nnunet): ``features`` is then the width of every
    # stage, the bottleneck's included (``bottleneck`` is unused); one entry per stage, each
    # kernel and stride (x, y, z) or one int for all three; None: nnU-Net's defaults (kernel 3,
    # stride 1 at the first stage and 2 below, convolutions as models.nnunet.architecture says)
    kernel_sizes: list[int | list[int]] | None = None
    strides: list[int | list[int]] | None = None
    convs_per_stage: list[int] | None = None  # encoder convolutions (residual blocks: resenc)
    decoder_convs_per_stage: list[int] | None = None  # one entry per stage below the first


@dataclass
class TrainConfig:
    """Optimisation settings. ``amp``/``channels_last``/``device`` "auto" pick what the hardware has.

    ``minutes``: a time budget for the run (None = none). The run then stops before an epoch
    that would not fit (``epochs`` stays an upper bound), and the cosine and poly schedules
    span the epochs estimated to fit; see ``training.budget``.
    """

    epochs: int = 20
    minutes: float | None = None
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adam"
    momentum: float = 0.99  # SGD only (nnU-Net's value, with nesterov)
    scheduler: str = "plateau"
    plateau_patience: int = 3
    plateau_factor: float = 0.5
    poly_power: float = 0.9
    loss: str = "dice_ce"
    early_stopping_patience: int = 0  # epochs without a better val Dice; 0 = off
    grad_clip: float | None = 12.0  # max gradient norm; None = off
    amp: str = "auto"
    channels_last: bool | str = "auto"
    device: str = "auto"
    seed: int = 0
    steps_per_epoch: int | None = None  # None: samples_per_epoch / batch_size
    # epochs between checkpoint_epoch<N>.pth files, 0 = none: one of the seed model with its
    # Adam state is ~93 MB, one per epoch of a 100-epoch run 9 GB
    checkpoint_every: int = 10
    sample_figure: bool = True  # samples/epoch_<N>.png each epoch
    tensorboard: bool = False  # also write <run>/tensorboard/ event files (runs.tensorboard)
    # an nnU-Net model folder whose weights start the run (nnunet.finetune; a resume ignores
    # it), its fold (None: the first) and checkpoint file (None: final, else best)
    init_from: str | None = None
    init_fold: str | None = None
    init_checkpoint: str | None = None


def _fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _build(cls: type, values: dict[str, Any] | None, where: str):
    values = dict(values or {})
    unknown = sorted(set(values) - _fields(cls))
    if unknown:
        raise ConfigError(
            f"unknown {where} setting(s) {', '.join(unknown)}; known: {', '.join(sorted(_fields(cls)))}"
        )
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        if (expected := type_problem(value, hints[name])) is not None:  # a hand-edited file
            raise ConfigError(f"{where}.{name} must be {expected} (got {value!r})")
        tuples = ("target_size", "hu_window", "scale_range", "patch_size", "spacing_mm",
                  "gamma_range", "hu_mean_std")  # fmt: skip
        if isinstance(value, list) and name in tuples:
            values[name] = tuple(value)
    return cls(**values)


@dataclass
class RunConfig:
    """Everything a run needs; ``to_dict()`` is what config.json and checkpoints hold."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run_name: str = ""

    def __post_init__(self) -> None:
        # channel counts left unset are derived, and derived again by validate() after the
        # data settings or the loss change (e.g. a page that edits structures in place)
        self._derived = {
            name for name in ("in_channels", "out_channels") if getattr(self.model, name) is None
        }
        self.sync_channels()

    def sync_channels(self) -> None:
        """Fill the derived model channel counts from the data settings and the loss."""
        if self.model.in_channels is None or "in_channels" in self._derived:
            self.model.in_channels = self.data.context_slices
        if self.model.out_channels is None or "out_channels" in self._derived:
            self.model.out_channels = self.expected_out_channels

    @property
    def output_mode(self) -> str:
        """ "softmax" (channel 0 background) or "sigmoid" (one channel per structure)."""
        return self.model.output

    @property
    def expected_out_channels(self) -> int:
        return len(self.data.structures) + (1 if self.output_mode == "softmax" else 0)

    def channel_names(self) -> list[str]:
        """Structure name of each output channel ("background" first for softmax)."""
        names = list(self.data.structures)
        return ["background", *names] if self.output_mode == "softmax" else names

    def label_map(self) -> dict[str, str]:
        """Channel index (as a string) -> structure name, written as label_map.json."""
        return {str(i): name for i, name in enumerate(self.channel_names())}

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        # as written before model.output existed; from_dict reads it back for such configs
        d["output_mode"] = self.output_mode
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """Rebuild from ``to_dict()`` output (or a partial dict; missing keys take defaults).

        A config written before ``model.output`` existed gives it from its ``output_mode``.
        """
        if not isinstance(d, dict):
            raise ConfigError(f"a run configuration must be a JSON object, got {type(d).__name__}")
        extra = sorted(set(d) - {"data", "model", "train", "run_name", "output_mode"})
        if extra:
            raise ConfigError(f"unknown configuration section(s) {', '.join(extra)}")
        model = dict(d.get("model") or {})
        if "output" not in model and d.get("output_mode"):
            model["output"] = d["output_mode"]
        return cls(
            data=_build(DataConfig, d.get("data"), "data"),
            model=_build(ModelConfig, model, "model"),
            train=_build(TrainConfig, d.get("train"), "train"),
            run_name=str(d.get("run_name") or ""),
        )

    def validate(self) -> RunConfig:
        """Raise ConfigError on settings that cannot work by themselves; return self.

        Derived channel counts are brought up to date first. The registries' names, the
        model's own limits and the dataset are checked by ``training.checks.check_run_config``.
        """
        self.sync_channels()
        _validate_static(self)
        return self


def _validate_static(cfg: RunConfig) -> None:
    d, m, t = cfg.data, cfg.model, cfg.train
    problems: list[str] = []
    if not (isinstance(t.lr, (int, float)) and 0 < t.lr < math.inf):
        problems.append(f"learning rate must be a number > 0 (got {t.lr})")
    if t.epochs < 1:
        problems.append(f"epochs must be >= 1 (got {t.epochs})")
    if t.minutes is not None and not (
        isinstance(t.minutes, (int, float))
        and not isinstance(t.minutes, bool)
        and 0 < t.minutes <= MAX_MINUTES
    ):
        problems.append(
            f"time budget must be > 0 and at most {MAX_MINUTES:.0f} minutes, or unset for none "
            f"(got {t.minutes})"
        )
    if t.early_stopping_patience < 0:
        problems.append(
            f"early stopping patience must be >= 0 epochs, 0 = off (got {t.early_stopping_patience})"
        )
    if t.checkpoint_every < 0:
        problems.append(
            f"checkpoint every must be >= 0 epochs, 0 = none (got {t.checkpoint_every})"
        )
    if d.batch_size < 1:
        problems.append(f"batch size must be >= 1 (got {d.batch_size})")
    for what, value in (
        ("samples per epoch", d.samples_per_epoch),
        ("steps per epoch", t.steps_per_epoch),
        ("validation slices per subject", d.val_slices_per_subject),
    ):
        if value is not None and value < 1:
            problems.append(f"{what} must be >= 1, or unset for all (got {value})")
    if t.seed < 0 or d.seed < 0:
        problems.append(f"seeds must be >= 0 (got {t.seed} and data seed {d.seed})")
    if d.num_workers is not None and d.num_workers < 0:
        problems.append(f"loader workers must be >= 0, or None for automatic (got {d.num_workers})")
    if d.context_slices < 1 or d.context_slices % 2 == 0:
        problems.append(f"context slices must be odd and >= 1 (got {d.context_slices})")
    if not d.hu_window[0] < d.hu_window[1]:
        problems.append(f"HU window {tuple(d.hu_window)} must be (low, high) with low < high")
    if d.padding not in PADDINGS:
        problems.append(f"padding {d.padding!r} is not one of {', '.join(PADDINGS)}")
    if d.hu_mean_std is not None and not (len(d.hu_mean_std) == 2 and d.hu_mean_std[1] > 0):
        problems.append(f"HU mean/std {tuple(d.hu_mean_std)} must be (mean, std) with std > 0")
    if d.patch_size is not None and (
        len(d.patch_size) != 3 or any(int(p) != p or p < 1 for p in d.patch_size)
    ):
        problems.append(
            f"patch size {tuple(d.patch_size)} must be three whole voxels >= 1 (x, y, z)"
        )
    if d.spacing_mm is not None and (
        len(d.spacing_mm) != 3
        or not all(isinstance(s, (int, float)) and 0 < s < math.inf for s in d.spacing_mm)
    ):
        problems.append(
            f"spacing {tuple(d.spacing_mm)} mm must be three finite sizes > 0 (x, y, z), or unset for "
            "the CT's own grid"
        )
    if not 0.0 <= d.foreground_fraction <= 1.0:
        problems.append(f"foreground fraction must be in [0, 1] (got {d.foreground_fraction})")
    for name in ("spatial", "elastic", "intensity", "curve", "vessel_contrast", "gamma"):
        value = getattr(d, f"{name}_prob")
        if not 0.0 <= value <= 1.0:
            problems.append(f"{name} probability must be in [0, 1] (got {value})")
    if not (len(d.gamma_range) == 2 and 0 < d.gamma_range[0] <= d.gamma_range[1]):
        problems.append(f"gamma range {tuple(d.gamma_range)} must be (low, high), 0 < low <= high")
    if not d.structures:
        problems.append("structures is empty; list at least one structure to segment")
    unknown = [s for s in d.structures if not is_structure(s)]
    if unknown:
        problems.append(f"unknown structure(s) {', '.join(unknown[:5])} (see ctseg_core.labels)")
    for merge in set(d.structures) & set(MERGES):
        both = [s for s in MERGES[merge] if s in d.structures]
        if both:
            problems.append(
                f"{merge} merges {', '.join(both[:3])}, also listed on its own; list one or the other"
            )
    if len(set(d.structures)) != len(d.structures):
        problems.append("structures lists a name twice")
    if m.output not in OUTPUTS:
        problems.append(f"model output {m.output!r} is not one of {', '.join(OUTPUTS)}")
    if not m.features or any(f < 1 for f in m.features) or m.bottleneck < 1:
        problems.append(
            f"model widths must be positive (features {m.features}, bottleneck {m.bottleneck})"
        )
    if not 0 <= m.deep_supervision < max(1, len(m.features)):
        problems.append(
            f"deep_supervision must be 0..{len(m.features) - 1} (one head per decoder level "
            f"below full resolution; got {m.deep_supervision})"
        )
    if m.in_channels != d.context_slices:
        problems.append(
            f"model in_channels {m.in_channels} != context_slices {d.context_slices}; "
            "leave in_channels unset to derive it"
        )
    if m.out_channels != cfg.expected_out_channels:
        problems.append(
            f"model out_channels {m.out_channels} does not fit a {m.output} output with "
            f"{len(d.structures)} structures (expected {cfg.expected_out_channels}); "
            "leave out_channels unset to derive it"
        )
    if t.grad_clip is not None and t.grad_clip <= 0:
        problems.append(f"grad_clip must be > 0 or None (got {t.grad_clip})")
    if problems:
        raise ConfigError("invalid settings: " + "; ".join(problems))
