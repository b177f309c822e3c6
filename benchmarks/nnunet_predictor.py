"""ctseg's NnunetPredictor against nnU-Net's own nnUNetPredictor: same model folder, same CT.

Both run in a fresh process each (spawned, so the peak resident memory, VmHWM of
/proc/self/status, is that process's own), on the CPU with ``--threads`` torch threads, with
nnU-Net's settings: tile step 0.5, Gaussian weighting, mirroring on or off (``--mirror``;
TotalSegmentator runs without), ``perform_everything_on_device=False``. The time is the CT read
from its file plus the prediction (the model is loaded before the clock starts). nnU-Net:
``SimpleITKIO().read_images`` + ``predict_single_npy_array``; its predictor is set up as
``tests/nnunet_kit.py`` does (``manual_initialization``: its trainer classes need
batchgeneratorsv2, which is not installed), with ``nnUNet_def_n_proc`` = ``--threads``.
ctseg: ``load_ct`` + ``NnunetPredictor.predict(own_values=True)``. The labels are compared voxel
for voxel.

Model (without ``--model``): a 3d_fullres folder built with nnU-Net's code
(``tests/nnunet_kit.write_model_folder``) with a plan like TotalSegmentator's ``--fast`` model:
3 mm, PlainConvUNet widths 32, 64, 128, 256, 320, 320, strides 1, 2, 2, 2, 2, (1, 1, 2), patch
112 x 112 x 128, 118 outputs (background and the 117 structures), random weights. CT (without
``--ct``): synthetic int16 HU (``inference_3d.synthetic_ct``), ``--size`` x ``--size`` x
``--slices`` at 1.5 x 1.5 x 2.0 mm, written as NIfTI. nnU-Net resamples the 118 channels' logits
to the whole CT at once (float16, 2 bytes x 118 x voxels, plus float64 copies): a 512 x 512 x 300
CT needs over 20 GB there, more than this machine has free, hence the smaller default CT.

    python benchmarks/nnunet_predictor.py [--mirror] [--threads 2] [--model DIR] [--ct FILE]

Measured with the defaults (256 x 256 x 160 CT -> 107 x 128 x 128 at 3 mm, 2 windows, mirroring
off, 2 threads; "Intel(R) Xeon(R) Processor" with AMX, 2 cores shared with other engineers' work
at the time, so wall seconds swing with their load: CPU seconds are the steadier figure):
ctseg 81.2 s (96.0 CPU s), peak 3.71 GB; nnU-Net 121.9 s (111.5 CPU s), peak 5.98 GB; nnU-Net /
ctseg 1.50x time, 1.16x CPU time, 1.61x peak memory; labels differing 0 of 10.5 M voxels (91
label values present). Before ctseg resampled the logits one channel at a time (the same run,
under heavier load): ctseg 327.5 s (118.5 CPU s), 5.01 GB; nnU-Net 175.6 s (113.0 CPU s), 5.97 GB.
ctseg's profile (``--profile``): 61 s of the 81 s bring the 118 channels back to the CT's grid
(scipy's zoom, 0.43 s a channel, exactly as nnU-Net does it), 18 s the two windows, 2 s the rest.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fresh_process import measure  # noqa: E402

sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

SPACING_CT = (1.5, 1.5, 2.0)
SPACING_MODEL = [3.0, 3.0, 3.0]
PATCH = [112, 112, 128]
WIDTHS = [32, 64, 128, 256, 320, 320]
STRIDES = [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 1, 2]]


def peak_gb() -> float:
    """This process's peak resident memory (VmHWM), GB."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def write_model(root: Path) -> Path:
    """The TotalSegmentator-fast-like 3d_fullres folder (module doc), random weights."""
    from nnunet_kit import write_model_folder

    from ctseg_core.labels import STRUCTURES

    labels = {"background": 0, **{name: i + 1 for i, name in enumerate(STRUCTURES)}}
    return write_model_folder(root, "3d_fullres", SPACING_MODEL, PATCH, [0, 1, 2],
                              mirror_axes=(0, 1, 2), labels=labels, features=WIDTHS,
                              strides=STRIDES)  # fmt: skip


def write_ct(path: Path, size: int, slices: int) -> Path:
    """The synthetic CT (module doc) as NIfTI, RAS axes."""
    import nibabel as nib
    import numpy as np
    from inference_3d import synthetic_ct

    affine = np.diag([*SPACING_CT, 1.0])
    nib.save(nib.Nifti1Image(synthetic_ct((size, size, slices)), affine), path)
    return path


def run_nnunet(folder, ct_path, mirror, threads, queue) -> None:
    os.environ["nnUNet_def_n_proc"] = str(threads)  # noqa: SIM112 (nnU-Net spells it so)
    import json

    import torch

    torch.set_num_threads(threads)
    from nnunet_kit import _network
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from ctseg_core.nnunet.folder import load_weights, read_model_folder

    read = read_model_folder(folder)
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirror,
                                perform_everything_on_device=False, device=torch.device("cpu"),
                                verbose=False, verbose_preprocessing=False, allow_tqdm=False)  # fmt: skip
    plans = json.loads((Path(folder) / "plans.json").read_text())
    dataset = json.loads((Path(folder) / "dataset.json").read_text())
    params, axes = [], None
    for path in read.checkpoints:  # weights only: a model folder is data, not code to run
        weights, allowed = load_weights(path)
        params.append(weights)
        axes = allowed if axes is None else axes
    manager = PlansManager(plans)
    config = manager.get_configuration(read.config.name)
    n_out = manager.get_label_manager(dataset).num_segmentation_heads
    net = _network(manager, config, n_out, deep_supervision=False)
    net.load_state_dict(params[0])
    predictor.manual_initialization(net, manager, config, params, dataset, "nnUNetTrainer", axes)
    start, cpu = time.perf_counter(), time.process_time()
    image, props = SimpleITKIO().read_images([str(ct_path)])
    labels = predictor.predict_single_npy_array(image, props)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    labels = labels.transpose(2, 1, 0)  # SimpleITK's (k, j, i) -> the file's (i, j, k)
    queue.put({"seconds": seconds, "cpu_s": cpu, "peak_gb": peak_gb(), "labels": labels})


def run_ctseg(folder, ct_path, mirror, threads, profile, queue) -> None:
    import cProfile
    import io
    import pstats

    import torch

    torch.set_num_threads(threads)
    from ctseg_core.data.volume import from_canonical, load_ct
    from ctseg_core.nnunet.model import NnunetPredictor

    predictor = NnunetPredictor(folder, device="cpu", tta=mirror)
    profiler = cProfile.Profile() if profile else None
    start, cpu = time.perf_counter(), time.process_time()
    if profiler:
        profiler.enable()
    ct = load_ct(ct_path)
    labels = predictor.predict(ct, own_values=True)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    stats = io.StringIO()
    if profiler:
        profiler.disable()
        pstats.Stats(profiler, stream=stats).sort_stats("cumulative").print_stats(25)
    labels = from_canonical(labels, ct.original_affine)  # canonical -> the file's (i, j, k)
    queue.put({"seconds": seconds, "cpu_s": cpu, "peak_gb": peak_gb(), "labels": labels,
               "profile": stats.getvalue()})  # fmt: skip


def main() -> None:
    import nibabel as nib
    import numpy as np

    from ctseg_core.nnunet.folder import read_model_folder

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="an nnU-Net model folder (default: built)")
    parser.add_argument("--ct", type=Path, help="a CT NIfTI file (default: synthetic)")
    parser.add_argument("--size", type=int, default=256, help="in-plane size of the synthetic CT")
    parser.add_argument("--slices", type=int, default=160, help="slices of the synthetic CT")
    parser.add_argument("--mirror", action="store_true", help="mirroring (test-time flips)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (both)")
    parser.add_argument("--skip-nnunet", action="store_true", help="time ctseg only")
    parser.add_argument("--profile", action="store_true", help="print ctseg's cProfile")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.model or write_model(Path(tmp))
        ct_path = args.ct or write_ct(Path(tmp) / "ct.nii", args.size, args.slices)
        img = nib.load(ct_path)
        common = (str(folder), str(ct_path), args.mirror, args.threads)
        ours = measure(run_ctseg, *common, args.profile)
        peer = None if args.skip_nnunet else measure(run_nnunet, *common)
        config = read_model_folder(folder).config
    print(f"model {folder.name}: {config.network_class.rsplit('.', 1)[-1]} "
          f"{config.arch_kwargs.get('features_per_stage')}, patch {config.patch_size} at "
          f"{config.spacing_mm} mm; CT {ct_path.name} {img.shape} at "
          f"{tuple(round(float(z), 3) for z in img.header.get_zooms()[:3])} mm; mirroring "
          f"{'on' if args.mirror else 'off'}; {args.threads} thread(s)")  # fmt: skip
    print(ours["profile"], end="")
    for name, r in (("ctseg NnunetPredictor  ", ours), ("nnU-Net nnUNetPredictor", peer)):
        if r is not None:
            print(f"{name} {r['seconds']:7.1f} s ({r['cpu_s']:7.1f} CPU s)  peak "
                  f"{r['peak_gb']:6.2f} GB")  # fmt: skip
    if peer is None:
        return
    print(f"ratio nnU-Net / ctseg: time {peer['seconds'] / ours['seconds']:.2f}x (CPU time "
          f"{peer['cpu_s'] / ours['cpu_s']:.2f}x), peak memory "
          f"{peer['peak_gb'] / ours['peak_gb']:.2f}x")  # fmt: skip
    differ = float(np.mean(ours["labels"] != peer["labels"]))
    present = len(np.unique(peer["labels"]))
    print(f"labels differing: {differ:.2e} of {ours['labels'].size} voxels "
          f"({present} label values present in nnU-Net's)")  # fmt: skip


if __name__ == "__main__":
    main()
