"""What one training run works with, built from its config and the checkpoint it resumes.

``build_parts`` opens the train and validation splits (under torchrun rank 0 prepares the
cache while the other ranks wait), picks device, precision and memory format, builds the model
(output bias from the class frequencies on a fresh start, then the weights of an nnU-Net
model when ``train.init_from`` names one; weights, optimizer, scheduler, history
and RNG state from the checkpoint on a resume), wraps it in DistributedDataParallel under
torchrun, and makes the step runner, the foreground sampler and the two loaders.

A volumetric model (``ModelSpec.spatial_dims`` 3) trains on patches of the subjects resampled to
``data.spacing_mm`` (``data.patches``; ``data.samples_per_epoch`` unset: ``PATCH_STEPS`` steps
per epoch, nnU-Net's epoch) and validates on whole validation volumes
(``validation_volumes.VolumeValidation``); ``RunParts.validate`` and ``sample_figure`` hide which.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import RunConfig
from ..data.cache import reserve_open_files
from ..data.dataset_root import open_dataset
from ..data.domain import check_resumed_data, val_subjects_warning
from ..data.patches import PatchDataset, PatchSampler
from ..data.slices import ForegroundSampler, SliceDataset, validation_indices
from ..device import (
    autocast_context,
    loader_workers,
    prepare_device,
    resolve_amp,
    resolve_channels_last,
    resolve_device,
)
from ..models import build_model
from ..models.checkpoint import restore_rng_state
from ..models.cpu_convs import split_single_sample_convs
from ..models.head import init_output_bias
from ..models.nnunet import keep_channels_last
from ..models.registry import model_spec
from ..nnunet.finetune import init_from_model
from . import distributed as ddp
from .budget import resumed_progress
from .checks import split_overlap_warning, unannotated_warnings
from .losses import LossFn, build_loss
from .memory import check_fits
from .optim import ProgressLR, build_optimizer, build_scheduler, load_optimizer_state
from .samples import SampleFigure, VolumeSampleFigure
from .step import StepRunner
from .validation import validate
from .validation_volumes import VolumeValidation

log = logging.getLogger(__name__)

#: progress of preparing a split: split name -> (done, total, subject id) callback
Preparing = Callable[[str], Callable[[int, int, str], None]]

#: training steps per epoch of a volumetric model without data.samples_per_epoch (nnU-Net's)
PATCH_STEPS = 250


def cache_entries(dataset) -> list:
    """A slice or patch dataset's subjects as their cache entries (``CachedSubject``)."""
    return [getattr(s, "source", s) for s in dataset.subjects]


@dataclass
class RunParts:
    """``model`` is the bare network (what checkpoints hold), ``net`` what trains (DDP or not);
    ``steps``: batches per epoch on each rank; ``history`` and ``start_epoch`` come from the
    resumed checkpoint (empty and 0 on a fresh start); ``val_loader`` (slices) or
    ``volume_validation`` (volumes) is set, as the model is a slice or a volumetric one."""

    train_set: SliceDataset | PatchDataset
    val_set: SliceDataset | PatchDataset
    device: torch.device
    amp: torch.dtype | None
    channels_last: bool
    model: torch.nn.Module
    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    loss_fn: LossFn
    run_step: StepRunner
    sampler: ForegroundSampler | PatchSampler
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader | None
    volume_validation: VolumeValidation | None
    steps: int
    history: list[dict]
    start_epoch: int
    init_record: dict | None = None  # nnunet.finetune's record of a run started from a model
    data_warnings: list[str] = field(default_factory=list)  # checks: *_warning(s)

    @property
    def val_batches(self) -> int:
        """Validation batches on this rank each epoch."""
        if self.volume_validation is not None:  # may be 0: a rank without a volume
            return len(self.volume_validation)
        return len(self.val_loader)

    @property
    def training_subjects(self) -> list:
        """The training subjects' cache entries (``CachedSubject``), whatever the model sees."""
        return cache_entries(self.train_set)

    @property
    def validation_subjects(self) -> list:
        """The validation subjects' cache entries (``CachedSubject``)."""
        return cache_entries(self.val_set)

    def validate(self, cfg: RunConfig, stop_check=None, progress=None) -> dict:
        """This epoch's validation metrics (``validation.validate``'s dict), slices or volumes."""
        autocast = autocast_context(self.device, self.amp)
        if self.volume_validation is not None:
            # each rank runs the windows of its own subjects, as many as they need: DDP's forward
            # would broadcast the buffers at each window and wait for a rank that has none left,
            # so the bare model, given rank 0's buffers once (as DDP's training forward does)
            ddp.broadcast_buffers(self.model)
            return self.volume_validation.run(self.model, self.loss_fn, self.device, autocast,
                                              self.channels_last, stop_check, progress)  # fmt: skip
        return validate(self.net, self.val_loader, self.val_set, cfg, self.loss_fn, self.device,
                        autocast, self.channels_last, stop_check, progress)  # fmt: skip

    def sample_figure(self, cfg: RunConfig) -> SampleFigure | VolumeSampleFigure:
        """The figure of validation slices saved each epoch."""
        if self.volume_validation is not None:
            return VolumeSampleFigure(self.volume_validation, cfg)
        return SampleFigure(self.val_set, cfg)


def _loader_workers(requested: int, in_thread: bool) -> tuple[int, str | None]:
    """(worker processes, start method or None for the platform's default) for the loaders.

    Streamlit makes the page script the ``__main__`` module, and spawn or forkserver workers
    import ``__main__`` again: each worker would run the dashboard page. So a run trained
    ``in_thread`` of a host process (the dashboard's job says so) forks its workers on Linux (the
    default there until Python 3.14) and loads in-process elsewhere (macOS and Windows spawn).
    The CLI and torchrun (``python -m ctseg_core``) keep the default.
    """
    if requested <= 0 or not in_thread:
        return requested, None
    if sys.platform == "linux":
        return requested, "fork"
    log.warning(
        "loading in-process: loader workers of a run started in a thread would run the "
        "dashboard page again on %s; use the CLI for worker processes",
        sys.platform,
    )
    return 0, None


def build_parts(
    cfg: RunConfig,
    resume: dict | None,
    rank: int,
    world: int,
    preparing: Preparing,
    in_thread: bool = False,
) -> RunParts:
    """The parts of a run on this rank; ``resume``: the loaded last.pth, or None;
    ``in_thread``: trained in a thread of a host process (see ``_loader_workers``)."""
    t, d = cfg.train, cfg.data
    device = resolve_device(t.device)
    check_fits(cfg, device)  # a step that cannot fit is refused before the cache is built
    # both splits at once: each dataset counts only the files it opens itself, and the CT maps
    # open lazily during the first epoch, after the validation set has taken its share
    index = open_dataset(Path(d.data_root), seed=d.seed)
    n_subjects = len(index.subjects_in(d.train_split)) + len(index.subjects_in(d.val_split))
    reserve_open_files(n_subjects, f"the {d.train_split} and {d.val_split} splits of {index.root}")
    if world > 1 and rank != 0:
        ddp.barrier()  # rank 0 prepares the cache alone; the others then only open it
    volumetric = model_spec(cfg.model.name).spatial_dims == 3
    dataset = PatchDataset if volumetric else SliceDataset
    train_set = dataset(cfg, d.train_split, progress=preparing(d.train_split))
    val_set = dataset(cfg, d.val_split, progress=preparing(d.val_split))
    if world > 1 and rank == 0:
        ddp.barrier()
    if resume is not None:  # every rank: the CTs it trained on, not another folder's
        subjects = cache_entries(train_set)
        check_resumed_data(resume.get("training_data"), subjects, d.data_root)
    prepare_device(device)
    amp = resolve_amp(t.amp, device)
    channels_last = resolve_channels_last(t.channels_last, device, amp, cfg.model.norm, volumetric)
    model = build_model(cfg.model, cfg.data)
    if resume is None:
        counts = sum(s.voxel_counts for s in train_set.subjects)
        init_output_bias(model, counts, train_set.lut, cfg.output_mode)
    init_record = None
    if resume is None and cfg.train.init_from:  # after the bias: new labels keep the prior
        init_record = init_from_model(model, cfg)
    model = model.to(device)
    if channels_last:
        model = model.to(
            memory_format=torch.channels_last_3d if volumetric else torch.channels_last
        )
        # instance norms as batch norms: PyTorch's copy every activation's layout twice, and
        # give wrong gradients for one sample whose gradient comes back channels last
        keep_channels_last(model)
    if volumetric and device.type == "cpu":  # one patch a step would miss oneDNN (cpu_convs)
        split_single_sample_convs(model)
    optimizer = build_optimizer(model, t)
    scheduler = build_scheduler(optimizer, t)
    history: list[dict] = []
    start_epoch = 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        load_optimizer_state(optimizer, resume["optimizer"])
        if scheduler is not None and resume.get("scheduler") is not None:
            scheduler.load_state_dict(resume["scheduler"])
        history = list(resume.get("history") or [])
        start_epoch = int(resume["epoch"])
        saved = resume["config"]["train"]
        older = "progress" not in (resume.get("scheduler") or {})  # PyTorch's epoch scheduler
        if isinstance(scheduler, ProgressLR) and (
            older or saved.get("epochs") != t.epochs or saved.get("minutes") != t.minutes
        ):  # a new horizon, or an old state whose T_max may be a stale one (resumed to more
            # epochs before): the schedule over the run's horizon, not the old one's end (lr 0)
            scheduler.replan(resumed_progress(t, history, start_epoch))
        restore_rng_state(resume.get("rng"))
    net = model
    if ddp.is_distributed():
        ids = [device.index] if device.type == "cuda" else None
        # a 3D U-Net's output layers below the deep-supervision levels in use get no gradient;
        # DDP refuses a second step unless told to look for such parameters in each step
        idle = bool(getattr(model, "idle_heads", None))
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=ids, find_unused_parameters=idle
        )
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    lut = torch.from_numpy(train_set.lut).long().to(device)
    loss_fn = build_loss(t.loss)
    run_step = StepRunner(net, optimizer, scaler, loss_fn, lut, d, device, amp, channels_last,
                          t.grad_clip, train_set.annotated_classes(), train_set.mirror_safe(),
                          train_set.subject_spacing() if volumetric else None)  # fmt: skip
    if volumetric:
        samples = d.samples_per_epoch or PATCH_STEPS * d.batch_size * world
    else:
        samples = d.samples_per_epoch or len(train_set)
    steps = t.steps_per_epoch or max(1, math.ceil(samples / (d.batch_size * world)))
    sampling = PatchSampler if volumetric else ForegroundSampler
    sampler = sampling(
        train_set, steps * d.batch_size * world, d.foreground_fraction,
        seed=d.seed, rank=rank, world_size=world,
    )  # fmt: skip
    workers, start_method = _loader_workers(
        loader_workers(d.num_workers, device, ddp.local_world_size()), in_thread
    )
    loader_kw = {"num_workers": workers, "pin_memory": device.type == "cuda"}
    if workers > 0:
        loader_kw |= {"persistent_workers": True, "prefetch_factor": 4}
        if start_method:
            loader_kw["multiprocessing_context"] = start_method
    train_loader = torch.utils.data.DataLoader(
        train_set, batch_size=d.batch_size, sampler=sampler, drop_last=False, **loader_kw
    )
    if volumetric:
        val_loader, volumes = None, VolumeValidation(val_set, cfg, rank, world)
        log.info("%d train / %d val volumes (%d val batches), %d steps/epoch, device %s, amp %s",
                 len(train_set), len(val_set), len(volumes), steps, device, amp)  # fmt: skip
    else:
        val_ids = validation_indices(val_set, d.val_slices_per_subject)[rank::world]
        val_loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(val_set, val_ids), batch_size=d.batch_size * 2, **loader_kw
        )
        volumes = None
        log.info("%d train / %d val slices, %d steps/epoch, device %s, amp %s",
                 len(train_set), len(val_ids), steps, device, amp)  # fmt: skip
    warnings = unannotated_warnings(train_set.annotated, val_set.annotated, d.structures)
    overlap = split_overlap_warning(
        train_set.subject_ids, val_set.subject_ids, d.train_split, d.val_split
    )
    warnings += [overlap] if overlap else []
    if resume is not None:  # validated on other CTs than the earlier epochs (meta.csv changed)
        said = val_subjects_warning(
            resume.get("training_data"), cache_entries(val_set), d.val_split
        )
        warnings += [said] if said else []
    return RunParts(train_set, val_set, device, amp, channels_last, model, net, optimizer,
                    scheduler, loss_fn, run_step, sampler, train_loader, val_loader, volumes,
                    steps, history, start_epoch, init_record, warnings)  # fmt: skip
