#!/usr/bin/env bash
# Every kernel check that needs a CUDA GPU, in one run (for a lent GPU machine; see docs/kernels.md):
#   the gpu-marked parity tests compiled for the GPU, the cache and token kernel checks with timings, and the quick
#   block-sparse attention check and benchmark. Logs (and JSON) go to $OUT (default ./gpu-out).
#     bash scripts/gpu_checks.sh                # everything (about 5 minutes on an H200)
#     bash scripts/gpu_checks.sh --tests-only   # the gpu-marked tests alone
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
# the repo root is the package: make it importable as `dynaccel` without installing anything
pkg=$(mktemp -d)
ln -s "$PWD" "$pkg/dynaccel"
export PYTHONPATH="$pkg${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
status=0
run() { echo "+ $*" | tee -a "$OUT/gpu-checks.log"; "$@" 2>&1 | tee -a "$OUT/gpu-checks.log"; status=$((status | $?)); }
run nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
run python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
run python3 -m pytest -q -p no:cacheprovider -m gpu tests/plugins/sparse_attention/test_sparse_attention_kernels.py
[ "${1:-}" = "--tests-only" ] || run python3 scripts/gpu_check_cache_kernels.py
[ "${1:-}" = "--tests-only" ] || run python3 scripts/gpu_check_token_kernels.py
[ "${1:-}" = "--tests-only" ] || run python3 scripts/gpu_bench_sparse_attention.py --quick --out "$OUT/sparse-attn-quick.json"
echo "gpu checks: exit status $status" | tee -a "$OUT/gpu-checks.log"
exit $status
