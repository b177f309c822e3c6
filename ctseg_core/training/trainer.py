"""The training loop: one trainer for the dashboard thread, the CLI and torchrun.

``Trainer(config).open_run()`` checks the settings and creates the run folder (failing fast);
``run()`` trains, validates after every epoch, writes checkpoints and the run folder files, and
reports ``Progress`` to callbacks. ``Trainer.resume(run_dir)`` continues from ``last.pth`` with
model, optimizer, scheduler, epoch, history and RNG state restored; sampling and augmentation
are seeded by (seed, epoch, rank), so a resumed run repeats an uninterrupted one. A stop event,
``stop_request.json`` or SIGTERM ends the run before the next batch ("stopped"; last.pth keeps
the last completed epoch). A NaN/inf loss or a checkpoint that cannot be written (a full disk)
ends it "failed", naming the intact checkpoints and the ``--resume`` command. A time budget
ends it "finished" before an epoch that would not fit (``budget``: the clock, the estimate).
"""

from __future__ import annotations

import logging
import math
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

import torch

from ..config import RunConfig
from ..data.domain import record_training_data
from ..device import resolve_amp, resolve_device
from ..errors import CtsegError, DataError, TrainingError
from ..fileio import atomic_write_json, is_dir
from ..nnunet.finetune import write_init_record
from ..runs.run_folder import default_checkpoints_root, new_run_dir
from ..runs.status import Callback, Progress, StatusFile, failure_text, write_error_log
from ..runs.stop_request import STOP_REQUEST
from . import distributed as ddp
from .budget import Budget
from .checks import check_run_config, disk_space_warning
from .epoch_files import save_epoch
from .memory import check_fits
from .optim import step_scheduler
from .parts import build_parts
from .resume import files_before_resume, prepare_resume, put_back, repair_past_last, seed_branch
from .step import StepRunner
from .stopping import StopControl, StopRequested, epoch_score, epochs_since_best
from .tracking import tracking_callbacks

log = logging.getLogger(__name__)


class Trainer:
    def __init__(
        self,
        config: RunConfig,
        *,
        checkpoints_root: str | Path | None = None,
        callbacks: Sequence[Callback] = (),
        stop_event: threading.Event | None = None,
        started_by: str = "",
        in_thread: bool = False,
    ):
        """``started_by``: who launched this training (a user, "alice (CLI)"), kept in
        status.json so that a team sees whose run it is; empty: not recorded. ``in_thread``:
        trained in a thread of a host process (the dashboard's job), which decides how loader
        workers start."""
        self.config = config
        self.checkpoints_root = Path(checkpoints_root) if checkpoints_root else None
        self.callbacks = list(callbacks)
        self.run_dir: Path | None = None
        self.resume_ckpt: dict | None = None
        self.error_log: Path | None = None  # where the traceback of a failure went
        self.unchecked: dict | None = None  # a resumed run's files until its data is checked
        self.rank, self.world = ddp.rank(), ddp.world_size()
        self.stopper = StopControl(stop_event, self.rank, self.world)
        self.status = StatusFile(self.rank, self.stopper.event)
        self.status.started_by = started_by
        self.in_thread = in_thread
        self.training_data: dict | None = None  # what it trains on (data.domain), rank 0
        self.branch_of: Path | None = None  # a branch's checkpoint of another run (resume)
        self.clock_s = 0.0  # training seconds before this process (resume: budget.stopped_clock)
        self.status.clock = lambda: self.clock_s  # the budget's clock once training starts

    @classmethod
    def resume(
        cls,
        run_dir: str | Path,
        epochs: int | None = None,
        minutes: float | None = None,
        branch: str | None = None,
        **kwargs,
    ) -> Trainer:
        """A trainer that continues ``run_dir`` from its last.pth (optionally to more epochs, or
        with a time budget of ``minutes`` in all, resumes included; a budget is kept once
        given), or from a checkpoint file of a run folder (best.pth, checkpoint_epoch<N>.pth).

        ConfigError for a file outside a run folder, for a checkpoint that cannot be read (naming
        the intact ones of the run and the command that continues from one), and for a run that
        has already trained all its epochs or used its time budget (``epochs`` or ``minutes``
        must then ask for more). A checkpoint older than what its run holds past it is refused
        (resuming would replace those files) unless ``branch`` names a new run folder beside
        the run to continue in (``training.resume``).
        """
        run_dir, source, ckpt, config, clock = prepare_resume(run_dir, epochs, minutes, branch)
        trainer = cls(config, **kwargs)
        trainer.run_dir, trainer.resume_ckpt, trainer.clock_s = run_dir, ckpt, clock
        trainer.unchecked = files_before_resume(run_dir)  # put back if refused before training
        if branch is not None:  # open_run makes the new folder and fills it
            trainer.run_dir, trainer.branch_of, trainer.unchecked = None, source, None
            trainer.checkpoints_root = trainer.checkpoints_root or run_dir.parent
        return trainer

    # -- the run folder -------------------------------------------------------------------
    def open_run(self) -> Path:
        """Validate the settings and create (or reopen) the run folder; returns its path."""
        root = self.config.data.data_root
        if self.resume_ckpt is not None and root and not is_dir(root):  # --data is not taken
            raise DataError(f"this run trained on {root}, which is not there now: put the "
                            "dataset back there to resume it")  # fmt: skip
        check_run_config(self.config, check_data=True)
        t = self.config.train
        resolve_amp(t.amp, resolve_device(t.device))  # a GPU asked for but absent: no folder yet
        if self.run_dir is None:  # a step that cannot fit: refused before the folder exists too
            check_fits(self.config, resolve_device(t.device))
            if self.rank == 0:
                root = self.checkpoints_root or default_checkpoints_root()
                try:
                    result = ("ok", str(new_run_dir(root, self.config.run_name)))
                except CtsegError as exc:
                    result = ("error", str(exc))
            else:
                result = None
            kind, value = ddp.broadcast_object(result)
            if kind == "error":
                raise CtsegError(value)
            self.run_dir = Path(value)
        self.status.run_dir = self.run_dir
        if self.rank == 0:
            self.config.run_name = self.run_dir.name
            try:
                atomic_write_json(self.run_dir / "config.json", self.config.to_dict())
                atomic_write_json(self.run_dir / "label_map.json", self.config.label_map())
            except OSError as exc:
                raise CtsegError(
                    f"cannot write the run folder {self.run_dir} ({exc.strerror or exc}); "
                    "free disk space or choose a writable checkpoints folder"
                ) from None
            done = int(self.resume_ckpt["epoch"]) if self.resume_ckpt else 0
            self.status.warning = disk_space_warning(self.config, self.run_dir, done)
            if self.branch_of is not None:
                branched = seed_branch(self.run_dir, self.branch_of, self.resume_ckpt)
                self.status.warning = (
                    " ".join(filter(None, [self.status.warning, branched])) or None
                )
            if self.status.warning:
                log.warning(self.status.warning)
            (self.run_dir / STOP_REQUEST).unlink(missing_ok=True)  # the request of a past stop
            self.status.write(
                Progress("start", "queued", self.run_dir, done, self.config.train.epochs),
                force=True,
            )
        return self.run_dir

    def mark_stopping(self) -> None:
        """Show state "stopping" in status.json at once (from any thread), unless the run has
        already ended: its final state is never overwritten."""
        self.status.mark_stopping()

    def _emit(self, p: Progress, force: bool = False) -> None:
        self.status.write(p, force=force or p.kind != "step")
        for callback in self.callbacks:
            callback(p)

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> str:
        """Train to the end; returns the final state ("finished" or "stopped"); raises on failure
        after recording state "failed" with the error text in status.json."""
        if self.run_dir is None:
            self.open_run()
        self.stopper.run_dir = self.run_dir
        state = Progress("start", "running", self.run_dir, epochs=self.config.train.epochs)
        self._state = state
        self._completed = int(self.resume_ckpt["epoch"]) if self.resume_ckpt else 0
        try:
            final = self._train()
        except StopRequested:
            msg = f"stopped {self.stopper.reason} during epoch {state.epoch}; {self._kept()}"
            self._end("stopped", message=msg)
            return "stopped"
        except KeyboardInterrupt:  # Ctrl-C or torchrun's SIGINT: a stop, not a failure
            msg = f"interrupted during epoch {state.epoch}; {self._kept(' with --resume')}"
            self._end("stopped", message=msg)
            raise
        except BaseException as exc:
            if isinstance(exc, CtsegError) and self.unchecked is not None:  # a refused resume
                if self.rank == 0:
                    put_back(self.run_dir, self.unchecked)
                raise
            text = failure_text(exc)
            if not isinstance(exc, CtsegError) and self.rank == 0:  # the traceback: error.log
                self.error_log = write_error_log(self.run_dir, traceback.format_exc())
            self._end("failed", message=text, error=text)
            raise
        return final

    def _kept(self, how: str = "") -> str:
        """What a stopped run keeps: last.pth of its last completed epoch, or nothing at all."""
        if self._completed:
            return f"last.pth holds epoch {self._completed}: resume it{how}"
        return (
            "no epoch was completed, so there is no checkpoint to resume: start it again (the "
            "same name reuses its folder) or remove it"
        )

    def _end(self, state: str, message: str, error: str | None = None, eta_s=None) -> None:
        p = self._state
        if self.rank == 0 and self.run_dir is not None:
            (self.run_dir / STOP_REQUEST).unlink(missing_ok=True)  # answered (or moot)
        self._emit(Progress("end", state, self.run_dir, self._completed, p.epochs, p.step,
                            p.steps_per_epoch, p.loss, p.lr, eta_s, message=message, error=error))  # fmt: skip

    def _preparing(self, split: str):
        """A progress callback for preparing the subjects of ``split``."""

        def report(done: int, total: int, subject_id: str) -> None:
            msg = f"preparing the {split} subjects: {done}/{total} ({subject_id})"
            self._emit(Progress("start", "running", self.run_dir, epochs=self._state.epochs,
                                message=msg))  # fmt: skip

        return report

    def _train(self) -> str:
        cfg, p = self.config, self._state
        t, d = cfg.train, cfg.data
        torch.manual_seed(t.seed)
        self._emit(
            Progress("start", "running", self.run_dir, epochs=t.epochs, message="preparing data")
        )
        parts = build_parts(
            cfg, self.resume_ckpt, self.rank, self.world, self._preparing, self.in_thread
        )
        if self.rank == 0:  # the data accepted: files past last.pth said, steps.jsonl trimmed
            if self.unchecked is not None:
                repair_past_last(self.run_dir, self.resume_ckpt)
            self.callbacks += tracking_callbacks(cfg, self.run_dir, self._completed)
        self.unchecked = None
        model, net, optimizer, scheduler = parts.model, parts.net, parts.optimizer, parts.scheduler
        device, amp, channels_last = parts.device, parts.amp, parts.channels_last
        steps, history = parts.steps, parts.history
        if self.rank == 0:
            resumed = (self.resume_ckpt or {}).get("training_data")
            self.training_data = record_training_data(
                self.run_dir, parts.training_subjects, d.data_root, d.train_split, resumed,
                slice_model=parts.volume_validation is None, val_subjects=parts.validation_subjects,
            )  # fmt: skip
            if parts.init_record:  # a run started from an nnU-Net model's weights
                write_init_record(self.run_dir, parts.init_record)
            for text in parts.data_warnings:  # in the log, and on the Train page
                log.warning("%s", text)
                self.status.warning = " ".join(filter(None, [self.status.warning, text]))
        figure = parts.sample_figure(cfg) if (t.sample_figure and self.rank == 0) else None
        scores = [epoch_score(r) for r in history]
        best = max(scores) if scores else -math.inf
        since_best = epochs_since_best(scores)
        self._step_seconds: list[float] = []
        self._val_batches = parts.val_batches
        self.budget = budget = Budget(t.minutes, t.epochs, history, self.clock_s)
        self.status.clock = budget.elapsed_s
        val_seconds = 0.0
        p.steps_per_epoch, p.epochs = steps, t.epochs
        for epoch in range(parts.start_epoch + 1, t.epochs + 1):
            p.epoch, p.step = epoch, 0
            started = time.monotonic()
            budget.start()
            parts.sampler.set_epoch(epoch)
            torch.manual_seed(t.seed * 100_003 + epoch)
            gen = torch.Generator().manual_seed(d.seed * 1_000_003 + epoch * 101 + self.rank)
            net.train()
            lr = optimizer.param_groups[0]["lr"]
            loss_sum, seen = self._train_epoch(
                parts.train_loader, parts.run_step, gen, lr, val_seconds
            )
            t_val = time.monotonic()
            metrics = parts.validate(
                cfg, stop_check=self.stopper.check, progress=self._validating(val_seconds)
            )
            val_seconds = time.monotonic() - t_val
            record = {
                "epoch": epoch,
                "train_loss": loss_sum / seen if seen else None,
                **metrics,
                "lr": lr,
                "seconds": round(time.monotonic() - started, 3),
                **budget.lap(epoch),  # training time, resumes included (and the horizon)
                "train_slices": seen * self.world,
            }
            history.append(record)
            step_scheduler(scheduler, record, budget.progress)
            score = epoch_score(record)
            improved = score > best
            best, since_best = (score, 0) if improved else (best, since_best + 1)
            if self.rank == 0:
                save_epoch(
                    self.run_dir,
                    self.config,
                    (model, optimizer, scheduler),
                    epoch,
                    history,
                    improved,
                    self.training_data,
                )
            self._completed = epoch  # last.pth holds it: an interrupt in the figure says so
            if self.rank == 0 and figure is not None:
                figure.save(model, device, amp, channels_last, self.run_dir, epoch)
            per_step = sum(self._step_seconds) / max(1, len(self._step_seconds))
            p.epochs, p.eta_s = budget.plan(epoch, 0.0, steps * per_step + val_seconds)
            p.eta_s = p.eta_s if self._step_seconds else None
            log.info("epoch %d/%d: train loss %.4f, val loss %s, val Dice %s", epoch, p.epochs,
                     record["train_loss"] or float("nan"), record["val_loss"], record["val_dice_mean"])  # fmt: skip
            self._emit(Progress("epoch", "running", self.run_dir, epoch, p.epochs, steps, steps,
                                record["train_loss"], lr, p.eta_s, record=record))  # fmt: skip
            if t.early_stopping_patience and since_best >= t.early_stopping_patience:
                msg = f"early stopping: no better validation score for {since_best} epochs"
                self._end("finished", message=msg)
                return "finished"
            if budget.spent(epoch):
                p.epochs = epoch
                self._end("finished", message=budget.ended_text(epoch), eta_s=0.0)
                return "finished"
        self._end("finished", message=f"finished {self._completed} epochs", eta_s=0.0)
        return "finished"

    def _validating(self, val_seconds: float):
        """Progress of the validation pass: "validating k/N batches" in status.json (the last
        training step is written first), and an ETA with this validation's time extrapolated.
        ``val_seconds``: the previous validation's duration (0 before the first)."""
        p = self._state
        started = time.monotonic()

        def report(done: int, total: int) -> None:
            elapsed = time.monotonic() - started
            per_step = sum(self._step_seconds) / max(1, len(self._step_seconds))
            this_val = elapsed / done * total if done else val_seconds or total * per_step / 3
            left = max(this_val - elapsed, 0.0)
            p.epochs, p.eta_s = self.budget.plan(
                p.epoch, left, p.steps_per_epoch * per_step + this_val
            )
            message = f"validating: {done}/{total} batches"
            self._emit(Progress("step", "running", self.run_dir, p.epoch, p.epochs, p.step,
                                p.steps_per_epoch, p.loss, p.lr, p.eta_s, message=message),
                       force=done == 0)  # fmt: skip

        return report

    def _train_epoch(self, loader, run_step: StepRunner, gen, lr: float, val_seconds: float):
        """One pass over ``loader``; returns (sum of loss x batch size, slices seen) on this rank.

        A step's loss is read only once the next step is queued, so a GPU never idles waiting
        for the host; a NaN/inf is caught one step late, before anything is saved.
        """
        p = self._state
        epoch, steps = p.epoch, p.steps_per_epoch
        loss_sum, seen = 0.0, 0
        t0 = time.monotonic()  # step times include loading, so the ETA does too

        def account(loss: torch.Tensor, step: int, batch: int) -> None:
            nonlocal loss_sum, seen, t0
            value = float(ddp.all_reduce_sum(loss.double().clone())) / self.world
            if not math.isfinite(value):
                raise TrainingError(
                    f"loss became {value} at epoch {epoch}, step {step}; training stopped and "
                    f"the checkpoints of epoch {epoch - 1} are kept: lower the learning rate "
                    f"(now {lr:g}), enable grad clipping or check the data"
                )
            loss_sum, seen = loss_sum + value * batch, seen + batch
            self._step_seconds = [*self._step_seconds[-49:], time.monotonic() - t0]
            t0 = time.monotonic()
            per_step = sum(self._step_seconds) / len(self._step_seconds)
            p.step, p.loss, p.lr = step, value, lr
            # before the first validation, guess it: a forward pass is about a third of a step
            val_s = val_seconds or self._val_batches * per_step / 3
            left_s = (steps - step) * per_step + val_s
            p.epochs, p.eta_s = self.budget.plan(epoch, left_s, steps * per_step + val_s)
            self._emit(Progress("step", "running", self.run_dir, epoch, p.epochs, step, steps,
                                value, lr, p.eta_s))  # fmt: skip

        pending: tuple | None = None
        for step, (image, labels, subjects) in enumerate(loader, start=1):
            self.stopper.check(step)
            loss = run_step(image, labels, gen, subjects)
            if pending is not None:
                account(*pending)
            pending = (loss, step, len(image))
        if pending is not None:
            account(*pending)
        return loss_sum, seen
