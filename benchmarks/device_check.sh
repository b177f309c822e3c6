#!/usr/bin/env bash
# The GPU checks in one call on a GPU machine (~5 minutes on an H100): tests/test_gpu.py (bf16,
# fp16 + GradScaler and fp32 training with channels_last, no device sync in a training step,
# NCCL under torchrun, GPU vs CPU inference), then the pipeline overhead of issue 3 (goal:
# pipeline/bare >= 0.90 in the bf16 row) with the seed U-Net at 256 x 256, batch 16.
#
# The workplace's GPU image has PyTorch, numpy, scipy, scikit-image, pandas, matplotlib and
# pytest but not nibabel or platformdirs: fetch their wheels here once, into an ignored folder,
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl nibabel==5.4.2 platformdirs==4.14.8
# then run with the folder carried:  bash benchmarks/device_check.sh   (carry: [".whl"])
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="/tmp/site:$PWD" MPLBACKEND=Agg
export CTSEG_CACHE=/tmp/ctseg-cache CTSEG_CHECKPOINTS=/tmp/ctseg-runs
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
echo "== tests/test_gpu.py"
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -25
echo "== training throughput (slices/s), seed U-Net 256 x 256, batch 16"
timeout 240 python3 benchmarks/training_throughput.py --device cuda --size 256 --batch 16
