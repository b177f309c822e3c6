"""nnU-Net commands: export-nnunet (a ctseg 3D run as an nnU-Net v2 model folder)."""

from __future__ import annotations

import json
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export-nnunet", help="write a ctseg 3D run as an nnU-Net v2 model folder",
        description="Write a ctseg 3D run (its best.pth, else last.pth) or checkpoint as an "
        "nnU-Net v2 model folder (dataset.json, plans.json, fold_0/checkpoint_final.pth) that "
        "nnU-Net's predictor runs: nnUNetv2_predict_from_modelfolder -m OUT_DIR -f 0.",
        epilog="exit status: 0 written; 2 bad input (a 2D or sigmoid run, OUT_DIR not empty)",
    )  # fmt: skip
    p.add_argument("source", type=Path, metavar="RUN_OR_CHECKPOINT", help="run folder or .pth")
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="new (or empty) folder to write")
    p.add_argument(
        "--dataset-name", default=None,
        help="nnU-Net's dataset name in the plans (default Dataset999_<run folder name>)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the written folder as JSON")
    p.set_defaults(func=run_export_nnunet)


def run_export_nnunet(args) -> int:
    from ..nnunet.export import export_nnunet, padding_caveat

    out = export_nnunet(args.source, args.out_dir, dataset_name=args.dataset_name)
    caveat = padding_caveat(out)
    if args.json:
        print(json.dumps({"model_folder": str(out), "note": caveat}))
    else:
        print(f"wrote nnU-Net model folder {out} (configuration 3d_fullres, fold 0)")
        if caveat:  # a run padded with air only
            print(f"note: {caveat}")
    return 0
