#!/usr/bin/env bash
# Calibrate the VLA strategies and the expert caches on a robot policy and write the built-in presets:
#   core/presets/vla-<model>-<strategy>.json (VLA family), core/presets/cache-<model>-<strategy>.json (cache family).
#     bash scripts/make_vla_presets.sh                     # tiny-pi0, success >= 95% of full compute, 2 streams
#     MODEL=./my-pi0 EPISODES=10 bash scripts/make_vla_presets.sh
# Each calibration runs its candidates on fit episodes (EPISODES per task) and judges the chosen one on
# HELDOUT episodes per task; logs go to $LOGS (default vla-presets-logs/).
set -uo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-tiny-pi0}
EPISODES=${EPISODES:-10}
HELDOUT=${HELDOUT:-10}
MIN_SUCCESS=${MIN_SUCCESS:-0.95}
LOGS=${LOGS:-vla-presets-logs}
mkdir -p "$LOGS"
export OMP_NUM_THREADS=1
name=$(basename "$MODEL")
run() {  # strategy family [--set k=v ...]
    local s=$1 fam=$2
    shift 2
    dynaccel calibrate --model "$MODEL" --strategy "$s" --min-success "$MIN_SUCCESS" --episodes "$EPISODES" \
        --heldout-episodes "$HELDOUT" --out "core/presets/$fam-$name-${s//_/-}.json" "$@" > "$LOGS/$s.log" 2>&1 \
        && echo "$s: $(tail -1 "$LOGS/$s.log")" || echo "$s: failed, see $LOGS/$s.log"
}
( run denoise_steps vla; run vla_cache vla; run prefix_prune vla; run easycache cache; run visionzip vla ) &
( run fbcache cache; run teacache cache; run taylorseer cache; run fastv vla --set layer=1; run layer_skip vla ) &
wait
