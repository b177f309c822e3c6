"""Phantom demo quality: time per epoch and the validation Dice reached within a time budget.

Trains the ``phantom_demo`` preset (ctseg_core.training.presets: 12 phantom subjects,
128 x 128, features [16, 32, 64, 128]) through the real trainer within its time budget
(``TrainConfig.minutes``: the preset's 10 minutes, or ``--minutes``; the trainer ends the run
before an epoch that would not fit and its cosine schedule spans the epochs that do, whatever
the CPU) and prints, per epoch, the seconds, the learning rate, the epochs the budget is then
expected to hold, and the mean validation Dice over the structures present in the validation
references; then the best Dice within the budget. Goals (issue 3): an epoch in under a minute,
best mean Dice >= 0.80 within 10 minutes on 2 CPU cores. ``--amp off`` runs the same in fp32
(to check that bf16 reaches the same Dice). ``--epochs`` is an upper bound.

    python benchmarks/phantom_quality.py [--data ROOT] [--minutes 10] [--amp auto|off]
        [--context 3] [--aug preset|light|default|off] [--batch N] [--fg F] [--samples N]
        [--lr LR] [--epochs N] [--bottleneck N] [--threads N] [--norm batch|instance] [--wd W]
        [--curve P] [--vessel P] [--seed N] [--deep-supervision N]   (candidates to compare)

The numbers below were measured before the time budget existed, on a Xeon with AMX: the preset
then had a fixed 42-epoch cosine and this script stopped the run mid-epoch at 10 minutes (on an
AMD EPYC without AMX that schedule fitted 16 epochs: best Dice 0.755, the lr barely decayed).
Measured on 2 quiet cores, phantom seed 0 (best mean Dice within 10 minutes; a rerun with the same
settings repeats to about the third decimal, but another --seed moves it by up to 0.04 and small
vessels by 0.3, so smaller differences are noise). The preset: 0.831 (--seed 1 to 5: 0.801, 0.808,
0.801, 0.822, 0.810; mean 0.812), 42 epochs of ~13.5 s. What got it there, each against the step
before: deep supervision at 1/2 and 1/4 (--deep-supervision 2, 33 epochs fit) 0.754 -> 0.777; down
to 1/8 (3) 0.793; bottleneck 512 0.806 (32 epochs of 18 s); glibc keeping freed memory (the step
123 -> 97 ms) let 38 epochs fit: seeds 0-3 0.802, 0.812, 0.782, 0.781 (mean 0.794); a Dice + CE
backward without a transposing copy (epoch 15 -> 13.5 s) let 42 fit: 0.814, 0.800, 0.780, 0.823
(mean 0.804); new random vessel intensities on half the samples (--vessel 0.5: a monotone
intensity curve cannot make an enhanced artery darker than muscle, and the validation scans are
native-phase while 4 of the 8 training scans are angiographies): 0.831, 0.801, 0.808, 0.801 (mean
0.810, every seed >= 0.80; mean over the seeds of the iliac arteries 0.56/0.36 -> 0.61/0.52, of
the duodenum, which took their voxels, 0.62 -> 0.70; the mean gain itself is within the spread).
At 38 epochs: intensity curves on 80 % of the samples, seed 2 0.786 (noise); lr 3e-3, seeds 0, 2,
3 0.794, 0.794, 0.797 (steadier, but the same mean within the spread). Before
deep supervision the preset (bottleneck 256, 40 epochs) reached 0.754 (seeds 1, 2: 0.736, 0.714),
and nothing else moved it beyond the seed spread: batch norm 0.70; context 3 0.757 (cut at 35 of 40
epochs); context 3 with neighbours 20 mm apart 0.746; lr 1e-2 0.721; AdamW wd 0.01 0.753;
foreground fraction 0.8 0.740; batch 2 0.722; EMA of the weights (0.99 per step) 0.750 (ahead by
0.03-0.06 until epoch 25, then equal); per-structure random HU offsets (SynthSeg-like, half the
samples, +-150 HU) 0.738; lumbar vertebrae made to widen caudally in the phantom 0.738; twice the
budget (80 epochs in 20 minutes) 0.783. What is still lost sits in ~9 of 32 structures: lumbar
levels confused with their neighbours (L4/L5: one axial slice shows no level; L5 0.54 over the
four seeds), native-phase iliac arteries (0.5-0.6; one native-phase pelvis among the 8 training
subjects), the prostate.

``--preset both`` (2026-12-05, a Xeon with AMX, 2 cores; the 2D epochs took 20.6 s here, not the
13.5 s above): phantom_demo 28 epochs, best 0.801; phantom_3d 8 epochs of ~65 s (160 steps of
batch 2 at 96 x 96 x 64), best 0.029 (goal: 3D >= 0.85 and >= 2D: not met; the 3D preset is
untuned, its loss 1.54 -> 1.20 was still falling when the budget ended).
Again with the retuned ``phantom_3d`` (64 x 64 x 48 patches, half structure-centred, light
deformations; 2026-12-05, Xeon with AMX, 2 quiet cores, the two presets one after the other):
phantom_demo 28 epochs of 20.4 s, best 0.799; phantom_3d 14 epochs of 40 s (50 steps of 0.76 s
and 3.5 s of sliding-window validation each), best 0.735 (loss 1.85 -> 0.37; weakest: prostate
0.09, iliac_artery_right 0.20, vertebrae_L2 0.33). Goal (3D >= 0.85 and >= 2D): not met; the
3D model takes 700 steps of two 64 x 64 x 48 patches in the budget.
Again after 3D training went channels last and ``phantom_3d`` to batch 1 (2026-12-06, Xeon with
AMX, 2 quiet cores, slower that day: 2D epochs of 23 s): phantom_demo 22 epochs, best 0.777;
phantom_3d 17 epochs of 34 s (100 steps of one patch each), best 0.765 (3D - 2D: -0.012;
weakest: vertebrae_L3 0.21, vertebrae_L2 0.32, kidney_left 0.45, iliac_artery_right 0.45,
duodenum 0.58). Goal (3D >= 0.85 and >= 2D): not met. Other patch sizes, the same day, the
preset otherwise (10 quiet minutes each, seed 0): 48 x 48 x 48, 29 epochs, 0.654; 64 x 64 x 64
(more z for the vertebra levels), 12 epochs, 0.757; 80 x 80 x 48, 12 epochs, 0.706; so the
preset's 64 x 64 x 48 stays (context against steps in 10 minutes). lr 2e-3 (19 epochs of 30 s,
the machine quicker by then): 0.768, the same as 3e-3 within the seed spread; 3e-3 stays.
Each preset's best.pth is now also evaluated through ``ctseg evaluate`` on the validation split
(whole CTs, the real inference path with the body box, labels on each CT's own grid; each
structure's mean over subjects, then the mean): the training's validation Dice pools the tiles
at the model's grid (3D) or 32 slices a subject (2D), so only the evaluated values compare the
two kinds as a user meets them. 2026-12-06 (second), a Xeon with AMX, 2 cores, quiet but for a
few test runs of mine during the 2D run (its epochs 23-24 took 22-23 s instead of 19-20):
phantom_demo 29 epochs, best 0.803, evaluated 0.799; phantom_3d 20 epochs of 27 s (0.26 s a
step, ~2 s of validation an epoch), best 0.815, evaluated 0.795 (3D - 2D: +0.013 validation,
-0.004 evaluated: equal within the spread of two validation subjects). Weakest evaluated: 2D
vertebrae_L5 0.55, L4 0.55, iliac_artery_right 0.56; 3D iliac_artery_right 0.52, kidney_left
0.59 (on s0007 a third of it called background or colon), femur_left 0.62 (s0007 holds 30 of
its voxels, at the CT's edge). Labels at 3 mm taken back to the CTs' grids (trilinear one-hot,
argmax) keep a mean Dice of 0.97-0.98, so the 3 mm grid costs at most ~0.03 of the gap to 0.85:
the 3D model is short of training, not of resolution. Goal (3D >= 0.85 and >= 2D): NOT met.
Tried after it, not kept: deep supervision down to 1/8 for phantom_3d (``--deep-supervision
3``, as helped the 2D demo): 20 epochs, best 0.803, evaluated 0.789 (vertebrae_L2 0.35 at the
end, 0.70 in the run before: a level identified or not moves a structure by that much).
A higher learning rate for phantom_3d (``--lr 5e-3``, to take more from each step): best 0.783,
evaluated 0.765: worse; 3e-3 stays.
Twice the budget (``--minutes 20``, the same machine, quiet): 40 epochs, best 0.843, evaluated
0.824 (+0.028 / +0.029 over 10 minutes), where the 2D demo had gained nothing from 20 minutes
(0.783, above): the 3D model is limited by its steps, so a faster step (or a GPU) is the way
to 0.85, not its settings.
On the CPU a student's laptop is likely to have (2026-12-06, an AMD EPYC with AVX2 only: no
AVX-512, no native bf16, so both train in float32, 3D channels last; 2 quiet cores): phantom_demo
16 epochs of 35.5 s, best 0.745, evaluated 0.730; phantom_3d 6 epochs of 90 s (~0.8 s a step),
best 0.547, evaluated 0.528 (iliac veins, prostate, bladder, vertebrae_L5 still 0): on such a
CPU 10 minutes are far too few steps for the 3D model; the 2D demo is the laptop's model there.
So ``phantom_3d`` now buys steps: 4 mm, 48 x 48 x 32 patches (192 x 192 x 128 mm, 0.38x the
voxels), one convolution per stage (``--convs``, ``--decoder-convs``): a step 0.25 s instead
of 0.8 s there. The same EPYC, 2 quiet cores, ``--preset both`` (2026-12-06): phantom_demo 16
epochs of 34.7 s, best 0.745, evaluated 0.730 (as before); phantom_3d 22 epochs of 25.8 s,
best 0.778, evaluated 0.763 (3D - 2D: +0.033 / +0.033; weakest evaluated: iliac_artery_left
0.56, iliac_vena_left 0.58, duodenum 0.58, iliac_artery_right 0.64; the 2D demo's: vertebrae_L5
0.30, prostate 0.32, vertebrae_L2 0.44). ``--seed 1``, the same machine, quiet: phantom_demo
0.743 / 0.723, phantom_3d 0.763 / 0.730 (+0.020 / +0.007; the 2D demo's weakest the lumbar
levels L2-L5 at 0.27-0.39, the 3D model's the iliac arteries at 0.39-0.47). Goal: >= 2D met on
this CPU with both seeds (with seed 1 by less than the seed spread once evaluated), 0.85 not.
Tried in the
same search (10 minutes each, that EPYC): two convolutions in the three deepest encoder and two
deepest decoder stages (0.29 s a step) 0.775 / 0.741; widths [8, 16, 32, 64, 128] (0.15 s a
step) 0.675 at 6 minutes against 0.70, stopped. Where the step goes there (a profile,
float32, channels last): oneDNN computes the weight gradients of channels-last convolutions by
im2col and GEMM (the full-resolution decoder convolution's at a third of its forward speed),
and PyTorch sends batch-1 convolutions on small grids (batch x channels x depth x height below
20480) to its reference path: ~45 % of the step between them. The second is now undone (such a
convolution runs as two halves of its patch, a batch of two, through oneDNN:
``ctseg_core.models.cpu_convs``; a step 1.21x as fast, ``training_throughput.py --kind 3d``),
and with it came to light that PyTorch 2.13's CPU instance norm got one sample's gradient 140 %
wrong when it arrived channels last, which the first stage of every phantom_3d run on this CPU
had trained on (its reference-path convolution returned the default layout); the instance norms
are now per-sample batch norms (``models.nnunet.ChannelsLastInstanceNorm3d``). phantom_3d alone
after both (2026-12-07, the same kind of EPYC, 2 quiet cores, seed 0): 27 epochs of 21 s
(22 of 25.8 s before), best 0.783, evaluated 0.763 (before: 0.778 / 0.763: within the seed
spread; weakest evaluated iliac_artery_left 0.55, duodenum 0.60, iliac_vena_left 0.63,
vertebrae_L4 0.63). ``--seed 1`` right after: 27 epochs, 0.769 / 0.748 (before: 0.763 /
0.730; weakest evaluated the iliac arteries 0.42 / 0.49). ``--preset both`` after it (seed 0,
quiet): phantom_demo 16 epochs of 34.9 s, 0.745 / 0.730 (as before: it trains in the default
layout here); phantom_3d 27 epochs of 20.9 s, 0.785 / 0.759 (3D - 2D: +0.040 / +0.029).
Goal: 3D >= 2D met on this CPU; 0.85 still NOT met.
On a Xeon with AMX again (2026-12-07, bf16, 2 quiet cores, one run after another, seed 0
unless said): phantom_demo 28 epochs of 20.2 s, 0.795 / 0.783; phantom_3d 62 epochs of 9.2 s,
0.817 / 0.790 (``--seed 1`` 0.811 / 0.793), its validation Dice flat from epoch ~45 (0.815
there): with 2.3x the steps of the AVX2 EPYC the narrow network, not its steps, limits it. So
where the CPU has AMX the preset's stages widen (``--features 32 64 128 256 320``): 32 epochs
of 17.5 s, 0.831 / 0.808 (``--seed 1`` 0.825 / 0.806; the preset itself with ``--seed 2``,
another phantom too, 0.835 / 0.818; weakest evaluated the iliac arteries
0.54-0.61, iliac_vena_left 0.63-0.68, duodenum 0.61-0.71). Not kept: 3 mm with 64 x 64 x 48
patches (``--spacing 3 3 3 --patch 64 64 48``, epochs of 25 s: 0.751 at 7.4 minutes against
0.815, stopped); DataConfig's stronger deformations (``--aug default``) 0.824 / 0.799 narrow,
0.829 / 0.803 wide. Goal: 3D >= 2D met on this CPU too (+0.036 / +0.025 wide); 0.85 NOT met.
The next day on the same kind of Xeon (epochs 16.4-18.9 s for the same preset, seed 0): the
preset 31 epochs, 0.826 / 0.808. Tried, none better: ``--lr 2e-3`` 0.823 (28 epochs, another
program's burst in them); ``--lr 4.5e-3`` 0.814 / 0.805; ``--spacing 3.5 3.5 4`` (48 x 48 x 32
patches: 168 x 168 x 128 mm) 0.815 / 0.806; ``--spacing 4 4 3`` (96 mm of z in a patch)
0.823 / 0.803; ``--spacing 4 4 5`` (160 mm) 0.73 at epoch 18 against ~0.80, stopped; a thin
full-resolution stage (``--features 16 64 128 256 320``: epochs of 13.8 s, 41 of them) ahead
until half-way (0.802 against 0.772 at 4.8 minutes), then flat: 0.814 / 0.790. The preset
given twice the time (``--minutes 20``, 70 epochs of 16.4 s) 0.848 / 0.824: the goal is about
twice the steps per minute away on this CPU. Where
the preset's best.pth loses Dice on the two validation CTs (pelvic scans, 2.5 mm slices): the
iliac vessels, the prostate and a kidney cut at the scan's edge are under-segmented (20-45 %
of their voxels called background), gluteus minimus against medius, duodenum against small
bowel, L2 against L1; keeping each structure's largest component does not help (0.815 ->
0.810 on the CTs' grids), and the trainer's tiled validation gives what the predictor's
sliding window gives at 4 mm (0.830 with and without overlap 0.5 and the body box).
After the Dice + CE went through the voxels in cache-sized blocks (1.09x the voxels a second in
``training_throughput.py --kind 3d``, same run), the same evening: 31 epochs of 18.1 s (this
Xeon's epochs were slower than the day before's), 0.829 / 0.810: as before; with the loss's
final form (probabilities up to 32 MiB kept), later, quiet: 35 epochs of 16.2 s, 0.824 / 0.805
(weakest evaluated the iliac arteries 0.55 / 0.63, iliac_vena_left 0.64): more steps, the same
Dice within a seed's spread; 0.85 NOT met. Right after, ``--fg 0.8`` (more patches centred on a
structure, for the weak pelvic vessels): 34 epochs, 0.820 / 0.803 (iliac arteries 0.59 / 0.62,
prostate 0.63): not better; 0.5 stays.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from ctseg_core.config import DataConfig
from ctseg_core.runs.run_folder import read_history, read_status
from ctseg_core.training.presets import preset
from ctseg_core.training.trainer import Trainer


def present_structures(root: Path, cache_dir: str) -> list[str]:
    """Structures with voxels in any subject, in label order (prepares the cache)."""
    from ctseg_core.data.cache import open_cached
    from ctseg_core.data.dataset_root import open_dataset
    from ctseg_core.data.prepare import prepare_dataset
    from ctseg_core.labels import STRUCTURES

    index = open_dataset(root)
    prepare_dataset(index, cache_dir)
    counts = sum(open_cached(root, s, cache_dir).voxel_counts for s in index.subjects)
    return [name for value, name in enumerate(STRUCTURES, start=1) if counts[value] > 0]


#: command-line flag -> (config section, field) it sets when given
OVERRIDES = {
    "lr": ("train", "lr"),
    "epochs": ("train", "epochs"),
    "context": ("data", "context_slices"),
    "batch": ("data", "batch_size"),
    "fg": ("data", "foreground_fraction"),
    "samples": ("data", "samples_per_epoch"),
    "curve": ("data", "curve_prob"),
    "vessel": ("data", "vessel_contrast_prob"),
    "bottleneck": ("model", "bottleneck"),
    "norm": ("model", "norm"),
    "deep_supervision": ("model", "deep_supervision"),
    "patch": ("data", "patch_size"),
    "spacing": ("data", "spacing_mm"),
    "features": ("model", "features"),
    "convs": ("model", "convs_per_stage"),
    "decoder_convs": ("model", "decoder_convs_per_stage"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="dataset (default: a new phantom)")
    parser.add_argument("--subjects", type=int, default=12)
    parser.add_argument(
        "--minutes", type=float, default=None, help="time budget (default: the preset's, 10)"
    )
    parser.add_argument("--amp", default="auto")
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--context", type=int, default=None, help="context slices (2.5D)")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--fg", type=float, default=None, help="foreground fraction")
    parser.add_argument("--samples", type=int, default=None, help="training samples per epoch")
    parser.add_argument("--bottleneck", type=int, default=None)
    parser.add_argument("--norm", choices=("batch", "instance"), default=None)
    parser.add_argument("--deep-supervision", type=int, default=None, help="extra heads")
    parser.add_argument("--patch", type=int, nargs=3, default=None, help="3D patch X Y Z")
    parser.add_argument("--spacing", type=float, nargs=3, default=None, help="3D spacing mm")
    parser.add_argument("--features", type=int, nargs="+", default=None, help="stage widths")
    parser.add_argument("--convs", type=int, nargs="+", default=None, help="3D convs per stage")
    parser.add_argument(
        "--decoder-convs", type=int, nargs="+", default=None, help="3D decoder convs per stage"
    )
    parser.add_argument("--curve", type=float, default=None, help="intensity-curve probability")
    parser.add_argument("--vessel", type=float, default=None, help="vessel contrast probability")
    parser.add_argument("--wd", type=float, default=None, help="weight decay (AdamW)")
    parser.add_argument("--seed", type=int, default=None, help="data and training seed")
    parser.add_argument("--aug", choices=("preset", "light", "default", "off"), default="preset")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--all-structures", action="store_true", help="117 outputs, not present")
    parser.add_argument("--keep", type=Path, default=None, help="write the run folder here")
    parser.add_argument(
        "--no-evaluate", action="store_true",
        help="skip evaluating best.pth with ctseg evaluate after the budget",
    )  # fmt: skip
    parser.add_argument(
        "--preset",
        choices=("phantom_demo", "phantom_3d", "both"),
        default="phantom_demo",
        help="the 2D demo, the 3D model, or both one after the other in the same budget",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data
        if root is None:
            from ctseg_core.data.phantom.dataset import make_phantom_dataset

            root = Path(tmp) / "phantom"
            t0 = time.perf_counter()
            make_phantom_dataset(root, n_subjects=args.subjects, seed=0)
            print(f"phantom: {args.subjects} subjects in {time.perf_counter() - t0:.0f} s")
        names = ("phantom_demo", "phantom_3d") if args.preset == "both" else (args.preset,)
        best = {name: train_one(name, root, Path(tmp), args) for name in names}
        if len(best) == 2:
            (a, ea), (b, eb) = best["phantom_demo"], best["phantom_3d"]
            print(f"\nbest mean validation Dice in the same budget: 2D {a:.3f}, 3D {b:.3f} "
                  f"(3D - 2D {b - a:+.3f}; goal: 3D >= 0.85 and >= 2D)")  # fmt: skip
            if not args.no_evaluate:
                print(f"their best.pth evaluated (ctseg evaluate, val split, on the CTs' own "
                      f"grids): 2D {ea:.3f}, 3D {eb:.3f} (3D - 2D {eb - ea:+.3f})")  # fmt: skip


def evaluated_dice(run_dir: Path, root: Path, cache_dir: str, out: Path) -> tuple[float, str]:
    """Mean Dice of the run's ``best.pth`` on the validation split through ``ctseg evaluate``
    (the real inference path: whole CTs, a 3D model's sliding window with overlap 0.5, labels
    on each CT's own grid), over the structures annotated in the validation references (each
    structure's mean over the subjects that have it); and the weakest structures."""
    from ctseg_core.evaluation.evaluate import evaluate_predictions

    results = evaluate_predictions(root, "val", [run_dir / "best.pth"], out, report=False,
                                   cache_dir=cache_dir, device="cpu")  # fmt: skip
    per_structure = results.groupby("structure")["dice"].mean().dropna().sort_values()
    weakest = ", ".join(f"{k} {v:.2f}" for k, v in per_structure.head(6).items())
    return float(per_structure.mean()), weakest


def train_one(name: str, root: Path, tmp: Path, args) -> tuple[float, float]:
    """Train preset ``name`` with the flags' changes; print its epochs; its best mean validation
    Dice, and that of its best.pth evaluated as ``ctseg evaluate`` does (NaN: not evaluated)."""
    config = preset(name, str(root))
    config.data.cache_dir = str(Path(tmp) / "cache")
    if not args.all_structures:  # as the Train page does by default
        config.data.structures = present_structures(root, config.data.cache_dir)
        print(f"{len(config.data.structures)} structures present in the dataset")
    config.train.amp = args.amp
    if args.minutes is not None:
        config.train.minutes = args.minutes
    config.run_name = f"phantom-quality-{name}"
    for flag, (section, name) in OVERRIDES.items():
        value = getattr(args, flag)
        if value is not None:
            setattr(getattr(config, section), name, value)
    if args.seed is not None:  # the run-to-run spread of the same settings
        config.data.seed = config.train.seed = args.seed
    if args.wd is not None:
        config.train.optimizer, config.train.weight_decay = "adamw", args.wd
    if args.aug == "off":
        config.data.augment = False
    elif args.aug == "light":  # smaller, rarer deformations; no elastic field
        config.data.rotation_deg, config.data.scale_range = 7.5, (0.93, 1.07)
        config.data.elastic_prob, config.data.spatial_prob = 0.0, 0.3
    elif args.aug == "default":  # DataConfig's deformation strengths
        fresh = DataConfig()
        for name in ("rotation_deg", "scale_range", "elastic_prob", "spatial_prob"):
            setattr(config.data, name, getattr(fresh, name))
    if args.threads:
        torch.set_num_threads(args.threads)
    config.validate()
    print("settings: " + ", ".join(f"{k}={v}" for k, v in vars(args).items()), flush=True)

    def on_progress(p) -> None:
        if p.kind == "epoch" and p.record:
            r = p.record
            print(f"epoch {r['epoch']:>3}  {r['seconds']:6.1f} s  lr {r['lr']:.2e}  train "
                  f"loss {r['train_loss']:.3f}  val Dice {r['val_dice_mean'] or 0:.3f}  "
                  f"({r['elapsed_s'] / 60:.1f} min, {r.get('planned_epochs', '?')} epochs "
                  "planned)", flush=True)  # fmt: skip

    trainer = Trainer(
        config, checkpoints_root=args.keep or Path(tmp) / "runs", callbacks=[on_progress]
    )
    run_dir = trainer.open_run()
    state = trainer.run()
    history = read_history(run_dir)
    dices = [r["val_dice_mean"] or 0.0 for r in history]
    per_epoch = sum(r["seconds"] for r in history) / max(1, len(history))
    best = max(dices, default=0.0)
    trained = history[-1]["elapsed_s"] / 60 if history else 0.0
    print(f"\n{state} ({read_status(run_dir).get('message')}): {len(history)} epochs, "
          f"{trained:.1f} of {config.train.minutes:g} min, {per_epoch:.1f} s per epoch "
          "(goal < 60 s)")  # fmt: skip
    print(f"best mean validation Dice (present structures): {best:.3f} (goal >= 0.80)")
    if history:
        last = history[-1]["val_dice"]
        scored = sorted((v, k) for k, v in last.items() if v is not None)
        print("weakest structures at the end: " + ", ".join(f"{k} {v:.2f}" for v, k in scored[:8]))
    evaluated = float("nan")
    if not args.no_evaluate and (run_dir / "best.pth").is_file():
        t0 = time.perf_counter()
        evaluated, weakest = evaluated_dice(run_dir, root, config.data.cache_dir,
                                            tmp / f"evaluation-{run_dir.name}")  # fmt: skip
        print(f"best.pth evaluated (ctseg evaluate, val split, on the CTs' own grids): mean Dice "
              f"{evaluated:.3f} in {time.perf_counter() - t0:.0f} s; weakest: {weakest}")  # fmt: skip
    return best, evaluated


if __name__ == "__main__":
    main()
