#!/usr/bin/env bash
# One GPU session, end to end: op benchmarks, the full step plain vs npedit, and npedit plan's
# predictions against the CUDA allocator. Everything lands under $OUT.
#
#   OUT=/some/dir bash benchmarks/run_gpu.sh [ops,step,plan]     (default: all three, quick shapes)
#   FULL=1 ...   all shapes (longer than a 15-minute device budget allows)
#
# The GPU image has torch, triton and transformers; pytest-benchmark (with py-cpuinfo), diffusers and
# deepspeed are installed from $WHEELS (default .wheels/) when that folder exists. Prepare it here with
#   pip download --no-deps -d .wheels pytest-benchmark py-cpuinfo diffusers==0.42.1
# and pass it to the device call with carry=[".wheels"] (deepspeed: add its sdist; optional).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
STAGES=${1:-ops,step,plan}
QUICK=$([ "${FULL:-0}" = "1" ] && echo "" || echo "--bench-quick")
mkdir -p "$OUT"
export PYTHONPATH="$PWD:${PYTHONPATH:-}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
export TRITON_INTERPRET=0

WHEELS=${WHEELS:-.wheels}
if [ -d "$WHEELS" ]; then
  pip install --no-index --find-links "$WHEELS" "$WHEELS"/* > "$OUT/pip.log" 2>&1 || echo "wheel install failed (see pip.log)"
fi
{ nvidia-smi; python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  python -c "import npedit.ops._ext as e; print('npedit._C:', e.available(), e.unavailable_reason())"; } > "$OUT/env.txt" 2>&1

stage() {  # name budget_s command...
  local name=$1 budget=$2; shift 2
  local t0=$SECONDS
  timeout "$budget" "$@" > "$OUT/$name.log" 2>&1
  echo "$name: exit $? in $((SECONDS - t0)) s" | tee -a "$OUT/summary.txt"
}
case $STAGES in *ops*)  stage ops 180 python -m pytest benchmarks/bench_ops.py --benchmark --bench-device cuda $QUICK \
                          --bench-out "$OUT/results" -q -p no:cacheprovider ;; esac
case $STAGES in *step*) stage step 300 python -m pytest benchmarks/bench_step.py --benchmark --bench-device cuda $QUICK \
                          --bench-out "$OUT/results" -q -p no:cacheprovider ;; esac
case $STAGES in *plan*) stage plan 150 python benchmarks/validate_plan.py --device cuda ${QUICK:+--quick} \
                          --out "$OUT/plan_validation.json" ;; esac
tail -n 3 "$OUT"/*.log >> "$OUT/summary.txt" 2>/dev/null
cat "$OUT/summary.txt"
