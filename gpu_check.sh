#!/usr/bin/env bash
# The GPU measurements as one deadline-bound command (README: "The GPU preset").
#
#   bash gpu_check.sh                        # on the GPU machine, from the repository root
#   PRESET=tiny DEVICE=cpu DEADLINE=120 OUT=/tmp/g bash gpu_check.sh     # a dry run anywhere
#
# In order, each step given what is left of DEADLINE seconds (default 400) and stopped (SIGINT, then KILL)
# when they run out:
#   1. python train.py --preset gpu: pretraining, evaluation, RL, evaluation, shortcut table
#   2. python sample.py --bench: images/s at T=12 with CFG, batch 256, on the final model, and its ops
#   3. python shortcut.py --prompt ... --n B for B in $SWEEP (256 1024 4096): vanilla vs the shortcut's default budget (half the steps),
#      ms/image at each batch, to show where launches stop setting the pace (the table's batch is the preset's sc_bench_batch)
#   4. python train.py --preset gpu --compare: the five focus.py variants x 3 seeds; seed by seed, so
#      one stopped early still compares every variant, and metrics.jsonl holds each finished run
# Stopping loses at most `--snapshot-secs` of a stage: a rerun on the same machine (whose ignored out/ is kept
# while it stays warm) skips finished stages and resumes the unfinished one from its snapshot, so the same
# command, repeated, goes on where the last one stopped. Whatever happens, $OUT ends up holding gpu.log (all
# output), report.md (the run's report so far) and results.tar.gz (reports, pictures, metrics.jsonl; no weights).
set -u
PY=${PY:-python3}
PRESET=${PRESET:-gpu}
DEVICE=${DEVICE:-auto}
DEADLINE=${DEADLINE:-400}
SWEEP=${SWEEP:-256 1024 4096}
RUN=${RUN:-out}
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
start=$(date +%s)
log="$OUT/gpu.log"

left() { echo $((DEADLINE - ($(date +%s) - start))); }

step() {  # step NAME CMD...: run CMD with what is left of the deadline; log its time and exit status
    local name=$1 t
    shift
    t=$(left)
    if ((t < 15)); then
        echo "[gpu_check] $name: skipped, ${t}s left" | tee -a "$log"
        return 0
    fi
    echo "[gpu_check] $name: up to ${t}s: $*" | tee -a "$log"
    local t0=$(date +%s)
    timeout -s INT -k 15 "$t" "$@" >>"$log" 2>&1
    local rc=$?
    echo "[gpu_check] $name: exit $rc after $(($(date +%s) - t0))s$( ((rc == 124)) && echo ' (deadline: rerun to go on)')" | tee -a "$log"
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
step train "$PY" train.py "${common[@]}"
step bench "$PY" sample.py --ckpt "$RUN" --bench --batch 256 --steps 12 --device "$DEVICE"
for n in $SWEEP; do
    step "sweep $n" "$PY" shortcut.py --ckpt "$RUN" --prompt "three green triangles" --n "$n" --device "$DEVICE"
done
step compare "$PY" train.py "${common[@]}" --compare
