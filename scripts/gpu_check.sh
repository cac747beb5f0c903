#!/usr/bin/env bash
# The GPU check: the CUDA exactness tests and the GPU capture timing, in one short run.
#
#   bash scripts/gpu_check.sh [OUT_DIR]
#
# Runs on a machine with a CUDA device and a Python that already has torch (CUDA build),
# transformers 5.x and the project's other dependencies. Where a package is missing or of another
# version, put its wheels in .whl/ (pip download ... -d .whl) and they are installed first into a
# private target folder (no network needed). CI has no GPU: there tests/test_cuda.py is skipped.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-/tmp/attnexplain-gpu-check}}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python3}"
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/attnexplain-site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/attnexplain-site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee "$OUT_DIR/gpu.txt"
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available(), '| transformers', transformers.__version__)" | tee -a "$OUT_DIR/gpu.txt"
rc=0
"$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py --junitxml="$OUT_DIR/test_cuda.xml" 2>&1 | tee "$OUT_DIR/test_cuda.log" | tail -40 || rc=1
ATTNEXPLAIN_TEST_DEVICE=cuda "$PY" -m pytest -q -p no:cacheprovider tests/test_backend_patterns.py --junitxml="$OUT_DIR/test_backend_patterns_cuda.xml" 2>&1 | tee "$OUT_DIR/test_backend_patterns_cuda.log" | tail -15 || rc=1
"$PY" benchmarks/gpu_capture.py 2>&1 | tee "$OUT_DIR/gpu_capture.log" | tail -20 || rc=1
exit $rc
