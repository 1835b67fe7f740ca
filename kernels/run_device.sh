#!/usr/bin/env bash
# One GPU session, end to end (about 5-8 minutes on an H100/H200): builds nothing, then
#   1. versions and the card,
#   2. the gpu-marked op tests (real kernels, TRITON_INTERPRET=0),
#   3. attention and answer-loss validate-then-time scripts (JSON),
# everything written under $OUT (default runs/device). Steps continue after a failure so one
# broken step does not cost the others' device time; the exit status is the first failure's.
# Usage from the repo root:  bash kernels/run_device.sh [--quick]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/device}"
mkdir -p "$OUT"
export TRITON_INTERPRET=0 PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset NPEDIT_OPS
PY="${PYTHON:-python3}"
QUICK="${1:-}"
status=0
step() {  # step NAME CMD...: run, tee the log, remember the first failure
    local name="$1"; shift
    echo "== $name: $*"
    "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "== $name exit $rc"
    [ "$status" -eq 0 ] && [ "$rc" -ne 0 ] && status=$rc
    return 0
}
step env bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv; \
  $PY -c 'import torch, triton; print(\"torch\", torch.__version__, \"triton\", triton.__version__, torch.cuda.get_device_name())'"
step gpu_tests "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_ops_attention.py tests/test_ops_answer_loss.py \
  tests/test_ops_adaln.py --junitxml="$OUT/gpu_tests.xml"
step attention "$PY" kernels/attention/validate_and_time.py --out "$OUT/attention.json" $QUICK
step answer_loss "$PY" kernels/answer_loss/validate_and_time.py --out "$OUT/answer_loss.json" $QUICK
echo "results in $OUT (exit $status)"
exit "$status"
