"""`ctseg train`: train a 2D U-Net (also under `torchrun --nproc_per_node N -m ctseg_core train`)."""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path

from ..config import PADDINGS
from ..labels import MERGES
from ..training.presets import PRESETS
from .choices import ChoicesHelp, Names, registry_choice
from .progress import tqdm_callback

_FLAGS = {  # argparse dest -> (section, config field)
    "data": ("data", "data_root"),
    "cache": ("data", "cache_dir"),
    "size": ("data", "target_size"),
    "window": ("data", "hu_window"),
    "context": ("data", "context_slices"),
    "batch_size": ("data", "batch_size"),
    "patch_size": ("data", "patch_size"),
    "spacing": ("data", "spacing_mm"),
    "padding": ("data", "padding"),
    "foreground": ("data", "foreground_fraction"),
    "samples_per_epoch": ("data", "samples_per_epoch"),
    "val_slices": ("data", "val_slices_per_subject"),
    "workers": ("data", "num_workers"),
    "mirror": ("data", "mirror"),
    "vessel_contrast": ("data", "vessel_contrast_prob"),
    "model": ("model", "name"),
    "features": ("model", "features"),
    "bottleneck": ("model", "bottleneck"),
    "deep_supervision": ("model", "deep_supervision"),
    "epochs": ("train", "epochs"),
    "minutes": ("train", "minutes"),
    "lr": ("train", "lr"),
    "optimizer": ("train", "optimizer"),
    "scheduler": ("train", "scheduler"),
    "loss": ("train", "loss"),
    "patience": ("train", "early_stopping_patience"),
    "grad_clip": ("train", "grad_clip"),
    "amp": ("train", "amp"),
    "device": ("train", "device"),
    "seed": ("train", "seed"),
    "steps_per_epoch": ("train", "steps_per_epoch"),
    "checkpoint_every": ("train", "checkpoint_every"),
    "tensorboard": ("train", "tensorboard"),
}


#: flags whose 0 means "every slice" or "no time budget" (None in the config), as on the Train page
_ZERO_MEANS_ALL = ("samples_per_epoch", "steps_per_epoch", "val_slices", "minutes")
#: settings of the machine, not of the experiment: a resumed run may change them
_HARDWARE = ("device", "amp", "workers", "cache")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a 2D, 2.5D or 3D U-Net on a TotalSegmentator-layout dataset (torchrun for "
        "several GPUs)",
        description="Train, validating after each epoch; writes the run folder "
        "checkpoints/<run>/ (config, status, history, checkpoints, sample figures).",
    )
    a = p.add_argument
    a("--data", type=Path, help="dataset root (required unless --resume or --config gives it)")
    a("--config", type=Path, help="a run config.json to start from (flags override it)")
    a(
        "--preset",
        choices=list(PRESETS),
        help="start from a named preset (ctseg_core.training.presets; flags override it)",
    )
    a(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue a run folder from its last.pth (or from a checkpoint file of it: "
        "RUN_DIR/best.pth, RUN_DIR/checkpoint_epoch<N>.pth; one older than the run's newest is "
        "refused, as it would replace the later epochs' files, unless --branch)",
    )
    a(
        "--branch",
        metavar="NAME",
        help="with --resume: continue from the checkpoint in a new run folder NAME beside the "
        "run (its last.pth, best.pth up to that epoch and history come along); the run is left "
        "as it is",
    )
    a(
        "--run",
        "--run-name",
        dest="run",
        default=None,
        help="run name (folder under the checkpoints root); under torchrun write --run-name, "
        "since torchrun takes --run as its own --run-path",
    )
    a("--checkpoints", type=Path, default=None, help="root of run folders ($CTSEG_CHECKPOINTS)")
    a("--cache", type=str, default=None, help="preprocessing cache folder ($CTSEG_CACHE)")
    a("--epochs", type=int, help="epochs (default 20; with --minutes, at most)")
    a(
        "--minutes",
        type=float,
        metavar="M",
        help="time budget: stop before an epoch that would not fit in M minutes of training "
        "(resumes included), and fit the cosine / poly schedule to the epochs that do "
        "(default, 0: none; phantom_demo 10); on --resume, the run's new budget in all",
    )
    a("--lr", type=float, help="learning rate (default 1e-3)")
    a("--batch-size", type=int, help="slices per batch (default 8)")
    a("--size", type=int, nargs=2, metavar=("H", "W"), help="slice size (default 128 128)")
    a("--window", type=float, nargs=2, metavar=("LOW", "HIGH"), help="HU window (-1000 1000)")
    a("--context", type=int, help="slices per input (odd; 3 or 5 = 2.5D; default 1)")
    xyz = {"nargs": 3, "metavar": ("X", "Y", "Z")}
    a("--patch-size", type=int, **xyz, help="a 3D model's patch in voxels (phantom_3d 48 48 32)")
    a("--spacing", type=float, **xyz, help="a 3D model's voxel spacing in mm (phantom_3d 4 4 4)")
    a(
        "--padding",
        choices=PADDINGS,
        help="what a 3D model sees around a CT smaller than its patch: air (-1024 HU, the "
        "default) or normalised_zero (nnU-Net's: the 3D presets, --init-from)",
    )
    a(
        "--structures",
        help="comma-separated structure names (default: all 117; with --init-from: the model's)",
    )
    a(
        "--merge",
        help="comma-separated merges, each learned as one structure in place of its members "
        f"(one output trained on their union, written with its first member's value): "
        f"{', '.join(MERGES)}",
    )
    a(
        "--init-from",
        type=Path,
        metavar="MODEL_DIR",
        help="start from an nnU-Net model folder's "
        "weights: its network, patch, spacing and CT normalisation (flags override them)",
    )
    a("--fold", help="the fold of --init-from whose weights start the run (default: the first)")
    a("--model", **registry_choice("MODELS", "unet"))
    a("--features", type=int, nargs="+", help="encoder widths (default 32 64 128 256)")
    a("--bottleneck", type=int, help="bottleneck width (default 512)")
    a(
        "--deep-supervision",
        type=int,
        metavar="N",
        help="N extra output heads at 1/2 .. 1/2**N resolution while training (default 0)",
    )
    a("--loss", **registry_choice("LOSSES", "dice_ce"))
    a("--optimizer", **registry_choice("OPTIMIZERS", "adam"))
    a("--scheduler", **registry_choice("SCHEDULERS", "plateau"))
    a("--patience", type=int, help="early stopping patience in epochs (0 = off)")
    a("--grad-clip", type=float, help="max gradient norm (default 12)")
    a("--foreground", type=float, help="share of structure-first samples (default 0.5)")
    a(
        "--samples-per-epoch",
        type=int,
        help="training slices (3D: patches) per epoch (default, 0: all slices; 3D: 250 steps)",
    )
    a("--steps-per-epoch", type=int, help="batches per epoch (overrides samples; 0: from them)")
    a("--val-slices", type=int, help="validation slices per subject (default, 0: all)")
    a(
        "--checkpoint-every",
        type=int,
        metavar="N",
        help="keep checkpoint_epoch<N>.pth every N epochs, 0 = none (default 10); "
        "best.pth and last.pth are always written",
    )
    a(
        "--tensorboard",
        action="store_true",
        default=None,
        help="also write TensorBoard event files to <run>/tensorboard/ (tensorboard --logdir "
        "checkpoints shows them; TensorBoard itself is not needed to write them)",
    )
    a("--no-augment", action="store_true", help="switch augmentation off")
    a("--mirror", action="store_true", default=None, help="left/right mirroring with label swap")
    a(
        "--vessel-contrast",
        type=float,
        metavar="P",
        help="share of samples whose vessels get random intensities, as between contrast phases "
        "(default 0; phantom_demo 0.5)",
    )
    a("--amp", choices=Names("AMP_MODES"), metavar="MODE", help=ChoicesHelp("AMP_MODES", "auto"))
    a("--device", help="auto, cpu, cuda, cuda:1 ... (default auto)")
    a("--seed", type=int, help="random seed (default 0)")
    a(
        "--workers",
        type=int,
        help="data loader worker processes per process (default: 0 on a CPU, up to 8 on a GPU)",
    )
    a("--json", action="store_true", help="print the final status and last epoch as JSON")
    p.set_defaults(func=run_train)


def build_config(args):
    """The RunConfig from --config and the flags (flags win)."""
    from ..errors import ConfigError
    from ..training.checks import unused_settings
    from ..training.presets import user_config

    base = {}
    if getattr(args, "preset", None) and args.config:  # the config would replace the preset
        raise ConfigError("give --preset or --config, not both (flags change either)")
    if getattr(args, "fold", None) is not None and not getattr(args, "init_from", None):
        raise ConfigError("--fold picks a fold of --init-from's model; give --init-from too")
    if getattr(args, "preset", None):
        from ..training.presets import preset

        base = preset(args.preset).to_dict()
    if args.config:
        try:
            base = json.loads(Path(args.config).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read the config {args.config} ({exc})") from None
    if not isinstance(base, dict):
        raise ConfigError(f"the config {args.config} must be a JSON object")
    changes = {}
    if getattr(args, "init_from", None):
        from ..nnunet.finetune import finetune_changes

        heads = (base.get("model") or {}).get("deep_supervision", 0)  # clamped to the model's
        changes = finetune_changes(args.init_from, args.fold, deep_supervision=heads)
    for dest, key in _FLAGS.items():
        value = getattr(args, dest, None)
        if dest in _ZERO_MEANS_ALL and value == 0:
            changes[key] = None  # as on the Train page: 0 = every slice
        elif value is not None:
            changes[key] = str(value) if isinstance(value, Path) else value
    if args.structures:
        changes["data", "structures"] = [s.strip() for s in args.structures.split(",") if s.strip()]
    if getattr(args, "merge", None):
        changes["data", "merge"] = [s.strip() for s in args.merge.split(",") if s.strip()]
    if args.no_augment:
        changes["data", "augment"] = False
    try:
        config = user_config(base, changes, run_name=args.run or None)
    except ConfigError as exc:  # a hand-edited config: name the file
        raise ConfigError(f"{args.config}: {exc}" if args.config else str(exc)) from None
    given = {_FLAGS[d] for d in _FLAGS if getattr(args, d, None) is not None}
    if problem := unused_settings(config, given):  # a 2D model's flag for a 3D one, or back
        raise ConfigError(problem)
    if config.data.data_root:  # recorded absolute: a resume from another folder finds it
        config.data.data_root = str(Path(config.data.data_root).expanduser().absolute())
    return config


def run_train(args) -> int:
    from ..errors import CtsegError
    from ..runs.status import login_label
    from ..training import distributed as ddp
    from ..training.trainer import Trainer, TrainingError

    started = ddp.init_from_env(args.device or "auto")
    ok = False
    try:
        callbacks, bar = [], None
        if ddp.rank() == 0:
            progress, bar = tqdm_callback("training", unit="step")
            callbacks.append(_bar_callback(progress, bar))
        if args.resume:
            _refuse_settings_on_resume(args)
            trainer = Trainer.resume(
                args.resume, epochs=args.epochs, minutes=args.minutes, branch=args.branch,
                callbacks=callbacks, started_by=login_label(),
            )  # fmt: skip
            for dest in _HARDWARE:  # the run may move to another machine
                if getattr(args, dest) is not None:
                    section, name = _FLAGS[dest]
                    setattr(getattr(trainer.config, section), name, getattr(args, dest))
        else:
            from ..errors import ConfigError

            if args.branch:
                raise ConfigError(
                    "--branch NAME continues a run's checkpoint in a new run folder: give the "
                    "checkpoint with --resume RUN_DIR/<file>, or start a new run with --run NAME"
                )
            if not (args.data or args.config or args.preset):
                raise ConfigError("give the dataset with --data (or a --config, or --resume)")
            trainer = Trainer(
                build_config(args), checkpoints_root=args.checkpoints, callbacks=callbacks,
                started_by=login_label(),
            )  # fmt: skip
        previous = _stop_on_sigterm(trainer)
        try:
            run_dir = trainer.open_run()
            try:
                state = trainer.run()
            except Exception as exc:  # recorded as "failed" in status.json
                # bad settings or data found before the first step stay exit 2; a run that
                # failed while training (a NaN loss, the machine) is an unfinished result
                if (isinstance(exc, CtsegError) and not isinstance(exc, TrainingError)) or (
                    args.verbose and not isinstance(exc, CtsegError)
                ):
                    raise
                from ..runs.status import failure_text

                where = f" (traceback in {trainer.error_log})" if trainer.error_log else ""
                print(f"error: run {run_dir} failed: {failure_text(exc)}{where}", file=sys.stderr)
                return 1
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            if bar is not None:
                bar.close()
        if ddp.rank() == 0:
            _report(run_dir, state, args.json)
        ok = True
        return 0 if state == "finished" else 1
    finally:
        if started:
            ddp.shutdown(wait=ok)


def _refuse_settings_on_resume(args) -> None:
    """A resumed run keeps its settings (its checkpoint holds them): refuse flags that would
    seem to change them, instead of dropping them unseen."""
    from ..errors import ConfigError
    from ..fileio import is_file

    dests = [*_FLAGS, "preset", "config", "structures", "run", "checkpoints", "no_augment",
             "init_from", "fold", "merge"]  # fmt: skip
    given = [
        "--" + dest.replace("_", "-")
        for dest in dests
        if dest not in ("epochs", "minutes", *_HARDWARE)
        and getattr(args, dest, None) not in (None, False)
    ]
    try:  # a checkpoint or its run folder (either is taken)
        folder = args.resume.parent if is_file(args.resume) else args.resume
    except OSError:  # behind a closed folder: resume itself says so; here only the hint
        folder = args.resume.parent if args.resume.suffix == ".pth" else args.resume
    if given:
        config = f"--config {folder}/config.json and " if is_file(folder / "config.json") else ""
        raise ConfigError(
            f"--resume continues {args.resume} with its own settings, so {', '.join(given)} "
            "would not apply (only --epochs, --minutes, --branch, --device, --amp, --workers and "
            f"--cache do); to train with other settings start a new run: {config}the flags"
        )


def _stop_on_sigterm(trainer):
    """Make SIGTERM (a job scheduler's time limit or preemption, ``kill``) end the run as a stop
    before the next batch, with status "stopped", instead of killing it mid-write. Returns the
    previous handler (None where signals cannot be set: not the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def on_sigterm(signum, frame) -> None:
        trainer.stopper.request("by SIGTERM (a job scheduler's time limit or preemption?)")

    return signal.signal(signal.SIGTERM, on_sigterm)


def _bar_callback(progress, bar):
    def on_progress(p) -> None:
        if p.kind == "step":
            total = p.steps_per_epoch * p.epochs
            done = (p.epoch - 1) * p.steps_per_epoch + p.step
            info = p.message or f"loss {p.loss:.4f}"  # "validating: k/N batches" after the steps
            progress(done, total, f"epoch {p.epoch}/{p.epochs} {info}")
        elif p.kind == "epoch" and p.record:
            r = p.record
            bar.write(
                f"epoch {p.epoch}/{p.epochs}: train loss {_fmt(r.get('train_loss'))}  "
                f"val loss {_fmt(r.get('val_loss'))}  val Dice {_fmt(r.get('val_dice_mean'), 3)}"
                f"  ({r['seconds']:.0f} s)",
                file=sys.stderr,
            )
        elif p.kind == "start" and p.message:
            bar.set_postfix_str(p.message)

    return on_progress


def _fmt(value, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _report(run_dir: Path, state: str, as_json: bool) -> None:
    from ..runs.run_folder import read_history, read_status

    status, history = read_status(run_dir), read_history(run_dir)
    if as_json:
        last = history[-1] if history else None
        print(json.dumps({"run_dir": str(run_dir), "status": status, "last_epoch": last}))
        return
    best = max(
        (r["val_dice_mean"] for r in history if r.get("val_dice_mean") is not None), default=None
    )
    print(f"run {run_dir}: {state} after {status.get('epoch', 0)} epochs", file=sys.stderr)
    if best is not None:
        print(f"best mean validation Dice {best:.3f} (best.pth)", file=sys.stderr)
