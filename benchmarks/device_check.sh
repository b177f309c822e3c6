#!/usr/bin/env bash
# The GPU checks in one call on a GPU machine (at most ~9.5 minutes by the limits below; not yet
# run on one: give the call timeout_s 600). Each step prints as it goes, so a step cut by its
# limit loses only its own numbers:
# - tests/test_gpu.py: bf16, fp16 + GradScaler and fp32 training with channels_last, no device
#   sync in a training step, NCCL under torchrun, GPU vs CPU inference;
# - the pipeline overhead of issue 3 (goal: pipeline/bare >= 0.90 in the bf16 row) with the seed
#   U-Net at 256 x 256, batch 16;
# - issue 17: 3D training with gpu_3d's network at patch 128^3, batch 2, bf16 + channels last
#   (goal: >= 8 iterations/s; nnU-Net v1 reported ~5.6 on an A100), and whole-CT inference at
#   1.5 mm (512 x 512 x 300 at 0.8 x 0.8 x 1.5 mm) in seconds, against MONAI's sliding window.
#
# The workplace's GPU image has PyTorch, numpy, scipy, scikit-image, pandas, matplotlib and
# pytest, not ctseg's other packages: fetch their (pure Python) wheels here once, into an
# ignored folder:   bash benchmarks/device_wheels.sh
# then run with the folder carried:  bash benchmarks/device_check.sh   (carry: [".whl"])
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="/tmp/site:$PWD" MPLBACKEND=Agg
export CTSEG_CACHE=/tmp/ctseg-cache CTSEG_CHECKPOINTS=/tmp/ctseg-runs
python3 -V
if [ -d .whl ]; then  # pure Python wheels: any Python takes them, whatever their metadata says
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --ignore-requires-python --target /tmp/site .whl/*.whl || echo "!! wheels not installed"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
echo "== tests/test_gpu.py"
# -k: a step past its limit is killed, with the torchrun children it started
timeout -k 10 170 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -25
echo "== training throughput (slices/s), seed U-Net 256 x 256, batch 16"
timeout -k 10 110 python3 benchmarks/training_throughput.py --device cuda --size 256 --batch 16 \
  --rounds 2
echo "== 3D training (issue 17): gpu_3d's network, patch 128^3, batch 2"
timeout -k 10 110 python3 benchmarks/training_throughput.py --device cuda --kind 3d \
  --preset gpu_3d --patch 128 128 128 --batch 2 --rounds 2 --only "bf16 + channels_last"
echo "== whole-CT inference at 1.5 mm (issue 17)"
timeout -k 10 150 python3 benchmarks/inference_3d_gpu.py --device cuda
