"""A ctseg run started from an nnU-Net model folder's weights (fine-tuning).

``finetune_changes(folder)`` gives the ``training.presets.user_config`` changes that make a run
the model's network and preprocessing: ``plain_unet3d`` or ``resenc_unet3d`` with the plans'
stages, widths, kernels, strides and convolutions; ``data.patch_size`` and ``data.spacing_mm``
from the plans; the model's CT normalisation (``hu_window`` = its 0.5 / 99.5 percentiles,
``hu_mean_std`` = its foreground mean and std: nnU-Net's CTNormalization) and its padding
(``data.padding`` "normalised_zero": the mean, nnU-Net's 0 after normalising); the structures it
predicts that are TotalSegmentator v2 names; ``train.init_from`` / ``init_fold`` /
``init_checkpoint`` naming the weights; given the base's deep supervision, that clamped to the
levels the model's stages have (a 3-stage model has one extra head, where phantom_3d asks for
two). The caller's own changes (a structure list: a subset, or structures the model did not
have) go on top.

``init_from_model(model, config)`` then loads the weights into the freshly built network:
every encoder and decoder tensor as it is, the output layers (every deep-supervision level)
row by row: a structure the model had keeps its output channel (background: channel 0), one it
did not have keeps its fresh initialisation (He weights, the class-frequency bias). A merge
(``labels.MERGES``, e.g. "ribs") starts from the rows of its members the model had: the mean
of their weights and the log-sum-exp of their biases. Where the members' weights agree that
is exact, the merged channel's softmax probability the sum of the members' (exp(w.x + lse(b))
= sum exp(w.x + b_m)); where they differ (each rib has its own place) it is the member-average
feature response with the members' total prior, a start that neither favours one member nor
shrinks the merge's prior to one member's share.

Axes: nnU-Net's network axis n is the reader's axis ``transpose_forward[n]``, and every reader
(SimpleITKIO, NibabelIO, NibabelIOWithReorient) hands over a file's voxel axes reversed, so
network axis n is canonical axis ``2 - transpose_forward[n]`` for training images stored in
canonical (RAS+) orientation, as TotalSegmentator stores them (and an exported ctseg run is).
The kernels, strides, patch and spacing are permuted into ctseg's (x, y, z) and every
convolution's kernel with them: the permuted network on the permuted input computes the same
numbers. A model trained on images stored otherwise (e.g. LPS) sees mirrored anatomy; its
weights still load and fine-tuning has to undo the mirroring.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from ..fileio import atomic_write_json
from ..labels import MERGES, members
from .folder import ModelFolder, load_weights, read_model_folder
from .labels import model_structures, value_names

#: the run folder file that says where a fine-tuned run's first weights came from
INIT_RECORD = "init_from.json"
_NETWORKS = {"PlainConvUNet": "plain_unet3d", "ResidualEncoderUNet": "resenc_unet3d"}
_NORMS = {"InstanceNorm3d": "instance", "BatchNorm3d": "batch"}


def open_folder(path, fold: str | int | None = None, checkpoint: str | None = None) -> ModelFolder:
    """The model folder at ``path`` with one fold (None: the first); ConfigError, one line."""
    folder = read_model_folder(path, None if fold is None else [fold], checkpoint)
    folder.checkpoints = folder.checkpoints[:1]
    if folder.config.is_2d:
        raise ConfigError(
            f"{folder.path} is a 2d configuration; ctseg fine-tunes 3D models (3d_fullres, "
            "3d_lowres): name one of those folders"
        )
    if tuple(folder.config.normalization) != ("CTNormalization",) or folder.in_channels != 1:
        raise ConfigError(
            f"{folder.path / 'plans.json'}: ctseg fine-tunes one CT channel with "
            f"CTNormalization (this model: {list(folder.config.normalization)})"
        )
    return folder


def canonical_order(folder: ModelFolder) -> list[int]:
    """For canonical axes x, y, z: the model's network axis that holds each (see module doc)."""
    network_of = {2 - int(r): n for n, r in enumerate(folder.config.transpose_forward)}
    return [network_of[c] for c in range(3)]


def _short(name: Any) -> str:
    return str(name).rsplit(".", 1)[-1]


def finetune_changes(path, fold: str | int | None = None, checkpoint: str | None = None,
                     deep_supervision: int | None = None) -> dict[tuple[str, str], Any]:  # fmt: skip
    """``user_config`` changes for a run started from the model folder at ``path`` (module
    doc); ConfigError, one line, for a folder ctseg cannot fine-tune. ``deep_supervision``:
    the base configuration's extra heads; more than the model's stages allow (``n_stages - 2``,
    one per decoder level below full resolution but the lowest) becomes that many."""
    folder = open_folder(path, fold, checkpoint)
    config, kw = folder.config, folder.config.arch_kwargs
    network = _short(config.network_class)
    norm = _short(kw.get("norm_op"))
    if network not in _NETWORKS or norm not in _NORMS or _short(kw.get("conv_op")) != "Conv3d":
        raise ConfigError(
            f"{folder.path / 'plans.json'}: network {network} with {norm} is not one ctseg "
            f"trains ({', '.join(_NETWORKS)} with instance or batch norm)"
        )
    differs = _unlike_ctseg(kw)
    if differs:
        raise ConfigError(
            f"{folder.path / 'plans.json'}: {differs}; ctseg's 3D U-Nets use nnU-Net's defaults "
            "(LeakyReLU 0.01, norm eps 1e-5 with affine, convolutions with bias), so a "
            "fine-tune would not compute this model's function"
        )
    order = canonical_order(folder)

    def xyz(values) -> list:
        return [values[n] for n in order]

    props = config.intensity["0"]
    convs = kw.get("n_blocks_per_stage") or kw.get("n_conv_per_stage")
    structures = model_structures(value_names(folder.labels, folder.path))
    fold_name = folder.checkpoints[0].parent.name.removeprefix("fold_")
    changes = {
        ("model", "name"): _NETWORKS[network],
        ("model", "features"): [int(f) for f in kw["features_per_stage"]],
        ("model", "kernel_sizes"): [xyz(k) for k in kw["kernel_sizes"]],
        ("model", "strides"): [xyz(s) for s in kw["strides"]],
        ("model", "convs_per_stage"): [int(c) for c in convs],
        ("model", "decoder_convs_per_stage"): [int(c) for c in kw["n_conv_per_stage_decoder"]],
        ("model", "norm"): _NORMS[norm],
        ("model", "dropout"): 0.0,
        ("data", "context_slices"): 1,
        ("data", "patch_size"): tuple(xyz(config.patch_size)),
        ("data", "spacing_mm"): tuple(xyz(config.spacing_mm)),
        ("data", "hu_window"): (float(props["percentile_00_5"]), float(props["percentile_99_5"])),
        ("data", "hu_mean_std"): (float(props["mean"]), float(props["std"])),
        ("data", "padding"): "normalised_zero",
        ("train", "init_from"): str(folder.path.resolve()),
        ("train", "init_fold"): fold_name,
        ("train", "init_checkpoint"): folder.checkpoints[0].name,
    }
    if structures:
        changes["data", "structures"] = structures
    most = max(0, len(kw["features_per_stage"]) - 2)  # as models.nnunet.check_nnunet allows
    if deep_supervision is not None and deep_supervision > most:
        changes["model", "deep_supervision"] = most
    return changes


def _unlike_ctseg(kw: dict) -> str:
    """What in a plans' ``arch_kwargs`` differs from the network ctseg builds
    (``models.nnunet.package_arguments``), or ""."""
    nonlin = _short(kw.get("nonlin"))
    slope = (kw.get("nonlin_kwargs") or {}).get("negative_slope", 0.01)
    norm_kw = kw.get("norm_op_kwargs") or {}
    if nonlin != "LeakyReLU" or float(slope) != 0.01:
        return f"nonlin {nonlin} {dict(kw.get('nonlin_kwargs') or {})}"
    if float(norm_kw.get("eps", 1e-5)) != 1e-5 or not norm_kw.get("affine", True):
        return f"norm_op_kwargs {dict(norm_kw)}"
    if not kw.get("conv_bias", True):
        return "conv_bias false"
    return ""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _permuted(tensor: torch.Tensor, order: list[int]) -> torch.Tensor:
    """A convolution's (O, I, k0, k1, k2) kernel with its spatial axes in canonical order."""
    if tensor.dim() != 5:
        return tensor
    return tensor.permute(0, 1, *(2 + n for n in order)).contiguous()


def init_from_model(model: torch.nn.Module, config) -> dict:
    """Load the weights ``config.train.init_from`` names into ``model`` (built from ``config``,
    a RunConfig made with ``finetune_changes``); returns the record ``init_from.json`` holds:
    path, fold, checkpoint, sha256, ``kept`` (structure -> the model's output channel; a merge:
    the channels of its members) and ``fresh`` (structures the model did not have).
    ConfigError, one line, when they do not fit."""
    t = config.train
    folder = open_folder(t.init_from, t.init_fold, t.init_checkpoint)
    ckpt = folder.checkpoints[0]
    source, _ = load_weights(ckpt)
    order = canonical_order(folder)
    own = {name: value for value, name in value_names(folder.labels, folder.path).items()}
    names = config.channel_names()
    # a merge the model has (an exported merged run's "lungs") is its row; else its members'
    rows = [[0] if name == "background" else [own[name]] if name in own
            else [own[m] for m in members(name) if m in own] for name in names]  # fmt: skip
    if config.output_mode != "softmax":
        raise ConfigError("a run started from an nnU-Net model needs softmax outputs (dice_ce)")
    state = model.state_dict()
    for key, fresh in state.items():
        if key not in source:
            raise ConfigError(f"{ckpt} has no {key}: the run's network is not the model's")
        weight = _permuted(source[key], order)
        if key.startswith("decoder.seg_layers."):
            weight = weight.to(fresh.dtype)
            for channel, row in enumerate(rows):
                if not row:
                    continue
                # a merge: mean weights, log-sum-exp bias (module doc); one row: that row
                pick = weight[row]
                if len(row) == 1:
                    fresh[channel] = pick[0]
                elif key.endswith(".bias"):
                    fresh[channel] = torch.logsumexp(pick, 0)
                else:
                    fresh[channel] = pick.mean(0)
            continue
        if weight.shape != fresh.shape:
            raise ConfigError(
                f"{ckpt}: {key} is {tuple(weight.shape)}, the run's network has "
                f"{tuple(fresh.shape)}; keep the model's architecture settings"
            )
        state[key] = weight
    model.load_state_dict(state)
    return {
        "path": str(folder.path),
        "fold": ckpt.parent.name.removeprefix("fold_"),
        "checkpoint": str(ckpt),
        "sha256": _sha256(ckpt),
        "kept": {n: (r if n in MERGES else r[0]) for n, r in zip(names, rows, strict=True) if r},
        "fresh": [n for n, r in zip(names, rows, strict=True) if not r],
    }


def write_init_record(run_dir: Path, record: dict) -> None:
    """``run_dir/init_from.json``: where the run's first weights came from."""
    atomic_write_json(Path(run_dir) / INIT_RECORD, record)
