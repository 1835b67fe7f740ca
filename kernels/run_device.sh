#!/usr/bin/env bash
# One GPU session, end to end, sized for a ~9-minute device budget (H100/H200, the workplace image:
# torch + triton + pytest-benchmark, no deepspeed/diffusers needed). Everything lands under $OUT:
#   summary.txt      one line per stage (exit status, seconds) + the tails of the logs
#   results.tgz      logs, JSON of every stage (kernel validation + timings, csrc, bench, plan)
#   pretrain.tgz     the shapes world's toy teacher + judge trained on this GPU (issue 4 assets)
#
# Phase A (GPU shared, nothing timed): toy teacher + judge pretraining in the background, the csrc
#   CUDA build, then the gpu-marked correctness tests and the planner's memory validation.
# Phase B (GPU quiet, timed): attention tile sweep + validate + time vs SDPA backends, answer
#   losses, csrc ops, one full NP-Edit step plain vs npedit.
# Stages continue after a failure; each has a time budget. Usage from the repo root:
#   OUT=/some/dir bash kernels/run_device.sh            (PRETRAIN_S=0 skips the pretraining)
# PRETRAIN=teacher,judge picks what is pretrained; STAGES=build,tests,plan,attention,answer_loss,csrc,step
# picks the other stages (default: all of these); STAGES=...,zero3 adds the step through DeepSpeed's
# ZeRO-3 engines on as many ranks as there are GPUs (needs deepspeed: carry its wheel). Processes sharing one GPU time-slice it: a launch-bound
# toy-model pretraining runs several times slower beside another GPU process, so PRETRAIN_ALONE=1
# runs the pretraining first, alone, and everything else after it. TEACHER_TEXT=joint (default: the
# text encoder trains with the teacher from scratch) | frozen | finetune (both start from an encoder
# pretrained alone on caption parsing, `npedit pretrain text`, about 90 s on one CPU core first).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/runs/device}"
RES="$OUT/res"; PRE="$OUT/pre"
mkdir -p "$RES" "$PRE"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
unset NPEDIT_OPS
PY="${PYTHON:-python3}"
PRETRAIN_S="${PRETRAIN_S:-150}"
PRETRAIN="${PRETRAIN:-teacher,judge}"
TEACHER_TEXT="${TEACHER_TEXT:-joint}"
STAGES="${STAGES:-build,tests,plan,attention,answer_loss,csrc,step}"
has() { case ",$1," in *",$2,"*) return 0 ;; *) return 1 ;; esac; }
T0=$SECONDS

stage() {  # stage NAME BUDGET_S CMD...: run with a time limit, log to $RES/NAME.log
    local name=$1 budget=$2; shift 2
    local t=$SECONDS
    echo "== $name ($(($SECONDS - T0)) s): $*"
    timeout "$budget" "$@" > "$RES/$name.log" 2>&1
    local rc=$?
    echo "$name: exit $rc in $((SECONDS - t)) s" | tee -a "$OUT/summary.txt"
    tail -n 4 "$RES/$name.log"
    pack
}
pack() {  # what is under $OUT comes back even if the call is cut off: pack after every stage
    tar czf "$OUT/results.tgz" -C "$OUT" res 2>/dev/null
    [ -d "$PRE/assets" ] && tar czf "$OUT/pretrain.tgz" -C "$PRE" . 2>/dev/null
    return 0
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name())"
  nproc; } > "$RES/env.txt" 2>&1
cat "$RES/env.txt"

wait_pretraining() {
    [ -n "$TEACHER$JUDGE" ] || return 0
    echo "== waiting for the pretraining ($(($SECONDS - T0)) s)"
    if [ -n "$TEACHER" ]; then wait $TEACHER; echo "pretrain_teacher: exit $?" | tee -a "$OUT/summary.txt"
        tail -c 1500 "$PRE/teacher.log" | tr '\r' '\n' | tail -n 14; fi
    if [ -n "$JUDGE" ]; then wait $JUDGE; echo "pretrain_judge: exit $?" | tee -a "$OUT/summary.txt"
        tail -c 1500 "$PRE/judge.log" | tr '\r' '\n' | tail -n 12; fi
    TEACHER=""; JUDGE=""
    pack
}

# ---- phase A ---------------------------------------------------------------------------------------
TEACHER=""; JUDGE=""
if [ "$PRETRAIN_S" -gt 0 ]; then
    # reference ops for the toy models (fp32, tiny): the pretraining does not depend on the kernels under test
    if has "$PRETRAIN" teacher; then
        TEXT_ARGS=()
        if [ "$TEACHER_TEXT" != "joint" ]; then
            NPEDIT_OPS=ref timeout 300 $PY -m npedit.pretrain.cli text --out "$PRE/text" > "$PRE/text.log" 2>&1
            TEXT_ARGS=(--text_encoder "$PRE/text/text_encoder" --train_text "$([ "$TEACHER_TEXT" = finetune ] && echo true || echo false)")
        fi
        NPEDIT_OPS=ref timeout $((PRETRAIN_S + 120)) $PY -m npedit.pretrain.cli teacher --out "$PRE/assets" ${TEXT_ARGS[@]+"${TEXT_ARGS[@]}"} \
            --device cuda --workers 6 --batch_size 128 --steps 40000 --warmup 200 --ema 0.999 \
            --max_seconds "$PRETRAIN_S" --save_every 2000 --threads 4 > "$PRE/teacher.log" 2>&1 &
        TEACHER=$!
    fi
    if has "$PRETRAIN" judge; then
        NPEDIT_OPS=ref timeout $((PRETRAIN_S + 120)) $PY -m npedit.pretrain.cli judge --out "$PRE/assets" \
            --device cuda --workers 6 --batch_size 64 --steps 12000 --max_seconds "$PRETRAIN_S" \
            --save_every 2000 --threads 4 > "$PRE/judge.log" 2>&1 &
        JUDGE=$!
    fi
    if [ "${PRETRAIN_ALONE:-0}" = "1" ]; then wait_pretraining; fi
fi
has "$STAGES" build && stage csrc_build 240 env NPEDIT_BUILD_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=4 $PY setup.py build_ext --inplace
has "$STAGES" tests && stage gpu_tests 200 $PY -m pytest -q -m gpu -p no:cacheprovider tests/test_ops_attention.py tests/test_ops_answer_loss.py \
    tests/test_ops_adaln.py tests/test_ops_csrc.py tests/test_ops_checkpoint.py --junitxml="$RES/gpu_tests.xml"
has "$STAGES" plan && stage plan 120 $PY benchmarks/validate_plan.py --device cuda --quick --out "$RES/plan_validation.json"
pack
wait_pretraining

# ---- phase B: the GPU is quiet from here on ----------------------------------------------------------
has "$STAGES" attention && stage attention_sweep 90 $PY kernels/attention/validate_and_time.py --sweep-out "$RES/attention_tiles.json"
has "$STAGES" attention && stage attention 180 $PY kernels/attention/validate_and_time.py --tiles "$RES/attention_tiles.json" --out "$RES/attention.json"
has "$STAGES" answer_loss && stage answer_loss 90 $PY kernels/answer_loss/validate_and_time.py --out "$RES/answer_loss.json" --quick --sweep_bwd
has "$STAGES" csrc && stage csrc_time 60 $PY kernels/csrc/validate_and_time.py --no-compile --iters 30 --out "$RES/csrc.json"
has "$STAGES" step && stage bench_step 150 $PY -m pytest benchmarks/bench_step.py --benchmark --bench-device cuda --bench-quick \
    --bench-out "$RES/bench" -q -p no:cacheprovider
has "$STAGES" zero3 && stage bench_zero3 240 $PY -m pytest benchmarks/bench_zero3.py --benchmark --bench-device cuda \
    --bench-out "$RES/bench" -q -p no:cacheprovider
pack
echo "total $((SECONDS - T0)) s" | tee -a "$OUT/summary.txt"
# the short table last (the reply carries the end of the output)
[ -f "$RES/attention.json" ] && $PY - "$RES/attention.json" <<'EOF' || true
import json, sys
r = json.load(open(sys.argv[1]))
print("tiles used:", r.get("tiles_used"), "| validation ok:", all(v["ok"] for v in r.get("validation", [])))
for row in r.get("timings", []):
    if "error" in row:
        print(row["impl"], row["N"], row["causal"], row["error"][:60]); continue
    print(f'{row["impl"]:18s} N{row["N"]:6d} {"causal" if row["causal"] else "full  "} '
          f'fwd {row["fwd_ms"]:.3f} ms {row["fwd_tflops"]:6.1f} TF/s  bwd {row["bwd_ms"]:.3f} ms {row["bwd_tflops"]:6.1f} TF/s')
EOF
