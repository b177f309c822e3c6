"""Small nnU-Net v2 model folders with random weights, built with nnU-Net's own code.

The plans are written in the layout nnU-Net's ExperimentPlanner writes (read back by its
PlansManager), the network comes from nnU-Net's trainer (``build_network_architecture``) and
the checkpoint holds the keys ``nnUNetTrainer.save_checkpoint`` stores, numpy scalars in its
logging included. The networks are tiny so a prediction takes a second or two on a CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

INTENSITY = {"max": 3000.0, "mean": 80.0, "median": 60.0, "min": -1024.0,
             "percentile_00_5": -990.0, "percentile_99_5": 1400.0, "std": 310.0}  # fmt: skip
LABELS = {"background": 0, "spleen": 1, "liver": 2, "aorta": 3, "my_tumour": 4}


def _arch(dim: int, residual: bool, features: list[int], strides: list | None = None) -> dict:
    n = len(features)
    conv = f"torch.nn.modules.conv.Conv{dim}d"
    norm = f"torch.nn.modules.instancenorm.InstanceNorm{dim}d"
    kwargs = {
        "n_stages": n, "features_per_stage": features, "conv_op": conv,
        "kernel_sizes": [[3] * dim] * n,
        "strides": strides or [[1] * dim] + [[2] * dim] * (n - 1),
        "n_conv_per_stage_decoder": [1 if residual else 2] * (n - 1), "conv_bias": True,
        "norm_op": norm, "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None, "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
    }  # fmt: skip
    kwargs["n_blocks_per_stage" if residual else "n_conv_per_stage"] = (
        [1, 2, 2, 2][:n] if residual else [2] * n
    )
    cls = "ResidualEncoderUNet" if residual else "PlainConvUNet"
    return {
        "network_class_name": f"dynamic_network_architectures.architectures.unet.{cls}",
        "arch_kwargs": kwargs,
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def plans_dict(configuration: str, spacing: list[float], patch: list[int],
               transpose_forward: list[int], residual: bool = False,
               features: list[int] = (4, 8, 16), strides: list | None = None,
               reader: str = "SimpleITKIO") -> dict:  # fmt: skip
    """A plans.json with one configuration, as nnU-Net writes it; ``features`` per stage and
    ``strides`` per stage (default: 1, then 2 on every axis) of its U-Net; ``reader`` its
    image_reader_writer."""
    dim = len(patch)
    resampling = {
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0,
                                      "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0,
                                     "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                               "force_separate_z": None},
    }  # fmt: skip
    return {
        "dataset_name": "Dataset999_Tiny",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [3.0, 3.0, 3.0],
        "original_median_shape_after_transp": [30, 101, 122],
        "image_reader_writer": reader,
        "transpose_forward": transpose_forward,
        "transpose_backward": [int(i) for i in np.argsort(transpose_forward)],
        "configurations": {
            configuration: {
                "data_identifier": f"nnUNetPlans_{configuration}",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": patch,
                "median_image_size_in_voxels": [30, 101, 122][-dim:],
                "spacing": spacing,
                "normalization_schemes": ["CTNormalization"],
                "use_mask_for_norm": [False],
                **resampling,
                "architecture": _arch(dim, residual, list(features), strides),
                "batch_dice": True,
            }
        },
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": INTENSITY},
    }


def dataset_dict(labels: dict[str, int] = LABELS) -> dict:
    return {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": 1,
            "file_ending": ".nii.gz"}  # fmt: skip


def _network(manager, config, n_out: int, deep_supervision: bool):
    """The network as nnUNetTrainer.build_network_architecture builds it (its own builder)."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    return get_network_from_plans(
        config.network_arch_class_name, config.network_arch_init_kwargs,
        config.network_arch_init_kwargs_req_import, 1, n_out, allow_init=True,
        deep_supervision=deep_supervision,
    )  # fmt: skip


def write_model_folder(root: Path, configuration: str, spacing: list[float], patch: list[int],
                       transpose_forward: list[int], folds: int = 1, residual: bool = False,
                       mirror_axes: tuple[int, ...] = (0, 1, 2), labels: dict = LABELS,
                       seed: int = 0, features: list[int] = (4, 8, 16),
                       strides: list | None = None, reader: str = "SimpleITKIO") -> Path:  # fmt: skip
    """``root/nnUNetTrainer__nnUNetPlans__<configuration>`` with ``folds`` random folds (the
    U-Net's ``features`` and ``strides`` per stage and the ``reader`` as :func:`plans_dict`)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    folder = root / f"nnUNetTrainer__nnUNetPlans__{configuration}"
    folder.mkdir(parents=True)
    plans = plans_dict(
        configuration, spacing, patch, transpose_forward, residual, features, strides, reader
    )
    dataset = dataset_dict(labels)
    (folder / "plans.json").write_text(json.dumps(plans, indent=4))
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=4))
    manager = PlansManager(plans)
    config = manager.get_configuration(configuration)
    n_out = manager.get_label_manager(dataset).num_segmentation_heads
    for fold in range(folds):
        torch.manual_seed(seed + fold)
        net = _network(manager, config, n_out, deep_supervision=True)
        with torch.no_grad():  # spread the classes: random heads favour one label everywhere
            for head in net.decoder.seg_layers:
                head.weight.mul_(4.0)
        checkpoint = {
            "network_weights": net.state_dict(),
            "optimizer_state": {"state": {}, "param_groups": [{"lr": 1e-2, "momentum": 0.99}]},
            "grad_scaler_state": None,
            "logging": {"mean_fg_dice": [np.float64(0.5)], "ema_fg_dice": [np.float64(0.4)],
                        "dice_per_class_or_region": [[np.float64(0.5)] * (n_out - 1)],
                        "train_losses": [0.9], "val_losses": [0.8], "lrs": [0.01],
                        "epoch_start_timestamps": [0.0], "epoch_end_timestamps": [1.0]},
            "_best_ema": np.float64(0.4),
            "current_epoch": 1,
            "init_args": {"plans": plans, "configuration": configuration, "fold": fold,
                          "dataset_json": dataset, "device": torch.device("cpu")},
            "trainer_name": "nnUNetTrainer",
            "inference_allowed_mirroring_axes": mirror_axes,
        }  # fmt: skip
        (folder / f"fold_{fold}").mkdir()
        torch.save(checkpoint, folder / f"fold_{fold}" / "checkpoint_final.pth")
    return folder


def write_small_ct(source: Path, path: Path) -> Path:
    """64 x 50 x 30 voxels (3 mm) of a real CT at ``source``; 4 x-slices and 3 y-rows set to
    0 HU (so nnU-Net's crop to the nonzero box has work to do)."""
    import nibabel as nib

    img = nib.load(source)
    block = np.asarray(img.dataobj)[20:84, 20:70, :].copy()
    block[:4] = 0
    block[:, -3:] = 0
    affine = img.affine.copy()
    affine[:3, 3] += img.affine[:3, :3] @ [20, 20, 0]
    nib.save(nib.Nifti1Image(block, affine), path)
    return path


def nnunet_reference(folder: Path, ct_path: Path, folds: int, device: str = "cpu") -> np.ndarray:
    """nnUNetPredictor's labels for ``ct_path`` (mirroring on) in the reader's axis order
    (the plans' image_reader_writer; SimpleITKIO: (k, j, i))."""
    labels, _, _ = _nnunet_predict(folder, ct_path, folds, device)
    return labels


def nnunet_reference_file(folder: Path, ct_path: Path, folds: int, out: Path) -> Path:
    """nnUNetPredictor's labels for ``ct_path`` written by the plans' own reader/writer to
    ``out`` (on the CT's grid, as ``nnUNetv2_predict`` writes them)."""
    labels, props, reader = _nnunet_predict(folder, ct_path, folds)
    reader.write_seg(labels, str(out), props)
    return out


def _nnunet_predict(folder: Path, ct_path: Path, folds: int, device: str = "cpu"):
    from nnunetv2.imageio.reader_writer_registry import recursive_find_reader_writer_by_name
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                perform_everything_on_device=False, device=torch.device(device),
                                verbose=False, verbose_preprocessing=False, allow_tqdm=False)  # fmt: skip
    # the network comes from the same builder nnUNetTrainer calls, the rest as
    # initialize_from_trained_model_folder
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = json.loads((folder / "plans.json").read_text())
    dataset = json.loads((folder / "dataset.json").read_text())
    params, axes = [], None
    for fold in range(folds):
        ckpt = torch.load(folder / f"fold_{fold}" / "checkpoint_final.pth", weights_only=False)
        params.append(ckpt["network_weights"])
        axes = ckpt["inference_allowed_mirroring_axes"] if fold == 0 else axes
    manager = PlansManager(plans)
    config = manager.get_configuration(ckpt["init_args"]["configuration"])
    n_out = manager.get_label_manager(dataset).num_segmentation_heads
    net = _network(manager, config, n_out, deep_supervision=False)
    net.load_state_dict(params[0])
    predictor.manual_initialization(net, manager, config, params, dataset, "nnUNetTrainer", axes)
    reader = recursive_find_reader_writer_by_name(plans["image_reader_writer"])()
    image, props = reader.read_images([str(ct_path)])
    return predictor.predict_single_npy_array(image, props), props, reader
