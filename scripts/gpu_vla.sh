#!/usr/bin/env bash
# The VLA latency check on a lent GPU machine: installs transformers from wheels carried in gpu-wheels/ when the
# machine lacks it (no network there), then times a π0-sized model with and without each VLA strategy.
#   bash scripts/gpu_vla.sh            # writes $OUT/vla.json and $OUT/vla.log (about 3 minutes on an H200)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
pkg=$(mktemp -d)
ln -s "$PWD" "$pkg/dynaccel"
export PYTHONPATH="$pkg${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
python3 -c "import sys, torch; print(sys.version.split()[0], 'torch', torch.__version__)"
if ! python3 -c "import transformers, diffusers, sys; sys.exit(transformers.__version__ != '5.25.0')" 2>/dev/null; then
    # gpu-wheels/: transformers 5.25.0, diffusers 0.42.1 and the pure-Python or cp312 dependencies the machine lacks
    # (pip download ... --python-version 312); --no-deps: torch, numpy and Pillow come from the machine
    echo "installing the wheels in gpu-wheels/"
    # a wheel is a zip archive: unpacking it onto the path is enough to import it (no pip needed)
    python3 -c "import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]" \
        "$pkg/site" gpu-wheels/*.whl && export PYTHONPATH="$pkg/site:$PYTHONPATH"
fi
python3 -c "import transformers, diffusers; print('transformers', transformers.__version__, 'diffusers', diffusers.__version__)"
python3 scripts/gpu_bench_vla.py --out "$OUT/vla.json" "$@"
} 2>&1 | tee "$OUT/vla.log"
