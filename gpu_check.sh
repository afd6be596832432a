#!/usr/bin/env bash
# The GPU measurements as one deadline-bound command (README: "Where the rest lives").
#
#   bash gpu_check.sh                        # on the GPU machine, from the repository root
#   PRESET=tiny DEVICE=cpu DEADLINE=120 OUT=/tmp/g bash gpu_check.sh     # a dry run anywhere
#
# In order, each step given what is left of DEADLINE seconds (default 560) and stopped (SIGINT, then KILL)
# when they run out:
#   1. python bench.py --preset gpu (at most BENCH_SECS, 210): pretraining ms/step and MFU, sampler images/s at
#      each batch of $SWEEP (256 4096), eager and compiled ($MODES), with the model TFLOP/s and their share of
#      790 TFLOP/s; the compiled trunk checked against eager (new shapes, weights changed in place, a second
#      model) and the count of compiled calls that skipped CUDA graphs. Fresh weights: it needs no run.
#   2. python train.py --preset gpu [$TRAIN_FLAGS, e.g. --compile]: every stage; report.md ends with each
#      stage's seconds, and its pretraining table gives the model TFLOP/s and MFU
#   3. python shortcut.py --prompt ... --n B for B in $SWEEP: vanilla vs the shortcut at its table's largest budget,
#      CUDA-event ms/image at each batch (the table in report.md is at the preset's sc_bench_batch)
#   4. python compare.py --preset gpu --compare-seeds 1: the focus.py variants on one seed (four: routing needs
#      the remask estimator, and the default is replay)
# Stopping loses at most `--snapshot-secs` of a stage: a rerun on the same machine (whose ignored out/ is kept
# while it stays warm) skips finished stages and resumes the unfinished one from its snapshot, so the same
# command, repeated, goes on where the last one stopped. Whatever happens, $OUT ends up holding gpu.log (all
# output), report.md (the run's report so far) and results.tar.gz (reports, pictures, metrics.jsonl; no weights).
set -u
PY=${PY:-python3}
PRESET=${PRESET:-gpu}
DEVICE=${DEVICE:-auto}
DEADLINE=${DEADLINE:-560}
BENCH_SECS=${BENCH_SECS:-210}
SWEEP=${SWEEP:-256 4096}
MODES=${MODES:-eager,compiled}
TRAIN_FLAGS=${TRAIN_FLAGS:-}
RUN=${RUN:-out}
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
start=$(date +%s)
log="$OUT/gpu.log"

left() { echo $((DEADLINE - ($(date +%s) - start))); }

step() {  # step NAME CAP CMD...: run CMD with what is left of the deadline, at most CAP s (0: no cap);
          # log its time and exit status
    local name=$1 cap=$2 t
    shift 2
    t=$(left)
    ((cap > 0 && cap < t)) && t=$cap
    if ((t < 15)); then
        echo "[gpu_check] $name: skipped, ${t}s left" | tee -a "$log"
        return 0
    fi
    echo "[gpu_check] $name: up to ${t}s: $*" | tee -a "$log"
    local t0=$(date +%s)
    timeout -s INT -k 15 "$t" "$@" >>"$log" 2>&1
    local rc=$?
    local why=""
    ((rc == 124)) && why=" (deadline: rerun to go on)"
    ((rc == 137)) && why=" (killed at the deadline: rerun to go on)"
    echo "[gpu_check] $name: exit $rc after $(($(date +%s) - t0))s$why" | tee -a "$log"
}

keep() {  # what comes back: a few files, so one archive beside the log and the report
    local files
    files=$(cd "$RUN" 2>/dev/null && ls report.md metrics.jsonl ./*.png ./*.gif 2>/dev/null)
    cp "$RUN/report.md" "$OUT/" 2>/dev/null
    echo "[gpu_check] $(($(date +%s) - start))s in all" | tee -a "$log"
    tar czf "$OUT/results.tar.gz" -C "$OUT" gpu.log ${files:+-C "$RUN" $files}
    echo "[gpu_check] kept in $OUT: $(ls "$OUT" | tr '\n' ' ')"
}
trap keep EXIT

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "(no nvidia-smi)"
    $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
} >>"$log" 2>&1

common=(--preset "$PRESET" --device "$DEVICE" --out "$RUN" --snapshot-secs 20)
step bench "$BENCH_SECS" "$PY" bench.py --preset "$PRESET" --device "$DEVICE" --batches "${SWEEP// /,}" --modes "$MODES"
step train 0 "$PY" train.py "${common[@]}" $TRAIN_FLAGS
for n in $SWEEP; do
    step "sweep $n" 0 "$PY" shortcut.py --ckpt "$RUN" --prompt "three green triangles" --n "$n" --device "$DEVICE"
done
step compare 0 "$PY" compare.py "${common[@]}" $TRAIN_FLAGS --compare-seeds 1
