#!/usr/bin/env bash
# The GPU checks in one script (CI stays on the CPU): the CUDA-marked tests, per-sample gradients at
# 10⁸ samples with the CPU figure beside them, and one VAE epoch on the device vs the CPU.
# Run on a machine with a GPU after the README's set-up: bash benchmarks/device_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DEVICE=${DEVICE:-cuda}
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"
echo "== CUDA tests"
"$PY" -m pytest -q -p no:cacheprovider -k "cuda or device" tests
echo "== per-sample gradients at 1e8 samples"
"$PY" benchmarks/bench_device.py --device "$DEVICE" --samples 100000000 --cpu-samples "${CPU_SAMPLES:-10000000}"
echo "== one VAE epoch (mnist5k), device vs cpu"
OUT=$(mktemp -d)
for dev in "$DEVICE" cpu; do
  start=$(date +%s.%N)
  "$PY" -m gradest vae train --dataset mnist5k --epochs 1 --device "$dev" --out "$OUT/$dev" > /dev/null
  end=$(date +%s.%N)
  echo "vae epoch on $dev: $(echo "$end - $start" | bc) s (process wall time, data loading included)"
done
