"""A trained ctseg 3D run, exported: do nnU-Net's predictor and ctseg label the same voxels?

``tests/test_nnunet_export.py`` measures the share of voxels that differ between ctseg's own
prediction and ``nnUNetPredictor`` on the exported folder for an UNTRAINED network (4.77 %: its
logits are close everywhere, so every source of rounding flips an argmax; the sources are listed
in ``ctseg_core/nnunet/export.py``). This script measures it where it matters, for a trained run:
it exports ``--run`` (a ctseg 3D run folder with best.pth), predicts the validation subjects of
``--data`` with both (CPU, float32, no mirroring: the export allows none), and prints per subject
the share of voxels whose labels differ, the mean Dice of each against the reference (structures
present in the reference) and the mean Dice between the two predictions.

    python benchmarks/nnunet_export_agreement.py --run RUN_DIR [--data ROOT] [--split val]
        [--threads 2]

Without ``--data``: the 12-subject phantom of ``phantom_quality.py`` (seed 0), the dataset
``phantom_quality.py --preset phantom_3d --keep DIR`` trains on.

Measured (2026-12-05, Xeon with AMX, 2 threads; the run: ``phantom_3d`` trained for its 10
minutes, 14 epochs, best mean validation Dice 0.735; all 12 phantom subjects): on the 8 CTs of
at least one patch at 3 mm (64 x 64 x 48) 0.32-0.93 % of the voxels differ (mean Dice against
the reference ctseg 0.777, nnU-Net 0.782: the same quality); on the 4 CTs of 41-42 slices at
3 mm (fewer than the patch's 48) 7.3-9.6 % differ and nnU-Net's Dice falls (0.89 -> 0.63, 0.84
-> 0.51, 0.71 -> 0.52, 0.86 -> 0.70): nnU-Net pads them with 0 after normalising (mid-window
soft tissue), ctseg with air, as the run was trained (``export.padding_caveat``). Tried and not
kept: plans mapping air to 0 with the first bias compensated brought those 4 to 0.4-0.9 % and
the mean to 0.89 % (Dice 0.794 vs 0.792) but moved the first convolution's zero padding to air,
which changed 16-65 % of the labels of the tests' small networks.

That run padded with air: it predates ``data.padding``. The 3D presets now pad as nnU-Net
("normalised_zero"), and for such a run the export needs no caveat: on an untrained network
nnU-Net labels a CT smaller than one patch exactly as ctseg when nothing is resampled
(``tests/test_nnunet_export.py``). Measured on such a run (2026-12-06, Xeon with AMX, 2 threads;
``phantom_quality.py --preset phantom_3d --patch 64 64 64 --keep``: 12 epochs in 10 minutes,
best mean validation Dice 0.757; padding normalised_zero, and ctseg's sliding window averaging
logits as nnU-Net does; ``--split all``, the 12 phantom subjects): 0.07-0.46 % of the voxels
differ (mean 0.24 %), the small CTs among them no more than the others; mean Dice against the
reference ctseg 0.8146, nnU-Net 0.8145; Dice between the two predictions 0.969-0.995. ctseg
took 1.4-5.4 s a CT, nnUNetPredictor 3.8-11.0 s.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def mean_dice(a: np.ndarray, b: np.ndarray, values) -> float:
    """Mean over ``values`` of the Dice of ``a == v`` and ``b == v`` (1 when both are empty)."""
    scores = []
    for v in values:
        x, y = a == v, b == v
        total = int(x.sum()) + int(y.sum())
        scores.append(1.0 if total == 0 else 2.0 * int((x & y).sum()) / total)
    return float(np.mean(scores)) if scores else float("nan")


def main() -> None:
    import torch

    from ctseg_core.data.dataset_root import find_ct, open_dataset
    from ctseg_core.data.subject import load_subject
    from ctseg_core.inference.predictor import Predictor
    from ctseg_core.nnunet.export import export_nnunet

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a ctseg 3D run folder")
    parser.add_argument("--data", type=Path, default=None, help="dataset root (default: phantom)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = args.data
        if root is None:
            from ctseg_core.data.phantom.dataset import make_phantom_dataset

            root = tmp / "phantom"
            make_phantom_dataset(root, n_subjects=12, seed=0)
        model_dir = export_nnunet(args.run, tmp / "model")
        theirs_predictor = nnUNetPredictor(
            device=torch.device("cpu"), perform_everything_on_device=False, allow_tqdm=False,
            use_mirroring=False,
        )  # fmt: skip
        theirs_predictor.initialize_from_trained_model_folder(str(model_dir), use_folds=(0,))
        # the whole CT, as nnU-Net's predictor (ctseg's default labels the body's box only)
        ours_predictor = Predictor([args.run / "best.pth"], device="cpu", body_crop=False)
        ours_predictor.strategy.amp = None  # float32, as nnU-Net on a CPU
        print(f"run {args.run}; data {root}; split {args.split}; {args.threads} threads")
        rows = []
        (tmp / "out").mkdir()
        index = open_dataset(root)
        for subject in index.subjects_in(args.split):
            data = load_subject(index.subject_dir(subject))
            case = tmp / "in" / f"{subject}_0000.nii.gz"
            case.parent.mkdir(exist_ok=True)
            shutil.copy(find_ct(index.subject_dir(subject)), case)
            t0 = time.perf_counter()
            theirs_predictor.predict_from_files_sequential(
                [[str(case)]], str(tmp / "out"), overwrite=True
            )
            t_theirs = time.perf_counter() - t0
            written = next((tmp / "out").glob(f"{subject}.nii*"))
            theirs = np.asarray(nib.as_closest_canonical(nib.load(written)).dataobj)
            t0 = time.perf_counter()
            ours = ours_predictor.predict(data.ct)
            t_ours = time.perf_counter() - t0
            present = [int(v) for v in np.unique(data.labels) if v > 0]
            row = (
                subject, float((ours != theirs).mean()), mean_dice(ours, data.labels, present),
                mean_dice(theirs, data.labels, present), mean_dice(ours, theirs, present),
                t_ours, t_theirs,
            )  # fmt: skip
            rows.append(row)
            print(
                f"{subject}: labels differ {row[1]:.3%}; Dice vs reference ctseg {row[2]:.4f}, "
                f"nnU-Net {row[3]:.4f}; Dice ctseg vs nnU-Net {row[4]:.4f}; "
                f"{t_ours:.1f} s vs {t_theirs:.1f} s"
            )
        share = np.mean([r[1] for r in rows])
        print(
            f"mean over {len(rows)} subjects: labels differ {share:.3%}; Dice vs reference "
            f"ctseg {np.mean([r[2] for r in rows]):.4f}, nnU-Net {np.mean([r[3] for r in rows]):.4f}"
        )


if __name__ == "__main__":
    main()
