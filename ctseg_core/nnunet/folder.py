"""Reading and checking an nnU-Net v2 model folder; loading its checkpoints safely.

A model folder (``<trainer>__<plans>__<configuration>`` under nnU-Net's results, or under
TotalSegmentator's ``~/.totalsegmentator/nnunet/results/Dataset29x_*``) holds ``dataset.json``
(labels, channels), ``plans.json`` (configurations, intensity properties, transpose) and
``fold_<k>/checkpoint_final.pth`` or ``checkpoint_best.pth`` for each trained fold.
Checkpoints are read with ``torch.load(weights_only=True)`` allowing, beyond plain containers
and tensors, only the numpy scalars nnU-Net's logger stores (``_NUMPY_GLOBALS``).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from ..fileio import cannot_read, folder_error, is_dir, is_file
from .plans import Configuration, read_configuration

#: checkpoint names tried in each fold, first found wins unless one is asked for
CHECKPOINT_NAMES = ("checkpoint_final.pth", "checkpoint_best.pth")
_CONFIG_OF_FOLDER = re.compile(r"^.+__.+__(?P<config>[^_].*)$")


def _numpy_globals() -> list:
    """The numpy types a pickled float64 scalar needs (the logger's Dice and EMA values), under
    both names: a checkpoint saved under numpy 1.x (nearly every published nnU-Net and
    TotalSegmentator model) names ``numpy.core.multiarray.scalar``, numpy 2 ``numpy._core``."""
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar
    kinds = [np.dtype, scalar]
    kinds += [(scalar, f"{module}.multiarray.scalar") for module in ("numpy.core", "numpy._core")]
    kinds += [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")]
    return kinds


@dataclass
class ModelFolder:
    """A checked nnU-Net model folder: its files, labels and configuration."""

    path: Path
    dataset: dict
    plans: dict
    config: Configuration
    checkpoints: list[Path] = field(default_factory=list)  # one per fold, fold order

    @property
    def labels(self) -> dict[int, str]:
        """Output value -> label name from dataset.json (background included; an "ignore"
        label is no output, as in nnU-Net's label manager)."""
        return {int(v): str(k) for k, v in self.dataset["labels"].items() if k != "ignore"}

    @property
    def in_channels(self) -> int:
        return len(self.dataset.get("channel_names") or self.dataset.get("modality") or {"0": 0})

    @property
    def name(self) -> str:
        return f"{self.path.parent.name}/{self.path.name}"


def _read_json(path: Path) -> dict:
    if not is_file(path):
        raise ConfigError(f"{path} is missing: an nnU-Net model folder holds dataset.json, "
                          "plans.json and fold_<k>/checkpoint_final.pth")  # fmt: skip
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} is not readable JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{path} holds {type(value).__name__}, not a JSON object")
    return value


def read_model_folder(path: str | Path, folds: list[int | str] | None = None,
                      checkpoint: str | None = None,
                      configuration: str | None = None) -> ModelFolder:  # fmt: skip
    """Check and read an nnU-Net v2 model folder; ConfigError with one line naming the missing
    or wrong file. ``checkpoint``: default checkpoint_final.pth, or checkpoint_best.pth where no
    fold has a final one (the same file in every fold); ``folds``: default, as nnU-Net's
    predictor, every numbered ``fold_<k>`` holding it (not ``fold_all`` beside them; an
    unfinished fold without it is left out), else ``fold_all``; ``configuration``: as nnU-Net's
    predictor, the one the first fold's checkpoint was trained as (``init_args``; another one
    named is refused), else the one the folder is named for
    (``<trainer>__<plans>__<configuration>``), else the plans' only one."""
    root = Path(path).expanduser()
    try:
        return _read_model_folder(root, folds, checkpoint, configuration)
    except OSError as exc:  # the folder, a folder on its way or a file in it, closed to us
        named = exc.filename is None or Path(os.fsdecode(exc.filename)) == root
        shown = f"model folder {root}" if named else os.fsdecode(exc.filename)
        raise ConfigError(cannot_read(shown, exc, root if named else exc.filename)) from exc


def _read_model_folder(root: Path, folds: list[int | str] | None, checkpoint: str | None,
                       configuration: str | None) -> ModelFolder:  # fmt: skip
    """``read_model_folder``'s work; OSError where this user may not read."""
    if not is_dir(root):
        raise ConfigError(f"model folder {root} does not exist or is not a folder")
    if closed := folder_error(root):  # said of the folder, not of its first file
        raise closed
    dataset = _read_json(root / "dataset.json")
    plans = _read_json(root / "plans.json")
    labels = dataset.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise ConfigError(f"{root / 'dataset.json'} has no 'labels' (name -> value)")
    if any(isinstance(v, list | tuple) for v in labels.values()):
        raise ConfigError(
            f"{root / 'dataset.json'}: labels with regions (lists of values) are not supported"
        )
    odd = {k: v for k, v in labels.items() if not isinstance(v, int) or isinstance(v, bool)}
    if odd:
        name, value = next(iter(odd.items()))
        raise ConfigError(
            f"{root / 'dataset.json'}: label {name!r} has value {value!r}; nnU-Net's label "
            "values are integers (write it as a number)"
        )
    fold_dirs = [p for p in root.glob("fold_*") if is_dir(p)]
    # one checkpoint name for every fold, as nnU-Net's predictor: checkpoint_final.pth, or
    # checkpoint_best.pth in a folder where no fold has a final one
    name = checkpoint or next(
        (n for n in CHECKPOINT_NAMES if any(is_file(d / n) for d in fold_dirs)),
        CHECKPOINT_NAMES[0],
    )
    if folds is None:  # nnU-Net's auto_detect_available_folds: fold_all only when alone
        numbered = [d.name.removeprefix("fold_") for d in fold_dirs if d.name != "fold_all"]
        folds = sorted((f for f in numbered if is_file(root / f"fold_{f}" / name)), key=_fold_key)
        if not folds and is_file(root / "fold_all" / name):
            folds = ["all"]
        if not folds:
            raise ConfigError(f"{root} has no fold_<k>/{name}")
    paths = []
    for fold in folds:
        if not re.fullmatch(r"\d+|all", str(fold)):  # a name, never a path out of the folder
            raise ConfigError(f"fold {fold!r} is not a fold of {root}: give a number or 'all'")
        ckpt = root / f"fold_{fold}" / name
        if not is_file(ckpt):
            raise ConfigError(f"{ckpt} is missing")
        paths.append(ckpt)
    trained_as = _trained_configuration(paths[0])
    configs = sorted(plans.get("configurations") or {})
    if trained_as is not None and configuration not in (None, trained_as):
        raise ConfigError(
            f"{paths[0]} was trained as {trained_as!r}, not {configuration!r}: name "
            f"{trained_as!r} or leave the configuration out"
        )
    if trained_as is not None:  # as nnU-Net's predictor: the checkpoint's, whatever the name
        if trained_as not in configs:
            raise ConfigError(
                f"{paths[0]} was trained as {trained_as!r}, which {root / 'plans.json'} does "
                f"not hold (it has {configs}): put the plans.json of that training beside it"
            )
        configuration = trained_as
    elif configuration is None:
        match = _CONFIG_OF_FOLDER.match(root.name)
        if match and match["config"] in configs:
            configuration = match["config"]
        elif match:  # named for one the plans lack: which one ran is not for us to guess
            raise ConfigError(
                f"{root} is named for {match['config']!r}, which {root / 'plans.json'} does "
                f"not hold (it has {configs}): rename the folder "
                "<trainer>__<plans>__<one of them>, the one it was trained as"
            )
        elif len(configs) == 1:
            configuration = configs[0]
        else:
            raise ConfigError(
                f"{root} is not named <trainer>__<plans>__<configuration>; name the "
                f"configuration (one of {configs})"
            )
    config = read_configuration(plans, configuration, str(root / "plans.json"))
    previous = (plans.get("configurations") or {}).get(configuration, {}).get("previous_stage")
    if previous:
        raise ConfigError(
            f"{root}: {configuration} is a cascade's second stage (it takes the {previous} "
            f"model's prediction as input); ctseg runs single-stage models: use {previous}"
        )
    return ModelFolder(root, dataset, plans, config, paths)


def _fold_key(fold: str) -> tuple:
    """Numbered folds in numeric order (fold_10 after fold_2), others after them by name."""
    return (0, int(fold), "") if fold.isdigit() else (1, 0, fold)


def _trained_configuration(path: Path) -> str | None:
    """The configuration an nnU-Net checkpoint was trained as (``init_args["configuration"]``),
    read memory-mapped where it can be (the weights stay on disk); None where it does not say
    or does not load (``load_weights`` names the file then)."""
    ckpt = None
    for mmap in (True, False):  # a legacy (not zip) file cannot be memory-mapped
        try:
            with torch.serialization.safe_globals(_numpy_globals()):
                ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            break
        except Exception:  # a broken file: load_weights gives its one line later
            continue
    init = ckpt.get("init_args") if isinstance(ckpt, dict) else None
    name = init.get("configuration") if isinstance(init, dict) else None
    return name if isinstance(name, str) else None


def load_weights(path: str | Path) -> tuple[dict, tuple[int, ...] | None]:
    """(network state dict, mirroring axes allowed at inference or None) of an nnU-Net
    checkpoint, read with ``weights_only=True``; ConfigError naming the file when it is not one."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types; one line for all
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{path} is not a loadable nnU-Net checkpoint: {first}") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("network_weights"), dict):
        raise ConfigError(f"{path} has no 'network_weights': not an nnU-Net v2 checkpoint")
    axes = ckpt.get("inference_allowed_mirroring_axes")
    return ckpt["network_weights"], None if axes is None else tuple(int(a) for a in axes)
